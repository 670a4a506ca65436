"""MemVP + LoRA, trained jointly (the paper's visual instruction tuning, appendix B.2 / Table 9)."""

from .config import MemVPLoraConfig
from .model import MemVPLoraModel

__all__ = ["MemVPLoraConfig", "MemVPLoraModel"]
