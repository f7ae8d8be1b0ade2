#!/usr/bin/env python
"""A deliberately minimal MIC loop in plain Detectron2: the benchmark's sanity row.

No mic_det heads, trainer, teacher class or augmentation: Detectron2's own
GeneralizedRCNN / RPN / StandardROIHeads, a deep-copied teacher averaged over
the state dict (EMA 0.99), pseudo-boxes = teacher boxes >= 0.8 after class-wise
NMS, a 32-px block mask with ratio 0.5 on the normalized input (hidden = mean
colour), and the masked student's classification + objectness losses times
the mean teacher score of the image batch. mic_det's full implementation must
at least match it from the same source checkpoint.

    python -m benchmarks.minimal_mic --config-file configs/synthetic/mic.yaml \\
        --weights <source>/model_0001999.pth OUTPUT_DIR out SOLVER.MAX_ITER 3000 MIC.BURN_IN_ITERS 2000 ...

Runs ``SOLVER.MAX_ITER - MIC.BURN_IN_ITERS`` steps on the lr the trainer's
schedule gives them (``SOLVER.STEPS`` and ``SOLVER.RESTART_ITERS``), then writes one metrics.json line shaped like tools/train_net.py's,
and a ``log.txt`` (Detectron2's logger) ending with the training time in the
words of Detectron2's timer, so the benchmark's report reads it for this run
as for any other.
"""
import argparse
import copy
import datetime
import json
import os
import time

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier, build_optimizer
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger
from torchvision.ops import batched_nms

import mic_det  # noqa: F401  (registers the built-in datasets only; no model code is used)
from mic_det import add_mic_config
from mic_det.data.builtin import register_config_data
from mic_det.engine.lr_schedule import build_lr_scheduler


def setup(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="the source model's checkpoint")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cfg = get_cfg()
    add_mic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.PROPOSAL_GENERATOR.NAME = "GeneralizedRCNN", "RPN"
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    register_config_data(cfg)  # the built-in pair, as tools/train_net.py registers it
    return cfg, args.weights


def pseudo_labels(pred: Instances, thresh: float = 0.8):
    """Teacher boxes >= thresh after class-wise NMS, as targets; and their scores."""
    pred = pred[pred.scores >= thresh]
    pred = pred[batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, 0.5)]
    return Instances(pred.image_size, gt_boxes=pred.pred_boxes, gt_classes=pred.pred_classes), pred.scores


def main(argv=None):
    cfg, weights = setup(argv)
    logger = setup_logger(cfg.OUTPUT_DIR, name="minimal_mic")
    torch.manual_seed(cfg.SEED)
    steps = cfg.SOLVER.MAX_ITER - cfg.MIC.BURN_IN_ITERS
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    teacher = copy.deepcopy(model).eval()
    cfg.defrost()
    optimizer = build_optimizer(cfg, model)
    # The run's schedule from the burn-in on: its multiplier, entered at iteration BURN_IN_ITERS.
    multiplier = build_lr_scheduler(cfg, optimizer)._multiplier
    scheduler = LRMultiplier(optimizer, multiplier, cfg.SOLVER.MAX_ITER, last_iter=cfg.MIC.BURN_IN_ITERS - 1)
    source = iter(build_detection_train_loader(cfg))
    cfg.DATASETS.TRAIN = cfg.DATASETS.TRAIN_TARGET
    target = iter(build_detection_train_loader(cfg))
    model.train()
    start = time.perf_counter()
    with EventStorage(cfg.MIC.BURN_IN_ITERS) as storage:
        for step in range(steps):
            losses = model(next(source))
            loss = sum(losses.values())
            batch = [{k: v for k, v in x.items() if k != "instances"} for x in next(target)]
            with torch.no_grad():
                preds = teacher.inference(batch, do_postprocess=False)
                labelled = [(x, *pseudo_labels(p)) for x, p in zip(batch, preds)]
                labelled = [(x, p, s) for x, p, s in labelled if len(p)]
            if labelled:
                with torch.no_grad():
                    images = model.preprocess_image([x for x, _, _ in labelled])
                    t = images.tensor
                    grid = (torch.rand(t.shape[0], 1, -(-t.shape[2] // 32), -(-t.shape[3] // 32), device=t.device) > 0.5).float()
                    mask = torch.nn.functional.interpolate(grid, scale_factor=32)[..., : t.shape[2], : t.shape[3]]
                    pixels = t * mask * model.pixel_std + model.pixel_mean
                masked = [{"image": pixels[i, :, :h, :w], "instances": p}
                          for i, ((h, w), (_, p, _)) in enumerate(zip(images.image_sizes, labelled))]
                mic = model(masked)
                quality = torch.cat([s for _, _, s in labelled]).mean()
                loss = loss + quality * (mic["loss_cls"] + mic["loss_rpn_cls"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                s_state = model.state_dict()
                for name, t_val in teacher.state_dict().items():
                    if t_val.is_floating_point():
                        t_val.mul_(0.99).add_(s_state[name], alpha=0.01)
            storage.step()
            if step % 100 == 0:
                logger.info(f"step {step}/{steps} loss {float(loss):.3f} pseudo-labelled images {len(labelled)}")
    logger.info(f"Total training time: {datetime.timedelta(seconds=int(time.perf_counter() - start))}")
    record = {"iteration": cfg.SOLVER.MAX_ITER}
    for tag, net in (("student", model), ("teacher", teacher)):
        for ds in cfg.DATASETS.TEST:
            res = inference_on_dataset(net.eval(), build_detection_test_loader(cfg, ds),
                                       COCOEvaluator(ds, output_dir=None))["bbox"]
            record.update({f"{tag}/{ds}/bbox/{k}": v for k, v in res.items()})
            logger.info(f"{tag} {ds} " + str({k: round(res[k], 1) for k in ("AP", "AP50")}))
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
