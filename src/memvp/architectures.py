"""Where the FFN of each supported transformers architecture lives, as a small table.

An FFN site is found by paths relative to one transformer layer:
  ffn_input  - the module whose *input* is the FFN input x (the query of eq. 6),
  ffn_output - the module whose *output* receives the retrieved visual knowledge,
  activation - the FFN's own activation phi,
  keys / values - the FFN's own key (d -> d_ff) and value (d_ff -> d) linear layers, read once to
  size the visual entries like the FFN's own (``MemVPConfig.memory_scale='ffn'``); the first path
  that exists is used.
Stacks are paths relative to ``model.base_model`` (so both LlamaModel and LlamaForCausalLM work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FFNLayout:
    stacks: dict[str, str]
    """Stack name ('encoder' or 'decoder') -> path of its ModuleList of layers."""
    ffn_input: str
    ffn_output: str
    activation: str
    gated: bool | Callable[[object], bool]
    """Gated (SwiGLU/GeGLU) FFN or not. Eq. 12 drops the gate key for visual entries, so the
    retrieval term s * phi(x K^T) V has the same form for both kinds; the kind matters for FLOPs
    accounting and for reading the FFN's weights."""
    keys: tuple[str, ...] = ()
    values: tuple[str, ...] = ()

    def is_gated(self, config: object) -> bool:
        return self.gated(config) if callable(self.gated) else bool(self.gated)

    @property
    def is_encoder_decoder(self) -> bool:
        return "encoder" in self.stacks


# Gated FFNs: the visual entries drop the gate key (eq. 12), so they are sized like up_proj's rows.
_LLAMA = FFNLayout(
    {"decoder": "layers"}, "mlp", "mlp", "mlp.act_fn", gated=True, keys=("mlp.up_proj",), values=("mlp.down_proj",)
)
_OPT_LIKE = FFNLayout(
    {"decoder": "decoder.layers"}, "fc1", "fc2", "activation_fn", gated=False, keys=("fc1",), values=("fc2",)
)

ARCHITECTURES: dict[str, FFNLayout] = {
    # LLaMA family: SwiGLU / GeGLU MLP with gate_proj, up_proj, down_proj.
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    # Standard two-layer FFNs.
    "gpt2": FFNLayout(
        {"decoder": "h"}, "mlp", "mlp.c_proj", "mlp.act", gated=False, keys=("mlp.c_fc",), values=("mlp.c_proj",)
    ),
    "opt": _OPT_LIKE,
    "bart": FFNLayout(
        {"encoder": "encoder.layers", "decoder": "decoder.layers"},
        "fc1",
        "fc2",
        "activation_fn",
        gated=False,
        keys=("fc1",),
        values=("fc2",),
    ),
    # T5: the feed-forward sub-layer is the last entry of block.layer (index 1 in the encoder,
    # 2 in the decoder); 'relu' checkpoints are standard, 'gated-gelu' (T5 v1.1, Flan-T5) gated.
    "t5": FFNLayout(
        {"encoder": "encoder.block", "decoder": "decoder.block"},
        "layer.-1.DenseReluDense",
        "layer.-1.DenseReluDense.wo",
        "layer.-1.DenseReluDense.act",
        gated=lambda config: bool(getattr(config, "is_gated_act", False)),
        keys=("layer.-1.DenseReluDense.wi", "layer.-1.DenseReluDense.wi_1"),
        values=("layer.-1.DenseReluDense.wo",),
    ),
}


def register_architecture(model_type: str, layout: FFNLayout) -> None:
    """Teach MemVP a new architecture: ``register_architecture('my_llama', ARCHITECTURES['llama'])``."""
    ARCHITECTURES[model_type] = layout


def layout_for(model: nn.Module) -> FFNLayout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"MemVP does not know where the FFN of model type {model_type!r} "
            f"({type(model).__name__}) is. Supported model types: {sorted(ARCHITECTURES)}. "
            "Register one with memvp.register_architecture(model_type, FFNLayout(stacks=..., "
            "ffn_input=..., ffn_output=..., activation=..., gated=...))."
        )
    return ARCHITECTURES[model_type]


def find_path(root: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    """The module at the first of ``paths`` that exists under ``root``, else None."""
    for path in paths:
        try:
            return get_path(root, path)
        except (AttributeError, IndexError):
            continue
    return None


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted path; integer parts (negative ones too) index into ModuleLists."""
    module = root
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            module = module[int(part)]  # type: ignore[index]
        else:
            module = getattr(module, part)
    return module
