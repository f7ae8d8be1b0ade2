"""A fourth task is a package of its own: its config keys, its dataset kind, its built-in data and its
:class:`~mic_det.task.MICTask` plug in through mic_det's hooks, with no file of mic_det edited.

The package is written to a temp folder by the test (the toy colour task of
``tests/test_task_engine.py`` with the rest of a task around it), imported,
trained through the engine, and unregistered afterwards.
"""
import argparse
import importlib
import json
import sys
import textwrap

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from mic_det import add_mic_config
from mic_det.config import TASK_CONFIG_HOOKS
from mic_det.data.builtin import CONFIG_DATA_HOOKS, register_config_data
from mic_det.data.checks import check_domain_classes, check_training_sets
from mic_det.data.cli import add_domain_arguments, load_domains_yaml, parse_args, register_domains_from_args
from mic_det.data.kinds import DOMAIN_KINDS
from mic_det.task import MIC_TASK_REGISTRY

from .test_task_engine import TOY_TARGET, _toy_trainer

PACKAGE = '''
"""The colour task: a package of its own (config keys, dataset kind, built-in data, task)."""
import json
import os

from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog, MetadataCatalog

from mic_det.config import register_task_config
from mic_det.data.builtin import register_config_data_hook
from mic_det.data.kinds import DomainFlag, DomainKind, register_domain_kind
from mic_det.task import MIC_TASK_REGISTRY
from tests.test_task_engine import TOY_SOURCE, ToyColourTask


@register_task_config
def add_colour_config(cfg):
    cfg.COLOUR = CN()
    cfg.COLOUR.SYNTHETIC_ROOT = ""  # the built-in colour sets: written and registered when set
    cfg.COLOUR.IMAGES_PER_CLASS = 8
    cfg.COLOUR.NUM_CLASSES = 2


def register_colour_list(name, path):
    """A json list of {"d": red - blue, "label": 0 red / 1 blue} as dataset ``name``."""
    def load():
        with open(path) as f:
            return [dict(r, image_id=i, height=40, width=48) for i, r in enumerate(json.load(f))]
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(thing_classes=["red", "blue"], task="colour")


register_domain_kind(DomainKind(
    name="colour_list", register=lambda spec: register_colour_list(spec["name"], spec["colours"]),
    paths={"colours": False}, infer_key="colours",
    flag=DomainFlag("--register-colour-list", ("NAME", "JSON"), "a json list of colours as NAME",
                    lambda v, args: {"name": v[0], "type": "colour_list", "colours": v[1]}),
    summary="colours"))


@register_config_data_hook
def register_builtin_colours(cfg):
    root = cfg.COLOUR.SYNTHETIC_ROOT
    if not root or "colour_builtin_src" in DatasetCatalog:
        return
    os.makedirs(root, exist_ok=True)
    n = cfg.COLOUR.IMAGES_PER_CLASS
    records = []
    for i in range(2 * n):
        label, k = i % 2, i // 2
        lo, hi = TOY_SOURCE[label]
        records.append({"label": label, "d": lo + (hi - lo) * k / (n - 1)})
    with open(os.path.join(root, "src.json"), "w") as f:
        json.dump(records, f)
    register_colour_list("colour_builtin_src", os.path.join(root, "src.json"))


@MIC_TASK_REGISTRY.register()
class ColourTask(ToyColourTask):
    dataset_kind = "colour"
    dataset_description = "one flat colour per image"
    num_classes_keys = ("COLOUR.NUM_CLASSES",)
    meta_architectures = ("ToyColourClassifier",)
'''


@pytest.fixture
def colour_package(tmp_path, monkeypatch):
    """The package ``colour_task`` written under tmp_path and imported; its registrations undone after."""
    hooks, data_hooks, kinds = list(TASK_CONFIG_HOOKS), list(CONFIG_DATA_HOOKS), dict(DOMAIN_KINDS)
    (tmp_path / "pkgs" / "colour_task").mkdir(parents=True)
    (tmp_path / "pkgs" / "colour_task" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    try:
        yield importlib.import_module("colour_task")
    finally:
        sys.modules.pop("colour_task", None)
        TASK_CONFIG_HOOKS[:] = hooks
        CONFIG_DATA_HOOKS[:] = data_hooks
        DOMAIN_KINDS.clear()
        DOMAIN_KINDS.update(kinds)
        MIC_TASK_REGISTRY._obj_map.pop("ColourTask", None)
        for name in ("colour_builtin_src", "my_colours", "yaml_colours"):
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)


def test_a_task_package_adds_its_config_keys_dataset_kind_and_built_in_data(colour_package, tmp_path):
    cfg = get_cfg()
    add_mic_config(cfg)
    assert cfg.COLOUR.IMAGES_PER_CLASS == 8  # its keys are in every mic_det config
    # Its dataset kind: a --domains entry (type inferred from its key) and a command-line flag.
    target = [{"d": lo + (hi - lo) * k / 7, "label": label} for label, (lo, hi) in TOY_TARGET.items()
              for k in range(8)]
    (tmp_path / "tgt.json").write_text(json.dumps(target))
    (tmp_path / "d.yaml").write_text("yaml_colours: {colours: tgt.json}\n")
    assert load_domains_yaml(str(tmp_path / "d.yaml"))[0]["type"] == "colour_list"
    parser = argparse.ArgumentParser()
    add_domain_arguments(parser)
    assert "--register-colour-list" in parser.format_help()
    args = parse_args(parser, ["--domains", str(tmp_path / "d.yaml"),
                               "--register-colour-list", "my_colours", str(tmp_path / "tgt.json")])
    assert register_domains_from_args(args) == ["yaml_colours", "my_colours"]
    with pytest.raises(FileNotFoundError, match="colours"):
        register_domains_from_args(parse_args(parser, ["--register-colour-list", "x", str(tmp_path / "no.json")]))

    # Its built-in data, registered from the config's root as tools/train_net.py does; the start-up
    # checks know its dataset kind and class-count key; the engine trains it.
    opts = ["MODEL.TASK", "ColourTask", "COLOUR.SYNTHETIC_ROOT", str(tmp_path / "builtin"),
            "DATASETS.TRAIN", "('colour_builtin_src',)", "DATASETS.TRAIN_TARGET", "('my_colours',)",
            "DATASETS.TEST", "('my_colours',)"]
    cfg.merge_from_list(opts + ["MODEL.META_ARCHITECTURE", "ToyColourClassifier"])
    register_config_data(cfg)
    assert len(DatasetCatalog.get("colour_builtin_src")) == 16
    check_domain_classes(cfg)
    check_training_sets(cfg)
    cfg.COLOUR.NUM_CLASSES = 3
    with pytest.raises(ValueError, match="COLOUR.NUM_CLASSES is 3"):
        check_domain_classes(cfg)

    trainer = _toy_trainer(tmp_path / "run", *opts)
    assert trainer._last_eval_results["teacher"]["my_colours"]["colour"]["accuracy"] == 100.0
    assert type(trainer._trainer.task).__name__ == "ColourTask"
