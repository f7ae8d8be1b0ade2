#!/usr/bin/env python
"""Write a foggy copy of an image folder or a COCO set, for a quick clear -> foggy study.

Fog follows the optical model of Foggy Cityscapes (``mic_det.data.fog``):
``I = R * t + A * (1 - t)``, ``t = exp(-beta * depth)``. Depth comes from a
depth or disparity map per image when one is given (``--depth-dir``), else
from a road-camera heuristic (near at the bottom, far at the horizon).

Examples::

    # a folder (recursive; the same relative paths under the output)
    python tools/foggify.py --input clear/ --output foggy_0.02/ --beta 0.02

    # a COCO set: fogs the json's images, writes the json next to them
    python tools/foggify.py --coco-json train.json --input images/ --output foggy/
    #   -> register with --register-coco foggy_train foggy/train.json foggy/

    # Cityscapes with its stereo disparity (the Foggy Cityscapes recipe, minus inpainting)
    python tools/foggify.py --input cityscapes/leftImg8bit/val --output fog_val \\
        --depth-dir cityscapes/disparity/val --depth-format cityscapes_disparity

Depth maps are matched to images by file stem, ignoring the Cityscapes
suffixes ``_leftImg8bit``, ``_disparity`` and ``_depth`` (so
``x_leftImg8bit.png`` takes ``x_disparity.png``). The tool never writes into
its input folder.
"""

import argparse
import json
import logging
import os
import sys
from multiprocessing import Pool
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from mic_det.data.domains import list_images
from mic_det.data.fog import (
    CITYSCAPES_BASELINE,
    CITYSCAPES_FOCAL,
    apply_fog,
    depth_from_disparity,
    heuristic_depth,
)

logger = logging.getLogger("foggify")

_STEM_SUFFIXES = ("_leftImg8bit", "_disparity", "_depth")
_DEPTH_EXTENSIONS = (".npy", ".png", ".tif", ".tiff", ".exr", ".pfm")
# Width of the images Cityscapes' focal length refers to.
_CITYSCAPES_WIDTH = 2048


def _key(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    for suffix in _STEM_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _index_depth_dir(depth_dir: str) -> Dict[str, str]:
    index: Dict[str, str] = {}
    for dirpath, _, files in os.walk(depth_dir, followlinks=True):
        for f in sorted(files):
            if f.lower().endswith(_DEPTH_EXTENSIONS):
                index.setdefault(_key(f), os.path.join(dirpath, f))
    return index


def read_depth(path: str, fmt: str, shape: Tuple[int, int], depth_scale: float = 1.0) -> np.ndarray:
    """Depth in metres for an image of ``shape`` (h, w), from a depth or disparity file."""
    if path.endswith(".npy"):
        raw = np.load(path)
    else:
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"cannot read depth map {path}")
    if raw.ndim == 3:
        raw = raw[:, :, 0]
    if fmt == "cityscapes_disparity":
        # The focal length is in pixels at 2048 wide; a resized map needs it scaled.
        focal = CITYSCAPES_FOCAL * raw.shape[1] / _CITYSCAPES_WIDTH
        depth = depth_from_disparity(raw, baseline=CITYSCAPES_BASELINE, focal=focal)
    else:
        depth = raw.astype(np.float32)
        if np.issubdtype(raw.dtype, np.integer):
            depth = depth / float(depth_scale)
    if depth.shape != tuple(shape):
        depth = cv2.resize(depth, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return depth


def _fog_one(job: Tuple[str, str, Optional[str], argparse.Namespace]) -> Optional[str]:
    """Fog one image; returns an error string instead of raising (pool-friendly)."""
    src, dst, depth_path, args = job
    image = cv2.imread(src, cv2.IMREAD_COLOR)
    if image is None:
        return f"cannot read image {src}"
    h, w = image.shape[:2]
    try:
        if depth_path is None:
            depth = heuristic_depth(h, w)
        else:
            depth = read_depth(depth_path, args.depth_format, (h, w), args.depth_scale)
        # cv2 is BGR; --atmospheric-light is given in RGB.
        light = args.atmospheric_light
        light = light[0] if len(light) == 1 else list(reversed(light))
        foggy = apply_fog(image, depth, args.beta, light)
    except ValueError as e:
        return f"{src}: {e}"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if dst.lower().endswith((".jpg", ".jpeg")) else []
    if not cv2.imwrite(dst, foggy, params):
        return f"cannot write {dst}"
    return None


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--input", required=True, help="image folder (or the COCO set's image root)")
    p.add_argument(
        "--output", required=True, help="output image folder (must not be inside --input)"
    )
    p.add_argument("--coco-json", help="fog this COCO set's images and copy the json to the output")
    p.add_argument(
        "--output-json",
        help="where the copied COCO json goes (default: <output>/<name of --coco-json>)",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=0.02,
        help="fog density in 1/m (Foggy Cityscapes: 0.005, 0.01, 0.02)",
    )
    p.add_argument(
        "--atmospheric-light",
        type=float,
        nargs="+",
        default=[0.8],
        metavar="A",
        help="fog colour as a fraction of 255: one value (grey) or three (R G B); default 0.8",
    )
    p.add_argument("--depth-dir", help="depth/disparity maps, one per image, matched by file stem")
    p.add_argument(
        "--depth-format",
        choices=("depth_m", "cityscapes_disparity"),
        default="depth_m",
        help="depth_m: metres (.npy/float image; integer images divided by --depth-scale); "
        "cityscapes_disparity: Cityscapes 16-bit *_disparity.png",
    )
    p.add_argument(
        "--depth-scale",
        type=float,
        default=1.0,
        help="integer depth images are divided by this to get metres (e.g. 1000 for mm)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes to use")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --output that already holds images (files of the same name are "
        "replaced, others stay)",
    )
    return p


def refuse_to_mix(output: str, out_json: Optional[str]) -> None:
    """An --output holding an earlier run's images would end up a mix of two fog densities
    (or of two image sets) that nothing records; refuse unless --overwrite."""
    existing = list_images(output) if os.path.isdir(output) else []
    if out_json and os.path.isfile(out_json):
        existing.append(out_json)
    if existing:
        raise SystemExit(
            f"error: --output {output} already holds {len(existing)} image/json file(s) "
            f"(e.g. {existing[0]}) from an earlier run; choose a new folder (one per --beta), "
            "or pass --overwrite"
        )


def _jobs_for_folder(args) -> List[Tuple[str, str]]:
    files = list_images(args.input)
    if not files:
        raise SystemExit(f"error: no images found under {args.input}")
    return [(f, os.path.join(args.output, os.path.relpath(f, args.input))) for f in files]


def _jobs_for_coco(args) -> Tuple[List[Tuple[str, str]], dict]:
    if not os.path.isfile(args.coco_json):
        raise SystemExit(f"error: COCO json {args.coco_json} does not exist")
    try:
        with open(args.coco_json) as f:
            data = json.load(f)
        names = [img["file_name"] for img in data["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {args.coco_json} is not a COCO json ({type(e).__name__}: {e})")
    jobs = [(os.path.join(args.input, n), os.path.join(args.output, n)) for n in names]
    missing = [s for s, _ in jobs if not os.path.isfile(s)]
    if missing:
        raise SystemExit(
            f"error: {len(missing)} image(s) of {args.coco_json} are missing under {args.input}, "
            f"e.g. {missing[0]}"
        )
    return jobs, data


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(args.atmospheric_light) not in (1, 3):
        raise SystemExit("error: --atmospheric-light takes 1 or 3 values")
    if not os.path.isdir(args.input):
        raise SystemExit(f"error: input folder {args.input} does not exist")
    if _inside(args.output, args.input):
        raise SystemExit(
            f"error: refusing to write into the input folder: {args.output} is inside {args.input}"
        )
    if args.depth_dir and not os.path.isdir(args.depth_dir):
        raise SystemExit(f"error: depth folder {args.depth_dir} does not exist")

    data, out_json = None, None
    if args.coco_json:
        out_json = args.output_json or os.path.join(args.output, os.path.basename(args.coco_json))
        if os.path.realpath(out_json) == os.path.realpath(args.coco_json):
            raise SystemExit(f"error: refusing to overwrite the input json {args.coco_json}")
    if not args.overwrite:
        refuse_to_mix(args.output, out_json)
    if args.coco_json:
        jobs, data = _jobs_for_coco(args)
    else:
        jobs = _jobs_for_folder(args)

    depth_paths: List[Optional[str]] = [None] * len(jobs)
    if args.depth_dir:
        index = _index_depth_dir(args.depth_dir)
        depth_paths = [index.get(_key(src)) for src, _ in jobs]
        missing = [src for (src, _), d in zip(jobs, depth_paths) if d is None]
        if missing:
            raise SystemExit(
                f"error: {len(missing)} image(s) have no depth map in {args.depth_dir} "
                f"(matched by stem), e.g. {missing[0]}"
            )

    work = [(s, d, dp, args) for (s, d), dp in zip(jobs, depth_paths)]
    if args.workers > 1 and len(work) > 1:
        with Pool(min(args.workers, len(work))) as pool:
            errors = pool.map(_fog_one, work, chunksize=4)
    else:
        errors = [_fog_one(w) for w in work]
    errors = [e for e in errors if e]
    for e in errors:
        logger.warning(f"skipped: {e}")
    if errors and data is not None:
        # A COCO json must keep pointing at every image it lists.
        raise SystemExit(
            f"error: {len(errors)} image(s) could not be fogged; the json was not written"
        )

    if data is not None:
        data.setdefault("info", {})
        if isinstance(data["info"], dict):
            data["info"]["foggify"] = {
                "beta": args.beta,
                "atmospheric_light": args.atmospheric_light,
                "depth": args.depth_format if args.depth_dir else "heuristic",
                "source_json": os.path.abspath(args.coco_json),
            }
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as f:
            json.dump(data, f)
        logger.info(
            f"Wrote {out_json}; register it with --register-coco NAME {out_json} {args.output}"
        )
    logger.info(
        f"Fogged {len(jobs) - len(errors)} of {len(jobs)} images (beta={args.beta}) "
        f"into {args.output}" + (f"; {len(errors)} skipped" if errors else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
