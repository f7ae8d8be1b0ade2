#!/usr/bin/env python
"""Run a trained mic_det model (student or EMA teacher) on images, folders, globs or videos.

Detectron2's demo conventions: ``DefaultPredictor`` (via :class:`mic_det.Predictor`),
``Visualizer`` with the class names of the config's ``DATASETS.TEST[0]`` (else
``DATASETS.TRAIN[0]``). Writes the drawn images (and videos) into ``--output``
under their paths relative to the input, and one COCO-results json for all of
them, ``--output/coco_instances_results.json``: ``image_id``, ``file_name``
(and ``frame`` for videos), ``category_id`` (the dataset's json ids, as
Detectron2's evaluator writes them), ``bbox`` ([x, y, width, height] in the
original image) and ``score``::

    python tools/predict.py --config-file output/synthetic/mic/config.yaml \\
        --weights output/synthetic/mic/model_final.pth --model teacher \\
        --input datasets/mic_synthetic/target_val --output predictions/
    python tools/predict.py ... --input "frames/*.jpg" --output out/ --score-thresh 0.3
    python tools/predict.py ... --input drive.mp4 --output out/ --opts MODEL.DEVICE cuda
"""
import argparse
import glob
import json
import logging
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import tqdm
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from mic_det.data.cli import add_domain_arguments, register_domains_from_args
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


def predict_video(predictor: Predictor, path: str, out_path: str, image_id: str) -> List[dict]:
    """Draw every frame into ``out_path`` (mp4), as Detectron2's demo; returns the frames' results."""
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
            results += to_coco_results(instances, f"{image_id}#{i}", predictor.metadata, file_name=path, frame=i)
    finally:
        writer.release()
    return results


def predict_image(predictor: Predictor, path: str, out_path: str, image_id: str) -> List[dict]:
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
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    add_domain_arguments(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, last on the line, e.g. --opts MODEL.DEVICE cuda")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(name="mic_det")
    setup_logger(name="fvcore")
    with exit_on_input_error(args.debug):
        return run(args)


def run(args: argparse.Namespace) -> int:
    jobs = []  # (input file, output path, image id)
    for pattern in args.input:
        files, base = find_inputs(pattern)
        if os.path.isdir(pattern) and _inside(args.output, pattern):
            # A second run would predict on the first run's drawings.
            raise ValueError(f"--output {args.output} is inside --input {pattern}; choose a folder outside it")
        for f in files:
            rel = os.path.relpath(os.path.abspath(f), os.path.abspath(base))
            out = os.path.join(args.output, rel)
            if f.lower().endswith(VIDEO_EXTENSIONS):
                out = os.path.splitext(out)[0] + ".mp4"
            if os.path.realpath(out) == os.path.realpath(f):
                raise ValueError(f"--output {args.output} would overwrite the input {f}")
            jobs.append((f, out, rel))
    if not jobs:
        raise FileNotFoundError(
            f"no images or videos found for --input {' '.join(args.input)} "
            f"(looked for {', '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})"
        )
    register_domains_from_args(args)
    predictor = Predictor(args.config_file, args.weights, args.model, score_thresh=args.score_thresh, opts=args.opts)

    results = []
    images = [j for j in jobs if not j[0].lower().endswith(VIDEO_EXTENSIONS)]
    videos = [j for j in jobs if j[0].lower().endswith(VIDEO_EXTENSIONS)]
    for path, out, image_id in tqdm.tqdm(images, desc="images", unit="image", disable=len(images) < 2):
        results += predict_image(predictor, path, out, image_id)
    for path, out, image_id in videos:
        results += predict_video(predictor, path, out, image_id)

    os.makedirs(args.output, exist_ok=True)
    results_path = os.path.join(args.output, RESULTS_FILE)
    with open(results_path, "w") as f:
        json.dump(results, f)
    logger.info(
        "%s of %s: %d detections (score >= %s) in %d image(s) and %d video(s); drawn into %s, results in %s",
        args.model, args.weights, len(results), args.score_thresh, len(images), len(videos), args.output,
        results_path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
