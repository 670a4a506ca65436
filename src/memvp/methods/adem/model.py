"""ADEM-VL-style fusion (arXiv 2410.17779, code: github.com/Hao840/ADEM-VL) on transformers LMs.

* Visual entries: the patch features z [B, n, d'] are average-pooled at several scales from the one
  encoder pass (``AdemConfig.scales``; the pooled grids concatenated, N entries), then projected by
  the low-rank MLP f (d' -> r -> d) and scaled: E = beta * f(pool(z)) (zero for image-less samples).
  With the learned tables p^k (init N(0, 0.02)) and p^v (init 0), shared by all layers:
  K = silu(E + p^k), V = E + p^v, computed once per forward / generate call.
* In every target layer, with x the MLP input (the query), the MLP output gains
  alpha * drop(silu(x) K^T) V: a cross-attention without parameters or softmax. ``drop`` (adaptive
  fusion) zeroes, per text token, the floor(drop_ratio * N) lowest scores of silu(x) K^T.
* One global visual token g = f_g(mean of z) (or of a CLS row) is put in the LM input in front of
  the text (after a leading BOS), so it is part of the prompt and of the KV cache.
* Trainable: f, f_g, p^k, p^v, as ADEM-VL trains (its ``adapter_proj``, ``adapter_proj_cls``,
  ``adapter_emb1``, ``adapter_emb2``); beta and alpha are fixed numbers there and here.

Where this differs from Hao840/ADEM-VL's code:

1. Global token: ``adem/model.py`` ``Transformer.forward`` / ``generate`` project CLIP's CLS with
   ``adapter_proj_cls`` and ``insert_image_embeds`` puts it after BOS and the text "Image: ";
   image-less samples get the text "Image: N/A" instead. Here the token is by default the mean of
   the patch features (this library's encoders drop the CLS; ``global_token='first'`` takes a CLS
   row), it goes right after a leading BOS (or first) with no "Image:" text (the prompt template is
   the data pipeline's), and an image-less sample's slot is masked out (attention mask 0: no token).
   In a forward pass position ids are counted over attended tokens, so the masked slot shifts nothing.
2. Vision-encoder adapters: ``adem/build.py`` ``create_model`` calls ``adapter.py``
   ``set_Clip_Adapter`` (a parallel bottleneck adapter, hidden ``--adapter_dim`` 12, s = 0.1, in
   every CLIP block) and trains them too. Here the features come from a frozen encoder (or the
   feature cache): no encoder adapters, so fewer trainable parameters.
3. Pooling: ``adem/model.py`` ``Avg2dSampler`` takes entry counts (``--down_sample_num 256 64``) and
   assumes CLIP-L/14's 16 x 16 grid (``if not gs == 16``). Here ``scales`` are pooling factors of any
   g x g grid (ceil(g / s) cells per side, ``adaptive_avg_pool2d``); [1, 2] on 16 x 16 is theirs.
   As theirs, the raw features are pooled, then projected.
4. Dropping: ``adem/adapter.py`` ``Adapter.forward`` thresholds at the int(r N)-th smallest score and
   zeroes the scores strictly below it (ties can drop fewer); here exactly int(r N) entries per token
   (``torch.topk``, ties broken arbitrarily). Same result when the scores are distinct.
5. Precision: theirs runs the projector and the fusion under ``torch.cuda.amp.autocast`` (fp16)
   on an fp16 LLaMA; here the trained weights stay fp32, the entries are computed in fp32 and cast to
   the LM's dtype in each layer.
6. Hooks: ``adapter.py`` ``forward_llama`` adds ``adapter_mlp(h_norm, vis_weight) * s`` next to the
   FFN in the residual sum; here a forward hook adds it to the FFN output module's output
   (``architectures.py``): the same for LLaMA-family models; on GPT-2 / OPT the FFN's output dropout
   then also applies to it in training. Encoder-decoder LMs (not in ADEM-VL) fuse in the encoder by
   default and get the global token in the encoder input.
7. Not here: their data pipeline (prompt formats, truncation to ``max_seq_len`` inside
   ``insert_image_embeds``) and the ``DropPath`` / gradient-checkpointing plumbing of their blocks
   (``gradient_checkpointing_enable`` checkpoints the transformers layers instead).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FFNMemoryModel, read_entries
from ..common import check_visual_features, init_projector, insert_tokens, make_projector
from .config import AdemConfig

CONFIG_NAME = "adem_config.json"


WEIGHTS_NAME = "adem_model.safetensors"


def pool_multiscale(patches: torch.Tensor, config: AdemConfig) -> torch.Tensor:
    """[B, n, d'] row-major g x g patches -> [B, N, d']: each scale's average-pooled grid, concatenated
    (as ADEM-VL's ``Avg2dSampler``)."""
    if config.scales == [1]:
        return patches
    batch, n, dim = patches.shape
    g = math.isqrt(n)
    grid = patches.transpose(1, 2).reshape(batch, dim, g, g)
    pooled = [grid if side == g else F.adaptive_avg_pool2d(grid, side) for side in config.grid_sizes]
    return torch.cat([p.flatten(2).transpose(1, 2) for p in pooled], dim=1)


def fusion_weights(x: torch.Tensor, keys: torch.Tensor, num_dropped: int = 0) -> torch.Tensor:
    """silu(x) K^T [S, R, N] with, per row (text token), the ``num_dropped`` lowest scores set to 0.
    ``keys`` are K = silu(E + p^k) [S or 1, N, d]."""
    weights = torch.matmul(F.silu(x), keys.transpose(-1, -2))
    if num_dropped > 0:
        lowest = weights.topk(num_dropped, dim=-1, largest=False).indices
        weights = weights.scatter(-1, lowest, 0.0)
    return weights


def fuse(
    x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_dropped: int = 0, scale: float = 1.0
) -> torch.Tensor:
    """alpha * drop(silu(x) K^T) V for x [B, L, d] (or any shape of ``methods.base.per_sample_rows``)
    and K, V [B or 1, N, d]: what one layer adds to its MLP output."""
    return read_entries(x, keys, values, lambda rows, k: fusion_weights(rows, k, num_dropped), scale)


class _GlobalToken(nn.Module):
    """f_g: the projection of the one global visual token (ADEM-VL's ``adapter_proj_cls``)."""

    def __init__(self, config: AdemConfig, hidden_size: int, device):
        super().__init__()
        self.projector = make_projector("mlp", config.visual_dim, hidden_size, config.rank, device)


class AdemVisual(nn.Module):
    """Every trainable tensor of ADEM-VL: the projections f (entries) and f_g (global token), and the
    key / value position tables p^k, p^v shared by all layers."""

    def __init__(self, config: AdemConfig, hidden_size: int, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        kw = {"device": device, "dtype": torch.float32}  # fp32 master weights whatever the LM dtype
        # ADEM-VL's Projector: Linear(d', r), SiLU, Linear(r, d).
        self.projector = make_projector("mlp", config.visual_dim, hidden_size, config.rank, device)
        self.global_token = _GlobalToken(config, hidden_size, device) if config.global_token != "none" else None
        self.key_position = nn.Parameter(torch.empty(1, config.num_entries, hidden_size, **kw))
        self.value_position = nn.Parameter(torch.empty(1, config.num_entries, hidden_size, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # As ADEM-VL: xavier projections with zero bias, adapter_emb1 ~ N(0, 0.02), adapter_emb2 = 0.
        init_projector(self.projector)
        if self.global_token is not None:
            init_projector(self.global_token.projector)
        nn.init.normal_(self.key_position, std=0.02)
        nn.init.zeros_(self.value_position)

    def _split(self, visual_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patches [B, n, d'], global feature [B, 1, d']) in the adapter's dtype (fp32) and device."""
        cfg = self.config
        check_visual_features(visual_features, cfg.visual_dim, "AdemConfig")
        z = visual_features.to(self.key_position.device, self.key_position.dtype)
        first = cfg.global_token == "first"
        patches = z[:, 1:] if first else z
        if patches.shape[1] != cfg.num_patches:
            rows = f"1 CLS + {cfg.num_patches}" if first else str(cfg.num_patches)
            raise ValueError(
                f"visual_features has {z.shape[1]} visual tokens but AdemConfig expects {rows} "
                f"(num_patches={cfg.num_patches}, global_token={cfg.global_token!r}); set "
                "num_patches to the vision encoder's patch count"
            )
        return patches, (z[:, :1] if first else patches.mean(dim=1, keepdim=True))

    def entries(
        self, visual_features: torch.Tensor | None = None, has_image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K = silu(E + p^k), V = E + p^v [B, N, d] with E = beta * f(pool(z)), zero for image-less
        samples; [1, N, d] position-only entries when ``visual_features`` is None."""
        if visual_features is None:
            return F.silu(self.key_position), self.value_position
        patches, _ = self._split(visual_features)
        prompts = self.config.visual_scale * self.projector(pool_multiscale(patches, self.config))
        if has_image is not None:
            has_image = _has_image(has_image, prompts.shape[0], prompts.device)
            prompts = prompts * has_image.to(prompts.dtype).view(-1, 1, 1)  # ADEM-VL: *= indicators
        return F.silu(prompts + self.key_position), prompts + self.value_position

    def global_tokens(self, visual_features: torch.Tensor) -> torch.Tensor:
        """f_g(global feature): [B, 1, d]."""
        _, feature = self._split(visual_features)
        return self.global_token.projector(feature)


def _has_image(has_image, batch: int, device) -> torch.Tensor:
    has_image = torch.as_tensor(has_image, device=device)
    if has_image.shape != (batch,):
        raise ValueError(f"has_image must have shape [batch={batch}], got {tuple(has_image.shape)}")
    return has_image.bool()


class AdemModel(FFNMemoryModel):
    """A frozen transformers language model with ADEM-VL fusion in its MLPs and one global visual token
    in its input.

    ``model(input_ids=..., attention_mask=..., visual_features=[B, n, visual_dim], labels=...)`` returns
    the language model's output; with visual features (and a global token) the sequence is one token
    longer (the logits too; labels are shifted for you). ``visual_features=None`` means no sample has
    an image; ``has_image`` ([B] bool) marks image-less samples inside a batch.
    """

    config_class, config_name, weights_name = AdemConfig, CONFIG_NAME, WEIGHTS_NAME
    method_name = "adem"
    config_attr, layers_name = "adem_config", "ADEM layers"

    def __init__(self, language_model: nn.Module, config: AdemConfig):
        super().__init__()
        self.adem_config = config = AdemConfig.from_dict(config.to_dict())  # our own resolved copy
        if config.target_layers is None:
            config.target_layers = "encoder" if language_model.config.is_encoder_decoder else "decoder"
        self._setup_sites(language_model, config.target_layers)
        self._hidden_size = int(language_model.config.hidden_size)
        device = next(iter(language_model.parameters())).device
        self.visual = AdemVisual(config, self._hidden_size, device=device)

    @property
    def num_entries(self) -> int:
        return self.adem_config.num_entries

    def analytic_layer_flops(self, length: float, dim: int, n_visual: int) -> float:
        """The text at L + 1 (the global visual token joins it) + 4 N d (L + 1) for silu(x) K^T V over
        the N pooled entries at every MLP (not in the paper)."""
        tokens = length + 1
        return super().analytic_layer_flops(tokens, dim, n_visual) + 4 * self.num_entries * dim * tokens

    # ----------------------------------------------------------------------------- entries and reading
    def make_entries(self, visual_features: torch.Tensor | None, has_image: torch.Tensor | None) -> tuple:
        return self.visual.entries(visual_features, has_image)

    def read(self, index: int, x: torch.Tensor, entries, ffn_output: torch.Tensor) -> torch.Tensor:
        keys, values = entries
        cfg = self.adem_config
        return fuse(x, keys, values, cfg.num_dropped, cfg.output_scale)

    # ----------------------------------------------------------------------------- the global token
    def _bos_token_id(self) -> int | None:
        bos = getattr(self.config, "bos_token_id", None)
        return bos if isinstance(bos, int) else None

    def lm_inputs(
        self,
        input_ids,
        attention_mask,
        visual_features,
        has_image,
        labels=None,
        generation: bool = False,
        **kwargs: Any,
    ) -> dict:
        """LM keyword inputs: ids as they are, or embeddings with the global visual token after a
        leading BOS (or first). Image-less rows get the slot masked out, before their first attended
        token, so every row stays one contiguous attended block (left-padded generation and
        right-padded training alike)."""
        if self.visual.global_token is None or visual_features is None:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if input_ids is None:
            raise ValueError("AdemModel needs input_ids (it puts the global visual token among their embeddings)")
        lm = self.language_model
        embeds = lm.get_input_embeddings()(input_ids)
        token = self.visual.global_tokens(visual_features).to(embeds.device)
        batch = input_ids.shape[0]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        token_mask = (
            torch.ones(batch, dtype=torch.bool, device=embeds.device)
            if has_image is None
            else _has_image(has_image, batch, embeds.device)
        )
        first = mask.long().argmax(dim=1)
        at = first
        bos = self._bos_token_id()
        if bos is not None:
            starts_with_bos = input_ids.gather(1, first.view(-1, 1)).view(-1) == bos
            at = first + (starts_with_bos & token_mask).long()
        encdec = bool(self.config.is_encoder_decoder)  # there labels belong to the decoder: unchanged
        embeds, mask, shifted = insert_tokens(
            embeds, mask, token, token_mask.view(-1, 1), at, None if encdec else labels
        )
        if attention_mask is None and has_image is None:
            mask = None  # nothing padded, nothing masked: as given (mask utilities can not read meta tensors)
        inputs = {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels if encdec else shifted}
        if (
            not generation
            and mask is not None
            and "position_ids" not in kwargs
            and not encdec
            and _accepts(lm, "position_ids")
        ):
            # Counted over attended tokens: a masked slot (image-less row) shifts no position.
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return inputs


def _accepts(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def trainable_parameter_count(config: AdemConfig, hidden_size: int) -> int:
    """(d' r + r + r d + d) per projection (f, and f_g unless global_token='none') + 2 N d (p^k, p^v)."""
    projection = config.visual_dim * config.rank + config.rank + config.rank * hidden_size + hidden_size
    projections = 1 + (config.global_token != "none")
    return projections * projection + 2 * config.num_entries * hidden_size


__all__ = [
    "AdemModel",
    "AdemVisual",
    "fuse",
    "fusion_weights",
    "pool_multiscale",
    "trainable_parameter_count",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]
