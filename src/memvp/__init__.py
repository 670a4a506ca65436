"""memvp: memory-space visual prompting (MemVP, ICML 2024) for Hugging Face transformers models."""

from .architectures import ARCHITECTURES, FFNLayout, register_architecture
from .loading import Pretrained, load_pretrained
from .methods import METHODS, build_model, load_adapter, register_method
from .methods.input_space import BaselineConfig, InputSpaceModel
from .methods.memvp import MemVPConfig, MemVPModel, VisualMemory, get_memvp_model, retrieve
from .vision import (
    EfficientNetLite0Encoder,
    FrameEncoder,
    HFVisionEncoder,
    PrecomputedFeatures,
    VideoClip,
    VisionEncoder,
    load_features,
    load_frame_features,
    load_image,
    read_frames,
)

__version__ = "0.1.0"

__all__ = [
    "load_pretrained",
    "Pretrained",
    "METHODS",
    "build_model",
    "load_adapter",
    "register_method",
    "BaselineConfig",
    "InputSpaceModel",
    "ARCHITECTURES",
    "FFNLayout",
    "register_architecture",
    "MemVPConfig",
    "MemVPModel",
    "VisualMemory",
    "get_memvp_model",
    "retrieve",
    "EfficientNetLite0Encoder",
    "HFVisionEncoder",
    "PrecomputedFeatures",
    "VisionEncoder",
    "load_features",
    "load_image",
    "FrameEncoder",
    "VideoClip",
    "load_frame_features",
    "read_frames",
    "__version__",
]
