"""BaselineConfig: the input-space (LLaVA-LoRA) and text-only baselines of the paper."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...config import DictConfig, check_choice, check_field_types
from ..common import PROJECTORS


@dataclass
class BaselineConfig(DictConfig):
    """An input-space (LLaVA-LoRA) or text-only baseline."""

    method: str = "input_space"
    visual_dim: int = 0
    """Feature size of the vision encoder (input_space only)."""
    projector: str = "mlp"
    """Same choices as MemVPConfig.projector: the two methods get the same projector shape."""
    projector_hidden: int = 128
    normalize_features: bool = False
    lora_r: int = 6
    lora_alpha: float = 12.0
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    """None: peft's default for the model type (q_proj / v_proj on LLaMA, as LLaVA-LoRA)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_field_types(self, "BaselineConfig")
        check_choice("method", self.method, ("input_space", "text_only"), "BaselineConfig")
        check_choice("projector", self.projector, PROJECTORS, "BaselineConfig")
        if self.method == "input_space" and int(self.visual_dim) <= 0:
            raise ValueError(
                "BaselineConfig.visual_dim must be positive for method='input_space' "
                f"(the vision encoder's feature size), got {self.visual_dim}"
            )
        if int(self.lora_r) <= 0:
            raise ValueError(f"BaselineConfig.lora_r must be positive, got {self.lora_r}")


__all__ = ["BaselineConfig"]
