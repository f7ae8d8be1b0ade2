"""Training: the MIC step and the Detectron2 trainer around it."""
from .mic_step import MICStep
from .trainer import MICTrainer, evaluate_models, models_to_evaluate

__all__ = ["MICStep", "MICTrainer", "evaluate_models", "models_to_evaluate"]
