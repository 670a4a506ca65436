"""Pieces methods share: the visual projector, the answer-only loss, gradient checkpointing, feature
and config checks, target layers, and inserting tokens into the LM's input."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

PROJECTORS = ("linear", "mlp", "mlp2x_gelu")


def make_projector(
    kind: str, visual_dim: int, hidden_size: int, hidden: int = 128, device: torch.device | str | None = None
) -> nn.Module:
    """f: 'linear' (BART/T5 in the paper), 'mlp' = Linear(d', hidden)-SiLU-Linear(hidden, d) (the
    official MemVP LLaMA code) or 'mlp2x_gelu' = Linear(d', d)-GELU-Linear(d, d) (LLaVA-1.5's
    projector, the paper's Table 9 setting; ``hidden`` unused).

    Kept in fp32 whatever the LM's dtype: these are the trained (master) weights. Initialise it
    with ``init_projector``."""
    kw = {"device": device, "dtype": torch.float32}
    if kind == "linear":
        return nn.Linear(visual_dim, hidden_size, **kw)
    if kind == "mlp2x_gelu":
        return nn.Sequential(
            nn.Linear(visual_dim, hidden_size, **kw), nn.GELU(), nn.Linear(hidden_size, hidden_size, **kw)
        )
    return nn.Sequential(nn.Linear(visual_dim, hidden, **kw), nn.SiLU(), nn.Linear(hidden, hidden_size, **kw))


@torch.no_grad()
def init_projector(projector: nn.Module) -> None:
    """As the official code: xavier weights, zero bias."""
    for m in projector.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def answer_only_loss(language_model: nn.Module, labels: torch.Tensor, **inputs: Any) -> CausalLMOutputWithPast:
    """Causal-LM loss with the LM head evaluated only at positions that predict a label.

    Projecting every prompt token onto a 50k-word vocabulary costs as much as a few layers; only
    the positions that predict a label token are needed for the loss. The returned ``logits`` are
    [n_labelled, vocab]."""
    hidden = language_model.base_model(**inputs).last_hidden_state
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != -100
    logits = language_model.get_output_embeddings()(hidden[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), targets[keep])
    return CausalLMOutputWithPast(loss=loss, logits=logits)


def can_skip_lm_head(language_model: nn.Module) -> bool:
    cfg = language_model.config
    return not cfg.is_encoder_decoder and not getattr(cfg, "final_logit_softcapping", None)


def enable_gradient_checkpointing(language_model: nn.Module) -> None:
    """Checkpoint the LM's layers, non-reentrant so that gradients reach trainable tensors computed
    outside the checkpointed layers (the visual memory, a projector's visual tokens)."""
    kwargs = {"use_reentrant": False}
    if hasattr(language_model, "activation_checkpointing_enable"):  # transformers >= 5
        language_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_visual_features(visual_features: torch.Tensor, visual_dim: int, config_name: str) -> None:
    if visual_features.dim() != 3 or visual_features.shape[-1] != visual_dim:
        raise ValueError(
            f"visual_features must have shape [batch, n_visual, visual_dim={visual_dim}], "
            f"got {tuple(visual_features.shape)}. Check that {config_name}.visual_dim matches "
            "your vision encoder's feature size."
        )


CAN_SEE_BACKWARD = hasattr(torch._C, "_current_graph_task_id")
"""Whether torch tells if autograd's backward is running; without it a returned forward's memory stays
in place (the older behaviour), since checkpoint recomputation needs it."""


def in_backward() -> bool:
    return CAN_SEE_BACKWARD and torch._C._current_graph_task_id() != -1


def target_layers(language_model: nn.Module, layout, target: str | list[int]) -> list[tuple[str, int, nn.Module]]:
    """The layers a method targets, as (stack name, index, layer): ``target`` is 'all', a stack name
    ('encoder' / 'decoder'), or indices (negative ones too) into the default stack (the encoder of an
    encoder-decoder, else the decoder). Errors name what the model has."""
    from ..architectures import get_path

    base, stacks = language_model.base_model, layout.stacks
    if isinstance(target, str):
        names = list(stacks) if target == "all" else [target]
        missing = [n for n in names if n not in stacks]
        if missing:
            raise ValueError(
                f"target_layers={target!r}: a {language_model.config.model_type} model has "
                f"no {missing[0]} stack (it has {list(stacks)})"
            )
        chosen = [(n, i) for n in names for i in range(len(get_path(base, stacks[n])))]
    else:
        default = "encoder" if layout.is_encoder_decoder else "decoder"
        count = len(get_path(base, stacks[default]))
        bad = [i for i in target if not -count <= i < count]
        if bad:
            raise ValueError(f"target_layers {bad} out of range: the {default} has {count} layers")
        chosen = [(default, i) for i in sorted({i % count for i in target})]
    return [(stack, i, get_path(base, stacks[stack])[i]) for stack, i in chosen]


def insert_tokens(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    at: torch.Tensor,
    labels: torch.Tensor | None = None,
):
    """Put n tokens [B, n, d] at index ``at`` [B] of each row: (embeds, mask, labels) of length L + n,
    the tokens' mask ``token_mask`` [B, n] and their labels -100. At the first attended token of each
    row (input space), left-padded rows (generation) become [pads, tokens, text] and right-padded ones
    (training) [tokens, text, pads]: every row stays one contiguous attended block, so default position
    ids and KV-cache continuation stay right."""
    batch, length, dim = embeds.shape
    n = tokens.shape[1]
    at = at.view(-1, 1)
    j = torch.arange(length + n, device=embeds.device).unsqueeze(0)  # [1, L + n]
    is_token = (j >= at) & (j < at + n)
    text_index = torch.where(j < at, j, j - n).clamp(0, length - 1)
    token_index = (j - at).clamp(0, n - 1)
    out = torch.where(
        is_token.unsqueeze(-1),
        tokens.to(embeds.dtype).gather(1, token_index.unsqueeze(-1).expand(-1, -1, dim)),
        embeds.gather(1, text_index.unsqueeze(-1).expand(-1, -1, dim)),
    )
    out_mask = torch.where(is_token, token_mask.to(mask.dtype).gather(1, token_index), mask.gather(1, text_index))
    out_labels = None
    if labels is not None:
        out_labels = torch.where(is_token, torch.full_like(labels[:, :1], -100), labels.gather(1, text_index))
    return out, out_mask, out_labels


def check_target_layers(value: str | list[int] | None, owner: str) -> str | list[int] | None:
    """A config's ``target_layers``: 'all', 'encoder', 'decoder', a non-empty list of layer indices, or None."""
    if isinstance(value, str):
        if value not in ("all", "encoder", "decoder"):
            raise ValueError(f"{owner}.target_layers must be one of ['all', 'encoder', 'decoder'], got {value!r}")
        return value
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    ):
        raise ValueError(
            f"{owner}.target_layers must be 'all', 'encoder', 'decoder' or a non-empty list of layer "
            f"indices, got {value!r}"
        )
    return list(value)


__all__ = [
    "CAN_SEE_BACKWARD",
    "in_backward",
    "PROJECTORS",
    "make_projector",
    "init_projector",
    "answer_only_loss",
    "can_skip_lm_head",
    "enable_gradient_checkpointing",
    "check_visual_features",
    "target_layers",
    "insert_tokens",
    "check_target_layers",
]
