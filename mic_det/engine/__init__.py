"""Training for any task: the MIC step, the Detectron2 trainer around it, the task interface.

Nothing here knows boxes, masks or class labels: what is task-specific comes
from the :class:`MICTask` that ``MODEL.TASK`` names.
"""
from .mic_step import MICStep
from ..task import MIC_TASK_REGISTRY, MICTask, build_task
from .trainer import MICTrainer, evaluate_models, models_to_evaluate

__all__ = [
    "MIC_TASK_REGISTRY",
    "MICStep",
    "MICTask",
    "MICTrainer",
    "build_task",
    "evaluate_models",
    "models_to_evaluate",
]
