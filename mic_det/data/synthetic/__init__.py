"""The built-in procedural domains: clear street scenes -> foggy, and -> night.

No real dataset can be downloaded where mic_det is developed and tested, so the
demo, the tests and the benchmarks train on scenes drawn here. They are built
to behave like Cityscapes -> Foggy Cityscapes in miniature:

* a road camera's geometry: a ground plane in perspective below a horizon at a
  random height, so every pixel has a metric depth and objects shrink with
  distance (near = big, far = small);
* six classes in pairs that differ only in a detail, as in Cityscapes
  (person / rider on a bicycle / bicycle alone, car / truck = car-like cab +
  cargo box / bus = long body with a row of windows), drawn with random colours
  and sizes, partly occluding each other, among clutter that belongs to no class
  (poles, signs, trees, bushes, crates, fences, cones);
* two target domains, each the *same generator* (other scenes than the source)
  seen through a depth-dependent physical model: the optical fog model of
  Foggy Cityscapes (:mod:`mic_det.data.fog`) and a night model (dim ambient
  light, lamps near the camera, high-gain sensor noise;
  :mod:`mic_det.data.low_light`). Far and small objects fade first in both.

Each image's random stream is derived from ``(seed, split, index)``, so a set
is reproducible byte for byte and changing one split's size leaves every other
image unchanged. One file per idea (the renderer is meant to be shared by the
detection, segmentation and classification versions of the built-in pair):

==================  ==========================================================
``camera``          pinhole road camera (geometry, depth) and sensor response
``palette``         colours
``shapes``          the six classes as metric side views
``clutter``         unlabelled street furniture
``raster``          placing a shape in the camera and drawing it with cv2
``background``      sky, hills, road, facades
``scene``           :func:`generate_scene`: all of the above + occlusion + shift
``semantic``        the per-pixel classes (:func:`generate_labelled_scene`)
``shifts``          fog and night on a scene, their defaults and why
``layout``          the set on disk: splits, seeds, info files
``writer``          :func:`write_domain_pair`, :func:`write_night_splits`
``registration``    dataset names, generation on first use
==================  ==========================================================
"""
from .camera import SKY_DEPTH
from .layout import (
    GENERATOR_VERSION,
    NIGHT_SCENES,
    NIGHT_SPLITS,
    SPLIT_DOMAIN,
    SPLITS,
    domain_pair_info,
    night_info,
    read_domain_pair_info,
    read_night_info,
)
from .registration import (
    default_synthetic_root,
    ensure_synthetic_set,
    generate_once,
    generation_lock,
    register_synthetic_pair,
)
from .scene import generate_labelled_scene, generate_scene
from .semantic import SEMANTIC_CLASSES
from .shapes import SYNTHETIC_CLASSES
from .shifts import DEFAULT_ATMOSPHERIC_LIGHT, DEFAULT_BETA, DEFAULT_NIGHT
from .writer import DEFAULT_PARAMS, write_domain_pair, write_night_splits

__all__ = [
    "SYNTHETIC_CLASSES",
    "SPLITS",
    "NIGHT_SPLITS",
    "NIGHT_SCENES",
    "SPLIT_DOMAIN",
    "GENERATOR_VERSION",
    "SKY_DEPTH",
    "DEFAULT_BETA",
    "DEFAULT_ATMOSPHERIC_LIGHT",
    "DEFAULT_NIGHT",
    "DEFAULT_PARAMS",
    "generate_scene",
    "generate_labelled_scene",
    "SEMANTIC_CLASSES",
    "write_domain_pair",
    "write_night_splits",
    "domain_pair_info",
    "night_info",
    "read_domain_pair_info",
    "read_night_info",
    "register_synthetic_pair",
    "ensure_synthetic_set",
    "generate_once",
    "generation_lock",
    "default_synthetic_root",
]
