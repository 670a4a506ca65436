"""One call from an adapter to a working model: ``load_pretrained("runs/x/adapter")`` (a folder or a
Hugging Face Hub id) reads what the adapter recorded of its training (the language model, the vision
encoder and its options, the prompt template and lengths), loads them, puts the adapter on the language
model (any registered method) and returns everything together, ready to ask.

Adapters saved before format 2 record none of that: give ``language_model`` and ``vision_encoder``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .inputs import DEFAULT_PROMPT_TEMPLATE, Encoded, encode_sample
from .methods import adapter_meta, check_adapter_features, load_adapter
from .pretrained import load_language_model, load_vision_encoder
from .save_load import resolve_local

PIPELINE_KEYS = (
    "language_model",
    "vision_encoder",
    "vision",
    "num_frames",
    "prompt_template",
    "max_length",
    "max_new_tokens",
)
"""What an adapter records of its training (``MethodModel.pipeline``), as ``TrainConfig`` keys."""


@dataclass
class Pretrained:
    """A loaded adapter with everything it needs: the model (the frozen language model with the method),
    its tokenizer, its vision encoder, and the prompt settings it was trained with."""

    model: nn.Module
    tokenizer: Any
    vision_encoder: nn.Module
    method: str
    adapter: Path
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_length: int = 128
    max_new_tokens: int = 10

    def encode_prompt(self, question: str) -> Encoded:
        """The question's prompt tokens as training built them (room left for ``max_new_tokens``)."""
        from .datasets import Sample

        sample = Sample(id="question", prompt=question, answers=[])
        return encode_sample(
            self.tokenizer, sample, self.max_length - self.max_new_tokens, self.prompt_template, with_answer=False
        )

    @torch.no_grad()
    def ask(self, image, question: str, max_new_tokens: int | None = None) -> str:
        """The greedy answer to ``question`` about ``image`` (a path or a PIL image), cut at its first line
        break as ``memvp predict`` cuts it."""
        from .generation import first_line

        features = self.vision_encoder.encode([image])
        ids = torch.tensor([self.encode_prompt(question).prompt_ids], device=next(self.model.parameters()).device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            visual_features=features,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out if self.model.config.is_encoder_decoder else out[:, ids.shape[1] :]
        return first_line(self.tokenizer.decode(new[0], skip_special_tokens=True))


def recorded_pipeline(adapter: str | os.PathLike) -> dict:
    """What the adapter recorded of its training (``PIPELINE_KEYS``); empty for adapters before format 2."""
    meta, _ = adapter_meta(adapter)
    return {k: v for k, v in (meta.get("pipeline") or {}).items() if k in PIPELINE_KEYS}


def prompt_lengths(
    recorded: dict,
    max_new_tokens: int | None,
    max_length: int | None,
    names: tuple[str, str] = ("max_new_tokens", "max_length"),
) -> tuple[int, int]:
    """(max_new_tokens, max_length): those given, else those the adapter recorded, else 10 and 128; a
    ValueError naming ``names`` when they leave no room for an answer."""
    new = int(recorded.get("max_new_tokens") or 10) if max_new_tokens is None else max_new_tokens
    length = int(recorded.get("max_length") or 128) if max_length is None else max_length
    if new < 1:
        raise ValueError(f"{names[0]} must be >= 1, got {new}")
    if length <= new:
        raise ValueError(f"{names[1]} ({length}) must exceed {names[0]} ({new})")
    return new, length


def load_pretrained(
    adapter: str | os.PathLike,
    language_model: str | None = None,
    vision_encoder: str | None = None,
    vision: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    is_trainable: bool = False,
    allow_base_mismatch: bool = False,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
) -> Pretrained:
    """Load an adapter (a folder, or a Hub id from huggingface_hub's cache) with its language model and
    vision encoder. Anything given here overrides what the adapter recorded; an adapter that recorded
    nothing (saved before format 2) needs ``language_model`` and ``vision_encoder``. For a 7B model on a
    GPU: ``dtype=torch.bfloat16, device="cuda"``. Everything that needs no model is checked first."""
    path = resolve_local(adapter, "adapter")
    meta, _ = adapter_meta(path)
    recorded = meta.get("pipeline") or {}
    max_new_tokens, max_length = prompt_lengths(recorded, max_new_tokens, max_length)
    language_model = language_model or recorded.get("language_model")
    vision_encoder = vision_encoder or recorded.get("vision_encoder")
    if not language_model or not vision_encoder:
        missing = [
            name
            for name, value in (("language_model", language_model), ("vision_encoder", vision_encoder))
            if not value
        ]
        raise ValueError(
            f"the adapter {adapter} does not record its {' and '.join(missing)} (saved before adapter "
            f"format 2): give {' and '.join(missing)}"
        )
    options = (
        vision if vision is not None else recorded.get("vision") or (meta.get("vision_encoder") or {}).get("options")
    )
    encoder = load_vision_encoder(vision_encoder, options, num_frames=int(recorded.get("num_frames") or 0))
    check_adapter_features(path, encoder.feature_dim, vision_encoder)  # before the (large) language model
    lm, tokenizer = load_language_model(language_model, dtype=dtype)
    model = load_adapter(
        lm,
        path,
        is_trainable=is_trainable,
        allow_base_mismatch=allow_base_mismatch,
        vision_encoder=encoder if encoder.has_adapters else None,
    )
    if device is not None:
        model.to(device)
        encoder.to(device)
    if not is_trainable:
        model.eval()
        encoder.eval()
    return Pretrained(
        model,
        tokenizer,
        encoder,
        model.method_name,
        path,
        prompt_template=recorded.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
    )


__all__ = ["Pretrained", "PIPELINE_KEYS", "load_pretrained", "prompt_lengths", "recorded_pipeline"]
