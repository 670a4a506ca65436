"""Memory-space visual prompting (MemVP, ICML 2024) on Hugging Face transformers models.

The whole mechanism lives here and knows nothing of datasets or command lines:

* ``VisualMemory`` turns visual features z into new FFN key/value entries (eq. 7):
  K = lambda * f(z) + p^k,  V = lambda * f(z) + p^v  (``memory_scale='paper'``), or, by default,
  the same sum in the FFN's own scale: K = a_k (u + p^k), V = a_v (u + p^v) with u = f(LN(z))
  RMS-normalised and a_k, a_v the FFN's key-row and value-column lengths / sqrt(d) (config.py says why).
* Every target FFN's output gains  s * phi(x K^T) V  where x is the FFN input (eq. 6/8). For gated
  FFNs the gate key is dropped (eq. 12). phi is the FFN's own activation.
* ``MemVPModel`` freezes the language model, hooks its FFNs (see ``architectures.py`` for where they
  are) and computes the visual memory once per forward / generate call, not once per layer.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...architectures import find_path
from ..base import FFNMemoryModel, read_entries
from ..common import check_visual_features, init_projector, make_projector
from .config import MemVPConfig

CONFIG_NAME = "memvp_config.json"
COMMON_SHARE_WARNING = 0.8
"""Hint at centring the features when their common mean holds more of their energy than this."""


WEIGHTS_NAME = "memvp_model.safetensors"


class VisualMemory(nn.Module):
    """Projector f and position embeddings p^k, p^v: the only new parameters of MemVP."""

    def __init__(
        self,
        config: MemVPConfig,
        hidden_size: int,
        num_sites: int,
        shared: bool,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.config = config
        self.shared = shared
        kw = {"device": device, "dtype": torch.float32}  # fp32 master weights whatever the LM dtype
        self.projector = make_projector(
            config.projector, config.visual_dim, hidden_size, config.projector_hidden, device
        )
        n_tables = 1 if shared else num_sites
        self.key_position = nn.Parameter(torch.empty(n_tables, config.num_entries, hidden_size, **kw))
        self.value_position = nn.Parameter(torch.empty(n_tables, config.num_entries, hidden_size, **kw))
        # memory_scale='ffn': one zero-initialised gate per MemVP layer (ReZero / LLaMA-Adapter style),
        # so the wrapped LM starts as the frozen LM, with or without an image, and each layer learns
        # how loud its memory is (the instruments show it: memory / FFN output).
        ffn = config.memory_scale == "ffn"
        self.output_gate = nn.Parameter(torch.empty(num_sites, **kw)) if ffn else None
        # ... and a learned log key gain per layer: FFN-sized keys give FFN-like scores (spread ~0.5 over
        # entries, measured on the demo), too flat to pick one object's cell; the gain lets each layer
        # sharpen its retrieval without touching the values' (gated) size.
        self.key_log_gain = nn.Parameter(torch.empty(num_sites, **kw)) if ffn else None
        # center_features: the training data's mean feature, kept in the config (saved with the adapter)
        # and here as a buffer that follows the model's device; not a parameter.
        mean = None if config.feature_mean is None else torch.tensor(config.feature_mean, **kw)
        self.register_buffer("feature_mean", mean, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # As the official code: xavier projector with zero bias, p^k ~ N(0, 0.02), p^v = 0, so
        # that the untrained memory adds nothing to the FFN output without an image.
        init_projector(self.projector)
        if self.output_gate is None:
            nn.init.normal_(self.key_position, std=0.02)
            nn.init.zeros_(self.value_position)
            return
        # memory_scale='ffn': tables in units of the RMS-normalised prompts, and the zero gate (not
        # p^v = 0) keeps the untrained memory silent. p^v must not be 0 as well: gate and values would
        # then get no gradient from each other and a memory without images (the ablation) never learns.
        nn.init.normal_(self.key_position, std=1.0)
        nn.init.normal_(self.value_position, std=1.0)
        nn.init.zeros_(self.output_gate)
        nn.init.zeros_(self.key_log_gain)

    @property
    def num_tables(self) -> int:
        return self.key_position.shape[0]

    def prompts(
        self, visual_features: torch.Tensor | None, has_image: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """lambda * f(z), zero for image-less samples, zero-padded to n entries: [B, n, d]."""
        if visual_features is None:
            return None
        cfg = self.config
        check_visual_features(visual_features, cfg.visual_dim, "MemVPConfig")
        n_visual = visual_features.shape[1]
        if n_visual > cfg.num_entries:
            raise ValueError(
                f"visual_features has {n_visual} visual tokens but MemVPConfig.num_entries is "
                f"{cfg.num_entries}; set num_entries >= {n_visual} or pool the features."
            )
        weight = self.key_position
        z = visual_features.to(weight.device, weight.dtype)
        if cfg.center_features:
            if self.feature_mean is None:
                raise ValueError(
                    "MemVPConfig.center_features is on but feature_mean is not set: training fills it "
                    "from the training split; call MemVPModel.set_feature_mean(features) yourself"
                )
            z = z - self.feature_mean
        if cfg.visual_tokens == "global":
            z, n_visual = z.mean(dim=1, keepdim=True), 1
        if cfg.memory_scale == "ffn":
            # Unit RMS whatever the encoder's feature scale and however large f's weights grow: the
            # entries' lengths are set by the FFN (key_gain / value_gain), only directions are learned.
            prompts = _rms_normalize(self.projector(F.layer_norm(z, z.shape[-1:])))
        else:
            if cfg.normalize_features:
                z = F.layer_norm(z, z.shape[-1:])
            prompts = cfg.visual_scale * self.projector(z)
        if has_image is not None:
            has_image = torch.as_tensor(has_image, device=prompts.device)
            if has_image.shape != (prompts.shape[0],):
                raise ValueError(f"has_image must have shape [batch={prompts.shape[0]}], got {tuple(has_image.shape)}")
            # Paper 5.2: samples without an image get zero visual prompts, position embeddings only.
            prompts = prompts * has_image.to(prompts.dtype).view(-1, 1, 1)
        return F.pad(prompts, (0, 0, 0, cfg.num_entries - n_visual))

    @torch.no_grad()
    def set_feature_mean(self, mean: torch.Tensor) -> None:
        if mean.shape != (self.config.visual_dim,):
            raise ValueError(f"feature_mean must have shape [{self.config.visual_dim}], got {tuple(mean.shape)}")
        self.feature_mean = mean.detach().to(self.key_position.device, torch.float32).clone()
        self.config.feature_mean = [float(v) for v in mean.detach().cpu().tolist()]

    def entries(self, prompts: torch.Tensor | None, table: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B or 1, n (or 2n for 'concat'), d] of one position-embedding table."""
        pos_k = self.key_position[table].unsqueeze(0)
        pos_v = self.value_position[table].unsqueeze(0)
        if prompts is None:  # no image at all: zero prompts, and phi(0) * 0 adds nothing in concat
            return pos_k, pos_v
        zeros = torch.zeros_like(prompts)
        into = self.config.insert_into
        key_vis = prompts if into in ("keys_values", "keys") else zeros
        value_vis = prompts if into in ("keys_values", "values") else zeros
        if self.config.position_mode == "add":
            return key_vis + pos_k, value_vis + pos_v
        batch = prompts.shape[0]
        return (
            torch.cat([key_vis, pos_k.expand(batch, -1, -1)], dim=1),
            torch.cat([value_vis, pos_v.expand(batch, -1, -1)], dim=1),
        )


def _rms_normalize(u: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return u * torch.rsqrt(u.pow(2).mean(dim=-1, keepdim=True) + eps)


def retrieve(
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    activation: nn.Module,
    scale: float,
    dropout: float = 0.0,
    training: bool = False,
    blocked: torch.Tensor | None = None,
    key_gain: float = 1.0,
) -> torch.Tensor:
    """s * phi(x (g K)^T) V for x [B, L, d] and K, V [B or 1, n, d]: the visual part of eq. 6 / eq. 12
    (``key_gain`` g scales the keys; fold a value gain into ``scale``). x may be any shape of
    ``methods.base.per_sample_rows`` (OPT's flattened tokens, beams).

    ``blocked`` ([B or 1, n] bool) sets phi(x K_i^T) = 0 for those entries (the knowledge
    distortion of the paper's Fig. 6; after a softmax, so the others keep their weights).
    """

    def weights_of(rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        weights = F.dropout(activation(retrieval_scores(rows, k, key_gain)), dropout, training)
        if blocked is not None:
            weights = weights.masked_fill(blocked.to(weights.device).unsqueeze(1), 0.0)
        return weights

    return read_entries(x, keys, values, weights_of, scale)


def softmax_over_entries(scores: torch.Tensor) -> torch.Tensor:
    """``retrieval='softmax'``'s weights: a softmax over the entries (at least float32 inside)."""
    return scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(scores.dtype)


def retrieval_scores(x: torch.Tensor, keys: torch.Tensor, key_gain: float = 1.0) -> torch.Tensor:
    """<x, g K_i>: [samples, rows, n]."""
    return torch.matmul(x, keys.transpose(-1, -2)) * key_gain


_NORM_CLASS = re.compile(r"(LayerNorm|RMSNorm)$")


class MemVPModel(FFNMemoryModel):
    """A frozen transformers language model whose FFNs read a visual key/value memory.

    ``model(input_ids=..., attention_mask=..., visual_features=[B, n_vis, visual_dim], labels=...)``
    returns the language model's output. ``visual_features=None`` means no sample has an image;
    ``has_image`` ([B] bool) marks image-less samples inside a batch; ``blocked_entries`` ([B, n]
    bool) zeroes those entries' retrieval weight in every layer (paper Fig. 6).
    """

    config_class, config_name, weights_name = MemVPConfig, CONFIG_NAME, WEIGHTS_NAME
    method_name = "memvp"
    config_attr, layers_name = "memvp_config", "MemVP layers"
    supports_probing = True
    state_keys = ("blocked_entries",)

    def __init__(self, language_model: nn.Module, config: MemVPConfig, vision_encoder: nn.Module | None = None):
        super().__init__()
        self.vision_encoder = None
        self.memvp_config = config = type(config).from_dict(config.to_dict())  # our own resolved copy
        encdec = bool(language_model.config.is_encoder_decoder)
        if config.share_position_embeddings is None:
            config.share_position_embeddings = not encdec
        if config.target_layers is None:
            config.target_layers = "encoder" if encdec else "decoder"
        self._setup_sites(language_model, config.target_layers, config.share_position_embeddings)
        self._hidden_size = int(language_model.config.hidden_size)
        # Per MemVP layer: (a_k, a_v), the FFN's key-row and value-column lengths / sqrt(d) ('ffn'), or 1.
        self.entry_gains = self._size_entries(config)
        device = next(iter(language_model.parameters())).device
        self.visual_memory = VisualMemory(
            config, self._hidden_size, len(self.sites), config.share_position_embeddings, device=device
        )
        if config.train_layernorms:
            for module in language_model.modules():
                if _NORM_CLASS.search(type(module).__name__):
                    module.requires_grad_(True)
        self._bypass = False  # instruments: run the frozen LM through the same modules
        self._probe: dict | None = None  # instruments: per-site statistics of the next forward
        if vision_encoder is not None:
            self.attach_vision_encoder(vision_encoder)

    # ----------------------------------------------------------------------------- capabilities
    def analytic_layer_flops(self, length: float, dim: int, n_visual: int) -> float:
        """Eq. 15: the text's FLOPs + 4ndL for n more FFN key/value entries."""
        return super().analytic_layer_flops(length, dim, n_visual) + 4 * n_visual * dim * length

    def use_feature_statistics(self, mean: torch.Tensor, share: float) -> str | None:
        """Keep the training mean when ``center_features`` asks for it (not when training on from an
        adapter that has one); hint at centring when one shared direction holds most of the energy."""
        config = self.memvp_config
        if self.needs_feature_mean:
            self.set_feature_mean(mean)
            return "centred on it"
        if share > COMMON_SHARE_WARNING and not config.center_features:
            return (
                "MemVP's keys and values will be near copies of each other, so retrieval cannot tell the "
                "entries apart: memvp.center_features: true subtracts the mean (docs/memory_scale.md)"
            )
        return None

    # ----------------------------------------------------------------------------- structure
    def _size_entries(self, config: MemVPConfig) -> list[tuple[float, float]]:
        """memory_scale='ffn': per-site key/value gains from the FFN's own weights (read once, then
        kept in the config so that a saved adapter reloads with the same gains); 1 with 'paper'."""
        if config.memory_scale != "ffn":
            return [(1.0, 1.0)] * len(self.sites)
        if config.key_norms is None or config.value_norms is None:
            keys, values = [], []
            for site in self.sites:
                keys.append(_median_neuron_length(find_path(site.layer, self.layout.keys), self._hidden_size, "in"))
                values.append(
                    _median_neuron_length(find_path(site.layer, self.layout.values), self._hidden_size, "out")
                )
            if any(v is None for v in keys + values):  # meta-device weights or an unknown layout
                keys = values = [float(self._hidden_size) ** 0.5] * len(self.sites)  # unit-RMS rows
            else:
                config.key_norms, config.value_norms = keys, values
        else:
            keys, values = config.key_norms, config.value_norms
            if len(keys) != len(self.sites) or len(values) != len(self.sites):
                raise ValueError(
                    f"MemVPConfig.key_norms/value_norms have {len(keys)}/{len(values)} entries "
                    f"but the model has {len(self.sites)} MemVP layers"
                )
        root_d = float(self._hidden_size) ** 0.5
        return [(float(k) / root_d, float(v) / root_d) for k, v in zip(keys, values)]

    def site_gains(self, index: int) -> tuple[Any, Any]:
        """(key gain, output scale) of MemVP layer ``index``: 1 and s with memory_scale='paper'; with
        'ffn' a_k * exp(learned log gain) and s * a_v * learned gate (tensors, so gradients reach them)."""
        key_gain, value_gain = self.entry_gains[index]
        memory = self.visual_memory
        scale = self.memvp_config.output_scale * value_gain
        if memory.output_gate is None:
            return key_gain, scale
        return key_gain * memory.key_log_gain[index].exp(), scale * memory.output_gate[index]

    # ----------------------------------------------------------------------------- entries and reading
    def make_entries(
        self,
        visual_features: torch.Tensor | None,
        has_image: torch.Tensor | None,
        blocked_entries: torch.Tensor | None = None,
    ) -> tuple[list, torch.Tensor | None]:
        """(keys and values of every position table, the blocked-entries mask or None)."""
        prompts = self.visual_memory.prompts(visual_features, has_image)
        tables = [self.visual_memory.entries(prompts, t) for t in range(self.visual_memory.num_tables)]
        n_entries = tables[0][0].shape[1]
        if blocked_entries is not None and blocked_entries.shape[-1] != n_entries:
            raise ValueError(
                f"blocked_entries must have {n_entries} entries per sample (the visual "
                f"memory's size), got shape {tuple(blocked_entries.shape)}"
            )
        return tables, None if blocked_entries is None else blocked_entries.bool()

    def read(self, index: int, x: torch.Tensor, entries, ffn_output: torch.Tensor) -> torch.Tensor | None:
        if self._bypass:
            return None
        site = self.sites[index]
        tables, blocked = entries
        keys, values = tables[site.table]
        # The learned gains live with the visual memory; a model split over GPUs (device_map) reads here.
        key_gain, scale = (g.to(x.device) if torch.is_tensor(g) else g for g in self.site_gains(index))
        phi = softmax_over_entries if self.memvp_config.retrieval == "softmax" else site.activation
        delta = retrieve(x, keys, values, phi, scale, self.memvp_config.dropout, self.training, blocked, key_gain)
        if self._probe is not None:
            stats = _site_stats(x, keys, site.name, phi, key_gain, delta, ffn_output, self._probe["mask"])
            self._probe["sites"].append(stats)
        return delta

    def set_visual_memory(
        self,
        visual_features: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        blocked_entries: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> None:
        """Compute the visual memory once for the next language-model calls (``forward`` and
        ``generate`` do it for you); it stays until the next call."""
        self.set_visual_state(
            self.features_of(visual_features, pixel_values), has_image, blocked_entries=blocked_entries
        )

    @property
    def needs_feature_mean(self) -> bool:
        """center_features is on and no mean is set yet (training then sets it from its data)."""
        return self.memvp_config.center_features and self.visual_memory.feature_mean is None

    def set_feature_mean(self, features: torch.Tensor) -> None:
        """Centre the visual features on the mean of ``features`` ([..., visual_dim], e.g. every frame
        or patch of the training split): kept in the config, so a saved adapter reloads with it."""
        if features.shape[-1] != self.visual_dim:
            raise ValueError(
                f"features for the mean must end in visual_dim={self.visual_dim}, got {tuple(features.shape)}"
            )
        self.visual_memory.set_feature_mean(features.reshape(-1, self.visual_dim).float().mean(dim=0))

    # ----------------------------------------------------------------------------- instruments
    @contextlib.contextmanager
    def probing(self, entry_mask: torch.Tensor | None = None):
        """Per-layer statistics of the language-model calls made inside (the memory's and the FFN's
        output lengths per token, the retrieval scores' sign and spread): yields the list each MemVP
        layer appends its dict to, in call order. ``memvp.instruments`` reads it.

        ``entry_mask`` ([B, the image's entries] bool or coverage in [0, 1]) marks the entries of each
        sample's asked object: every layer then also records, per token, the share of the image's
        retrieval weight on them (``asked_share``) and a uniform reading's (``asked_uniform``: marked /
        the image's entries; the position-only padding entries count in neither)."""
        self._probe = {"sites": [], "mask": entry_mask}
        try:
            yield self._probe["sites"]
        finally:
            self._probe = None

    @contextlib.contextmanager
    def bypassed(self):
        """Language-model calls made inside skip the visual memory: the frozen LM through the very
        same modules (and the same dtype and device), for a side-by-side measurement."""
        self._bypass = True
        try:
            yield
        finally:
            self._bypass = False


def _median_neuron_length(linear: nn.Module | None, hidden_size: int, side: str) -> float | None:
    """Median length of an FFN's key rows (side='in', the d -> d_ff layer) or value columns
    (side='out', d_ff -> d): the d-dimensional vector of each hidden unit."""
    linear = getattr(linear, "base_layer", linear)  # a peft LoRA wrapper: the frozen layer inside
    weight = getattr(linear, "weight", None)
    if weight is None or weight.is_meta or weight.dim() != 2:
        return None
    w = weight.detach().float()
    if type(linear).__name__ == "Conv1D":  # GPT-2 stores [in, out]
        w = w.t()
    # nn.Linear weight is [out, in]: key rows are [d_ff, d], value columns are w[:, j] of [d, d_ff].
    vectors = w if side == "in" else w.t()
    if vectors.shape[-1] != hidden_size:
        return None
    return float(vectors.norm(dim=-1).median())


def _site_stats(
    x: torch.Tensor,
    keys: torch.Tensor,
    name: str,
    activation: nn.Module,
    key_gain,
    delta: torch.Tensor,
    ffn_output: torch.Tensor,
    entry_mask: torch.Tensor | None = None,
) -> dict:
    """Per-token lengths of the memory's output and the FFN's own output, and the retrieval scores'
    sign and spread, for the instruments (memvp.instruments); with ``entry_mask`` ([B, <= entries]
    bool, or coverage in [0, 1] that weighs each entry; its width = the image's entries) also the share
    of the image's retrieval weight on the marked entries and a uniform reading's. Differentiable (the
    grounding loss); the instruments call it under ``torch.no_grad``."""
    samples, d = keys.shape[0], x.shape[-1]
    scores = retrieval_scores(x.reshape(samples, -1, d).float(), keys.float().to(x.device), key_gain)
    weights = activation(scores).abs()
    total = weights.sum(-1).clamp_min(1e-12)
    stats = {
        "name": name,
        "memory_norm": delta.float().norm(dim=-1).reshape(-1),
        "ffn_norm": ffn_output.float().norm(dim=-1).reshape(-1),
        "positive_scores": (scores > 0).float().mean(-1).reshape(-1),
        "score_std": scores.std(-1).reshape(-1),
        "top_share": (weights.amax(-1) / total).reshape(-1),
    }
    if entry_mask is not None:
        n, n_image = weights.shape[-1], entry_mask.shape[-1]
        if entry_mask.dim() != 2 or n_image > n:
            raise ValueError(f"entry_mask must be [batch, <= {n} entries], got {tuple(entry_mask.shape)}")
        mask = entry_mask.to(weights.device, weights.dtype)
        if mask.shape[0] != samples:  # generate() repeats each sample's rows (beams): a row per sample
            mask = mask.repeat_interleave(samples // mask.shape[0], dim=0)
        # Shares among the image's entries (the mask's width): the position-only entries that pad the
        # memory to num_entries would otherwise make any reading of the image look selective.
        image = weights[..., :n_image]
        stats["asked_share"] = ((image * mask[:, None]).sum(-1) / image.sum(-1).clamp_min(1e-12)).reshape(-1)
        stats["asked_uniform"] = (mask.sum(-1, keepdim=True) / n_image).expand(samples, weights.shape[1]).reshape(-1)
    return stats


def get_memvp_model(
    language_model: nn.Module, config: MemVPConfig, vision_encoder: nn.Module | None = None
) -> MemVPModel:
    """Wrap a transformers LM (frozen) with MemVP, like ``peft.get_peft_model``."""
    return MemVPModel(language_model, config, vision_encoder)


__all__ = [
    "MemVPModel",
    "VisualMemory",
    "get_memvp_model",
    "retrieve",
    "retrieval_scores",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]
