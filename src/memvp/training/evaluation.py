"""Evaluation: predictions of a model on a split (spread over the processes of a run), their
metrics with skipped samples accounted for, and ``memvp predict`` / ``memvp eval``."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..datasets import Sample, model_id_of, output_formats, score, write_outputs
from ..generation import predict
from ..inputs import describe_truncation, encode_sample
from ..methods import check_adapter
from .build import build, check_output_dir, prepare_samples, read_split, task_of
from .checkpoint import is_fsdp
from .config import TrainConfig
from .distributed import SyncedGenerate

logger = logging.getLogger(__name__)


def report_eval_truncation(tokenizer, samples: list[Sample], cfg: TrainConfig, log: Callable[[str], None]) -> int:
    """Prompts that generation will cut from the left (predict leaves max_new_tokens for the answer),
    reported as training reports its own; the count goes into the metrics."""
    room = cfg.max_length - cfg.max_new_tokens
    count = sum(
        encode_sample(tokenizer, s, room, cfg.prompt_template, with_answer=False).truncated > 0 for s in samples
    )
    if count:
        log(describe_truncation(count, len(samples), room) + " (evaluation)")
    return count


def score_split(task: str, split: list[Sample], predictions: dict[str, str], skipped: dict, cfg: TrainConfig) -> dict:
    """Metrics of ``predictions`` on ``split``. Questions skipped for an unreadable image count as
    answered wrong (an empty answer) unless ``score_skipped='drop'``: a run with broken images does
    not look better than one without."""
    if skipped["count"] and cfg.score_skipped == "wrong":
        predictions = {**{i: "" for i in skipped["ids"]}, **predictions}
    metrics = score(task, split, predictions, cfg.choice_rule)
    if skipped["count"]:
        metrics["skipped"] = {**skipped, "scored_as": cfg.score_skipped}
    return metrics


def predict_split(model, tokenizer, visual, samples, cfg: TrainConfig, progress: bool | None = None) -> dict[str, str]:
    return predict(
        model,
        tokenizer,
        samples,
        visual,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.max_new_tokens,
        max_length=cfg.max_length,
        template=cfg.prompt_template,
        use_images=cfg.use_images,
        progress=cfg.progress if progress is None else progress,
        do_sample=cfg.do_sample,
        top_p=cfg.top_p,
        temperature=cfg.temperature,
        num_beams=cfg.num_beams,
    )


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def evaluate_distributed(
    accelerator, model, tokenizer, visual, samples: list[Sample], cfg: TrainConfig
) -> dict[str, str]:
    """{sample id: prediction}: each process generates for its share, then all shares are gathered
    (every process gets all of them; each sample once)."""
    from accelerate.utils import gather_object

    memvp, fsdp = accelerator.unwrap_model(model), is_fsdp(accelerator)
    generation = contextlib.nullcontext()
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # generate() bypasses the FSDP root's forward: gather the root's own parameters (embeddings,
        # LM head, visual memory); the wrapped layers gather theirs in their forward.
        generation, memvp = FSDP.summon_full_params(model, recurse=False, writeback=False), SyncedGenerate(memvp)
    # FSDP needs the same number of batches on every process: pad by repeating the last sample
    # (predictions are keyed by sample id, so a repeat counts once).
    with accelerator.split_between_processes(samples, apply_padding=fsdp) as mine, generation:
        mine_predicted = predict_split(
            memvp, tokenizer, visual, mine, cfg, progress=cfg.progress and accelerator.is_main_process
        )
    merged: dict[str, str] = {}
    for part in gather_object([mine_predicted]):
        merged.update(part)
    return {s.id: merged[s.id] for s in samples}


def run_eval(cfg: TrainConfig, with_metrics: bool = True) -> dict:
    """``memvp predict`` / ``memvp eval``: the adapter of ``cfg.adapter`` on ``cfg.eval_data``; predictions.json,
    the files of ``cfg.output_formats`` next to it (one line logged per file) and, for eval, eval_metrics.json."""
    if not cfg.adapter:
        raise ValueError("give the adapter to evaluate: adapter=DIR")
    out = Path(cfg.output_dir)
    check_output_dir(out)
    split = read_split(cfg.eval_data, "eval_data", cfg.max_eval_samples, cfg.skip_bad)  # before the models load
    task = task_of(cfg.eval_data)
    output_formats(task, cfg.output_formats)  # an output format the data set does not have fails now
    check_adapter(cfg.adapter)
    model, tokenizer, visual = build(cfg, split)
    samples, skipped = prepare_samples(visual, split, cfg.skip_bad, "eval", task)
    truncated = report_eval_truncation(tokenizer, samples, cfg, logger.info)
    predictions = predict_split(model, tokenizer, visual, samples, cfg)
    write_json(out / "predictions.json", predictions)
    # Every question of the split goes into these files ("" for a skipped one): the servers want them all.
    written = write_outputs(task, cfg.output_formats, split, predictions, out, model_id_of(cfg.adapter))
    for name, path in written:
        logger.info(f"wrote {path} ({name})")
    outputs = {"outputs": {str(path): name for name, path in written}} if written else {}
    if not with_metrics:
        return {"predictions": len(predictions), "path": str(out / "predictions.json"), **outputs}
    metrics = {**score_split(task, split, predictions, skipped, cfg), "truncated_prompts": truncated}
    write_json(out / "eval_metrics.json", metrics)
    return {**metrics, **outputs}


__all__ = ["report_eval_truncation", "score_split", "predict_split", "evaluate_distributed", "run_eval", "write_json"]
