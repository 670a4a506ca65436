"""ADEM-VL-style fusion: a parameter-free cross-attention to multiscale visual entries in every MLP,
adaptive dropping of the weakest entries per token, and one global visual token in the LM input."""

from .config import AdemConfig
from .model import AdemModel, fuse, fusion_weights, pool_multiscale, trainable_parameter_count

__all__ = ["AdemConfig", "AdemModel", "fuse", "fusion_weights", "pool_multiscale", "trainable_parameter_count"]
