"""Adapter files, apart from the models: the trainable weights (safetensors) and a JSON of the
method's config plus a fingerprint of the base model, so that an adapter is never loaded onto
another model by mistake. Every method's ``save_pretrained`` / ``from_pretrained`` go through here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_write, atomic_write_text


def write_adapter(
    directory: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict, config_name: str, weights_name: str
) -> None:
    """Trainable weights (safetensors) then the config JSON, each file atomically: neither is ever half
    written, and a save that fails before its first rename leaves the previous adapter intact. A kill
    between the two renames, over an existing adapter, leaves the new weights beside the old config
    (the loader refuses them where names or shapes differ; save into a new folder to be safe)."""
    directory = Path(directory)
    state = {n: t.detach().to("cpu").contiguous() for n, t in state.items()}
    atomic_write(directory / weights_name, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / config_name, json.dumps(meta, indent=2, sort_keys=True))


ADAPTER_FORMAT_VERSION = 2
"""Version of an adapter's config file. 2: it records the method, the pipeline it was trained in (language
model, vision encoder and options, prompt template, lengths) and the memvp version, so that it loads in
one call (``memvp.load_pretrained``). Adapters without a version (1) load with the models given."""

HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""This library's names of models with a Hub id (the offline SmolLM2 is that model, converted from its GGUF)."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(name_or_path: str | None) -> str | None:
    """The Hugging Face Hub id a model name stands for: a known alias, or a repo id ("org/name") that is
    not a local path; None for a local path."""
    if not name_or_path:
        return None
    if name_or_path in HUB_IDS:
        return HUB_IDS[name_or_path]
    return name_or_path if _REPO_ID.match(name_or_path) and not Path(name_or_path).exists() else None


def resolve_local(name_or_path: str | os.PathLike, what: str) -> Path:
    """A local folder, or a Hub repo id resolved to its snapshot through huggingface_hub's cache (as
    ``from_pretrained`` does: with ``HF_HUB_OFFLINE=1`` only what is cached)."""
    path = Path(name_or_path)
    if path.exists() or hub_id(str(name_or_path)) is None:
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path)))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"{what} {str(name_or_path)!r} is neither a local folder nor a Hugging Face repository in the cache "
            f"({type(e).__name__}; with HF_HUB_OFFLINE=1 nothing is downloaded): give a local path, or "
            "download it first"
        ) from None


def _eval_results(metrics: dict, info: dict, name: str) -> list:
    """The card's model-index: one result per top-level numeric metric of the evaluation."""
    from huggingface_hub import EvalResult

    data = info.get("evaluation data") or {}
    dataset = str(data.get("format", "eval_data"))
    skip = {"count", "truncated_prompts"}
    return [
        EvalResult(
            task_type="visual-question-answering",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=key,
            metric_value=float(value),
            metric_name=key,
        )
        for key, value in metrics.items()
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ]


def model_card(meta: dict, model_class: str, trainable: int, info: dict | None = None) -> str:
    """README.md of an adapter folder as a Hugging Face model card (``huggingface_hub.ModelCard``): its
    metadata (``base_model`` as a Hub id when known, ``library_name``, ``pipeline_tag``, tags, the metrics
    as model-index results), what was trained on what, and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    info = dict(info or {})
    base = meta["base_model"]
    pipeline = meta.get("pipeline") or {}
    language_model = pipeline.get("language_model") or base.get("name_or_path") or ""
    base_hub = hub_id(language_model) or hub_id(base.get("name_or_path"))
    name = base_hub or language_model or f"a {base['model_type']} model"
    method = meta.get("method") or meta["config"].get("method") or info.get("method") or model_class
    metrics = info.pop("metrics", None) or {}
    card_name = f"memvp-{method}" + (f"-{base_hub.rsplit('/', 1)[-1]}" if base_hub else "")
    results = _eval_results(metrics, info, card_name)
    data = ModelCardData(
        base_model=base_hub,
        library_name="memvp",
        pipeline_tag="image-text-to-text",
        model_name=card_name if results else None,
        tags=["memvp", "vision-language", method],
        eval_results=results or None,
    )
    shown = {  # long statistics (MemVP's feature_mean: visual_dim numbers) stay in the config file
        k: f"<{len(v)} numbers, in the config file>" if isinstance(v, list) and len(v) > 64 else v
        for k, v in meta["config"].items()
    }
    lines = [
        f"# {method} adapter for {name}",
        "",
        "Trained with [memvp](https://arxiv.org/abs/2405.05615) (memory-space visual prompting): only the "
        "adapter's weights are here; the base model stays as it is.",
        "",
        f"- method: `{method}` (`{model_class}`)",
        f"- base model: {name} ({base['model_type']}, hidden size {base['hidden_size']}, "
        f"{len(base['sites'])} adapted layers)",
        f"- trainable parameters: {trainable:,d}",
    ]
    if meta.get("vision_encoder") or pipeline.get("vision_encoder"):
        encoder = pipeline.get("vision_encoder") or meta["vision_encoder"].get("name")
        lines.append(f"- vision encoder: `{encoder}`")
    for key, value in info.items():
        lines.append(f"- {key}: `{json.dumps(value, sort_keys=True, default=str)}`")
    if metrics:
        lines.append(f"- metrics: `{json.dumps(metrics, sort_keys=True, default=str)}`")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from memvp import load_adapter, load_pretrained",
        "",
        'loaded = load_pretrained("path/to/this/folder")  # or its Hub id'
        if pipeline
        else 'loaded = load_pretrained("path/to/this/folder", language_model="...", vision_encoder="...")',
        'answer = loaded.ask(image, "What is in the picture?")',
        f'model = load_adapter(language_model, "path/to/this/folder")  # only the adapter, onto {name}',
        "```",
        "",
        "Or `memvp serve --adapter path/to/this/folder`, `memvp predict CONFIG --adapter ...`.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(shown, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def read_adapter(
    path: str | os.PathLike, config_name: str, weights_name: str, what: str, config_cls: type, weights: bool = True
) -> tuple[dict, Any, dict[str, torch.Tensor] | None]:
    """(metadata, parsed config, weights) of an adapter directory; a missing, damaged or foreign file
    is a ValueError / FileNotFoundError naming it (never a raw JSON or safetensors traceback).
    ``weights=False`` only checks the weights file (its header must cover the whole file: a
    truncated copy fails) and returns None for them: no tensor is read."""
    from safetensors import SafetensorError

    path = Path(path)
    config_file, weights_file = path / config_name, path / weights_name
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: {path} is not {what}")
    damaged = f"save the adapter again, or use an earlier copy of {path}"
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is damaged (not valid JSON: {e}); {damaged}") from None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("config"), dict)
        or not isinstance(base, dict)
        or not {"model_type", "hidden_size", "sites"} <= base.keys()
    ):
        raise ValueError(
            f"{config_file} is damaged (it lacks the 'config' or 'base_model' entries an adapter "
            f"saved by memvp has); {damaged}"
        )
    try:
        config = config_cls.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_file}: bad adapter config ({e})") from None
    try:
        if weights:
            state = load_file(str(weights_file))
        else:
            with safe_open(str(weights_file), "pt"):
                state = None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_file} is damaged (truncated or not safetensors: {e}); {damaged}") from None
    return meta, config, state


def base_weight_sample(language_model: nn.Module, count: int = 16) -> list[float] | None:
    """``count`` evenly spaced values of the input embeddings: a cheap fingerprint of the weights (a
    random-init model of the same shape differs everywhere; bf16 and fp32 copies agree to 1%)."""
    weight = language_model.get_input_embeddings().weight
    if weight.is_meta:
        return None
    flat = weight.detach().reshape(-1)
    index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // (count - 1)  # exact, not float
    return [float(v) for v in flat[index].float().cpu()]


def check_same_base(
    saved: dict, ours: dict, path: str | os.PathLike, layers_name: str, allow_base_mismatch: bool = False
) -> None:
    """Refuse an adapter saved for another base model (fingerprints: model_type, hidden_size, sites,
    and a sample of the embedding weights unless ``allow_base_mismatch``)."""
    for key in ("model_type", "hidden_size", "sites"):
        if saved[key] != ours[key]:
            raise ValueError(
                f"The adapter in {path} was saved for a {saved['model_type']} model "
                f"(hidden_size={saved['hidden_size']}, {len(saved['sites'])} {layers_name}, "
                f"from {saved.get('name_or_path') or 'an unnamed model'}), but this "
                f"{ours['model_type']} model has hidden_size={ours['hidden_size']} and "
                f"{len(ours['sites'])} {layers_name} ({key} differs). Load it onto the base "
                "model it was trained on."
            )
    a, b = saved.get("weight_sample"), ours.get("weight_sample")
    if (
        a is not None
        and b is not None
        and not allow_base_mismatch
        and not torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-3)
    ):
        raise ValueError(
            f"The adapter in {path} was saved for a {saved['model_type']} model with other weights (from "
            f"{saved.get('name_or_path') or 'an unnamed model'}): the shapes match this one but a sample of the "
            "input embeddings does not. Load it onto the model it was trained on, or pass allow_base_mismatch=True "
            "(allow_base_mismatch=true in a config) to load it anyway."
        )


def base_model_fingerprint(language_model: nn.Module, sites: list[str]) -> dict[str, Any]:
    """What an adapter remembers of its base model: type, width, the layers it touches (``sites``)
    and a sample of the input embeddings (``base_weight_sample``)."""
    cfg = language_model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": int(cfg.hidden_size),
        "sites": list(sites),
        "name_or_path": getattr(cfg, "_name_or_path", ""),
        "weight_sample": base_weight_sample(language_model),
    }


def finish_loading(
    model: nn.Module,
    meta: dict,
    state: dict[str, torch.Tensor],
    weights_file: Path,
    layers_name: str,
    is_trainable: bool,
    allow_base_mismatch: bool = False,
):
    """``from_pretrained``'s common end: refuse another base model, load the weights into ``model``
    (a ``methods.base.MethodModel``), freeze it for inference unless ``is_trainable``."""
    check_same_base(
        meta["base_model"], model.base_model_fingerprint(), weights_file.parent, layers_name, allow_base_mismatch
    )
    model.load_trainable_state(state, source=str(weights_file))
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model


__all__ = [
    "ADAPTER_FORMAT_VERSION",
    "HUB_IDS",
    "hub_id",
    "resolve_local",
    "model_card",
    "write_adapter",
    "read_adapter",
    "base_weight_sample",
    "check_same_base",
    "base_model_fingerprint",
    "finish_loading",
]
