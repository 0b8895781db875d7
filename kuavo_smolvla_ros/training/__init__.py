"""Fine-tuning SmolVLA for Kuavo on LeRobot's training pieces, and the bag-to-dataset converter.

Modules, in dependency order: ``options`` (TrainOptions, results, file names), ``checks``
(refusals before training, stage planning), ``data`` (datasets, loaders, video backend),
``loop`` (one stage under accelerate: update, checkpoint, resume, validation), ``stages``
(``train_stages`` / ``finetune``: stages in order), ``cli`` (``kuavo-smolvla-train``);
``convert`` (``kuavo-smolvla-convert``) stands apart.
"""

from kuavo_smolvla_ros.training.checks import DatasetMismatchError, DatasetRef, StagesError
from kuavo_smolvla_ros.training.loop import validation_loss
from kuavo_smolvla_ros.training.options import (
    LOG_NAME,
    RUN_NAME,
    VALIDATION_NAME,
    StageResult,
    TrainOptions,
    TrainResult,
)
from kuavo_smolvla_ros.training.stages import (
    Stage,
    finetune,
    format_validation,
    load_stages,
    train_stages,
)

__all__ = [
    "LOG_NAME",
    "RUN_NAME",
    "VALIDATION_NAME",
    "DatasetMismatchError",
    "DatasetRef",
    "Stage",
    "StageResult",
    "StagesError",
    "TrainOptions",
    "TrainResult",
    "finetune",
    "format_validation",
    "load_stages",
    "train_stages",
    "validation_loss",
]
