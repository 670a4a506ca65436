"""Instruments: is the visual memory in the language model's own scale?

Two numbers say whether MemVP reads the image without drowning the text (measure before tuning):

* ``memory_to_ffn`` per MemVP layer: the length of what the memory adds to the FFN output, over the
  length of the FFN's own output (token average). Well under 1 is a whisper; far over 1 means the
  visual entries outweigh the FFN's 1,000s of neurons.
* ``residual_ratio`` per layer: the hidden-state length of the adapted model over the frozen LM's on
  the same tokens. Over ``RESIDUAL_WARNING`` (2x) the memory swamps the residual stream and the LM
  loses the text (it then answers "bottom" and stops, whatever the question).

and, per layer, how retrieval looks: the share of positive scores <x, K_i> (SiLU reads an entry in
proportion to a positive score; with 99% negative scores the memory is read by its least-negative
entries), the spread of the scores over entries, and the largest entry's share of the weights.

``measure_scale(model, batch)`` costs two forward passes (with and without the memory) of the batch;
training calls it every ``diagnose_every`` steps, ``memvp explain`` on its one sample.

Selectivity, for data that knows where the asked object is: ``measure_selectivity(model, batch,
entry_mask)`` (one forward pass; ``measure_scale(..., entry_mask=...)`` adds it to its report) gives, per
MemVP layer, the share of the retrieval weight that the tokens predicting the answer put on the asked
object's entries, against the share a uniform reading gives (marked entries / the image's entries):
``selectivity`` 1 means the layer reads the average of the image, k means k times uniform.
``entry_mask`` is [B, entries], True on the visual entries (encoder grid cells, row-major) that show
the asked object, or in [0, 1]: how much of each cell the object covers (``vision.box_coverage``; the
weights are then weighed by it, as the energy-based pointing game weighs an attention map by a box);
a row without any marked entry (a question about no one object) is left out. Data says where the
asked object is with ``asked_box`` in its VQAv2 question records (the scenes recipe and
``scripts/multi_object_grids.py`` write it): ``memvp train`` then logs the selectivity with the other
instruments (``selectivity_max`` / ``_mean`` in loss_curve.csv, per layer in result.json's
``scale``), and ``memvp explain --asked-box`` prints it for one image.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

RESIDUAL_WARNING = 2.0
"""Residual-norm ratio (adapted / frozen) above which the memory is said to dominate."""

ASKED_ENTRIES = "asked_entries"
"""Batch key of the asked object's entries ([B, entries]: how much of each grid cell it covers,
``VisualInputs.asked_entries``): the training loop's batches carry it for ``measure_scale``; it is
not a model input."""


@contextlib.contextmanager
def _measuring(model: torch.nn.Module, batch: dict[str, Any]):
    """Eval mode and the batch's visual state for the LM calls made inside; afterwards the mode as it
    was and the state released (like a returned forward: later direct LM calls do not see this batch)."""
    was_training = model.training
    model.eval()
    try:
        with model.visual_state(batch.get("visual_features"), batch.get("pixel_values"), batch.get("has_image")):
            yield
    finally:
        model.train(was_training)


def _hidden_states(output) -> list[torch.Tensor]:
    """Every layer's output hidden states (the embeddings excluded), encoder then decoder."""
    if getattr(output, "hidden_states", None) is not None:
        return list(output.hidden_states[1:])
    states = []
    for name in ("encoder_hidden_states", "decoder_hidden_states"):
        if getattr(output, name, None) is not None:
            states += list(getattr(output, name)[1:])
    return states


def _mean_norms(states: list[torch.Tensor], mask: torch.Tensor | None) -> list[float]:
    """Token-averaged hidden-state length per layer; the mask only where it is this stack's (the
    decoder states of an encoder-decoder LM have their own length)."""
    return [
        _masked_mean(h.float().norm(dim=-1), mask if mask is not None and mask.shape == h.shape[:-1] else None)
        for h in states
    ]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> float:
    if mask is not None and mask.numel() == values.numel():
        weights = mask.reshape(-1).to(values.device, values.dtype)
        return float((values.reshape(-1) * weights).sum() / weights.sum().clamp_min(1))
    return float(values.mean())


def answer_positions(batch: dict[str, Any]) -> torch.Tensor:
    """[B, L] bool: the tokens whose next token is a labelled (answer) token of a decoder-only batch
    (the positions that predict the answer); without labels, each row's last attended token."""
    ids = batch["input_ids"]
    labels = batch.get("labels")
    if labels is not None and labels.shape == ids.shape:
        query = torch.zeros_like(ids, dtype=torch.bool)
        query[:, :-1] = labels[:, 1:] != -100
        if bool(query.any(dim=1).all()):
            return query
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    last = mask.shape[1] - 1 - mask.flip(1).long().argmax(dim=1)  # the rightmost attended token
    query = torch.zeros_like(ids, dtype=torch.bool)
    query[torch.arange(ids.shape[0]), last] = True
    return query


def first_answer_positions(batch: dict[str, Any]) -> torch.Tensor:
    """[B, L] bool: each row's first answer-predicting token (``answer_positions``' leftmost), the one
    that must find the object before any answer word is in the context. Later answer positions see
    the answer so far ("top" of "top left"), so their retrieval can follow the words, not the question."""
    query = answer_positions(batch)
    first = torch.zeros_like(query)
    rows = query.any(dim=1)
    first[rows, query[rows].long().argmax(dim=1)] = True
    return first


def _asked_tokens(sites: list[dict], query: torch.Tensor, entry_mask: torch.Tensor):
    """Per site that recorded them (an encoder-decoder's other stack did not): (name, the asked object's
    share, a uniform reading's share) at the query tokens of the rows that mark an object."""
    keep = (query & entry_mask.bool().any(dim=-1).to(query.device)[:, None]).reshape(-1)
    for site in sites:
        if "asked_share" not in site or site["asked_share"].numel() != keep.numel():
            continue
        kept = keep.to(site["asked_share"].device)
        share = site["asked_share"][kept]
        if share.numel():
            yield site["name"], share, site["asked_uniform"][kept]


def _selectivity(sites: list[dict], query: torch.Tensor, entry_mask: torch.Tensor) -> dict[str, Any]:
    """Per site: the asked object's share of the weight, a uniform reading's, and their ratio, averaged
    over the query tokens of the rows that mark an object."""
    out: dict[str, Any] = {"asked_share": {}, "asked_uniform": {}, "selectivity": {}}
    for name, share, uniform in _asked_tokens(sites, query, entry_mask):
        out["asked_share"][name] = float(share.mean())
        out["asked_uniform"][name] = float(uniform.mean())
        out["selectivity"][name] = float((share / uniform.clamp_min(1e-12)).mean())
    out["max_selectivity"] = max(out["selectivity"].values(), default=float("nan"))
    return out


def grounding_loss(sites: list[dict], query: torch.Tensor, entry_mask: torch.Tensor) -> torch.Tensor | None:
    """Mean over MemVP layers of -log(the asked object's share of the retrieval weight), over the
    query tokens of the rows that mark an object: differentiable when the probed forward was run with
    gradients (``model.probing(entry_mask)`` around a training forward). None when no row marks one."""
    losses = [-(share + 1e-6).log().mean() for _, share, _ in _asked_tokens(sites, query, entry_mask)]
    return torch.stack([loss.to(losses[0].device) for loss in losses]).mean() if losses else None


def _lm_keys(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's keys that the language model itself takes."""
    return {
        k: v
        for k, v in batch.items()
        if k not in ("visual_features", "has_image", "pixel_values", "answer_logits_only", ASKED_ENTRIES)
    }


@torch.no_grad()
def measure_selectivity(
    model, batch: dict[str, Any], entry_mask: torch.Tensor, positions: torch.Tensor | None = None
) -> dict[str, Any]:
    """Per MemVP layer, how much of the retrieval weight falls on the asked object (one forward pass).

    ``entry_mask`` [B, entries] (bool, or each cell's coverage in [0, 1]) marks each sample's asked
    object; ``positions`` [B, L] bool the tokens to average over (default ``answer_positions(batch)``:
    those predicting the answer). Returns ``{"asked_share": {site: share}, "asked_uniform": {site: marked / the
    image's entries}, "selectivity": {site: mean of share / uniform}, "max_selectivity"}``.
    """
    query = answer_positions(batch) if positions is None else positions.bool()
    with _measuring(model, batch), model.probing(entry_mask) as sites:
        model.language_model(**_lm_keys(batch))
    return _selectivity(sites, query, entry_mask)


@torch.no_grad()
def measure_scale(model, batch: dict[str, Any], entry_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Scale report of a model that ``supports_probing`` (MemVP) on one batch (the keys that
    ``model(**batch)`` takes).

    Returns ``{"residual_ratio": [per layer], "memory_to_ffn": {site: ratio}, "positive_scores":
    {site: share}, "score_std": {site: ...}, "top_share": {site: ...}, "max_residual_ratio",
    "max_memory_to_ffn", "dominates"}``; padding tokens are left out of every average. With
    ``entry_mask`` ([B, entries] bool, the asked object's entries) it also holds what
    ``measure_selectivity`` returns, from the same forward pass.
    """
    lm_keys = _lm_keys(batch)
    mask = lm_keys.get("attention_mask")
    with _measuring(model, batch):
        with model.probing(entry_mask) as sites:
            adapted = model.language_model(**lm_keys, output_hidden_states=True)
        with model.bypassed():
            frozen = model.language_model(**lm_keys, output_hidden_states=True)
    adapted_norms = _mean_norms(_hidden_states(adapted), mask)
    frozen_norms = _mean_norms(_hidden_states(frozen), mask)
    residual = [a / max(f, 1e-12) for a, f in zip(adapted_norms, frozen_norms)]
    report: dict[str, Any] = {
        "residual_ratio": residual,
        "memory_to_ffn": {},
        "positive_scores": {},
        "score_std": {},
        "top_share": {},
    }
    for site in sites:
        name = site["name"]
        ffn = _masked_mean(site["ffn_norm"], mask)
        report["memory_to_ffn"][name] = _masked_mean(site["memory_norm"], mask) / max(ffn, 1e-12)
        for key in ("positive_scores", "score_std", "top_share"):
            report[key][name] = _masked_mean(site[key], mask)
    if entry_mask is not None:
        report.update(_selectivity(sites, answer_positions(batch), entry_mask))
        first = _selectivity(sites, first_answer_positions(batch), entry_mask)
        report["first_token_selectivity"] = first["selectivity"]
        report["max_first_token_selectivity"] = first["max_selectivity"]
    report["max_residual_ratio"] = max(residual) if residual else 1.0
    report["max_memory_to_ffn"] = max(report["memory_to_ffn"].values(), default=0.0)
    report["dominates"] = report["max_residual_ratio"] > RESIDUAL_WARNING
    return report


def summary(report: dict[str, Any]) -> dict[str, float]:
    """The few numbers a loss log keeps per step."""
    sites = report["memory_to_ffn"]
    mean = lambda d: sum(d.values()) / max(len(d), 1)  # noqa: E731
    out = {
        "residual_ratio_max": report["max_residual_ratio"],
        "memory_to_ffn_max": report["max_memory_to_ffn"],
        "memory_to_ffn_mean": mean(sites),
        "positive_scores_mean": mean(report["positive_scores"]),
        "top_share_mean": mean(report["top_share"]),
    }
    if report.get("selectivity"):
        out["selectivity_max"] = report["max_selectivity"]
        out["selectivity_mean"] = mean(report["selectivity"])
        out["selectivity_first_max"] = report["max_first_token_selectivity"]
    return out


def warning(report: dict[str, Any], where: str = "") -> str | None:
    """A plain-words warning when the memory dominates the residual stream, else None."""
    if not report["dominates"]:
        return None
    layer = max(range(len(report["residual_ratio"])), key=report["residual_ratio"].__getitem__)
    return (
        f"warning{' ' + where if where else ''}: the visual memory dominates the residual stream: hidden "
        f"states are {report['max_residual_ratio']:.1f}x the frozen LM's at layer {layer} (memory output up to "
        f"{report['max_memory_to_ffn']:.2f}x the FFN's own). The LM will lose the text; lower lr or "
        "memvp.output_scale, or use memvp.memory_scale=ffn"
    )


def format_report(report: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    res = report["residual_ratio"]
    sites = list(report["memory_to_ffn"])
    lines = [
        f"residual norm / frozen LM, per layer: {' '.join(f'{r:.2f}' for r in res)} (max "
        f"{report['max_residual_ratio']:.2f}; warning above {RESIDUAL_WARNING:g})",
        "memory / FFN output, per MemVP layer: " + " ".join(f"{report['memory_to_ffn'][s]:.3f}" for s in sites),
        "positive retrieval scores, per MemVP layer: " + " ".join(f"{report['positive_scores'][s]:.2f}" for s in sites),
        "largest entry's share of the retrieval weights: " + " ".join(f"{report['top_share'][s]:.2f}" for s in sites),
    ]
    if report.get("selectivity"):
        lines.append(
            "retrieval weight on the asked object / uniform, per MemVP layer: "
            + " ".join(f"{report['selectivity'][s]:.2f}" for s in report["selectivity"])
            + f" (max {report['max_selectivity']:.2f}; 1 = reads the average of the image)"
        )
        first = report.get("first_token_selectivity", report["selectivity"])
        if first != report["selectivity"]:  # the same tokens where one token predicts (explain's prompt)
            lines.append(
                "... at the first answer token only: "
                + " ".join(f"{first[s]:.2f}" for s in first)
                + f" (max {report['max_first_token_selectivity']:.2f})"
            )
    message = warning(report)
    return "\n".join(lines + ([message] if message else []))


__all__ = [
    "ASKED_ENTRIES",
    "first_answer_positions",
    "measure_scale",
    "measure_selectivity",
    "grounding_loss",
    "answer_positions",
    "summary",
    "warning",
    "format_report",
    "RESIDUAL_WARNING",
]
