"""A benchmark's run folders: which run a folder holds, whether it finished, and what it measured.

Shared by ``adaptation.py`` and ``task_adaptation.py`` (which train the runs): a run is
read back only from the files Detectron2 and mic_det write (``metrics.json``,
``log.txt``) and from ``run_of.json``, the record of what it was trained
from, so a report can be rebuilt from folders alone and a folder of another
budget is never taken for this one.
"""
import json
import os
import shutil
from typing import Dict, List, Optional

from .bench_stats import mean_std
from .protocol import Budget

SOURCE_VAL = "synthetic_clear_val"


#: Overrides that only add measurements: they change no trained weight, so they do not tell runs or
#: records apart (the benchmark sets MIC.LOG_PSEUDO_LABEL_QUALITY on every MIC run itself).
MEASUREMENT_ONLY = ("MIC.LOG_PSEUDO_LABEL_QUALITY",)


def training_overrides(overrides: List[str]) -> List[str]:
    """The trailing overrides without the measurement-only ones (:data:`MEASUREMENT_ONLY`)."""
    pairs = zip(overrides[::2], overrides[1::2])
    return [x for k, v in pairs if k not in MEASUREMENT_ONLY for x in (k, v)]


def source_overrides(overrides: List[str]) -> List[str]:
    """The trailing overrides that can change the source model.

    ``MIC.*`` and ``UDA.*`` keys do nothing in source-only training (both are
    off there), so an ablation of an adaptation knob reuses the cached source
    models instead of training new ones under a new key.
    """
    pairs = zip(overrides[::2], overrides[1::2])
    return [x for k, v in pairs if not k.startswith(("MIC.", "UDA.")) for x in (k, v)]


def final_record(out: str, iters: int, target_val: str) -> Optional[Dict]:
    """The run's evaluation at its last iteration from metrics.json, or None."""
    path = os.path.join(out, "metrics.json")
    found = None
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if f"student/{target_val}/bbox/AP50" in rec and rec.get("iteration", -1) >= iters - 1:
                    found = rec
    return found


RUN_OF = "run_of.json"  # in every run's folder: what it was trained from, and how


def run_identity(method: str, source_dir: str, adapt_iters: int, overrides: List[str]) -> Dict:
    """What makes two runs of ``method`` the same run: the source model (its folder name is keyed by
    seed, steps, config and overrides), the adaptation steps, and the overrides; for the control only
    those that reach source-only training (``MIC.*`` / ``UDA.*`` do not), so every method's ablation
    shares one control. Measurement-only overrides (:data:`MEASUREMENT_ONLY`) are left out."""
    overrides = source_overrides(overrides) if method == "control" else training_overrides(overrides)
    return {"method": method, "source_model": os.path.basename(os.path.normpath(source_dir)),
            "adapt_iters": adapt_iters, "overrides": overrides}


def start_run_folder(out: str, identity: Dict, source_dir: str, checkpoint: Optional[str]) -> None:
    """Prepare ``out`` for ``tools/train_net.py --resume``: record the run, and, unless the run has
    begun, place the source model's ``checkpoint`` (if given) as its last one, so that the run starts
    from its weights, optimizer and schedule."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RUN_OF), "w") as f:
        json.dump(identity, f)
    if checkpoint and not os.path.isfile(os.path.join(out, "last_checkpoint")):
        shutil.copy(os.path.join(source_dir, checkpoint), os.path.join(out, checkpoint))
        with open(os.path.join(out, "last_checkpoint"), "w") as f:
            f.write(checkpoint)


def check_run_folder(out: str, wanted: Dict) -> None:
    """Refuse to skip, resume or overwrite a run of another budget in ``out``.

    A folder is reused only for the same run, or to continue it for more
    adaptation steps (a run of fewer ``adapt_iters``, everything else equal).
    A folder from before these records has none and is taken as it is.
    """
    path = os.path.join(out, RUN_OF)
    try:
        with open(path) as f:
            theirs = json.load(f)
    except FileNotFoundError:
        return
    except ValueError as e:
        raise RuntimeError(f"{path}: unreadable ({e}); remove it or pass another --out-dir") from e
    theirs["overrides"] = training_overrides(theirs.get("overrides", []))  # a folder may record them: the same run
    same = {k: v for k, v in theirs.items() if k != "adapt_iters"} == {k: v for k, v in wanted.items()
                                                                       if k != "adapt_iters"}
    if not same or theirs.get("adapt_iters", 0) > wanted["adapt_iters"]:
        raise RuntimeError(f"{out} holds another run ({path}: {theirs}), not this one ({wanted}); "
                           "it is kept: pass another --out-dir, or remove the folder to retrain it")


def finished_control_elsewhere(out: str, budget: Budget, source_dir: str) -> Optional[str]:
    """``model_final.pth`` of the same control run under another shift's folder, finished, or None.

    Source-only training never sees the target, so the control of one shift
    *is* the control of every shift: it only needs evaluating on this one.
    "The same" is checked, not assumed from the folder layout: the other
    run's ``run_of.json`` must match this one's (a control of another
    input size or source model beside it is not this run's control).
    """
    seed_dir = os.path.dirname(out)
    shifts_root = os.path.dirname(os.path.dirname(seed_dir))
    here = os.path.basename(os.path.dirname(seed_dir))
    wanted = run_identity("control", source_dir, budget.adapt_iters, budget.identity_overrides)
    for shift in sorted(os.listdir(shifts_root)) if os.path.isdir(shifts_root) else []:
        other = os.path.join(shifts_root, shift, os.path.basename(seed_dir), "control")
        final = os.path.join(other, "model_final.pth")
        if shift == here or not os.path.isfile(final) or not os.path.isfile(os.path.join(other, "metrics.json")):
            continue
        try:
            with open(os.path.join(other, RUN_OF)) as f:
                if json.load(f) != wanted:
                    continue
        except (OSError, ValueError):
            continue
        with open(os.path.join(other, "metrics.json")) as f:
            if any(json.loads(line).get("iteration", -1) >= budget.total - 1 and "student/" in line for line in f):
                return final
    return None


def read_run(out: str, budget: Budget, has_teacher: bool) -> Dict:
    rec = final_record(out, budget.total, budget.target_val)
    if rec is None:
        raise RuntimeError(f"{out}/metrics.json holds no final evaluation (iteration {budget.total})")
    models = {}
    for tag in ("student", "teacher") if has_teacher else ("student",):
        prefix = f"{tag}/{budget.target_val}/bbox/AP50-"
        if f"{tag}/{budget.target_val}/bbox/AP50" not in rec:
            continue
        models[tag] = {
            "target_AP50": rec.get(f"{tag}/{budget.target_val}/bbox/AP50"),
            "target_AP": rec.get(f"{tag}/{budget.target_val}/bbox/AP"),
            "source_AP50": rec.get(f"{tag}/{SOURCE_VAL}/bbox/AP50"),
            "source_AP": rec.get(f"{tag}/{SOURCE_VAL}/bbox/AP"),
            "target_AP50_per_class": {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)},
        }
    return {"models": models, "pseudo_labels": pseudo_label_quality(out) if has_teacher else None,
            "guard": guard_events(out)}


def pseudo_label_quality(out: str) -> Optional[Dict]:
    """First / last / pooled pseudo-label precision and recall against target-train labels."""
    logged, boxes = [], []
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            rec = json.loads(line)
            if "mic/boxes_per_image" in rec:
                boxes.append(rec["mic/boxes_per_image"])
            if "mic/pseudo_tp" in rec:
                logged.append(rec)
    if not logged:
        return None

    def point(rec: Dict) -> Dict:
        tp, n_p, n_g = rec["mic/pseudo_tp"], rec.get("mic/pseudo_num_pseudo"), rec.get("mic/pseudo_num_gt")
        return {"iteration": rec["iteration"], "precision": tp / n_p if n_p else None,
                "recall": tp / n_g if n_g else None}

    tp = sum(r["mic/pseudo_tp"] for r in logged)
    n_p = sum(r.get("mic/pseudo_num_pseudo", 0) for r in logged)
    n_g = sum(r.get("mic/pseudo_num_gt", 0) for r in logged)
    return {"first": point(logged[0]), "last": point(logged[-1]), "pooled_precision": tp / n_p if n_p else None,
            "pooled_recall": tp / n_g if n_g else None, "boxes_per_image": mean_std(boxes)["mean"]}


def guard_events(out: str) -> Dict:
    """How often the collapse guard fired (0 in a healthy run)."""
    rollbacks = collapses = 0
    path = os.path.join(out, "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                rollbacks = max(rollbacks, int(rec.get("guard/rollbacks", 0)))
                collapses = max(collapses, int(rec.get("guard/collapses", 0)))
    return {"rollbacks": rollbacks, "collapses": collapses}
