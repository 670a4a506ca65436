"""MemVPConfig: every hyper-parameter of memory-space visual prompting, JSON round-trippable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

_PROJECTORS = ("linear", "mlp")
_INSERT_INTO = ("keys_values", "keys", "values")
_POSITION_MODES = ("add", "concat")
_LAYER_GROUPS = ("all", "encoder", "decoder")
_VISUAL_TOKENS = ("local", "global")


class DictConfig:
    """JSON round trip for the config dataclasses; unknown keys are an error, not ignored."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass
class MemVPConfig(DictConfig):
    """Hyper-parameters of MemVP (paper sections 4.2 and 5, appendix A).

    Defaults follow the paper and the official LLaMA code: lambda = 0.01, a two-layer projector
    with hidden size 128, position embeddings shared across layers for decoder-only models and
    per layer (injected into the encoder only) for encoder-decoder models.
    """

    visual_dim: int
    """Dimension d' of one visual feature z_i (e.g. 1024 for CLIP ViT-L/14, 1280 for EfficientNet-Lite0)."""
    num_entries: int = 256
    """n: length of the position embeddings; shorter visual prompts are zero-padded to it."""
    visual_scale: float = 0.01
    """lambda in eq. 7: K = lambda * f(z) + p^k, V = lambda * f(z) + p^v."""
    output_scale: float = 0.1
    """s: the retrieved visual knowledge is multiplied by s before it joins the FFN output."""
    projector: str = "mlp"
    """'mlp' (Linear, SiLU, Linear, as in the official LLaMA code) or 'linear' (as on BART/T5)."""
    projector_hidden: int = 128
    normalize_features: bool = False
    """Layer-normalise each visual feature z_i (no parameters) before the projector. Not in the
    paper; helps encoders whose features vary widely in scale (e.g. CNN grids)."""
    share_position_embeddings: bool | None = None
    """None picks the paper's default: shared for decoder-only LMs, per layer for encoder-decoders."""
    target_layers: str | list[int] | None = None
    """'all', 'encoder', 'decoder', or indices into the default stack (the decoder of a decoder-only
    LM, the encoder of an encoder-decoder). None: 'decoder' for decoder-only, 'encoder' otherwise."""
    insert_into: str = "keys_values"
    """Table 4 ablation: put the visual prompts in 'keys_values', only 'keys' or only 'values'."""
    position_mode: str = "add"
    """Table 4 ablation: 'add' p to the prompts (eq. 7) or 'concat' them as n extra entries."""
    visual_tokens: str = "local"
    """Table 4 ablation: 'local' keeps every patch feature as one entry; 'global' mean-pools them
    into a single visual prompt (as LaVIN's global features), the other entries position-only."""
    train_layernorms: bool = False
    """Also train the LM's LayerNorm/RMSNorm weights (the paper does on BART and T5)."""
    dropout: float = 0.1
    """Dropout on the retrieval weights phi(x K^T), as in the official code (0.1)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata kept with a saved adapter (never read by the mechanism)."""

    def __post_init__(self) -> None:
        if int(self.visual_dim) <= 0:
            raise ValueError(f"MemVPConfig.visual_dim must be positive, got {self.visual_dim}")
        if int(self.num_entries) <= 0:
            raise ValueError(f"MemVPConfig.num_entries must be positive, got {self.num_entries}")
        _check_choice("projector", self.projector, _PROJECTORS)
        _check_choice("insert_into", self.insert_into, _INSERT_INTO)
        _check_choice("position_mode", self.position_mode, _POSITION_MODES)
        _check_choice("visual_tokens", self.visual_tokens, _VISUAL_TOKENS)
        if self.projector == "mlp" and int(self.projector_hidden) <= 0:
            raise ValueError(f"MemVPConfig.projector_hidden must be positive, got {self.projector_hidden}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MemVPConfig.dropout must be in [0, 1), got {self.dropout}")
        t = self.target_layers
        if isinstance(t, str):
            _check_choice("target_layers", t, _LAYER_GROUPS)
        elif t is not None:
            if not isinstance(t, (list, tuple)) or not t or not all(isinstance(i, int) for i in t):
                raise ValueError(
                    "MemVPConfig.target_layers must be 'all', 'encoder', 'decoder' or a non-empty "
                    f"list of layer indices, got {t!r}"
                )
            self.target_layers = list(t)


def _check_choice(name: str, value: Any, choices: tuple[str, ...], owner: str = "MemVPConfig") -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")
