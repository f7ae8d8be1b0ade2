"""The built-in pair's domain shifts (fog, night), their defaults and why.

Both act on a drawn scene and its depth map *before* the camera's response,
and neither draws from the scene's random stream in a way that changes it:
the same stream gives the same scene, boxes and camera grain in every domain.

Fog (:mod:`mic_det.data.fog`), ``beta = 0.04`` (visibility ~75 m, twice
Foggy Cityscapes' densest 0.02): the objects stand 3-110 m away (median
13 m), so those near the camera keep 70-85% of their contrast, those beyond
40 m less than 20%. Measured: the light-head R18-FPN of
``configs/Base-CPU-R18-FPN.yaml``, 1000 steps on the clear train split, scores
AP50 50.1 on the target val scenes drawn clear, and 41.5 / 36.8 / 32.7 / 25.2
/ 21.0 on the same scenes at beta 0.02 / 0.03 / 0.04 / 0.06 / 0.08 (small
objects: APs 13 -> 1 at 0.04). 0.04 costs about a third of the AP50, like
Cityscapes -> Foggy Cityscapes for a source-only model, while near objects
stay plainly visible; 0.02 is too thin for scenes this shallow, and from 0.06
on the far objects are all but erased (nothing left to adapt to).
``atmospheric_light = 0.8``: light grey daylight fog, well below white, so the
fogged sky (A itself) is not saturated.

Night (:mod:`mic_det.data.low_light`, which explains the physics and each
number), :data:`DEFAULT_NIGHT`: ambient light 0.25 of daylight, lamps near the
camera (0.8 of daylight at the camera, half at 12 m, sodium-warm), shot noise
1.0 and read noise 3.0 image units, blur 0.7 px. Measured like fog: a
source-only model (the R18-FPN of ``configs/Base-CPU-R18-FPN.yaml`` as the
CPU-model selection set it: GN in the FPN, PIXEL_STD 1, STRIDE_IN_1X1, 256 RPN
anchors, no clipping; 1000 steps on the clear train split, seed 0) scores
AP50 on the 100 target val scenes drawn clear, foggy and at night ("lamps
G @ D m": lamp_gain G, half as strong at D m):

=================================================================  =====  ========
target val scenes (night: what differs from the defaults)           AP50  vs clear
=================================================================  =====  ========
clear                                                               47.6
fog, beta 0.04                                                      28.5      -40%
night, defaults (mean brightness 56, clear 118)                     26.7      -44%
night, lamps @ 10 m, shot 1.5, read 4                               24.8      -48%
night, exposure 0.2, lamps @ 10 m                                   25.1      -47%
night, the same without sensor noise                                25.3      -47%
night, exposure 0.2, lamps @ 10 m, shot 2, read 5                   23.8      -50%
night, exposure 0.3, lamps 0.7 @ 10 m                               25.0      -47%
night, exposure 0.3, shot 0.7, read 2, blur 0.5                     27.5      -42%
night, exposure 0.15, lamps 0.7 @ 8 m, shot 1.5, read 4, blur 0.8   20.9      -56%
night, exposure 0.12, lamps 0.6 @ 8 m, shot 1.5, read 4, blur 1     18.4      -61%
night, exposure 0.2, no lamps                                        9.2      -81%
=================================================================  =====  ========

The defaults cost about as much as fog (a third to a half of the AP50; small
objects: APs 7.1 -> 1.2, 0.6 in fog), while near and mid-range objects stay
plainly visible and the far, small ones are faint, as in fog. The loss comes
mostly from the light level and the lamps' falloff: noise at the default
level costs nothing measurable, noise about twice as strong 1.3 AP50. One
model and one seed; differences of 1-2 AP50 between the night rows are within
the noise of a 100-image evaluation.
"""
from typing import Optional, Sequence, Union

import numpy as np

from ..fog import apply_fog
from ..low_light import LowLight, apply_low_light

__all__ = ["DEFAULT_BETA", "DEFAULT_ATMOSPHERIC_LIGHT", "DEFAULT_NIGHT", "apply_shifts"]

DEFAULT_BETA = 0.04
DEFAULT_ATMOSPHERIC_LIGHT = 0.8

# The built-in night: LowLight's defaults (measured above).
DEFAULT_NIGHT = LowLight()


def apply_shifts(
    image: np.ndarray,
    depth: np.ndarray,
    rng: np.random.Generator,
    beta: float = 0.0,
    atmospheric_light: Union[float, Sequence[float]] = DEFAULT_ATMOSPHERIC_LIGHT,
    night: Optional[LowLight] = None,
) -> np.ndarray:
    """Fog (if ``beta > 0``), then night (if given), on a uint8 RGB scene.

    The night's sensor noise comes from a *jumped copy* of ``rng``'s bit
    generator (an independent stream, 2^127 draws ahead), so ``rng`` itself is
    not advanced: the camera response drawn from it next is the same as in the
    clear domain. Fog and night together give a foggy night, whose airlight is
    dimmed like the rest of the scene.
    """
    if beta > 0:
        image = apply_fog(image, depth, beta, atmospheric_light)
    if night is not None:
        jumped = getattr(rng.bit_generator, "jumped", None)
        if jumped is None:
            raise TypeError(f"the night's noise needs a jumpable bit generator (e.g. PCG64), "
                            f"got {type(rng.bit_generator).__name__}")
        image = apply_low_light(image, depth, night, np.random.Generator(jumped()))
    return image
