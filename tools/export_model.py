#!/usr/bin/env python
"""Export a mic_det detector (student or teacher) to TorchScript, and to ONNX where possible.

Detectron2's tracing export (``detectron2.export.TracingAdapter``, as its
``tools/deploy/export_model.py --export-method tracing``): the model is traced
on one sample image, without Detectron2's final resize to the original image
size. The exported model therefore takes and returns::

    input   image: float32 tensor (3, H, W) in cfg.INPUT.FORMAT channel order (BGR for the
            shipped configs), 0-255, already resized as INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
    outputs (boxes (N, 4) XYXY in that input's pixels, classes (N,) int64 contiguous ids,
             scores (N,), the input's (H, W))

(``export_info.json`` next to the files repeats this, with the class names and
why a format was skipped; the names are the run's, from its record
``OUTPUT_DIR/datasets.yaml``, with no ``--register-*`` flag repeated.)
Both files are checked after writing: the saved TorchScript model (and the
ONNX model, with onnxruntime if installed) must give the eager model's boxes
on the sample image.

ONNX needs the ``onnx`` package, which mic_det does not install; without it
``--format onnx`` says so and exports TorchScript only::

    python tools/export_model.py --config-file output/synthetic/mic/config.yaml \\
        --weights output/synthetic/mic/model_final.pth --model teacher --output exported/
"""
import argparse
import json
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from mic_det.data.cli import add_domain_arguments, parse_args, register_domains_from_args
from mic_det.predictor import class_metadata, load_detector, predictor_config
from mic_det.user_errors import exit_on_input_error

logger = logging.getLogger("mic_det.export")

#: ONNX opset: 16 is the first whose RoiAlign has Detectron2's half-pixel ("aligned") boxes.
ONNX_OPSET = 16
OUTPUT_NAMES = ["boxes", "classes", "scores", "image_size"]


def sample_input(cfg, image_path: Optional[str]) -> torch.Tensor:
    """The network input for ``image_path`` (default: the first image of ``DATASETS.TEST[0]``),
    read and resized as Detectron2's ``DefaultPredictor`` does."""
    if image_path is None:
        if not cfg.DATASETS.TEST:
            raise ValueError("give --sample-image: the config has no DATASETS.TEST to take one from")
        if cfg.DATASETS.TEST[0] not in DatasetCatalog.list():
            raise ValueError(
                f"DATASETS.TEST[0] '{cfg.DATASETS.TEST[0]}' is not registered and no run record names it: give "
                "--sample-image, or register it (--register-coco / --domains)"
            )
        image_path = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]
    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"--sample-image {image_path} does not exist")
    image = read_image(image_path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def _inference(model, inputs: List[Dict]) -> List[Dict]:
    # Detectron2's export recipe: no postprocess (the resize back to the original size).
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def tracing_adapter(model, image: torch.Tensor) -> TracingAdapter:
    """``model`` as a function image -> (boxes, classes, scores, image size) for tracing."""
    return TracingAdapter(model, [{"image": image}], _inference)


def eager_outputs(model, image: torch.Tensor) -> List[torch.Tensor]:
    """What the exported model should give: the eager model's flattened outputs."""
    with torch.no_grad():
        return list(tracing_adapter(model, image)(image))


def export_torchscript(adapter: TracingAdapter, image: torch.Tensor, path: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # Detectron2's Python-side shape checks each warn that they become constants; expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, (image,))
    torch.jit.save(traced, path)


def export_onnx(adapter: TracingAdapter, image: torch.Tensor, path: str) -> Optional[str]:
    """Write ONNX, or return why it cannot be (no ``onnx`` package, or an op ONNX lacks)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it for this model's ops)
    except ImportError:
        return "the 'onnx' package is not installed (pip install onnx onnxruntime)"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                adapter, (image,), path, opset_version=ONNX_OPSET,
                input_names=["image"], output_names=OUTPUT_NAMES,
            )
    except Exception as e:  # torch.onnx raises many types for unsupported ops
        if os.path.exists(path):
            os.remove(path)
        return f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _max_box_difference(expected: List[torch.Tensor], got: Sequence) -> float:
    boxes, classes = torch.as_tensor(got[0]), torch.as_tensor(got[1])
    if boxes.shape != expected[0].shape or not torch.equal(classes.long(), expected[1].long()):
        return float("inf")
    return float((boxes.float() - expected[0].float()).abs().max()) if boxes.numel() else 0.0


def check_torchscript(path: str, image: torch.Tensor, expected: List[torch.Tensor]) -> float:
    """Largest box difference between the saved TorchScript model and the eager model."""
    with torch.no_grad():
        return _max_box_difference(expected, torch.jit.load(path)(image))


def check_onnx(path: str, image: torch.Tensor, expected: List[torch.Tensor]) -> Optional[float]:
    """As :func:`check_torchscript` with onnxruntime; None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _max_box_difference(expected, session.run(None, {"image": image.numpy()}))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the run's config (OUTPUT_DIR/config.yaml)")
    p.add_argument("--weights", required=True, help="checkpoint (e.g. OUTPUT_DIR/model_final.pth)")
    p.add_argument("--model", choices=("student", "teacher"), default="student")
    p.add_argument("--output", required=True, help="folder for model.ts, model.onnx and export_info.json")
    p.add_argument("--format", nargs="+", choices=("torchscript", "onnx"), default=["torchscript", "onnx"],
                   help="formats to write (default both; ONNX is skipped, with the reason, when impossible)")
    p.add_argument("--sample-image", help="image to trace on (default: the first of DATASETS.TEST[0])")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest box difference (pixels) the exported models may have from the eager one")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    add_domain_arguments(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides")
    return p


def run(args: argparse.Namespace) -> Dict[str, str]:
    register_domains_from_args(args)
    cfg = predictor_config(args.config_file, args.weights, opts=args.opts)
    if cfg.MODEL.DEVICE != "cpu":
        logger.info("Exporting on %s; the exported model runs on that device", cfg.MODEL.DEVICE)
    model = build_model(cfg)
    load_detector(model, args.weights, args.model)
    model.eval()
    image = sample_input(cfg, args.sample_image).to(cfg.MODEL.DEVICE)
    adapter = tracing_adapter(model, image)
    expected = eager_outputs(model, image)
    os.makedirs(args.output, exist_ok=True)
    written, skipped, problems = {}, {}, []

    if "torchscript" in args.format:
        path = os.path.join(args.output, "model.ts")
        export_torchscript(adapter, image, path)
        diff = check_torchscript(path, image, expected)
        logger.info("TorchScript: %s (max box difference to eager on the sample: %.2g px)", path, diff)
        if diff > args.tolerance:
            problems.append(f"the TorchScript model's boxes differ from the eager model's by {diff:.3g} px")
        written["torchscript"] = path
    if "onnx" in args.format:
        path = os.path.join(args.output, "model.onnx")
        why_not = export_onnx(adapter, image, path)
        if why_not:
            logger.warning("ONNX export skipped: %s", why_not)
            skipped["onnx"] = why_not
        else:
            diff = check_onnx(path, image, expected)
            if diff is None:
                logger.info("ONNX: %s (not checked: onnxruntime is not installed)", path)
            else:
                logger.info("ONNX: %s (max box difference to eager on the sample: %.2g px)", path, diff)
                if diff > args.tolerance:
                    problems.append(f"the ONNX model's boxes differ from the eager model's by {diff:.3g} px")
            written["onnx"] = path

    metadata = class_metadata(cfg)
    info = {
        "weights": os.path.abspath(args.weights),
        "model": args.model,
        "files": written,
        "skipped": skipped,
        "input": {"name": "image", "dtype": "float32", "shape": ["3", "H", "W"], "channels": cfg.INPUT.FORMAT,
                  "resize": {"min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST},
                  "traced_on": list(image.shape)},
        "outputs": OUTPUT_NAMES,
        "boxes": "XYXY in the input's pixels (scale by original / resized size)",
        "thing_classes": list(metadata.get("thing_classes", [])),
        "score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
    }
    with open(os.path.join(args.output, "export_info.json"), "w") as f:
        json.dump(info, f, indent=2)
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logger(name="mic_det")
    with exit_on_input_error(args.debug):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
