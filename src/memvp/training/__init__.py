"""Fine-tuning runs: ``memvp train`` / ``eval`` / ``predict`` or ``train(TrainConfig(...))``.

``config`` (the keys and their checks), ``build`` (data, models), ``loop`` (the optimizer steps),
``distributed`` (Accelerate, DDP, FSDP), ``evaluation``, ``checkpoint`` (atomic, exact resume) and
``interrupt`` (Ctrl-C / SIGTERM) are separate modules.
"""

from .config import TrainConfig
from .evaluation import run_eval
from .interrupt import TrainingInterrupted
from .loop import train

__all__ = ["TrainConfig", "train", "run_eval", "TrainingInterrupted"]
