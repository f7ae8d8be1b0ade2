#!/usr/bin/env python
"""Run a trained mic_det model (student or EMA teacher) on images, folders, globs or videos.

Detectron2's demo conventions: ``DefaultPredictor`` (via :class:`mic_det.Predictor`),
``Visualizer`` with the class names of the config's ``DATASETS.TEST[0]`` (else
``DATASETS.TRAIN[0]``; a run's own datasets are registered from its record,
``OUTPUT_DIR/datasets.yaml``). Writes the drawn images (and videos) into
``--output`` under their paths relative to the input (several inputs: relative
to their common folder), and one COCO-results json for all of them,
``--output/coco_instances_results.json``: ``image_id`` (an integer: 1, 2, ... in
input order, or the ids of ``--coco-json``), ``file_name`` (and ``frame`` for
videos), ``category_id`` (the dataset's json ids, as Detectron2's evaluator
writes them), ``bbox`` ([x, y, width, height] in the original image) and ``score``.

With ``--coco-json`` (the labels of the inputs), images take that json's ids,
matched by file name relative to the image root (or by base name), and the
COCO AP of the detections is printed at the end::

    python tools/predict.py --config-file output/synthetic/mic/config.yaml \\
        --weights output/synthetic/mic/model_final.pth --model teacher \\
        --input datasets/mic_synthetic/target_val --output predictions/
    python tools/predict.py ... --input "frames/*.jpg" --output out/ --score-thresh 0.3
    python tools/predict.py ... --input drive.mp4 --output out/ --opts MODEL.DEVICE cuda
    python tools/predict.py ... --input val_images/ --coco-json val.json --score-thresh 0.05 --output out/
"""
import argparse
import contextlib
import glob
import io
import itertools
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import tqdm
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from mic_det.data.cli import add_domain_arguments, parse_args, register_domains_from_args
from mic_det.data.domains import IMAGE_EXTENSIONS, list_images
from mic_det.predictor import Predictor, to_coco_results
from mic_det.user_errors import exit_on_input_error

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
RESULTS_FILE = "coco_instances_results.json"

logger = logging.getLogger("mic_det.predict")


def find_inputs(pattern: str) -> Tuple[List[str], str]:
    """Images and videos for ``--input`` (a file, a folder searched recursively, or a glob),
    and the folder their output paths are relative to."""
    if os.path.isdir(pattern):
        files = list_images(pattern)
        files += sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(pattern, followlinks=True)
            for f in names
            if f.lower().endswith(VIDEO_EXTENSIONS)
        )
        return files, pattern
    if os.path.isfile(pattern):
        return [pattern], os.path.dirname(pattern)
    if glob.has_magic(pattern):
        files = sorted(
            f for f in glob.glob(pattern, recursive=True)
            if os.path.isfile(f) and f.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        )
        base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else ""
        return files, base
    raise FileNotFoundError(f"--input {pattern} does not exist (give an image, a video, a folder or a glob)")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def _frames(path: str) -> Iterator:
    video = cv2.VideoCapture(path)
    try:
        while True:
            ok, frame = video.read()
            if not ok:
                return
            yield frame
    finally:
        video.release()


def predict_video(predictor: Predictor, path: str, out_path: str, ids: Iterator[int]) -> List[dict]:
    """Draw every frame into ``out_path`` (mp4), as Detectron2's demo; returns the frames' results,
    each frame with the next id of ``ids``."""
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        raise ValueError(f"cannot open video {path}")
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    video.release()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    visualizer = VideoVisualizer(predictor.metadata, ColorMode.IMAGE)
    results = []
    try:
        for i, frame in enumerate(tqdm.tqdm(_frames(path), total=num_frames, desc=os.path.basename(path), unit="frame")):
            instances = predictor(frame)["instances"].to("cpu")
            drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
            writer.write(drawn.get_image()[:, :, ::-1])
            results += to_coco_results(instances, next(ids), predictor.metadata, file_name=path, frame=i)
    finally:
        writer.release()
    return results


def predict_image(predictor: Predictor, path: str, out_path: str, image_id: int) -> List[dict]:
    """Draw the detections of one image into ``out_path``; returns its results."""
    try:
        image = read_image(path, format="BGR")  # applies the EXIF orientation, as training did
    except Exception as e:  # PIL raises several types for broken files
        raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e})") from None
    instances = predictor(image)["instances"].to("cpu")
    drawn = Visualizer(image[:, :, ::-1], predictor.metadata, instance_mode=ColorMode.IMAGE)
    drawn = drawn.draw_instance_predictions(instances)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    if not cv2.imwrite(out_path, drawn.get_image()[:, :, ::-1]):
        raise ValueError(f"cannot write {out_path}")
    return to_coco_results(instances, image_id, predictor.metadata, file_name=path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the run's config (OUTPUT_DIR/config.yaml)")
    p.add_argument("--weights", required=True, help="checkpoint (e.g. OUTPUT_DIR/model_final.pth)")
    p.add_argument("--model", choices=("student", "teacher"), default="student",
                   help="which detector of the checkpoint (MIC checkpoints also hold the EMA teacher)")
    p.add_argument("--input", required=True, nargs="+",
                   help="image(s), video(s), folder(s) (recursive) or quoted glob(s)")
    p.add_argument("--output", required=True, help="folder for the drawn images and " + RESULTS_FILE)
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="minimum score of a detection, drawn and in the json (default 0.5, as "
                        "Detectron2's demo; use 0.05 for a json to evaluate AP with)")
    p.add_argument("--coco-json", metavar="JSON",
                   help="COCO labels of the input images: results take its image ids (matched by file name "
                        "relative to the image root, else by base name) and the COCO AP is printed")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    add_domain_arguments(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, last on the line, e.g. --opts MODEL.DEVICE cuda")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logger(name="mic_det")
    setup_logger(name="fvcore")
    with exit_on_input_error(args.debug):
        return run(args)


def plan_jobs(patterns: Sequence[str], output: str) -> List[Tuple[str, str]]:
    """``(input file, output path)`` for every input: output paths relative to the input folder
    (several inputs: to their common folder), so equal file names in different folders stay apart."""
    found = []  # (file, its pattern's base folder)
    for pattern in patterns:
        files, base = find_inputs(pattern)
        if os.path.isdir(pattern) and _inside(output, pattern):
            # A second run would predict on the first run's drawings.
            raise ValueError(f"--output {output} is inside --input {pattern}; choose a folder outside it")
        found += [(f, base) for f in files]
    bases = {os.path.abspath(b) for _, b in found}
    common = os.path.commonpath(sorted(bases)) if len(bases) > 1 else None
    jobs, seen, outputs = [], set(), {}
    for f, base in found:
        if os.path.realpath(f) in seen:  # the same file through two patterns
            continue
        seen.add(os.path.realpath(f))
        out = os.path.join(output, os.path.relpath(os.path.abspath(f), common or os.path.abspath(base)))
        if f.lower().endswith(VIDEO_EXTENSIONS):
            out = os.path.splitext(out)[0] + ".mp4"
        if os.path.realpath(out) == os.path.realpath(f):
            raise ValueError(f"--output {output} would overwrite the input {f}")
        if out in outputs:
            raise ValueError(f"inputs {outputs[out]} and {f} would both be drawn into {out}; rename one")
        outputs[out] = f
        jobs.append((f, out))
    return jobs


def _coco_file_name(name: str) -> str:
    """A path with "/" separators and no "." parts."""
    return os.path.normpath(name).replace(os.sep, "/")


def match_coco_images(paths: Sequence[str], images: Sequence[dict], json_path: str) -> Dict[str, int]:
    """``input path -> image id`` of the COCO ``images`` it is.

    An image matches the json entry whose ``file_name`` (relative to its image
    root) ends its path; failing that, the one entry of the same base name that
    no other input matched by path. Inputs that match nothing are left out;
    two inputs matching one entry by base name alone, or one input matching
    several entries, are errors naming them.
    """
    by_base = defaultdict(list)
    for img in images:
        by_base[os.path.basename(_coco_file_name(img["file_name"]))].append(img)
    by_path, by_name = {}, {}
    for path in paths:
        full = _coco_file_name(os.path.abspath(path))
        candidates = by_base.get(os.path.basename(full), [])
        suffix = [c for c in candidates if ("/" + full).endswith("/" + _coco_file_name(c["file_name"]))]
        if suffix:  # the longest file name that ends the path: "cam1/a.png" before "a.png"
            by_path[path] = max(suffix, key=lambda c: len(_coco_file_name(c["file_name"])))
        elif len(candidates) == 1:
            by_name[path] = candidates[0]
        elif candidates:
            raise ValueError(f"--coco-json {json_path}: input {path} could be any of its images "
                             f"{', '.join(c['file_name'] for c in candidates)}; give the json's image root as --input")
    owner: Dict[int, str] = {}
    matched = {}
    for path, img in list(by_path.items()) + list(by_name.items()):
        if img["id"] in owner:
            if path in by_name and owner[img["id"]] in by_path:  # its base name is another input's image
                continue
            raise ValueError(f"--coco-json {json_path}: inputs {owner[img['id']]} and {path} both match its image "
                             f"{img['file_name']} (id {img['id']}); give the json's image root as --input")
        owner[img["id"]] = path
        matched[path] = img["id"]
    return matched


def load_coco_json(path: str) -> dict:
    """A COCO json to score against (``area`` filled in from the box where missing)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--coco-json {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"--coco-json {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "categories" not in data:
        raise ValueError(f"--coco-json {path} is not a COCO json (a dict with 'images', 'annotations', 'categories')")
    for ann in data.setdefault("annotations", []):
        if "area" not in ann and "bbox" in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return data


def check_categories(metadata, data: dict, json_path: str) -> None:
    """The json numbers the model's classes as the run's datasets did (else AP would compare other classes)."""
    names = metadata.get("thing_classes")
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    json_names = {c["id"]: c["name"] for c in data["categories"]}
    if not names or not mapping:
        logger.warning("The model's classes have no json category ids (its dataset is not registered): results "
                       "use 0..K-1, and AP against %s is right only if the json numbers them so.", json_path)
        return
    wrong = [f"id {i}: model '{names[c]}', json '{json_names.get(i, '(none)')}'" for i, c in mapping.items()
             if json_names.get(i) != names[c]]
    if wrong:
        raise ValueError(f"--coco-json {json_path} numbers the categories unlike the model's datasets: "
                         + "; ".join(wrong))


def coco_ap(data: dict, results: List[dict], image_ids: Sequence[int]) -> Dict[str, float]:
    """pycocotools' COCOeval (bbox) of ``results`` on ``image_ids``; prints its table, returns AP, AP50, AP75 (%)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    scored = set(image_ids)
    dets = [dict(r) for r in results if r["image_id"] in scored]
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = sorted(scored)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    ev.summarize()  # the standard 12-line table, on stdout
    return {k: float(ev.stats[i]) * 100 for i, k in enumerate(("AP", "AP50", "AP75"))}


def run(args: argparse.Namespace) -> int:
    jobs = plan_jobs(args.input, args.output)
    if not jobs:
        raise FileNotFoundError(
            f"no images or videos found for --input {' '.join(args.input)} "
            f"(looked for {', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})"
        )
    images = [j for j in jobs if not j[0].lower().endswith(VIDEO_EXTENSIONS)]
    videos = [j for j in jobs if j[0].lower().endswith(VIDEO_EXTENSIONS)]
    gt, matched = None, {}
    if args.coco_json:
        gt = load_coco_json(args.coco_json)
        matched = match_coco_images([path for path, _ in images], gt["images"], args.coco_json)
        if not matched:
            raise ValueError(f"--coco-json {args.coco_json}: none of the {len(images)} input image(s) is one of its "
                             "images (matched by file name relative to the image root, or by base name)")
        unmatched = [path for path, _ in images if path not in matched]
        if unmatched:
            logger.warning("%d input image(s) are not in %s and are left out of the AP: %s", len(unmatched),
                           args.coco_json, ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else ""))
    # Integer ids: the json's where matched, else counting on past them (1, 2, ... without a json).
    fresh = itertools.count(max([img["id"] for img in gt["images"] if isinstance(img["id"], int)] + [0]) + 1
                            if gt else 1)
    register_domains_from_args(args)
    predictor = Predictor(args.config_file, args.weights, args.model, score_thresh=args.score_thresh, opts=args.opts)
    if gt is not None:
        check_categories(predictor.metadata, gt, args.coco_json)

    results = []
    for path, out in tqdm.tqdm(images, desc="images", unit="image", disable=len(images) < 2):
        image_id = matched[path] if path in matched else next(fresh)
        results += predict_image(predictor, path, out, image_id)
    for path, out in videos:
        results += predict_video(predictor, path, out, fresh)

    os.makedirs(args.output, exist_ok=True)
    results_path = os.path.join(args.output, RESULTS_FILE)
    with open(results_path, "w") as f:
        json.dump(results, f)
    logger.info(
        "%s of %s: %d detections (score >= %s) in %d image(s) and %d video(s); drawn into %s, results in %s",
        args.model, args.weights, len(results), args.score_thresh, len(images), len(videos), args.output,
        results_path,
    )
    if gt is not None:
        ap = coco_ap(gt, results, sorted(matched.values()))
        low = "" if args.score_thresh <= 0.05 else f"; from detections >= {args.score_thresh} only: " \
                                                    "--score-thresh 0.05 gives the AP training reports"
        print(f"COCO AP of {args.model} on {len(matched)} image(s) of {args.coco_json}: AP {ap['AP']:.1f}, "
              f"AP50 {ap['AP50']:.1f}, AP75 {ap['AP75']:.1f}{low}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
