"""The methods MemVP replaces, in the same harness (paper 5.1 / 5.2):

* ``input_space``: LLaVA-style. The projected visual tokens (same projector shape as MemVP's) are
  put *in front of the text* in the input embeddings and the LM is tuned with LoRA through
  ``peft`` (the paper's LLaVA-LoRA: rank 6 on the attention query / value projections of LLaMA).
* ``text_only``: the same LoRA-tuned LM with no visual input at all: the cost floor and the
  "blind" accuracy.

Both expose MemVPModel's interface (forward with ``visual_features`` / ``has_image`` /
``answer_logits_only``, generate returning prompt + new tokens, save_pretrained / from_pretrained,
parameter counts), so training, prediction and benchmarks treat all methods alike.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...architectures import get_path, layout_for
from ...atomic import write_directory_atomically
from ...save_load import base_model_fingerprint
from ..base import MethodModel
from ..common import check_visual_features, init_projector, insert_tokens, make_projector
from .config import BaselineConfig

BASELINE_CONFIG_NAME = "baseline_config.json"


BASELINE_WEIGHTS_NAME = "baseline_model.safetensors"


class InputSpaceModel(MethodModel):
    """A frozen LM tuned with LoRA (peft); with ``method='input_space'`` projected visual tokens
    are prepended to its input (LLaVA), with ``'text_only'`` the visual input is ignored."""

    config_class, config_name, weights_name = BaselineConfig, BASELINE_CONFIG_NAME, BASELINE_WEIGHTS_NAME
    config_attr = "baseline_config"

    def __init__(self, language_model: nn.Module, config: BaselineConfig):
        super().__init__()
        from peft import LoraConfig, TaskType, get_peft_model

        self.baseline_config = config = BaselineConfig.from_dict(config.to_dict())
        layout_for(language_model)  # a clear error for architectures this library does not know
        encdec = bool(language_model.config.is_encoder_decoder)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type=TaskType.SEQ_2_SEQ_LM if encdec else TaskType.CAUSAL_LM,
        )
        self.peft_model = get_peft_model(language_model, lora)  # freezes the base, injects LoRA in place
        self._hidden_size = int(language_model.config.hidden_size)
        self.projector: nn.Module | None = None
        if config.method == "input_space":
            device = next(iter(language_model.parameters())).device
            self.projector = make_projector(
                config.projector, config.visual_dim, self._hidden_size, config.projector_hidden, device
            )
            init_projector(self.projector)

    @property
    def language_model(self) -> nn.Module:
        """The transformers model with the LoRA layers in place."""
        return self.peft_model.get_base_model()

    @property
    def method_name(self) -> str:
        return self.baseline_config.method

    @method_name.setter
    def method_name(self, value: str) -> None:  # the registry's name is the config's
        pass

    @property
    def reads_images(self) -> bool:
        return self.baseline_config.method == "input_space"

    @property
    def visual_dim(self) -> int | None:
        """The feature size of the visual features it reads; None for text_only, which reads none."""
        return self.baseline_config.visual_dim if self.reads_images else None

    def analytic_layer_flops(self, length: float, dim: int, n_visual: int) -> float:
        """Eq. 14 with the visual tokens (the sequence is L + n long); eq. 13 for text only."""
        text = super().analytic_layer_flops(length, dim, n_visual)
        return text + 4 * n_visual * dim * (6 * dim + n_visual + 2 * length) if self.reads_images else text

    # ----------------------------------------------------------------------------- inputs
    def visual_tokens(self, visual_features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        cfg = self.baseline_config
        check_visual_features(visual_features, cfg.visual_dim, "BaselineConfig")
        weight = next(self.projector.parameters())
        z = visual_features.to(weight.device, weight.dtype)
        if cfg.normalize_features:
            z = F.layer_norm(z, z.shape[-1:])
        return self.projector(z).to(dtype)

    def lm_inputs(
        self,
        input_ids,
        attention_mask,
        visual_features,
        has_image,
        labels=None,
        generation: bool = False,
        **kwargs: Any,
    ) -> dict:
        """LM keyword inputs: ids as they are, or embeddings with the visual tokens right before each
        row's first attended text token (``common.insert_tokens``)."""
        if self.projector is None or visual_features is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        embeds = self.language_model.get_input_embeddings()(input_ids)
        visual = self.visual_tokens(visual_features, embeds.dtype)
        batch, n = visual.shape[:2]
        encdec = bool(self.config.is_encoder_decoder)  # there labels belong to the decoder: unchanged
        if attention_mask is None and has_image is None:  # no padding at all: plain concatenation
            if labels is not None and not encdec:
                labels = torch.cat([torch.full_like(labels[:, :1], -100).expand(-1, n), labels], dim=1)
            return {"inputs_embeds": torch.cat([visual, embeds], dim=1), "attention_mask": None, "labels": labels}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if has_image is None:
            visual_mask = torch.ones(batch, n, dtype=attention_mask.dtype, device=embeds.device)
        else:  # image-less samples: their visual tokens are masked out (LLaVA feeds none)
            has_image = torch.as_tensor(has_image, device=embeds.device)
            visual_mask = has_image.to(attention_mask.dtype).view(-1, 1).expand(batch, n)
        first = attention_mask.long().argmax(dim=1)
        embeds, attention_mask, shifted = insert_tokens(
            embeds, attention_mask, visual, visual_mask, first, None if encdec else labels
        )
        return {"inputs_embeds": embeds, "attention_mask": attention_mask, "labels": labels if encdec else shifted}

    def remove_hooks(self) -> nn.Module:
        """Take the LoRA layers out again and return the language model as it was."""
        return self.peft_model.unload()

    def save_peft_adapter(self, directory: str | os.PathLike) -> None:
        """The LoRA part as a standard peft adapter folder (``PeftModel.from_pretrained`` reads it); the
        projector of the visual tokens stays in this method's adapter. Written atomically."""
        write_directory_atomically(directory, self.peft_model.save_pretrained)

    def merge_lora(self) -> nn.Module:
        """Fold the LoRA into the language model's weights (peft's ``merge_and_unload``)."""
        self.peft_model.merge_and_unload()
        return self

    # ----------------------------------------------------------------------------- save / load
    def base_model_fingerprint(self) -> dict[str, Any]:
        stacks = layout_for(self.language_model).stacks
        base = self.language_model.base_model
        return base_model_fingerprint(
            self.language_model,
            [f"{name}.{i}" for name, path in stacks.items() for i in range(len(get_path(base, path)))],
        )


__all__ = ["InputSpaceModel", "BASELINE_CONFIG_NAME", "BASELINE_WEIGHTS_NAME"]
