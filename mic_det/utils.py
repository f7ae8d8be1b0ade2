"""Small helpers shared by the engine and the tools."""
import contextlib
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch

__all__ = ["get_rng_states", "rng_states_kept", "set_host_rng_states", "set_torch_rng_states"]


def get_rng_states() -> Dict[str, Any]:
    """Every RNG a training step draws from (python, numpy, torch CPU and CUDA)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_host_rng_states(states: Dict[str, Any]) -> None:
    """Restore python's and numpy's RNGs (the data augmentations draw from these)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def set_torch_rng_states(states: Dict[str, Any]) -> None:
    """Restore torch's RNGs (RoI/anchor sampling, masks, dropout draw from these)."""
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def rng_states_kept() -> Iterator[None]:
    """Run a block, then put every RNG a training step draws from back where it was.

    For evaluation inside training: iterating a ``DataLoader`` draws its base seed from
    torch's RNG, so without this a run's RoI sampling, masks and flips after an evaluation,
    and so the trained model, would depend on how often it is evaluated (``TEST.EVAL_PERIOD``).
    """
    states = get_rng_states()
    try:
        yield
    finally:
        set_host_rng_states(states)
        set_torch_rng_states(states)
