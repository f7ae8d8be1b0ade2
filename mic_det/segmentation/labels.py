"""Reading label PNGs: raw values -> train ids (255 = ignore), with one-line errors naming the file.

Benchmarks store labels in their own ids (Cityscapes / GTA5 / ACDC / Dark
Zurich: Cityscapes label ids; SYNTHIA: its ids in the red channel of a 16-bit
PNG); a dataset's metadata says how to read them:

* ``label_lut``: a lookup table raw value -> train id (255 = ignore); values
  beyond it are ignored too (benchmark ids nobody evaluates);
* ``label_format``: ``"index"`` (one value per pixel: grey or palettised PNG,
  read with PIL so a palette is *not* turned into colours) or ``"synthia"``;
* without a table (a user's labels): value ``i`` is class ``i`` of
  ``stuff_classes``; ``label_ignore_value`` is ignored; any other value is an
  error, as is a label of another size than its image.
"""
from typing import Optional, Tuple

import cv2
import numpy as np
from detectron2.data import MetadataCatalog

__all__ = ["IGNORE", "LabelError", "read_label", "read_dataset_label"]

#: The ignore value of every label after reading (``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``).
IGNORE = 255


class LabelError(ValueError):
    """A label file that cannot be used: unreadable, wrong size, or values outside the classes."""


def _read_raw(path: str, label_format: str) -> np.ndarray:
    if label_format == "synthia":
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise LabelError(f"Cannot read label {path} (missing, empty or not an image)")
        return raw[:, :, 2] if raw.ndim == 3 else raw  # class id in the red channel (cv2 gives BGR)
    from PIL import Image

    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError ... for bad files
        raise LabelError(f"Cannot read label {path} ({type(e).__name__}: {e})") from None
    if raw.ndim == 3:
        raise LabelError(
            f"Label {path} has {raw.shape[2]} colour channels; a label PNG holds one class index per pixel "
            f"(grey or palettised), not a colour rendering"
        )
    return raw


def read_label(
    path: str,
    num_classes: int,
    *,
    lut: Optional[np.ndarray] = None,
    label_format: str = "index",
    ignore_value: int = IGNORE,
    image_size: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """The label map of ``path`` as uint8 train ids (``IGNORE`` where unlabelled).

    Args:
        num_classes: classes of the dataset (values must be below it, or ``ignore_value``).
        lut: raw value -> train id table; None = raw values are train ids.
        ignore_value: the raw value meaning "no label" (without a table).
        image_size: (h, w) the label must have (its image's size), if known.
    """
    raw = _read_raw(path, label_format)
    if image_size is not None and tuple(raw.shape[:2]) != tuple(image_size):
        raise LabelError(
            f"Label {path} is {raw.shape[0]}x{raw.shape[1]} (h x w) but its image is "
            f"{image_size[0]}x{image_size[1]}; labels must have their image's size"
        )
    if lut is not None:
        lut = np.asarray(lut, dtype=np.uint8)
        raw = raw.astype(np.int64)
        out = np.full(raw.shape, IGNORE, np.uint8)
        inside = raw < len(lut)
        out[inside] = lut[raw[inside]]
        return out
    bad = (raw >= num_classes) & (raw != ignore_value)
    if bad.any():
        values = np.unique(raw[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if len(values) > 5 else "")
        raise LabelError(
            f"Label {path} has values {shown} outside the class list (classes 0..{num_classes - 1}, "
            f"ignore value {ignore_value}); fix the labels, the class list or the ignore value"
        )
    out = raw.astype(np.uint8)
    out[raw == ignore_value] = IGNORE
    return out


def read_dataset_label(dataset_name: str, path: str, image_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """:func:`read_label` with the reading rules of dataset ``dataset_name``'s metadata."""
    meta = MetadataCatalog.get(dataset_name)
    return read_label(
        path,
        len(meta.stuff_classes),
        lut=meta.get("label_lut"),
        label_format=meta.get("label_format", "index"),
        ignore_value=meta.get("label_ignore_value", IGNORE),
        image_size=image_size,
    )
