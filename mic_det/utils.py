"""Small helpers shared by the engine and the tools."""
import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["get_rng_states", "set_host_rng_states", "set_torch_rng_states"]


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
