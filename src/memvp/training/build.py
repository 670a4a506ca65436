"""From a TrainConfig to what a run needs: the data read and checked (before any model loads), the
output directory checked, the models built or loaded, the samples' images encoded."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import PartialState

from ..datasets import FORMATS, Sample, get_format, load_samples
from ..inputs import VisualInputs
from ..methods import adapter_config, build_model, check_adapter_features, get_method, init_from_adapter, load_adapter
from ..pretrained import cache_dir, load_language_model, load_vision_encoder
from .config import DTYPES, TrainConfig

logger = logging.getLogger(__name__)


def read_split(
    spec: dict | None, what: str, limit: int = 0, skip_bad: bool = False, log: Callable[[str], None] = logger.info
) -> list[Sample]:
    """The samples of a data spec; with ``skip_bad`` malformed records the reader can leave out (LLaVA
    conversations) are skipped and listed in one log line instead of stopping the run."""
    if not spec:
        raise ValueError(f"no {what} given in the config")
    spec = dict(spec)
    base_dir = spec.pop("_base_dir", None)
    skipped: dict[str, str] | None = {} if skip_bad else None
    samples = load_samples(spec, base_dir=base_dir, skipped=skipped)
    if skipped:
        names = list(skipped)
        listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        log(f"skipped {len(names)} malformed record(s) of {what}: {listed} (e.g. {skipped[names[0]]})")
    return samples[:limit] if limit > 0 else samples


def task_of(spec: dict) -> str:
    return spec["format"]


def build(cfg: TrainConfig, samples: list[Sample] = ()):
    """(model, tokenizer, VisualInputs) as the config says (adapter loaded if given). The model is
    a MemVPModel or, for the baselines, an InputSpaceModel with the same interface. ``samples``
    size a ``precomputed`` vision encoder (their feature files)."""
    check_frames_fit_entries(cfg, samples)  # before either model loads and any frame is decoded
    example = next((s.features for s in samples if s.features is not None), None)
    encoder = load_vision_encoder(
        cfg.vision_encoder,
        cfg.vision,
        example_features=example,
        num_frames=cfg.num_frames if reads_videos(cfg, samples) else 0,
    )
    if cfg.adapter:  # the encoder is small, the language model may not be: refuse a mismatch first
        check_adapter_features(cfg.adapter, encoder.feature_dim, cfg.vision_encoder)
    lm, tokenizer = load_language_model(cfg.language_model, dtype=DTYPES[cfg.model_dtype])
    encoder.to(PartialState().device)  # images / frames are encoded (once, cached) on this process's GPU
    visual = VisualInputs(encoder, cfg.feature_cache or str(cache_dir() / "features"))
    # ViT adapters train (and are saved) with the method: the model then encodes the images itself.
    attach = encoder if encoder.has_adapters and get_method(cfg.method).reads_images else None
    if cfg.adapter:
        model = load_adapter(
            lm, cfg.adapter, is_trainable=True, allow_base_mismatch=cfg.allow_base_mismatch, vision_encoder=attach
        )
    else:
        method = get_method(cfg.method)
        model = build_model(
            cfg.method, lm, encoder.feature_dim, encoder.num_tokens, **{method.section: cfg.options_for(method)}
        )
        if attach is not None:
            model.attach_vision_encoder(attach)
        if cfg.init_from:
            loaded, new = init_from_adapter(model, cfg.init_from, cfg.allow_base_mismatch)
            logger.info(
                f"init_from {cfg.init_from}: {loaded} tensors loaded, {new} new (trained from their initialisation)"
            )
    model.pipeline = {  # saved with the adapter: memvp.load_pretrained rebuilds all of it from the adapter
        "language_model": cfg.language_model,
        "vision_encoder": cfg.vision_encoder,
        "vision": cfg.vision,
        "prompt_template": cfg.prompt_template,
        "max_length": cfg.max_length,
        "max_new_tokens": cfg.max_new_tokens,
        **({"num_frames": cfg.num_frames} if reads_videos(cfg, samples) else {}),
    }
    return model, tokenizer, visual


def reads_videos(cfg: TrainConfig, samples: list[Sample] = ()) -> bool:
    """Whether the run's data are videos (a video format, or samples that hold videos)."""
    formats = {spec.get("format") for spec in (cfg.train_data, cfg.eval_data) if spec}
    return any(FORMATS[f].is_video for f in formats if f in FORMATS) or any(s.is_video for s in samples)


def check_frames_fit_entries(cfg: TrainConfig, samples: list[Sample] = ()) -> None:
    """A video is ``num_frames`` visual tokens; a method with ``num_entries`` (MemVP) holds at most that
    many. More would fail at the first forward pass, after both models loaded and every frame was
    decoded: check it from the config (or the adapter's config file) instead."""
    if not reads_videos(cfg, samples):
        return
    method = get_method(cfg.method)
    where = f"{method.section}.num_entries"
    if cfg.adapter:
        try:  # an unreadable adapter is reported by check_adapter / load_adapter
            config = adapter_config(cfg.adapter)
        except (OSError, ValueError):
            return
        where = f"num_entries of the adapter {cfg.adapter}"
    elif method.tokens_field and method.tokens_field not in cfg.options_for(method):
        return  # sized by the encoder's token count: it always fits
    else:
        config = method.make_config(1, cfg.options_for(method))
    entries = getattr(config, "num_entries", None)
    if entries is not None and cfg.num_frames > int(entries):
        raise ValueError(
            f"num_frames={cfg.num_frames} is more than {where}={entries}: each video frame is one "
            f"visual token of the method's memory; set {method.section}.num_entries >= {cfg.num_frames}, "
            "or lower num_frames"
        )


def check_output_dir(out: Path) -> None:
    """Fail before any work when ``output_dir`` can not be written (a file, read-only, ...): the
    trained weights would otherwise be lost at the end of training."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".memvp-write-check-"):
            pass
    except OSError as e:
        raise ValueError(
            f"output_dir {out} is not writable ({e.strerror}); give a directory you can write to"
        ) from None


def prepare_samples(
    visual: VisualInputs,
    samples: list[Sample],
    skip_bad: bool,
    what: str,
    data_format: str,
    log: Callable[[str], None] = logger.info,
) -> tuple[list[Sample], dict]:
    """(the samples whose images or feature files could be read, a report of the skipped ones:
    count, ids, and each unreadable file's error, for metrics.json)."""
    fmt = get_format(data_format)
    try:
        kept, bad = visual.prepare(samples, skip_bad=skip_bad)
    except FileNotFoundError as e:
        if "image not found" not in str(e) and "video not found" not in str(e):
            raise
        raise FileNotFoundError(
            f"{e} ({data_format} finds images at {fmt.image_paths}; --skip-bad skips missing ones)"
        ) from None
    if fmt.is_video and not any(s.has_image for s in samples):
        log(
            f"warning: no {what} sample ({data_format}) has a video or a feature file, so the model sees no "
            "visual input; set video_dir or features_dir in the data spec"
        )
    kept_ids = {s.id for s in kept}
    skipped = {"count": len(samples) - len(kept), "ids": [s.id for s in samples if s.id not in kept_ids], "files": bad}
    if bad:
        log(
            f"skipped {skipped['count']} {what} sample(s) of {len(samples)}: {len(bad)} image or feature file(s) "
            f"could not be read, e.g. {next(iter(bad.values()))} (all listed under 'skipped' in the metrics)"
        )
    if not kept:
        raise ValueError(f"the {what} split is empty (after skipping unreadable images)")
    return kept, skipped


FEATURE_STATISTICS_SAMPLES = 1024
"""How many samples (the split's first ones with a visual input) the feature statistics read."""


def visual_feature_statistics(
    visual: VisualInputs, samples: list[Sample], limit: int = FEATURE_STATISTICS_SAMPLES
) -> tuple[torch.Tensor, float] | None:
    """(the mean visual feature, its share of the features' energy: |mean|^2 / mean |z|^2) over every
    token of the first ``limit`` samples with a visual input; None when none has one. The share is 1
    when all features are the same vector and 0 for centred ones; it is the same on every process
    (the split's order, not the shard's)."""
    with_visual = [s for s in samples if s.has_image][:limit]
    if not with_visual:
        return None
    total, squares, count = None, 0.0, 0
    for start in range(0, len(with_visual), 64):
        features, _ = visual.batch(with_visual[start : start + 64])
        flat = features.reshape(-1, features.shape[-1]).double()
        total = flat.sum(dim=0) if total is None else total + flat.sum(dim=0)
        squares += float(flat.pow(2).sum())
        count += flat.shape[0]
    mean = total / count
    return mean.float(), float(mean.pow(2).sum()) / max(squares / count, 1e-30)


__all__ = [
    "read_split",
    "task_of",
    "build",
    "reads_videos",
    "check_frames_fit_entries",
    "check_output_dir",
    "prepare_samples",
    "visual_feature_statistics",
]
