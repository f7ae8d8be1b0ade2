"""Register user domains with Detectron2's catalogs, without code changes elsewhere.

Every dataset mic_det uses, the built-in synthetic pair included, goes through
these functions, so user data and built-in data take the same path.
"""
import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["register_coco_domain"]


def _load_coco(name: str, json_file: str, image_root: str):
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset '{name}': annotation file {json_file} does not exist "
            f"(expected a COCO-format json)."
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Dataset '{name}': image root {image_root} does not exist "
            f"(expected the folder that the json's file_name entries are relative to)."
        )
    return load_coco_json(json_file, image_root, name)


def register_coco_domain(
    name: str, json_file: str, image_root: str, metadata: Optional[dict] = None
) -> None:
    """Register a COCO-format json + image folder as dataset ``name``.

    Loading is lazy (on first use), as with Detectron2's built-in datasets, so
    registering a set that is not on disk costs nothing until it is asked for.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: _load_coco(name, json_file, image_root))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )
