#!/usr/bin/env python
"""Write the EMA teacher of a MIC checkpoint as a plain Detectron2 checkpoint.

MIC checkpoints hold the student under "model" and the teacher under
"teacher" (with a "model." prefix, as ``EMATeacher``'s state dict). The
teacher is often the better detector on the target domain; this makes it a
file any Detectron2 code loads as the model, with ``MODEL.WEIGHTS OUT``, by
``DetectionCheckpointer`` or ``DefaultPredictor``, knowing nothing of MIC::

    python tools/extract_teacher.py output/synthetic/mic/model_final.pth teacher.pth

OUT holds ``{"model": teacher state dict, "iteration": N}`` (the iteration
of the checkpoint, for evaluation reports) and, when the checkpoint has it,
the run's record of its datasets (``"datasets"``: class names and json
category ids; :mod:`mic_det.data.run_record`), so ``mic_det.Predictor`` and
the tools given OUT alone know the run's classes.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from mic_det.data.run_record import CHECKPOINT_KEY
from mic_det.teacher import teacher_weights_from_checkpoint
from mic_det.user_errors import exit_on_input_error


def extract_teacher(checkpoint_path: str, output_path: str, overwrite: bool = False) -> dict:
    """Write the teacher of ``checkpoint_path`` to ``output_path``; returns what was written."""
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"checkpoint {checkpoint_path} does not exist")
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass --overwrite to replace it")
    if os.path.exists(output_path) and os.path.samefile(checkpoint_path, output_path):
        raise ValueError(f"refusing to overwrite the input checkpoint {checkpoint_path}")
    checkpoint = torch.load(checkpoint_path, map_location="cpu")
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{checkpoint_path} is not a checkpoint dict (got {type(checkpoint).__name__})")
    try:
        weights = teacher_weights_from_checkpoint(checkpoint)
    except KeyError as e:
        raise KeyError(f"{checkpoint_path}: {e.args[0]}") from None
    out = {"model": weights}
    for key in ("iteration", CHECKPOINT_KEY):
        if key in checkpoint:
            out[key] = checkpoint[key]
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    torch.save(out, output_path)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint of a MIC run (holds a teacher)")
    p.add_argument("output", metavar="OUT", help="where to write the teacher as a plain checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = p.parse_args(argv)
    with exit_on_input_error(args.debug):
        try:
            out = extract_teacher(args.checkpoint, args.output, args.overwrite)
        except FileExistsError as e:
            raise SystemExit(f"error: {e}") from None
    print(f"Wrote the teacher of {args.checkpoint} ({len(out['model'])} tensors, "
          f"iteration {out.get('iteration', 'unknown')}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
