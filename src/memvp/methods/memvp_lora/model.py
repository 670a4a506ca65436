"""MemVP + LoRA as one model: peft injects LoRA into the language model's linear layers first,
then MemVP hooks its FFNs (the hooks sit on the modules as they are after injection, and the FFN
sizes are read from the frozen layers inside peft's wrappers). One adapter holds the projector,
the position embeddings, the gates and the LoRA weights; saving, loading and the base-model check
are MemVP's."""

from __future__ import annotations

import os

from torch import nn

from ...atomic import write_directory_atomically
from ..memvp.model import MemVPModel
from .config import MemVPLoraConfig

CONFIG_NAME = "memvp_lora_config.json"
WEIGHTS_NAME = "memvp_lora_model.safetensors"


class MemVPLoraModel(MemVPModel):
    """``MemVPModel`` whose language model also carries trainable LoRA layers."""

    config_class, config_name, weights_name = MemVPLoraConfig, CONFIG_NAME, WEIGHTS_NAME
    method_name = "memvp_lora"

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
        peft_model = get_peft_model(language_model, lora)
        super().__init__(peft_model.base_model.model, config, vision_encoder)  # freezes the whole LM, LoRA included
        object.__setattr__(self, "_peft_model", peft_model)  # not a submodule: its parameters are the LM's
        self.lora_merged = False
        for name, param in self.language_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)

    def save_peft_adapter(self, directory: str | os.PathLike) -> None:
        """The LoRA part as a standard peft adapter folder (``adapter_config.json`` +
        ``adapter_model.safetensors``): ``PeftModel.from_pretrained(language_model, directory)`` gives the
        LM with this LoRA (without MemVP), ``merge_and_unload`` folds it in. Written atomically."""
        if self.lora_merged:
            raise ValueError("the LoRA was merged into the language model (merge_lora): nothing left to save")
        write_directory_atomically(directory, self._peft_model.save_pretrained)

    def merge_lora(self) -> nn.Module:
        """Fold the LoRA into the language model's weights for deployment (peft's ``merge_and_unload``);
        MemVP stays hooked on the merged modules. The same outputs, without LoRA's extra matmuls."""
        self._peft_model.base_model.merge_and_unload()
        self._hook_sites()  # merging replaced LoRA-wrapped FFN modules by plain ones
        self.lora_merged = True
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, card_info: dict | None = None) -> None:
        if self.lora_merged:
            raise ValueError(
                "the LoRA was merged into the language model (merge_lora): save the adapter before "
                "merging, or the merged language model itself (language_model.save_pretrained)"
            )
        super().save_pretrained(save_directory, card_info)

    def remove_hooks(self) -> nn.Module:
        """Detach MemVP and the LoRA layers; return the language model as it was."""
        super().remove_hooks()
        return self.language_model if self.lora_merged else self._peft_model.base_model.unload()


__all__ = ["MemVPLoraModel", "CONFIG_NAME", "WEIGHTS_NAME"]
