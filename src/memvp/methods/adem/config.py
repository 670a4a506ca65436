"""AdemConfig: every hyper-parameter of ADEM-VL-style fusion, JSON round-trippable."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...config import DictConfig, check_choice, check_field_types
from ..common import check_target_layers

_GLOBAL_TOKENS = ("mean", "first", "none")


@dataclass
class AdemConfig(DictConfig):
    """Hyper-parameters of ADEM-VL (arXiv 2410.17779). Defaults are those of Hao840/ADEM-VL's
    ``train.py`` and README commands (``--hidden_proj 128 --alpha 0.1 --beta 0.01 --drop_ratio 0.1
    --down_sample_num 256 64``, a CLIP ViT-L/14 at 224 px: a 16 x 16 grid)."""

    visual_dim: int
    """Dimension d' of one visual feature (e.g. 1024 for CLIP ViT-L/14)."""
    num_patches: int = 256
    """n: the number of patch features the encoder gives (without a CLS; with ``global_token='first'``
    the features hold 1 + n rows). It sizes the learned position tables, so it is fixed per adapter.
    Must be a square grid (g x g) unless ``scales == [1]``."""
    rank: int = 128
    """r: hidden width of the low-rank projections d' -> r -> d (``--hidden_proj``)."""
    scales: list[int] = field(default_factory=lambda: [1, 2])
    """Pooling factors: each scale s average-pools the g x g grid to ceil(g / s) x ceil(g / s) cells;
    the pooled grids are concatenated into the visual entries. [1, 2] on a 16 x 16 grid is ADEM-VL's
    ``--down_sample_num 256 64`` (256 + 64 = 320 entries)."""
    drop_ratio: float = 0.1
    """Adaptive fusion: per text token the floor(drop_ratio * N) lowest-scoring visual entries are
    dropped (their weight set to 0)."""
    visual_scale: float = 0.01
    """beta: the projected entries are multiplied by beta before the position tables are added."""
    output_scale: float = 0.1
    """alpha (ADEM-VL's ``s``): the fused result is multiplied by alpha before it joins the MLP output."""
    global_token: str = "mean"
    """The one global visual token put in the LM input in front of the text (after a leading BOS):
    'mean' of the patch features (the default: this library's encoders drop CLIP's CLS), 'first'
    (the features' first row is a CLS, as ADEM-VL uses; the other n rows are the patches) or 'none'."""
    target_layers: str | list[int] | None = None
    """'all', 'encoder', 'decoder', or indices into the default stack. None: every decoder layer of a
    decoder-only LM (as ADEM-VL: every LLaMA layer), the encoder of an encoder-decoder."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata kept with a saved adapter (never read by the mechanism)."""

    def __post_init__(self) -> None:
        check_field_types(self, "AdemConfig")
        for name in ("visual_dim", "num_patches", "rank"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"AdemConfig.{name} must be positive, got {getattr(self, name)}")
        s = self.scales
        if (
            not isinstance(s, (list, tuple))
            or not s
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s)
            or len(set(s)) != len(s)
        ):
            raise ValueError(
                f"AdemConfig.scales must be a non-empty list of distinct positive whole numbers "
                f"(pooling factors, e.g. [1, 2]), got {s!r}"
            )
        self.scales = list(s)
        if self.scales != [1] and math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(
                f"AdemConfig.num_patches={self.num_patches} is not a square grid, so it cannot be "
                f"pooled at scales {self.scales}; use scales: [1] or the encoder's g x g patch count"
            )
        if not 0.0 <= float(self.drop_ratio) < 1.0:
            raise ValueError(f"AdemConfig.drop_ratio must be in [0, 1), got {self.drop_ratio}")
        check_choice("global_token", self.global_token, _GLOBAL_TOKENS, "AdemConfig")
        self.target_layers = check_target_layers(self.target_layers, "AdemConfig")

    @property
    def grid_sizes(self) -> list[int]:
        """Side of the pooled grid at each scale (the unpooled n for scale 1 when n is not square)."""
        g = math.isqrt(self.num_patches)
        return [-(-g // s) for s in self.scales]

    @property
    def num_entries(self) -> int:
        """N: visual entries per sample, every scale's cells concatenated."""
        if self.scales == [1]:
            return self.num_patches
        return sum(side * side for side in self.grid_sizes)

    @property
    def num_dropped(self) -> int:
        """Entries dropped per text token: floor(drop_ratio * N), as ADEM-VL's ``int(drop_ratio * N)``."""
        return int(self.drop_ratio * self.num_entries)


__all__ = ["AdemConfig"]
