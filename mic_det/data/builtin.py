"""Register the real-data benchmarks at import, the way ``detectron2.data.datasets.builtin`` does.

Registration reads nothing from disk, so importing this on a machine without
the datasets costs nothing; the root (``$DETECTRON2_DATASETS``, default
``datasets``) is resolved when a set is first loaded, so tests and tools may
set the variable after import.

Registered here (see ``datasets/README.md`` for layouts and classes):
``cityscapes_{train,val}``, ``cityscapes_foggy_{train,val}_{0.005,0.01,0.02,all}``,
``cityscapes_car_{train,val}``, ``cityscapes7_{train,val}``, ``sim10k_car_train``,
``kitti_car_train``, ``bdd100k_daytime_{train,val}``.
"""

from .daod import register_all_daod

#: Names registered by this module, in registration order.
BUILTIN_DAOD_DATASETS = register_all_daod(None)
