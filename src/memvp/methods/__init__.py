"""The fine-tuning methods, one package each (config + model), and the registry that builds, saves
and loads them by name (``mapping.py``)."""

from .mapping import (
    METHODS,
    Method,
    adapter_config,
    adapter_meta,
    adapter_method,
    adapter_visual_dim,
    build_model,
    check_adapter,
    check_adapter_features,
    get_method,
    init_from_adapter,
    load_adapter,
    register_method,
)

__all__ = [
    "METHODS",
    "Method",
    "adapter_config",
    "adapter_meta",
    "adapter_method",
    "adapter_visual_dim",
    "build_model",
    "check_adapter",
    "check_adapter_features",
    "get_method",
    "init_from_adapter",
    "load_adapter",
    "register_method",
]
