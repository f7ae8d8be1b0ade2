"""The detection benchmark's protocol: the built-in shifts, the methods, and the budget every run gets.

``adaptation.py`` runs it; ``bench_runs.py`` reads the runs' folders against it.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

# The built-in shifts: config folder and target val set.
SHIFTS = {
    "fog": ("configs/synthetic", "synthetic_foggy_val"),
    "night": ("configs/synthetic_night", "synthetic_night_val"),
}


@dataclass(frozen=True)
class Method:
    label: str
    config: str  # file name inside the shift's config folder
    mic: bool = False  # has a teacher and pseudo-labels
    # A step's time over a source-only step's, roughly as measured (docs/benchmarks_archive.md).
    # Only orders the runs: the longest start first, so that the last one left is a short one.
    step_cost: float = 1.0


METHODS: Dict[str, Method] = {
    "control": Method("control (source-only continued)", "source_only.yaml"),
    "mic": Method("MIC", "mic.yaml", mic=True, step_cost=2.0),
    "mic_sada": Method("MIC+SADA", "mic_sada.yaml", mic=True, step_cost=2.8),
    "sada": Method("SADA", "sada.yaml", step_cost=1.3),
    "oracle": Method("oracle (target labels)", "oracle.yaml"),
    "minimal_mic": Method("minimal MIC loop (sanity)", "mic.yaml", mic=True, step_cost=1.8),
}


@dataclass
class Budget:
    shift: str
    source_iters: int
    adapt_iters: int
    seeds: List[int]
    methods: List[str]
    overrides: List[str]
    eval_period: int = 0
    # Adaptation restarts the lr schedule (the configs' SOLVER.RESTART_ITERS); False: it goes on
    # at the source schedule's decayed lr (--decayed-adaptation, for comparison).
    restart: bool = True

    @property
    def total(self) -> int:
        return self.source_iters + self.adapt_iters

    @property
    def lr_step(self) -> int:
        return source_lr_step(self.source_iters)

    @property
    def adapt_lr_step(self) -> int:
        return adaptation_lr_step(self.source_iters, self.adapt_iters)

    @property
    def adapt_schedule(self) -> List[str]:
        return adaptation_schedule(self.source_iters, self.adapt_iters, self.restart)

    @property
    def identity_overrides(self) -> List[str]:
        """What tells this budget's runs apart from others on the same source model: the overrides, and the schedule."""
        return list(self.overrides) + ([] if self.restart else ["--decayed-adaptation"])

    @property
    def checkpoint(self) -> str:
        return f"model_{self.source_iters - 1:07d}.pth"

    def config(self, method: str) -> str:
        return os.path.join(SHIFTS[self.shift][0], METHODS[method].config)

    @property
    def target_val(self) -> str:
        return SHIFTS[self.shift][1]


def config_chain_values(path: str, overridden: Sequence[str] = ()) -> List[Dict]:
    """The values of a config file and of every ``_BASE_`` it derives from, nearest first.

    Values, not text: a comment edited in a config keeps its cached models valid. Keys in
    ``overridden`` (dotted, e.g. ``SOLVER.MAX_ITER``) are left out: the run's options set
    them, so a change of the config's own schedule does not retrain a source model.
    """
    import yaml

    values = []
    while path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        for key in overridden:
            *parents, leaf = key.split(".")
            node = data
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        values.append(data)
        base = data.get("_BASE_")
        path = os.path.normpath(os.path.join(os.path.dirname(path), base)) if base else None
    return values


def config_budget(shift: str, repo: str) -> Tuple[int, int]:
    """``(source_iters, adapt_iters)`` of the shift's ``mic.yaml``: its burn-in, and the steps after it.

    The benchmark's default budget is the configs' own schedule, read from them, so that a
    user's ``tools/train_net.py --config-file <shift>/mic.yaml`` run is seed 0 of the benchmark.
    """
    found: Dict[str, int] = {}
    for data in config_chain_values(os.path.join(repo, SHIFTS[shift][0], METHODS["mic"].config)):
        for section, key in (("MIC", "BURN_IN_ITERS"), ("SOLVER", "MAX_ITER")):
            if key not in found and key in (data.get(section) or {}):  # nearest first, as Detectron2 merges
                found[key] = int(data[section][key])
    if len(found) < 2:
        raise ValueError(f"{SHIFTS[shift][0]}/mic.yaml sets no MIC.BURN_IN_ITERS or SOLVER.MAX_ITER: "
                         "pass --source-iters and --adapt-iters")
    return found["BURN_IN_ITERS"], found["MAX_ITER"] - found["BURN_IN_ITERS"]


def source_lr_step(source_iters: int) -> int:
    """The source model's lr falls x0.1 at 75% of its steps, before adaptation starts."""
    return int(0.75 * source_iters)


def adaptation_lr_step(source_iters: int, adapt_iters: int) -> int:
    """Adaptation restarts the schedule (``SOLVER.RESTART_ITERS``) and decays at 75% of its own steps."""
    return source_iters + int(0.75 * adapt_iters)


def adaptation_schedule(source_iters: int, adapt_iters: int, restart: bool = True) -> List[str]:
    """A whole run's schedule options: the source model's (lr x0.1 at 75%), then adaptation's.

    With ``restart`` adaptation starts over at the full lr (the detection configs); without
    it, it goes on at the source schedule's decayed lr (the segmentation and classification
    configs).
    """
    source_step = int(0.75 * source_iters)
    if not restart:
        return ["SOLVER.STEPS", f"({source_step},)", "SOLVER.RESTART_ITERS", "()"]
    return ["SOLVER.STEPS", f"({source_step},{adaptation_lr_step(source_iters, adapt_iters)})",
            "SOLVER.RESTART_ITERS", f"({source_iters},)"]
