"""The base classes of every method's model, and what the rest of the library asks of a model.

* ``MethodModel``: a frozen language model plus a method's few trainable tensors. It owns what every
  method shares: the forward / generate template (visual features from ``visual_features`` or, with
  an attached vision encoder, from ``pixel_values``; the LM head only at answer positions), the
  parameter accounting, the adapter files (through ``memvp.save_load``), gradient checkpointing, and
  the capabilities that training, bench, flops, explain and serve read instead of method names.
* ``FFNMemoryModel``: a ``MethodModel`` whose visual input becomes extra entries read next to the
  LM's FFNs (MemVP, ADEM-VL). It owns the target layers, the FFN hooks, the visual state of the
  current call and its release. A method implements only ``make_entries`` (visual features -> its
  entries, once per call) and ``read`` (what one layer adds to its FFN output).

A method model overrides (peft's ``BaseTuner`` states its contract the same way):

* ``config_class``, ``config_name``, ``weights_name``, ``config_attr``: its config and adapter files;
* ``visual_dim``: the feature size it reads (None: no image);
* ``lm_inputs`` (optional): how ids, mask and labels reach the LM, e.g. with tokens inserted;
* ``make_entries`` and ``read`` (FFN memories): the entries of a call and one layer's read;
* ``base_model_fingerprint``: which layers it adapts (the adapter's base-model check);
* capabilities (``MethodModelProtocol``): ``reads_images``, ``supports_probing``, ``analytic_layer_flops``,
  ``use_feature_statistics``.

``docs/design.md`` ("Adding a method") shows a whole new method in about 40 lines.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..architectures import FFNLayout, get_path, layout_for
from ..atomic import atomic_write_text
from ..save_load import (
    ADAPTER_FORMAT_VERSION,
    base_model_fingerprint,
    finish_loading,
    model_card,
    read_adapter,
    write_adapter,
)
from .common import (
    CAN_SEE_BACKWARD,
    answer_only_loss,
    can_skip_lm_head,
    enable_gradient_checkpointing,
    in_backward,
    target_layers,
)


@runtime_checkable
class MethodModelProtocol(Protocol):
    """What training, bench, flops, explain and serve need from a method's model."""

    reads_images: bool
    """False for a method that never sees the image (text-only LoRA)."""
    supports_probing: bool
    """Whether ``memvp.instruments`` can measure it (``probing()`` / ``bypassed()``)."""
    visual_dim: int | None

    def analytic_layer_flops(self, length: float, dim: int, n_visual: int) -> float: ...

    def use_feature_statistics(self, mean: torch.Tensor, share: float) -> str | None: ...

    def get_nb_trainable_parameters(self) -> tuple[int, int]: ...

    def save_pretrained(self, save_directory: str | os.PathLike, card_info: dict | None = None) -> None: ...


class MethodModel(nn.Module):
    """A frozen language model with one method's trainable tensors (see the module docstring)."""

    config_class: type
    config_name: str
    weights_name: str
    config_attr = "config"
    """The attribute holding the method's own config (``config`` is the LM's, as on a peft model)."""
    layers_name = "layers"
    """What its adapted layers are called in error messages."""
    reads_images = True
    supports_probing = False
    state_keys: tuple[str, ...] = ()
    """Keyword arguments of forward / generate that go to ``set_visual_state`` (MemVP's blocked entries)."""
    method_name: str | None = None
    """Its registered method's name (``methods.mapping`` sets it when it builds or loads a model)."""
    pipeline: dict | None = None
    """What it is used with, saved in the adapter so that it loads in one call (``memvp.load_pretrained``):
    ``language_model``, ``vision_encoder``, ``vision`` options, ``num_frames``, ``prompt_template``,
    ``max_length``, ``max_new_tokens``. Training sets it; set it yourself for a model trained elsewhere."""

    # ------------------------------------------------------------------------- capabilities
    def analytic_layer_flops(self, length: float, dim: int, n_visual: int) -> float:
        """FLOPs of one transformer layer for one sample with L text and n visual tokens (paper eq. 13:
        the text alone; methods add their own cost)."""
        return 4 * length * dim * (6 * dim + length)

    def use_feature_statistics(self, mean: torch.Tensor, share: float) -> str | None:
        """Training's statistics of its visual features (their mean; the share of their energy in it):
        a method may keep the mean (MemVP's ``center_features``) and return a hint for the log."""
        return None

    @property
    def visual_dim(self) -> int | None:
        return getattr(getattr(self, self.config_attr), "visual_dim", None)

    @property
    def config(self):
        """The language model's config, as on a peft model (the method's own is ``config_attr``)."""
        return self.language_model.config

    # ------------------------------------------------------------------------- running
    def set_visual_state(
        self, visual_features: torch.Tensor | None, has_image: torch.Tensor | None, **state: Any
    ) -> None:
        """Prepare what the LM calls of one forward / generate read of the image (FFN memories: their
        entries); nothing for methods that only change the LM's input."""

    def release_visual_memory(self) -> None:
        """Later direct calls of the language model no longer see the visual state set last."""

    def lm_inputs(
        self,
        input_ids,
        attention_mask,
        visual_features,
        has_image,
        labels=None,
        generation: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The LM's keyword inputs: ids, mask and labels as they are, unless the method inserts tokens."""
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        answer_logits_only: bool = False,
        **kwargs: Any,
    ):
        """The language model's forward with the method in place. ``visual_features=None``: no sample
        has an image; ``has_image`` ([B] bool) marks image-less samples of a batch.

        ``answer_logits_only=True`` (with ``labels``, decoder-only LMs) evaluates the LM head only at
        the labelled positions: the returned ``logits`` are [n_labelled, vocab], the loss is the same."""
        lm = self.language_model
        with self.visual_state(visual_features, pixel_values, has_image, input_ids, kwargs) as visual_features:
            inputs = self.lm_inputs(input_ids, attention_mask, visual_features, has_image, labels, **kwargs)
            if answer_logits_only and inputs["labels"] is not None and can_skip_lm_head(lm):
                return answer_only_loss(lm, **inputs, **kwargs)
            return lm(**inputs, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """transformers' ``generate`` with the method in place (its visual state made once for all
        decoding steps). Decoder-only output is the prompt ids + the new tokens, whatever the method
        inserted into the input."""
        with self.visual_state(visual_features, pixel_values, has_image, input_ids, kwargs) as visual_features:
            inputs = self.lm_inputs(input_ids, attention_mask, visual_features, has_image, generation=True)
            inputs.pop("labels", None)
            out = self.language_model.generate(**inputs, **kwargs)
        if "inputs_embeds" in inputs and not self.config.is_encoder_decoder:
            out = torch.cat([input_ids.to(out.device), out], dim=1)  # generate returned new tokens only
        return out

    @contextlib.contextmanager
    def visual_state(
        self,
        visual_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        call_kwargs: dict | None = None,
    ):
        """The method's visual state for the LM calls made inside (``forward`` and ``generate`` use it;
        so can your own loop): the images encoded if needed, the state set, and released afterwards.
        The method's own state keys (``state_keys``) are popped from ``call_kwargs``. Yields the features."""
        visual_features = self.features_of(visual_features, pixel_values, input_ids)
        call_kwargs = {} if call_kwargs is None else call_kwargs
        state = {k: call_kwargs.pop(k) for k in self.state_keys if k in call_kwargs}
        self.set_visual_state(visual_features, has_image, **state)
        try:
            yield visual_features
        finally:
            self.release_visual_memory()

    # ------------------------------------------------------------------------- vision encoder
    def attach_vision_encoder(self, encoder: nn.Module | None) -> None:
        """Make ``encoder`` part of the model: ``pixel_values`` are then encoded inside forward /
        generate (under the same autocast and gradient checkpointing), and its trainable parts (ViT
        adapters) train, save and load with the method's own weights."""
        self.vision_encoder = encoder

    def features_of(
        self,
        visual_features: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The visual features of a call: given, or encoded from ``pixel_values`` by the attached encoder."""
        if pixel_values is not None:
            if visual_features is not None:
                raise ValueError("give either visual_features or pixel_values, not both")
            encoder = getattr(self, "vision_encoder", None)
            if encoder is None:
                raise ValueError(
                    f"pixel_values given but this {type(self).__name__} has no vision encoder; pass "
                    "visual_features, or attach one with attach_vision_encoder(encoder)"
                )
            param = next(encoder.parameters())
            visual_features = encoder(pixel_values.to(param.device, param.dtype))
        if visual_features is not None and input_ids is not None and visual_features.shape[0] != input_ids.shape[0]:
            # One image's features for several prompts would silently broadcast.
            raise ValueError(
                f"visual features for {visual_features.shape[0]} sample(s) but {input_ids.shape[0]} "
                "prompt(s): give one row of features per prompt"
            )
        return visual_features

    def gradient_checkpointing_enable(self) -> None:
        enable_gradient_checkpointing(self.language_model)
        encoder = getattr(self, "vision_encoder", None)
        if encoder is not None and hasattr(encoder, "gradient_checkpointing_enable"):
            encoder.gradient_checkpointing_enable()

    def remove_hooks(self) -> nn.Module:
        """Detach the method from the language model and return the language model as it was."""
        return self.language_model

    # ------------------------------------------------------------------------- weights and files
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} "
            f"|| trainable%: {100 * trainable / max(total, 1):.4f}"
        )

    def load_trainable_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        expected = self.trainable_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            hint = ""
            if any(k.startswith("vision_encoder.") for k in missing + unexpected):
                hint = (
                    " (its ViT adapters differ from the vision encoder's: use the vision options it was trained "
                    "with, e.g. the same vision.adapter_hidden)"
                )
            raise ValueError(
                f"{source} does not match this {type(self).__name__}{hint}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for name, tensor in state.items():
            if tensor.shape != expected[name].shape:
                raise ValueError(
                    f"{source}: {name} has shape {tuple(tensor.shape)}, this model "
                    f"expects {tuple(expected[name].shape)}"
                )
        with torch.no_grad():
            for name, tensor in state.items():
                expected[name].copy_(tensor)

    def adapter_meta(self) -> dict[str, Any]:
        """Entries a method adds to its adapter's config file."""
        return {}

    def _adapter_metadata(self) -> dict[str, Any]:
        meta = {
            "format_version": ADAPTER_FORMAT_VERSION,
            "memvp_version": _memvp_version(),
            "method": self.method_name,
            "config": getattr(self, self.config_attr).to_dict(),
            "base_model": self.base_model_fingerprint(),
        }
        if self.pipeline:
            meta["pipeline"] = self.pipeline
        encoder = getattr(self, "vision_encoder", None)
        if encoder is not None and hasattr(encoder, "describe"):
            meta["vision_encoder"] = encoder.describe()
        return {**meta, **self.adapter_meta()}

    def save_pretrained(self, save_directory: str | os.PathLike, card_info: dict | None = None) -> None:
        """Write the trainable weights (safetensors), the config and a model card (README.md, with
        ``card_info``: training data, metrics); each file atomically."""
        write_adapter(
            save_directory, self.trainable_state_dict(), self._adapter_metadata(), self.config_name, self.weights_name
        )
        self.write_model_card(save_directory, card_info)

    def write_model_card(self, save_directory: str | os.PathLike, card_info: dict | None = None) -> None:
        """(Re)write the adapter folder's README.md, e.g. with the metrics once they are known."""
        atomic_write_text(
            Path(save_directory) / "README.md",
            model_card(self._adapter_metadata(), type(self).__name__, self.get_nb_trainable_parameters()[0], card_info),
        )

    @classmethod
    def from_pretrained(
        cls,
        language_model: nn.Module,
        path: str | os.PathLike,
        is_trainable: bool = False,
        allow_base_mismatch: bool = False,
        **kwargs: Any,
    ):
        """The adapter saved in ``path`` on ``language_model`` (refused when saved for another base
        model); frozen for inference unless ``is_trainable``. ``vision_encoder``: the encoder to attach
        (ViT adapters' weights are loaded too); other ``kwargs`` go to the constructor."""
        meta, config, state = read_adapter(
            path,
            cls.config_name,
            cls.weights_name,
            f"a {cls.__name__} adapter directory (save one with {cls.__name__}.save_pretrained)",
            cls.config_class,
        )
        vision_encoder = kwargs.pop("vision_encoder", None)
        model = cls(language_model, config, **kwargs)
        if vision_encoder is not None:
            model.attach_vision_encoder(vision_encoder)
        return finish_loading(
            model, meta, state, Path(path) / cls.weights_name, cls.layers_name, is_trainable, allow_base_mismatch
        )


def _memvp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memvp")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


@dataclass
class FFNSite:
    """One hooked FFN: where its input (the query) and its output are, its activation, and which
    table of position embeddings it reads (one shared table, or one per layer)."""

    name: str
    layer: nn.Module
    ffn_input: nn.Module
    ffn_output: nn.Module
    activation: nn.Module
    table: int = 0
    query: torch.Tensor | None = None


class FFNMemoryModel(MethodModel):
    """A method whose visual input becomes entries that every target FFN reads next to its own
    key/value memory: the FFN output gains ``read(site, x, entries)`` for its input x.

    Subclasses call ``_setup_sites(language_model, target, shared)`` in their constructor and
    implement ``make_entries(visual_features, has_image, **state)`` (the entries of one call, from
    features or, with None, position-only) and ``read(index, x, entries)``."""

    def _setup_sites(self, language_model: nn.Module, target: str | list[int], shared: bool = True) -> None:
        self.language_model = language_model
        self.layout: FFNLayout = layout_for(language_model)
        language_model.requires_grad_(False)
        self.sites = [
            FFNSite(
                name=f"{stack}.{i}",
                layer=layer,
                ffn_input=get_path(layer, self.layout.ffn_input),
                ffn_output=get_path(layer, self.layout.ffn_output),
                activation=get_path(layer, self.layout.activation),
                table=0 if shared else index,
            )
            for index, (stack, i, layer) in enumerate(target_layers(language_model, self.layout, target))
        ]
        self._entries: Any = None
        self._stale = False  # forward/generate returned: its images are no longer in use
        self._hooks: list = []
        self._hook_sites()

    def _hook_sites(self) -> None:
        """Find each site's FFN modules in its layer and hook them (again after a merge replaced them)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for i, site in enumerate(self.sites):
            site.ffn_input = get_path(site.layer, self.layout.ffn_input)
            site.ffn_output = get_path(site.layer, self.layout.ffn_output)
            # Partials of bound methods, not closures: copy.deepcopy(model) gives hooks that talk to the copy.
            self._hooks.append(
                site.ffn_input.register_forward_pre_hook(functools.partial(self._capture, i), with_kwargs=True)
            )
            self._hooks.append(site.ffn_output.register_forward_hook(functools.partial(self._inject, i)))

    # ------------------------------------------------------------------------- what a method implements
    def make_entries(self, visual_features: torch.Tensor | None, has_image: torch.Tensor | None, **state: Any) -> Any:
        """The entries every layer reads in the next LM calls (None features: position entries only)."""
        raise NotImplementedError

    def read(self, index: int, x: torch.Tensor, entries: Any, ffn_output: torch.Tensor) -> torch.Tensor | None:
        """What layer ``index`` adds to its FFN output for the FFN input ``x`` (None: nothing)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- the visual state
    def set_visual_state(
        self, visual_features: torch.Tensor | None, has_image: torch.Tensor | None, **state: Any
    ) -> None:
        """Make the entries once for the next LM calls. They stay until the next call, so that
        gradient-checkpoint recomputation during backward sees the same ones."""
        self._entries = self.make_entries(visual_features, has_image, **state)
        self._stale = False

    def release_visual_memory(self) -> None:
        """Later direct calls of the language model no longer see the visual state set last (as after
        a returned ``forward``); gradient-checkpoint recomputation during backward still does."""
        self._stale = CAN_SEE_BACKWARD

    def current_entries(self) -> Any:
        """The entries the hooks read now: the ones set last while their call runs (or its backward
        recomputes), position entries only otherwise (the LM called directly sees no image)."""
        if self._entries is None or (self._stale and not in_backward()):
            return self.make_entries(None, None)
        return self._entries

    # ------------------------------------------------------------------------- hooks
    def _capture(self, index: int, module, args, kwargs) -> None:
        self.sites[index].query = args[0] if args else next(iter(kwargs.values()))

    def _inject(self, index: int, module, args, output):
        site = self.sites[index]
        x, site.query = site.query, None
        if x is None:
            raise RuntimeError(f"{type(self).__name__}: the FFN input of {site.name} was not captured")
        delta = self.read(index, x, self.current_entries(), output)
        return output if delta is None else output + delta.to(output.dtype)

    def remove_hooks(self) -> nn.Module:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return self.language_model

    def base_model_fingerprint(self) -> dict[str, Any]:
        return base_model_fingerprint(self.language_model, [s.name for s in self.sites])


def per_sample_rows(x: torch.Tensor, samples: int) -> torch.Tensor:
    """x as [samples, rows per sample, d]: x may be [B, L, d], [B * L, d] (OPT flattens tokens) or hold r
    copies of each sample in a row (generate() expands prompts for beams with repeat_interleave); a
    sample's rows are contiguous in all three."""
    d = x.shape[-1]
    rows = x.numel() // d
    if rows % samples:
        raise ValueError(
            f"the visual entries hold {samples} samples but the FFN input {tuple(x.shape)} "
            "cannot be split into that many samples"
        )
    return x.reshape(samples, rows // samples, d)


def read_entries(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, weights_of, scale=1.0) -> torch.Tensor:
    """``scale * weights_of(x, K) V`` for x (any ``per_sample_rows`` shape) and K, V [samples or 1, n, d]:
    what an FFN memory adds to one layer's output; ``weights_of`` gives [samples, rows, n] weights."""
    keys = keys.to(device=x.device, dtype=x.dtype)
    values = values.to(device=x.device, dtype=x.dtype)
    weights = weights_of(per_sample_rows(x, keys.shape[0]), keys)
    return (scale * torch.matmul(weights, values)).reshape(x.shape)


__all__ = ["MethodModelProtocol", "MethodModel", "FFNMemoryModel", "FFNSite", "per_sample_rows", "read_entries"]
