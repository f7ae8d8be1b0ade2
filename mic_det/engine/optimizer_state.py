"""Optimizer state that survives a change of the parameter set, matched by parameter name.

Why: the accuracy benchmark and ``tools/demo.py`` start a UDA or MIC run from a
source-only checkpoint. MIC adds no parameter, but SADA adds domain
discriminators, and a torch optimizer state is a list by position: it cannot
be loaded into an optimizer with more parameters. Checkpoints therefore also
store the name of every parameter in optimizer order, and a checkpoint from
another parameter set restores the momentum of each parameter it knows, by
name and shape; the new ones start fresh.
"""
from typing import Dict, List, Tuple

import torch

from ..teacher import unwrap_model

__all__ = ["optimizer_param_names", "remap_optimizer_state"]


def optimizer_param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """Names of the optimizer's parameters, in the order of its state_dict's indices."""
    names = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    return [names.get(id(p), f"<unnamed {i}>") for i, p in enumerate(_params(optimizer))]


def remap_optimizer_state(
    saved: Dict, saved_names: List[str], optimizer: torch.optim.Optimizer, names: List[str]
) -> Tuple[Dict, int]:
    """A state_dict for ``optimizer`` holding ``saved``'s per-parameter state, matched by name.

    A parameter's state is taken only when the name is in ``saved_names`` and
    every tensor in it has the parameter's shape (a resized head starts
    fresh). The param groups (lr, weight decay) are the optimizer's own: the
    lr schedule sets the lr from the iteration anyway. Returns the state_dict
    and how many parameters got a saved state.
    """
    position = {n: i for i, n in enumerate(saved_names)}
    state = {}
    for i, (name, param) in enumerate(zip(names, _params(optimizer))):
        j = position.get(name)
        entry = saved["state"].get(j) if j is not None else None
        if entry is None:
            continue
        tensors = [v for v in entry.values() if torch.is_tensor(v) and v.dim() > 0]
        if all(v.shape == param.shape for v in tensors):
            state[i] = entry
    current = optimizer.state_dict()
    return {"state": state, "param_groups": current["param_groups"]}, len(state)


def _params(optimizer: torch.optim.Optimizer) -> List[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]
