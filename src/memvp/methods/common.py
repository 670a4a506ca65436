"""What every method's model shares: the visual projector, the answer-only loss, gradient
checkpointing, feature checks and peft-like parameter accounting."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..atomic import atomic_write_text
from ..save_load import finish_loading, model_card, read_adapter, write_adapter

PROJECTORS = ("linear", "mlp", "mlp2x_gelu")


def make_projector(kind: str, visual_dim: int, hidden_size: int, hidden: int = 128,
                   device: torch.device | str | None = None) -> nn.Module:
    """f: 'linear' (BART/T5 in the paper), 'mlp' = Linear(d', hidden)-SiLU-Linear(hidden, d) (the
    official MemVP LLaMA code) or 'mlp2x_gelu' = Linear(d', d)-GELU-Linear(d, d) (LLaVA-1.5's
    projector, the paper's Table 9 setting; ``hidden`` unused).

    Kept in fp32 whatever the LM's dtype: these are the trained (master) weights. Initialise it
    with ``init_projector``."""
    kw = {"device": device, "dtype": torch.float32}
    if kind == "linear":
        return nn.Linear(visual_dim, hidden_size, **kw)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(visual_dim, hidden_size, **kw), nn.GELU(), nn.Linear(hidden_size, hidden_size, **kw))
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
            raise ValueError(f"target_layers={target!r}: a {language_model.config.model_type} model has "
                             f"no {missing[0]} stack (it has {list(stacks)})")
        chosen = [(n, i) for n in names for i in range(len(get_path(base, stacks[n])))]
    else:
        default = "encoder" if layout.is_encoder_decoder else "decoder"
        count = len(get_path(base, stacks[default]))
        bad = [i for i in target if not -count <= i < count]
        if bad:
            raise ValueError(f"target_layers {bad} out of range: the {default} has {count} layers")
        chosen = [(default, i) for i in sorted({i % count for i in target})]
    return [(stack, i, get_path(base, stacks[stack])[i]) for stack, i in chosen]


class TrainableStateMixin:
    """What every method's model shares: peft-like parameter accounting, the trainable-weights state,
    the adapter files (through ``memvp.save_load``), gradient checkpointing and detaching.

    A model class sets ``config_class``, ``config_name``, ``weights_name``, ``config_attr`` (the
    attribute holding its own config) and ``layers_name`` (for error messages), keeps its hooks in
    ``_hooks`` and may add entries to the saved metadata with ``adapter_meta``."""

    config_attr = "config"
    layers_name = "layers"
    _hooks: list = []

    def adapter_meta(self) -> dict[str, Any]:
        return {}

    def save_pretrained(self, save_directory: str | os.PathLike, card_info: dict | None = None) -> None:
        """Write the trainable weights (safetensors), the config and a model card (README.md, with
        ``card_info``: training data, metrics); each file atomically."""
        write_adapter(save_directory, self.trainable_state_dict(), self._adapter_metadata(), self.config_name,
                      self.weights_name)
        self.write_model_card(save_directory, card_info)

    def write_model_card(self, save_directory: str | os.PathLike, card_info: dict | None = None) -> None:
        """(Re)write the adapter folder's README.md, e.g. with the metrics once they are known."""
        atomic_write_text(Path(save_directory) / "README.md", model_card(
            self._adapter_metadata(), type(self).__name__, self.get_nb_trainable_parameters()[0], card_info))

    def _adapter_metadata(self) -> dict[str, Any]:
        meta = {"config": getattr(self, self.config_attr).to_dict(), "base_model": self.base_model_fingerprint()}
        encoder = getattr(self, "vision_encoder", None)
        if encoder is not None and hasattr(encoder, "describe"):
            meta["vision_encoder"] = encoder.describe()
        return {**meta, **self.adapter_meta()}

    @classmethod
    def from_pretrained(cls, language_model: nn.Module, path: str | os.PathLike, is_trainable: bool = False,
                        allow_base_mismatch: bool = False, **kwargs: Any):
        """The adapter saved in ``path`` on ``language_model`` (refused when saved for another base
        model); frozen for inference unless ``is_trainable``. ``vision_encoder``: the encoder to attach
        when it has ViT adapters (their weights are loaded too); other ``kwargs`` go to the constructor."""
        meta, config, state = read_adapter(path, cls.config_name, cls.weights_name, f"a {cls.__name__} adapter "
                                           f"directory (save one with {cls.__name__}.save_pretrained)", cls.config_class)
        vision_encoder = kwargs.pop("vision_encoder", None)
        model = cls(language_model, config, **kwargs)
        if vision_encoder is not None:
            model.attach_vision_encoder(vision_encoder)  # ViT adapters' weights are in the adapter file
        return finish_loading(model, meta, state, Path(path) / cls.weights_name, cls.layers_name, is_trainable,
                              allow_base_mismatch)

    @property
    def config(self):
        """The language model's config, as on a peft model (the method's own is ``config_attr``)."""
        return self.language_model.config

    def _hook_sites(self) -> None:
        """Hook every site's FFN (``self.sites``: ``ffn_input`` / ``ffn_output`` modules): a pre-hook
        hands its input to ``_capture(i, ...)``, a hook lets ``_inject(i, ...)`` change its output.
        Partials of bound methods, not closures: copy.deepcopy(model) gives hooks that talk to the copy."""
        self._hooks = []
        for i, site in enumerate(self.sites):
            self._hooks.append(site.ffn_input.register_forward_pre_hook(
                functools.partial(self._capture, i), with_kwargs=True))
            self._hooks.append(site.ffn_output.register_forward_hook(functools.partial(self._inject, i)))

    def _capture(self, index: int, module, args, kwargs) -> None:
        self.sites[index].query = args[0] if args else next(iter(kwargs.values()))

    def _captured_query(self, index: int):
        """(site, the FFN input its pre-hook captured); the capture is consumed."""
        site = self.sites[index]
        x, site.query = site.query, None
        if x is None:
            raise RuntimeError(f"{type(self).__name__}: the FFN input of {site.name} was not captured")
        return site, x

    def _visual_state_in_use(self) -> bool:
        """Whether the hooks read the visual state set last (``_entries``): not when none is set, nor
        once the forward / generate that set it has returned (the LM called directly then sees no
        image); gradient checkpointing recomputes layers during backward, after forward returned, and
        that recomputation must see the forward's images."""
        return self._entries is not None and not (self._stale and not in_backward())

    def release_visual_memory(self) -> None:
        """Later direct calls of the language model no longer see the visual state set last (as after
        a returned ``forward``); gradient-checkpoint recomputation during backward still does."""
        self._stale = CAN_SEE_BACKWARD

    def gradient_checkpointing_enable(self) -> None:
        enable_gradient_checkpointing(self.language_model)
        encoder = getattr(self, "vision_encoder", None)
        if encoder is not None and hasattr(encoder, "gradient_checkpointing_enable"):
            encoder.gradient_checkpointing_enable()

    # ----------------------------------------------------------------------------- vision encoder
    def attach_vision_encoder(self, encoder: nn.Module | None) -> None:
        """Make ``encoder`` part of the model: ``pixel_values`` are then encoded inside forward /
        generate (under the same autocast and gradient checkpointing), and its trainable parts (ViT
        adapters) train, save and load with the method's own weights."""
        self.vision_encoder = encoder

    def _visual_features(self, visual_features: torch.Tensor | None, pixel_values: torch.Tensor | None,
                         input_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """The visual features of a call: given, or encoded from ``pixel_values`` by the attached encoder."""
        if pixel_values is not None:
            if visual_features is not None:
                raise ValueError("give either visual_features or pixel_values, not both")
            encoder = getattr(self, "vision_encoder", None)
            if encoder is None:
                raise ValueError(f"pixel_values given but this {type(self).__name__} has no vision encoder; pass "
                                 "visual_features, or attach one with attach_vision_encoder(encoder)")
            param = next(encoder.parameters())
            visual_features = encoder(pixel_values.to(param.device, param.dtype))
        if (visual_features is not None and input_ids is not None
                and visual_features.shape[0] != input_ids.shape[0]):
            # One image's features for several prompts would silently broadcast.
            raise ValueError(f"visual features for {visual_features.shape[0]} sample(s) but {input_ids.shape[0]} "
                             "prompt(s): give one row of features per prompt")
        return visual_features

    def remove_hooks(self) -> nn.Module:
        """Detach the method from the language model and return the language model as it was."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return self.language_model

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} "
              f"|| trainable%: {100 * trainable / max(total, 1):.4f}")

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        expected = self.trainable_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            hint = ""
            if any(k.startswith("vision_encoder.") for k in missing + unexpected):
                hint = (" (its ViT adapters differ from the vision encoder's: use the vision options it was trained "
                        "with, e.g. the same vision.adapter_hidden)")
            raise ValueError(f"{source} does not match this {type(self).__name__}{hint}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, this model "
                                 f"expects {tuple(expected[name].shape)}")
        with torch.no_grad():
            for name, tensor in state.items():
                expected[name].copy_(tensor)


__all__ = ["CAN_SEE_BACKWARD", "in_backward", "PROJECTORS", "make_projector", "init_projector", "answer_only_loss",
           "can_skip_lm_head", "enable_gradient_checkpointing", "check_visual_features", "target_layers",
           "TrainableStateMixin"]
