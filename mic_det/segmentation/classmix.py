"""DACS's ClassMix: paste half of a source image's classes onto a target image.

Per pair (source i, target i): pick ceil(n/2) of the n classes present in the
source label (ignore excluded) at random; where the source label is one of
them, the mixed image, label and weight come from the source (weight 1),
elsewhere from the target (its pseudo-label and quality weight). Images of
different sizes are mixed over their common top-left region.
"""
from typing import Dict, Optional, Tuple

import torch

from .labels import IGNORE
from .modeling import WEIGHT_KEY

__all__ = ["class_mix_mask", "class_mix"]


def class_mix_mask(label: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Boolean HxW mask of the pixels of a random half (rounded up) of ``label``'s classes."""
    classes = torch.unique(label)
    classes = classes[classes != IGNORE]
    n = classes.numel()
    if n == 0:
        return torch.zeros_like(label, dtype=torch.bool)
    chosen = classes[torch.randperm(n, generator=generator)[: (n + 1) // 2]]
    return torch.isin(label, chosen.to(label.device))


def class_mix(
    source: Dict, target: Dict, pseudo: Dict, mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Dict, torch.Tensor]:
    """The mixed training input ``{"image", "sem_seg", "sem_seg_weight", "height", "width"}`` and its mask.

    ``source``: a mapped labelled dict (``image``, ``sem_seg``); ``target``: a mapped
    target dict (``image``); ``pseudo``: its pseudo-label (``sem_seg``, ``sem_seg_weight``),
    in the target image's frame. ``mask`` (source-class pixels) is drawn when not given.
    """
    h = min(source["image"].shape[-2], target["image"].shape[-2])
    w = min(source["image"].shape[-1], target["image"].shape[-1])
    src_label = source["sem_seg"][:h, :w]
    if mask is None:
        mask = class_mix_mask(src_label, generator)
    mask = mask[:h, :w].to(src_label.device)
    image = torch.where(mask[None], source["image"][:, :h, :w].float(), target["image"][:, :h, :w].float())
    tgt_label = pseudo["sem_seg"][:h, :w].to(src_label.device)
    label = torch.where(mask, src_label, tgt_label)
    tgt_weight = pseudo[WEIGHT_KEY][:h, :w].to(src_label.device)
    weight = torch.where(mask, torch.ones_like(tgt_weight), tgt_weight)
    return {"image": image, "sem_seg": label, WEIGHT_KEY: weight, "height": h, "width": w}, mask
