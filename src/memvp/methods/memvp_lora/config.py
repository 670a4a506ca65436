"""MemVPLoraConfig: MemVP's options plus the LoRA in the language model (the paper's appendix B.2)."""

from __future__ import annotations

from dataclasses import dataclass

from ..memvp.config import MemVPConfig


@dataclass
class MemVPLoraConfig(MemVPConfig):
    """MemVP + LoRA, trained jointly: the visual memory in the FFNs and peft LoRA on the LM's linear
    layers. The paper's visual instruction tuning (Table 9) uses rank 128 on every linear layer of
    Vicuna-7B (q, k, v, o, gate, up, down), LLaVA-1.5's ``mlp2x_gelu`` projector and 576 entries."""

    lora_r: int = 128
    lora_alpha: float = 256.0
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] | None = "all-linear"
    """peft's ``target_modules``: 'all-linear' (every linear layer but the output head, LLaVA-1.5's
    choice), a list of module names, or None for peft's default of the model type."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.lora_r) <= 0:
            raise ValueError(f"MemVPLoraConfig.lora_r must be positive, got {self.lora_r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"MemVPLoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")


__all__ = ["MemVPLoraConfig"]
