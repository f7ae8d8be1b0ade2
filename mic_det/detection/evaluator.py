"""COCO evaluation plus the numbers domain-adaptation papers report, tagged per model.

:class:`DomainDetectionEvaluator` is Detectron2's :class:`COCOEvaluator` (same
gathering across processes, same COCO numbers, the C++ ``COCOeval_opt`` when
Detectron2 was built with it and pycocotools otherwise) with three additions:

* per-class AP50 from the COCO precision array (``AP50-<class>``): papers
  report AP50 per class, Detectron2 only AP per class;
* VOC-style AP50, mean and per class (``VOC-AP50``, ``VOC-AP50-<class>``),
  the other protocol papers use (see :mod:`mic_det.detection.voc`);
* a report tagged with the model (student / teacher), dataset, iteration and
  config, as json, markdown and a precision-recall PNG, so numbers from one
  run can be compared without re-running anything.

It also reports AP 0 (not Detectron2's NaN) when the model made no detection
at all on a set with ground truth: "found nothing" is a score of 0, and a NaN
would read as "could not be computed".
"""

import contextlib
import copy
import hashlib
import io
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from . import reports
from .voc import mean_ap, voc_ap50_per_class

__all__ = ["DomainDetectionEvaluator", "build_evaluator"]

# A child of Detectron2's logger: Detectron2's default_setup() configures the
# "detectron2" logger (console + log.txt), so these lines are shown and saved
# without the trainer having to set up another logger.
logger = logging.getLogger("detectron2.mic_det.evaluation")


class DomainDetectionEvaluator(COCOEvaluator):
    """COCO + per-class AP50 + VOC AP50 for one model (student or teacher) on one dataset.

    ``evaluate()`` returns ``{"bbox": {...}}`` with Detectron2's keys (``AP``,
    ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AP-<class>``) and, in
    addition, ``AP50-<class>``, ``VOC-AP50`` and ``VOC-AP50-<class>`` (all in
    percent). When ``output_dir`` is given, the main process also writes
    ``report_<model_tag>_<dataset>_iter<iteration>.{json,md,png}`` there.

    ``model_tag``, ``iteration`` and ``config_name`` are plain attributes: set
    ``iteration`` before each ``evaluate()`` to reuse one evaluator.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = ("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        model_tag: str = "student",
        iteration: int = -1,
        config_name: str = "",
        extra_tags: Optional[Dict[str, Any]] = None,
        dump_predictions: bool = True,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = True,
        allow_cached_coco: bool = True,
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir, max_dets_per_image,
                use_fast_impl, allow_cached_coco: as :class:`COCOEvaluator`.
                ``output_dir`` also receives the reports; Detectron2's raw
                prediction dumps go to ``output_dir/predictions/<model_tag>_<dataset>/``
                so that the student's and the teacher's do not overwrite each other.
            model_tag: whose predictions these are ("student" / "teacher").
            iteration: training iteration of the weights (-1 = unknown).
            config_name: name or path of the config, written into the report.
            extra_tags: more ``key: value`` tags for the json/markdown report.
            dump_predictions: write Detectron2's raw dumps (about a third of
                ``evaluate()``'s time at 500 images x 100 detections).
        """
        ensure_class_metadata(dataset_name)
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=use_fast_impl,
            allow_cached_coco=allow_cached_coco,
        )
        self.dataset_name = dataset_name
        self.model_tag = model_tag
        self.iteration = iteration
        self.config_name = config_name
        self.extra_tags = dict(extra_tags or {})
        self.report_paths: Dict[str, str] = {}
        self._report_dir = output_dir
        if output_dir and dump_predictions:
            self._output_dir = os.path.join(
                output_dir, "predictions", f"{model_tag}_{dataset_name}"
            )
        else:
            self._output_dir = None  # COCOEvaluator writes its dumps only when set
        self._init_class_mapping()

    # ------------------------------------------------------------------ setup
    def _init_class_mapping(self) -> None:
        """Class names (thing_classes order) and json category id -> contiguous id."""
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
        names = self._metadata.get("thing_classes")
        if names is None:  # not loadable through the catalog: follow load_coco_json's order
            cats = sorted(
                self._coco_api.loadCats(self._coco_api.getCatIds()), key=lambda c: c["id"]
            )
            names = [c["name"] for c in cats]
            mapping = mapping or {c["id"]: i for i, c in enumerate(cats)}
        if mapping is None:  # a Detectron2-format dataset converted to json with contiguous ids
            mapping = {i: i for i in range(len(names))}
        self._class_names: List[str] = list(names)
        self._json_to_contiguous: Dict[int, int] = dict(mapping)

    # ------------------------------------------------------------- evaluation
    def reset(self):
        super().reset()
        self.report_paths = {}

    def _eval_predictions(self, predictions, img_ids=None):
        # Read the detections before COCOEvaluator rewrites their class ids in place.
        detections = self._detections_by_image(predictions)
        self._img_ids = img_ids
        super()._eval_predictions(predictions, img_ids=img_ids)
        if self._do_evaluation and "bbox" in self._results:
            self._add_voc_and_report(detections, img_ids)

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if iou_type != "bbox":
            return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if coco_eval is None:  # no detection at all: every class with ground truth scores 0
            coco_eval = self._coco_eval_without_detections()
        # class_names=None: Detectron2 reads the precision array's class axis in
        # sorted-json-id order, which is not thing_classes order when a domain fixes
        # thing_classes by name; per-class APs are computed below with the real mapping.
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=None)
        ap = self._coco_ap_per_class(coco_eval, iou=None)
        ap50 = self._coco_ap_per_class(coco_eval, iou=0.5)
        for name, ap_c in zip(self._class_names, ap):
            results["AP-" + name] = ap_c
        for name, ap50_c in zip(self._class_names, ap50):
            results["AP50-" + name] = ap50_c
        return results

    def _coco_eval_without_detections(self):
        """COCOeval over the same images and no detections (pycocotools cannot ``loadRes([])``)."""
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": copy.deepcopy(self._coco_api.dataset.get("images", [])),
            "categories": copy.deepcopy(self._coco_api.dataset.get("categories", [])),
            "annotations": [],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt.createIndex()
            max_dets = self._max_dets_per_image
            cls = COCOevalMaxDets if max_dets[2] != 100 else COCOeval
            coco_eval = cls(self._coco_api, coco_dt, "bbox")
            coco_eval.params.maxDets = max_dets
            if self._img_ids is not None:
                coco_eval.params.imgIds = self._img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return coco_eval

    def _coco_ap_per_class(self, coco_eval, iou: Optional[float]) -> List[float]:
        """Per-class AP (percent) from ``eval["precision"]`` [T, R, K, A, M], in class order.

        ``iou=None`` averages over all IoU thresholds (COCO AP); ``iou=0.5``
        takes the 0.5 slice (AP50). NaN for a class without ground truth.
        """
        precision = coco_eval.eval["precision"]
        if iou is not None:
            iou_thrs = np.asarray(coco_eval.params.iouThrs)
            t = int(np.argmin(np.abs(iou_thrs - iou)))
            assert np.isclose(iou_thrs[t], iou), f"COCOeval was run without IoU {iou}"
            precision = precision[t : t + 1]
        area = coco_eval.params.areaRngLbl.index("all")
        # The class axis follows params.catIds (json ids), not necessarily thing_classes.
        out = [float("nan")] * len(self._class_names)
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, area, -1]
            p = p[p > -1]
            if cat_id in self._json_to_contiguous and p.size:
                out[self._json_to_contiguous[cat_id]] = float(np.mean(p) * 100)
        return out

    # -------------------------------------------------------------------- VOC
    def _detections_by_image(self, predictions) -> Dict[int, Dict[str, np.ndarray]]:
        """COCO-format predictions (contiguous class ids, XYWH) -> per-image XYXY arrays."""
        out = {}
        for pred in predictions:
            instances = pred.get("instances", [])
            boxes = np.array([d["bbox"] for d in instances], dtype=np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            out[pred["image_id"]] = {
                "boxes": boxes,
                "scores": np.array([d["score"] for d in instances], dtype=np.float64),
                "classes": np.array([d["category_id"] for d in instances], dtype=np.int64),
            }
        return out

    def _ground_truth_by_image(self, img_ids) -> Dict[int, Dict[str, np.ndarray]]:
        """Ground truth per image in contiguous ids; ``iscrowd`` or ``difficult`` -> ignore."""
        out = {}
        for image_id in img_ids:
            anns = [
                a
                for a in self._coco_api.imgToAnns.get(image_id, [])
                if a["category_id"] in self._json_to_contiguous
            ]
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            out[image_id] = {
                "boxes": boxes,
                "classes": np.array(
                    [self._json_to_contiguous[a["category_id"]] for a in anns], dtype=np.int64
                ),
                "ignore": np.array(
                    [bool(a.get("iscrowd", 0) or a.get("difficult", 0)) for a in anns], dtype=bool
                ),
            }
        return out

    def _add_voc_and_report(self, detections, img_ids) -> None:
        img_ids = list(self._coco_api.getImgIds() if img_ids is None else img_ids)
        ground_truth = self._ground_truth_by_image(img_ids)
        detections = {k: v for k, v in detections.items() if k in ground_truth}
        num_classes = len(self._class_names)
        voc, curves = voc_ap50_per_class(detections, ground_truth, num_classes, iou_thresh=0.5)

        results = self._results["bbox"]
        results["VOC-AP50"] = mean_ap(voc) * 100
        for c, name in enumerate(self._class_names):
            results["VOC-AP50-" + name] = voc[c] * 100

        report = self._build_report(results, ground_truth, detections)
        logger.info(
            f"AP50 per class, {self.model_tag} on {self.dataset_name} (iter {self.iteration}):\n"
            + reports.format_table(*reports.per_class_table(report))
        )
        if self._report_dir:
            self._write_reports(report, curves)

    def _build_report(self, results, ground_truth, detections) -> Dict[str, Any]:
        num_classes = len(self._class_names)
        gt_classes = [g["classes"][~g["ignore"]] for g in ground_truth.values()]
        det_classes = [d["classes"] for d in detections.values()]

        def count(arrays):
            arrays = [a for a in arrays if a.size]
            return (
                np.bincount(np.concatenate(arrays), minlength=num_classes)
                if arrays
                else np.zeros(num_classes, int)
            )

        names = self._class_names
        return {
            "model": self.model_tag,
            "dataset": self.dataset_name,
            "iteration": int(self.iteration),
            "config": self.config_name,
            **self.extra_tags,
            "coco_impl": (
                "detectron2 COCOeval_opt (C++)" if self._use_fast_impl else "pycocotools COCOeval"
            ),
            "classes": list(names),
            "per_class": {
                "AP50": [results.get("AP50-" + n, float("nan")) for n in names],
                "VOC-AP50": [results["VOC-AP50-" + n] for n in names],
                "AP": [results.get("AP-" + n, float("nan")) for n in names],
                "num_gt": count(gt_classes).tolist(),
                "num_det": count(det_classes).tolist(),
            },
            "bbox": dict(results),
        }

    def _write_reports(self, report: Dict[str, Any], curves) -> None:
        PathManager.mkdirs(self._report_dir)
        base = os.path.join(
            self._report_dir,
            reports.report_basename(self.model_tag, self.dataset_name, self.iteration),
        )
        names = self._class_names
        self.report_paths = {
            "json": reports.write_json_report(base + ".json", report),
            "md": reports.write_markdown_report(base + ".md", report),
            "png": reports.plot_pr_curves(
                base + ".png",
                {n: curves[c] for c, n in enumerate(names)},
                dict(zip(names, report["per_class"]["VOC-AP50"])),
                title=f"PR at IoU 0.5: {self.model_tag} on {self.dataset_name}, "
                f"iter {self.iteration}",
            ),
        }
        logger.info(f"Wrote evaluation reports: {base}.{{json,md,png}}")


_LOADED_FOR_METADATA = set()


def ensure_class_metadata(dataset_name: str) -> None:
    """Load the dataset once if its metadata lacks ``thing_dataset_id_to_contiguous_id``.

    Loaders set that mapping (and ``thing_classes``) as a side effect. If the
    evaluator is built before any loader ran, COCOEvaluator would compare
    contiguous predicted ids with json category ids, or reuse a cached json
    converted under another mapping, and score silently wrong. A dataset whose
    loader sets no mapping (contiguous ids throughout) is loaded once per
    process, not at every evaluation.
    """
    if dataset_name not in DatasetCatalog.list():
        return
    # keyed by the loader too: re-registering a name (a new loader) loads again
    key = (dataset_name, DatasetCatalog[dataset_name])
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("thing_dataset_id_to_contiguous_id") is None and key not in _LOADED_FOR_METADATA:
        DatasetCatalog.get(dataset_name)
        _LOADED_FOR_METADATA.add(key)


def _config_sha1(cfg: CfgNode) -> str:
    """Short digest of the full config, so reports from different configs are never confused."""
    return hashlib.sha1(cfg.dump().encode("utf-8")).hexdigest()[:12]


def build_evaluator(
    cfg: CfgNode,
    dataset_name: str,
    output_dir: str,
    model_tag: str = "student",
    iteration: int = -1,
    *,
    config_name: str = "",
    distributed: bool = True,
    dump_predictions: bool = True,
) -> DatasetEvaluator:
    """The evaluator mic_det uses for ``dataset_name`` (one per model tag).

    ``config_name`` (e.g. the ``--config-file`` path) is written into the
    report next to a digest of ``cfg``, which identifies the config even when
    no name is given. ``dump_predictions=False`` skips Detectron2's raw
    prediction dumps, which periodic evaluations overwrite anyway.
    """
    return DomainDetectionEvaluator(
        dataset_name,
        tasks=("bbox",),
        distributed=distributed,
        output_dir=output_dir,
        model_tag=model_tag,
        iteration=iteration,
        config_name=config_name,
        extra_tags={"config_sha1": _config_sha1(cfg)},
        dump_predictions=dump_predictions,
    )
