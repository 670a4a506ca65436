"""MemVP + LoRA as one model: peft injects LoRA into the language model's linear layers first,
then MemVP hooks its FFNs (the hooks sit on the modules as they are after injection, and the FFN
sizes are read from the frozen layers inside peft's wrappers). One adapter holds the projector,
the position embeddings, the gates and the LoRA weights; saving, loading and the base-model check
are MemVP's."""

from __future__ import annotations

from torch import nn

from ..memvp.model import MemVPModel
from .config import MemVPLoraConfig

CONFIG_NAME = "memvp_lora_config.json"
WEIGHTS_NAME = "memvp_lora_model.safetensors"


class MemVPLoraModel(MemVPModel):
    """``MemVPModel`` whose language model also carries trainable LoRA layers."""

    config_class, config_name, weights_name = MemVPLoraConfig, CONFIG_NAME, WEIGHTS_NAME

    def __init__(self, language_model: nn.Module, config: MemVPLoraConfig, vision_encoder: nn.Module | None = None):
        from peft import LoraConfig, TaskType, get_peft_model

        task = TaskType.SEQ_2_SEQ_LM if language_model.config.is_encoder_decoder else TaskType.CAUSAL_LM
        lora = LoraConfig(
            r=int(config.lora_r),
            lora_alpha=float(config.lora_alpha),
            lora_dropout=float(config.lora_dropout),
            target_modules=config.lora_target_modules,
            task_type=task,
        )
        # In place: the returned PeftModel only wraps the same modules, which MemVP then hooks.
        tuner = get_peft_model(language_model, lora).base_model
        super().__init__(tuner.model, config, vision_encoder)  # freezes the whole LM, LoRA included
        object.__setattr__(self, "_lora_tuner", tuner)  # not a submodule: its parameters are the LM's
        for name, param in self.language_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)

    def remove_hooks(self) -> nn.Module:
        """Detach MemVP and the LoRA layers; return the language model as it was."""
        super().remove_hooks()
        return self._lora_tuner.unload()


__all__ = ["MemVPLoraModel", "CONFIG_NAME", "WEIGHTS_NAME"]
