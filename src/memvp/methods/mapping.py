"""The one registry from a method name to its config and model classes (as peft's ``mapping.py``).

Training, prediction, benchmarks and the CLI build, save and load every method through here and
know nothing of a method's internals. A new method registers a ``Method``: its config class (a
``DictConfig`` taking ``visual_dim``), its model class (``save_pretrained`` / ``from_pretrained``,
the ``config_name`` / ``weights_name`` of its adapter files, ``visual_dim``: the feature size it
reads, None when it reads no image) and the section of a training config holding its options.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..save_load import check_same_base, read_adapter, resolve_local
from .adem import AdemConfig, AdemModel
from .input_space.config import BaselineConfig
from .input_space.model import InputSpaceModel
from .memvp.config import MemVPConfig
from .memvp.model import MemVPModel
from .memvp_lora import MemVPLoraConfig, MemVPLoraModel


@dataclass(frozen=True)
class Method:
    name: str
    config_class: type
    model_class: type
    section: str
    """The training-config key (and ``build_model`` keyword) that holds this method's options."""
    fixed: dict = field(default_factory=dict)
    """Config fields the method's name sets (two baselines share one config class)."""
    reads_images: bool = True
    """False for a method that never sees the image (text_only): training then loads no features."""
    tokens_field: str | None = None
    """The config field sized by the encoder's number of visual tokens (ADEM-VL's ``num_patches``,
    MemVP's ``num_entries``); filled from the encoder unless the options set it."""

    def make_config(self, visual_dim: int, options: dict | None = None, num_visual_tokens: int | None = None):
        fill = {self.tokens_field: num_visual_tokens} if self.tokens_field and num_visual_tokens else {}
        return self.config_class.from_dict({**fill, **(options or {}), **self.fixed, "visual_dim": visual_dim})


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> None:
    METHODS[method.name] = method


# MemVP: one memory entry per visual token unless num_entries is given (position-only padding entries
# would take most of the retrieval weight: docs/memory_scale.md section 6.4)
register_method(Method("memvp", MemVPConfig, MemVPModel, section="memvp", tokens_field="num_entries"))
register_method(Method("memvp_lora", MemVPLoraConfig, MemVPLoraModel, section="memvp", tokens_field="num_entries"))
register_method(
    Method("input_space", BaselineConfig, InputSpaceModel, section="baseline", fixed={"method": "input_space"})
)
register_method(
    Method(
        "text_only",
        BaselineConfig,
        InputSpaceModel,
        section="baseline",
        fixed={"method": "text_only"},
        reads_images=False,
    )
)
register_method(Method("adem", AdemConfig, AdemModel, section="adem", tokens_field="num_patches"))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {name!r}")
    return METHODS[name]


def build_model(
    method: str,
    language_model: nn.Module,
    visual_dim: int,
    num_visual_tokens: int | None = None,
    **options: dict | None,
) -> nn.Module:
    """A new (untrained) model of ``method`` around ``language_model``; its options come in the keyword
    named after its section: ``memvp={...}`` (MemVPConfig / MemVPLoraConfig keys) for memvp and
    memvp_lora, ``baseline={...}`` (BaselineConfig keys) for input_space / text_only, ``adem={...}``
    for adem. Other sections are ignored, so one call can carry every method's options (as a
    training config does). ``num_visual_tokens``: the encoder's, for methods sized by it."""
    entry = get_method(method)
    model = entry.model_class(
        language_model, entry.make_config(visual_dim, options.get(entry.section), num_visual_tokens)
    )
    model.method_name = method
    return model


def _adapter_model_class(path: Path) -> type:
    classes = list(dict.fromkeys(m.model_class for m in METHODS.values()))
    for cls in classes:
        if (path / cls.config_name).is_file():
            return cls
    names = " or ".join(f"{cls.config_name} ({cls.__name__})" for cls in classes)
    raise FileNotFoundError(f"{path} holds no adapter: expected {names} in it")


def adapter_meta(path: str | os.PathLike) -> tuple[dict, object]:
    """(the config file's contents, the parsed method config) of an adapter directory or Hub id; no
    weights read (the weights file's header must cover the whole file: a truncated copy fails)."""
    path = resolve_local(path, "adapter")
    cls = _adapter_model_class(path)
    meta, config, _ = read_adapter(
        path, cls.config_name, cls.weights_name, f"a {cls.__name__} adapter directory", cls.config_class, weights=False
    )
    return meta, config


def adapter_config(path: str | os.PathLike):
    """The method config an adapter directory was saved with (no weights read, no model built)."""
    return adapter_meta(path)[1]


def check_adapter(path: str | os.PathLike) -> None:
    """Read an adapter directory's files without any model (seconds before a model load, not after):
    a missing, damaged or truncated file raises naming it (its header must cover the whole weights file)."""
    adapter_config(path)


def load_adapter(
    language_model: nn.Module,
    path: str | os.PathLike,
    is_trainable: bool = False,
    allow_base_mismatch: bool = False,
    vision_encoder: nn.Module | None = None,
) -> nn.Module:
    """Load whatever adapter ``path`` holds (MemVP or a baseline) onto ``language_model``; a
    ``vision_encoder`` with ViT adapters is attached and gets the adapter's weights for them."""
    path = resolve_local(path, "adapter")
    cls = _adapter_model_class(path)
    model = cls.from_pretrained(
        language_model,
        path,
        is_trainable=is_trainable,
        allow_base_mismatch=allow_base_mismatch,
        vision_encoder=vision_encoder,
    )
    meta = json.loads((path / cls.config_name).read_text(encoding="utf-8"))  # read_adapter has checked it
    model.method_name = method_of(cls, model, meta)
    model.pipeline = meta.get("pipeline")
    return model


def method_of(cls: type, model: nn.Module, meta: dict) -> str:
    """The registered method an adapter holds: recorded since adapter format 2; for older ones, the one
    method of its model class whose fixed settings its config has (input_space / text_only share a class)."""
    return _method_of_config(cls, getattr(model, model.config_attr), meta)


def adapter_method(path: str | os.PathLike) -> Method:
    """The registered method of an adapter directory or Hub id, read without any model."""
    meta, config = adapter_meta(path)
    return METHODS[_method_of_config(_adapter_model_class(resolve_local(path, "adapter")), config, meta)]


def adapter_visual_dim(path: str | os.PathLike) -> int | None:
    """The visual feature size an adapter reads (None for a method that reads no image), without any model."""
    method = adapter_method(path)
    return int(adapter_config(path).visual_dim) if method.reads_images else None


def _method_of_config(cls: type, config, meta: dict) -> str:
    if meta.get("method") in METHODS:
        return meta["method"]
    for entry in METHODS.values():
        if entry.model_class is cls and all(getattr(config, k, None) == v for k, v in entry.fixed.items()):
            return entry.name
    raise ValueError(f"no registered method builds a {cls.__name__} with this config")


def init_from_adapter(model: nn.Module, path: str | os.PathLike, allow_base_mismatch: bool = False) -> tuple[int, int]:
    """Start ``model`` from another adapter's weights where they match (stage 2 from stage 1): every
    tensor the adapter holds must exist in ``model`` with the same shape; the model's other trainable
    tensors keep their initialisation. Returns (tensors loaded, tensors left new)."""
    path = resolve_local(path, "adapter")
    cls = _adapter_model_class(path)
    meta, _, state = read_adapter(
        path, cls.config_name, cls.weights_name, f"a {cls.__name__} adapter directory", cls.config_class
    )
    check_same_base(meta["base_model"], model.base_model_fingerprint(), path, "layers", allow_base_mismatch)
    own = model.trainable_state_dict()
    foreign = [n for n in state if n not in own or own[n].shape != state[n].shape]
    if foreign:
        n = foreign[0]
        got = f"shape {tuple(own[n].shape)} here" if n in own else "no such tensor here"
        raise ValueError(
            f"init_from {path}: {len(foreign)} of its tensors do not fit this {type(model).__name__}, "
            f"e.g. {n} {tuple(state[n].shape)} ({got}); use the same entries, projector and layers"
        )
    model.load_trainable_state({**{n: t.detach() for n, t in own.items()}, **state}, source=str(path))
    return len(state), len(own) - len(state)


def check_adapter_features(adapter: str | os.PathLike, feature_dim: int, encoder: str) -> None:
    """Refuse a vision encoder whose features do not have the size the adapter was trained on (before the
    language model loads: the adapter's config says it)."""
    expected = adapter_visual_dim(adapter)
    if expected is not None and expected != feature_dim:
        raise ValueError(
            f"the adapter {adapter} expects {expected}-d visual features but the vision encoder "
            f"{encoder!r} gives {feature_dim}-d ones: use the vision encoder it was trained with"
        )


__all__ = [
    "Method",
    "METHODS",
    "register_method",
    "get_method",
    "build_model",
    "load_adapter",
    "check_adapter",
    "adapter_config",
    "adapter_meta",
    "method_of",
    "adapter_method",
    "adapter_visual_dim",
    "check_adapter_features",
    "init_from_adapter",
]
