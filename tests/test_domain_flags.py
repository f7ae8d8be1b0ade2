"""Domain flags (--register-*, --domains) are accepted anywhere on a tool's command line."""
import argparse

from detectron2.engine import default_argument_parser

from mic_det.data.cli import add_domain_arguments, parse_args


def _train_net_parser():
    parser = default_argument_parser()
    add_domain_arguments(parser)
    return parser


def test_domain_flags_after_key_value_overrides_are_flags():
    argv = ["--config-file", "c.yaml", "SOLVER.MAX_ITER", "5", "--register-coco", "src", "s.json", "imgs",
            "DATASETS.TRAIN", "('src',)", "--register-folder", "tgt", "frames", "--domains=d.yaml",
            "--register-seg", "seg", "i", "l", "a,b", "--seg-ignore-value", "0"]
    args = parse_args(_train_net_parser(), argv)
    assert args.opts == ["SOLVER.MAX_ITER", "5", "DATASETS.TRAIN", "('src',)"]
    assert args.register_coco == [["src", "s.json", "imgs"]]
    assert args.register_folder == [["tgt", "frames"]] and args.domains == ["d.yaml"]
    assert args.register_seg == [["seg", "i", "l", "a,b"]] and args.seg_ignore_value == 0


def test_domain_flags_after_a_remainder_option():
    # tools/predict.py and tools/export_model.py: overrides follow --opts.
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", nargs="+")
    add_domain_arguments(parser)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parse_args(parser, ["--input", "a.png", "--opts", "MODEL.DEVICE", "cpu",
                               "--register-folder", "tgt", "frames", "--register-class-folder", "c", "d"])
    assert args.opts == ["MODEL.DEVICE", "cpu"] and args.input == ["a.png"]
    assert args.register_folder == [["tgt", "frames"]] and args.register_class_folder == [["c", "d"]]
