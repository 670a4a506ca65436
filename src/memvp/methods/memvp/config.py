"""MemVPConfig: every hyper-parameter of memory-space visual prompting, JSON round-trippable."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...config import DictConfig, check_choice, check_field_types
from ..common import PROJECTORS, check_target_layers

_INSERT_INTO = ("keys_values", "keys", "values")


_POSITION_MODES = ("add", "concat")


_VISUAL_TOKENS = ("local", "global")


_MEMORY_SCALES = ("ffn", "paper")
_RETRIEVALS = ("activation", "softmax")


@dataclass
class MemVPConfig(DictConfig):
    """Hyper-parameters of MemVP (paper sections 4.2 and 5, appendix A).

    Defaults follow the paper and the official LLaMA code (a two-layer projector with hidden size
    128, position embeddings shared across layers for decoder-only models and per layer, injected
    into the encoder only, for encoder-decoder models) except for one thing: ``memory_scale='ffn'``
    sizes the visual keys and values like the LM's own FFN keys and values instead of a fixed
    lambda = 0.01 (see ``memory_scale``; ``memory_scale='paper'`` is the paper's exact eq. 7).
    """

    visual_dim: int
    """Dimension d' of one visual feature z_i (e.g. 1024 for CLIP ViT-L/14, 1280 for EfficientNet-Lite0)."""
    num_entries: int = 256
    """n: length of the position embeddings; shorter visual prompts are zero-padded to it. Left out,
    ``build_model`` / ``memvp train`` make it the vision encoder's token count (one entry per patch,
    as the paper's 256 for CLIP ViT-L/14 at 224 px); 256 is for a config built without an encoder."""
    memory_scale: str = "ffn"
    """How big the visual keys and values are.

    'paper': eq. 7 as written, K = lambda f(z) + p^k, V = lambda f(z) + p^v with lambda =
    ``visual_scale`` (0.01) and p^k ~ N(0, 0.02). Right for LLaMA-7B + CLIP, where such entries are
    about as long as the FFN's own key rows (~1.3); on a small LM whose rows are ~4.5 long (SmolLM2)
    the image is a whisper at a small lr and, once a large lr has grown f, swamps the residual stream.

    'ffn' (default): every entry lives in the FFN's own scale, whatever the LM or encoder.
    u_i = f(LN(z_i)) is RMS-normalised (its length can not grow), K_i = a_k (u_i + p^k_i) and
    V_i = a_v (u_i + p^v_i), where a_k and a_v are the median length of this FFN's key rows and value
    columns divided by sqrt(d) (``key_norms`` / ``value_norms``, read from the weights when the model
    is built). Position embeddings are in the same unit scale (p^k, p^v ~ N(0, 1)), so an Adam step
    of lr moves every part of the memory by the same relative amount on any LM. A learned gate per
    layer (zero at the start) scales the output, a learned log gain per layer the keys."""
    key_norms: list[float] | None = None
    """'ffn' only: the median FFN key-row length of each MemVP layer (filled in when the model is
    built, saved with the adapter)."""
    value_norms: list[float] | None = None
    """'ffn' only: the median FFN value-column length of each MemVP layer (as ``key_norms``)."""
    visual_scale: float = 0.01
    """'paper' only: lambda in eq. 7: K = lambda * f(z) + p^k, V = lambda * f(z) + p^v."""
    output_scale: float | None = None
    """s: the retrieved visual knowledge is multiplied by s before it joins the FFN output.
    None: 0.1 with memory_scale='paper' (the paper); 1 / sqrt(num_entries) with 'ffn', where a
    learned per-layer gate (zero at the start) multiplies it too: a sum of n entries then stays
    about one entry's size, where the many near-identical background cells would otherwise add up
    coherently (measured on the demo at s = 1: the memory's output 20-34x the FFN's own before any
    training)."""
    retrieval: str = "activation"
    """How each token weighs the entries. 'activation' (the paper, eq. 6 / 12): phi(<x, k_i>), the
    FFN's own activation, every entry read independently. 'softmax' ('ffn' only): a softmax over the
    entries, so the weights sum to 1 and a few entries can take nearly all of them — the read is then
    one object's entries, not the grid's sum (docs/memory_scale.md 6.5: with the grounding loss it
    found and read one object among six where phi could not; on photo grids it varied more with the
    seed than phi, so it is not the default); ``output_scale`` defaults to 1."""
    projector: str = "mlp"
    """'mlp' (Linear, SiLU, Linear, as in the official LLaMA code), 'linear' (as on BART/T5) or
    'mlp2x_gelu' (LLaVA-1.5's Linear-GELU-Linear at the LM's width, the paper's Table 9)."""
    projector_hidden: int = 128
    normalize_features: bool = False
    """memory_scale='paper' only: layer-normalise each visual feature z_i (no parameters) before the
    projector. Not in the paper; helps encoders whose features vary widely in scale (e.g. CNN grids).
    memory_scale='ffn' always does it."""
    center_features: bool = False
    """Subtract the mean visual feature of the training data (``feature_mean``) from every z_i before
    anything else. Not in the paper. Features that share one large common direction (a video's
    per-frame global features: the same background and scene in every frame) otherwise give nearly
    identical keys and values: retrieval spreads evenly over the entries, and the memory reads like
    their mean (measured on the video demo: 94% of the features' energy in the mean, largest
    retrieval weight 0.21 of 6 entries, the frames' order lost). Training fills ``feature_mean`` from
    the training split and logs that share (``visual_feature_common_share``) either way."""
    feature_mean: list[float] | None = None
    """center_features only: the mean of the training split's visual features (visual_dim numbers),
    filled in by training (``MemVPModel.set_feature_mean``) and saved with the adapter."""
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
        check_field_types(self, "MemVPConfig")
        if int(self.visual_dim) <= 0:
            raise ValueError(f"MemVPConfig.visual_dim must be positive, got {self.visual_dim}")
        if int(self.num_entries) <= 0:
            raise ValueError(f"MemVPConfig.num_entries must be positive, got {self.num_entries}")
        check_choice("projector", self.projector, PROJECTORS)
        check_choice("insert_into", self.insert_into, _INSERT_INTO)
        check_choice("position_mode", self.position_mode, _POSITION_MODES)
        check_choice("visual_tokens", self.visual_tokens, _VISUAL_TOKENS)
        check_choice("memory_scale", self.memory_scale, _MEMORY_SCALES)
        check_choice("retrieval", self.retrieval, _RETRIEVALS)
        if self.retrieval == "softmax" and self.memory_scale == "paper":
            raise ValueError(
                "MemVPConfig.retrieval='softmax' needs memory_scale='ffn' (its learned gate sizes the read); "
                "memory_scale='paper' is eq. 7 with the FFN's activation"
            )
        if self.output_scale is None:
            if self.retrieval == "softmax":  # the weights sum to 1 already
                self.output_scale = 1.0
            else:
                self.output_scale = 0.1 if self.memory_scale == "paper" else 1.0 / int(self.num_entries) ** 0.5
        for name in ("key_norms", "value_norms"):
            norms = getattr(self, name)
            if norms is not None and (
                not isinstance(norms, (list, tuple)) or not all(isinstance(v, (int, float)) and v > 0 for v in norms)
            ):
                raise ValueError(
                    f"MemVPConfig.{name} must be a list of positive numbers (one per MemVP "
                    f"layer) or null to read them from the LM, got {norms!r}"
                )
        mean = self.feature_mean
        if mean is not None and (
            not isinstance(mean, (list, tuple))
            or len(mean) != int(self.visual_dim)
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean)
        ):
            raise ValueError(
                f"MemVPConfig.feature_mean must be null or visual_dim={self.visual_dim} finite numbers "
                f"(training fills it in), got {str(mean)[:80]}"
            )
        if self.projector == "mlp" and int(self.projector_hidden) <= 0:
            raise ValueError(f"MemVPConfig.projector_hidden must be positive, got {self.projector_hidden}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MemVPConfig.dropout must be in [0, 1), got {self.dropout}")
        self.target_layers = check_target_layers(self.target_layers, "MemVPConfig")


__all__ = ["MemVPConfig"]
