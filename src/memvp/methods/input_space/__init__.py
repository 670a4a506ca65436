"""The baselines MemVP replaces: input-space visual tokens + LoRA (LLaVA-LoRA), and text-only LoRA."""

from .config import BaselineConfig
from .model import InputSpaceModel

__all__ = ["BaselineConfig", "InputSpaceModel"]
