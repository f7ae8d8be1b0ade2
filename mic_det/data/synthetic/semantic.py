"""The per-pixel classes of the built-in scenes (the segmentation version of the pair).

The renderer paints a label map next to the image with the same geometry and
without drawing a single extra random number, so a scene's image is the same
byte for byte whether its labels are asked for or not (the detection set is
unchanged). Cityscapes-like classes; lane marks and kerbs belong to road and
sidewalk as in Cityscapes, and distant hills to terrain. The object classes
keep the detection set's confusable pairs (person / rider, car / truck / bus);
street furniture (poles, signs, trees, crates ...) is one class, ``obstacle``.
"""
from .shapes import SYNTHETIC_CLASSES

__all__ = ["SEMANTIC_CLASSES", "ROAD", "SIDEWALK", "TERRAIN", "BUILDING", "SKY", "OBSTACLE", "object_label"]

SEMANTIC_CLASSES = ("road", "sidewalk", "terrain", "building", "sky") + SYNTHETIC_CLASSES + ("obstacle",)
ROAD, SIDEWALK, TERRAIN, BUILDING, SKY = range(5)
OBSTACLE = len(SEMANTIC_CLASSES) - 1
_FIRST_OBJECT = 5


def object_label(category: int) -> int:
    """The label of a placed shape: its class (``category`` in SYNTHETIC_CLASSES), or obstacle (-1, clutter)."""
    return OBSTACLE if category < 0 else _FIRST_OBJECT + category
