"""MemVP: visual prompts in the language model's FFN key/value memory (the paper's method)."""

from .config import MemVPConfig
from .model import MemVPModel, VisualMemory, get_memvp_model, retrieve

__all__ = ["MemVPConfig", "MemVPModel", "VisualMemory", "get_memvp_model", "retrieve"]
