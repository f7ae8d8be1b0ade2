"""The task interface as the engine exports it; defined in :mod:`mic_det.task` (below both the engine
and the data checks, which read a task's attributes)."""
from ..task import MIC_TASK_REGISTRY, MICTask, build_task

__all__ = ["MIC_TASK_REGISTRY", "MICTask", "build_task"]
