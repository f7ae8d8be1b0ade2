#!/usr/bin/env python
"""Train or evaluate a mic_det detector or segmentor (source-only, UDA, self-training, MIC, MIC+UDA, oracle).

Detectron2's usual flags, plus registration of user domains:

    python tools/train_net.py --config-file configs/synthetic/mic.yaml
    python tools/train_net.py --config-file configs/synthetic/mic.yaml --resume
    python tools/train_net.py --config-file configs/synthetic/mic.yaml --eval-only \\
        MODEL.WEIGHTS output/synthetic_mic/model_final.pth TEST.EVAL_MODEL teacher
    python tools/train_net.py --config-file output/synthetic_mic/config.yaml --eval-only --resume
    python tools/train_net.py --config-file my.yaml \\
        --register-coco src_train src.json src_images --register-folder tgt_train tgt_images
    python tools/train_net.py --config-file configs/synthetic/mic.yaml --num-gpus 2
    python tools/train_net.py --config-file configs/synthetic_seg/mic.yaml
    python tools/train_net.py --config-file configs/synthetic_seg/mic.yaml \\
        --register-seg src_train src/images src/labels road,car,sky --register-folder tgt_train tgt/images \\
        DATASETS.TRAIN "('src_train',)" DATASETS.TRAIN_TARGET "('tgt_train',)" DATASETS.TEST "()" \\
        MODEL.SEM_SEG_HEAD.NUM_CLASSES 3

Domain flags may also follow the ``KEY VALUE`` overrides. A run records its
registered domains in ``OUTPUT_DIR/datasets.yaml`` and its checkpoints
(:mod:`mic_det.data.run_record`): given ``OUTPUT_DIR/config.yaml`` (or its
weights with ``--eval-only``), no flag needs repeating. ``--eval-only
--resume`` evaluates ``OUTPUT_DIR/last_checkpoint``.
"""
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import mic_det  # noqa: F401  (registers mic_det's models and datasets)
from mic_det.config_loading import build_config
from mic_det.data.builtin import register_config_data
from mic_det.data.checks import check_domain_classes, check_test_images, check_training_sets, dataset_names
from mic_det.data.cli import add_domain_arguments, parse_args, register_domains_from_args
from mic_det.data.run_record import (
    CHECKPOINT_KEY,
    RecordCheckpointable,
    recorded_domains,
    restore_run_datasets,
    write_run_record,
)
from mic_det.engine import MICTrainer, evaluate_models, models_to_evaluate
from mic_det.engine.checkpoint_hooks import TrainingInterrupted
from mic_det.predictor import check_weights_file
from mic_det.teacher import EMATeacher, teacher_weights_from_checkpoint
from mic_det.user_errors import exit_on_input_error

logger = logging.getLogger("mic_det")


def refuse_to_overwrite(cfg):
    """A new run must not overwrite an earlier run's checkpoints in the same OUTPUT_DIR."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if os.path.isfile(last):
        with open(last) as f:
            name = f.read().strip()
        raise SystemExit(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} already holds a run (last checkpoint: {name}). "
            "Pass --resume to continue it, or set another OUTPUT_DIR; nothing was changed."
        )


def eval_only_weights(cfg, resume: bool) -> str:
    """The checkpoint ``--eval-only`` evaluates: with ``--resume``, OUTPUT_DIR's ``last_checkpoint``
    (as Detectron2's ``resume_or_load``), else ``MODEL.WEIGHTS``."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.OUTPUT_DIR, f.read().strip())
    if resume and not cfg.MODEL.WEIGHTS:
        raise FileNotFoundError(
            f"--eval-only --resume: {last} does not exist (OUTPUT_DIR {cfg.OUTPUT_DIR} holds no run); "
            "give the run's config, or MODEL.WEIGHTS"
        )
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "--eval-only needs the checkpoint to evaluate: MODEL.WEIGHTS is empty (add MODEL.WEIGHTS "
            "OUTPUT_DIR/model_final.pth, or --resume for OUTPUT_DIR's last checkpoint); without it a "
            "random model is evaluated"
        )
    return cfg.MODEL.WEIGHTS


def setup(args):
    """Config from file + overrides, user domains registered, then validated.

    Everything that can be checked without training is checked here, so a
    mistake fails in the first seconds: unknown config keys (with the nearest
    ones), the checkpoint of --eval-only, dataset names and classes, and every
    test image (else found missing at the first evaluation, hours in).
    """
    cfg = build_config(args.config_file, args.opts)
    if args.eval_model:
        cfg.TEST.EVAL_MODEL = args.eval_model
    if args.eval_only:
        cfg.MODEL.WEIGHTS = eval_only_weights(cfg, args.resume)
    cfg.freeze()
    if args.eval_only:
        check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    register_config_data(cfg)  # each task's built-in sets under the roots the config names
    register_domains_from_args(args)
    # The datasets of the run whose config (or, to evaluate, weights) this is; flags given here win.
    restore_run_datasets(args.config_file, cfg.MODEL.WEIGHTS if args.eval_only else None,
                         needed=[name for _, name in dataset_names(cfg)])
    if not args.eval_only and not args.resume:
        refuse_to_overwrite(cfg)  # before default_setup writes config.yaml there
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mic_det", abbrev_name="mic")
    if args.eval_only:
        logger.info("Evaluating %s", cfg.MODEL.WEIGHTS)
    check_domain_classes(cfg)  # checks the names are registered first
    if not args.eval_only:
        check_training_sets(cfg)  # e.g. an empty target folder, found before the model is built
    check_test_images(cfg)
    if comm.is_main_process():
        record = write_run_record(cfg.OUTPUT_DIR)  # after the checks loaded the classes and ids
        if record:
            logger.info("Recorded the registered datasets in %s", record)
    return cfg


def eval_only(cfg):
    """Evaluate ``MODEL.WEIGHTS``: its student, its teacher (if it has one), or both."""
    model = MICTrainer.build_model(cfg)
    # What the checkpointer leaves unread of the file (here: the teacher, if any).
    checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    teacher = None
    if cfg.TEST.EVAL_MODEL in ("teacher", "both"):
        if "teacher" in checkpoint:
            teacher = EMATeacher(model)
            teacher.model.load_state_dict(teacher_weights_from_checkpoint(checkpoint))
        elif cfg.TEST.EVAL_MODEL == "teacher":
            teacher_weights_from_checkpoint(checkpoint)  # raises a clear KeyError
    models = models_to_evaluate(cfg, model, teacher)
    # Reports name the iteration the weights were saved at (-1 for files without one, e.g. model zoo).
    iteration = checkpoint.get("iteration", -1)
    results = evaluate_models(cfg, models, iteration=iteration if isinstance(iteration, int) else -1)
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return eval_only(cfg)
    trainer = MICTrainer(cfg)
    entries = recorded_domains()
    if entries:  # every checkpoint names its datasets, classes and category ids
        trainer.checkpointer.add_checkpointable(CHECKPOINT_KEY, RecordCheckpointable(entries))
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except TrainingInterrupted as e:  # the log says which checkpoint to --resume from
        raise SystemExit(128 + e.signum) from None


def build_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--eval-model",
        choices=("student", "teacher", "both"),
        default=None,
        help="with --eval-only: which weights of MODEL.WEIGHTS to evaluate (sets TEST.EVAL_MODEL)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of input errors (bad config keys, paths, datasets), not just their message",
    )
    add_domain_arguments(parser)
    return parser


def cli(argv=None):
    args = parse_args(build_parser(), argv)
    print("Command Line Args:", args)
    with exit_on_input_error(args.debug):
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )


if __name__ == "__main__":
    cli()
