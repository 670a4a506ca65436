"""Fine-tune MemVP: ``memvp train CONFIG.yaml [key=value ...]`` or ``train(TrainConfig(...))``.

AdamW with warmup + cosine decay, gradient accumulation, loss on answer tokens only (LM head
evaluated only there), periodic evaluation, a metrics JSON and a CSV of the loss curve. Every output
file is written atomically.

Scaling out and surviving faults, all through Hugging Face Accelerate (no engine of our own):

* the same command runs as one process, under ``accelerate launch`` (DDP, or FSDP with
  ``configs/accelerate/fsdp.yaml``) or under ``torchrun``; ``batch_size`` is the global batch, so the
  result does not depend on the number of processes (see ``TrainConfig.batch_size``);
* bf16 / fp16 autocast with fp32 trainable weights, fp16 loss scaling, gradient checkpointing, the
  frozen LM optionally stored in bf16 (``model_dtype``);
* checkpoints (``checkpoint.py``) every ``save_every`` steps, atomic, trainable weights only, and
  ``resume`` continues a run to the same result as an uninterrupted one;
* a non-finite loss stops the run (FloatingPointError) before it touches the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .. import instruments
from ..atomic import atomic_write_text
from ..inputs import collate_training, describe_truncation, encode_sample
from ..datasets import Sample
from ..instruments import measure_scale
from ..methods import check_adapter
from ..peak_memory import PeakMemory
from .build import build, check_output_dir, prepare_samples, read_split, task_of, visual_feature_statistics
from .checkpoint import (DataPosition, check_resume_config, checkpoint_step, data_fingerprint, full_parameters,
                         is_fsdp, load_trainable_weights, load_training_state, read_trainer_state, resolve_resume,
                         save_checkpoint)
from .config import TrainConfig
from .distributed import (check_fsdp_names, check_launch, ddp_kwargs, fp32_trainable, one_writer_at_a_time, setup_fsdp,
                          skip_frozen_broadcast, use_cpu)
from .evaluation import evaluate_distributed, report_eval_truncation, score_split, write_json
from .interrupt import TrainingInterrupted, stop_requested, stop_signals

def decays(name: str, param: torch.nn.Parameter) -> bool:
    """Whether weight decay applies: not to biases and 1-d tensors (gates, gains, norms), as timm's
    ``param_groups_weight_decay`` (the official MemVP code); position tables [1, n, d] decay."""
    return param.ndim > 1 and not name.endswith(".bias")


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters in AdamW groups: with and without weight decay (``decays``), and the
    projector's apart when ``projector_lr`` is set."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            projector = cfg.projector_lr is not None and ".projector." in f".{name}"
            groups.setdefault((projector, decays(name, p)), []).append(p)
    if cfg.projector_lr is not None and not any(projector for projector, _ in groups):
        raise ValueError(f"projector_lr is set but the {cfg.method!r} model has no trainable projector")
    return [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
             **({"lr": cfg.projector_lr} if projector else {})}
            for (projector, decay), params in sorted(groups.items())]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` at the config's effective lr and betas."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                             eps=cfg.adam_eps)


def _save_adapter_somewhere(model, directory: Path, card_info: dict) -> None:
    """Save the trained adapter; when output_dir fails at the end (disk full, removed, ...), save it
    in a fresh temporary directory instead and say where: training time is never thrown away."""
    try:
        model.save_pretrained(directory, card_info)
    except OSError as e:
        rescue = Path(tempfile.mkdtemp(prefix="memvp-adapter-"))
        model.save_pretrained(rescue, card_info)
        raise ValueError(f"could not write the adapter to {directory} ({e.strerror or e}); the trained weights "
                         f"are saved in {rescue} instead: move them where you want them") from None


def _diagnose_now(cfg: TrainConfig, accelerator, step: int, total_steps: int) -> bool:
    """MemVP runs measure their scale (instruments) now? Not under FSDP, whose sharded modules can
    not be run outside the wrapped forward."""
    if cfg.diagnose_every <= 0 or cfg.method != "memvp" or is_fsdp(accelerator):
        return False
    return step == 1 or step == total_steps or step % cfg.diagnose_every == 0


_SCALE_COLUMNS = ("residual_ratio_max", "memory_to_ffn_max", "memory_to_ffn_mean", "positive_scores_mean",
                  "top_share_mean")


def _write_curve(path: Path, rows: list[dict]) -> None:
    """The loss curve; the instruments' columns are filled on the steps they were measured."""
    lines = [",".join(("step", "epoch", "loss", "lr", "samples_per_s") + _SCALE_COLUMNS)]
    for r in rows:
        scale = [f"{r[c]:.4f}" if c in r else "" for c in _SCALE_COLUMNS]
        lines.append(",".join([str(r["step"]), f"{r['epoch']:.4f}", f"{r['loss']:.6f}", f"{r['lr']:.6g}",
                               f"{r['samples_per_s']:.2f}", *scale]))
    atomic_write_text(path, "\n".join(lines) + "\n")


class StepBatches:
    """The training data as optimizer steps: lists of up to ``grad_accum`` micro-batches, epoch
    after epoch, forever.

    It tracks the data position (epoch, global batches consumed) and the state the sampler's
    generator must have at the start of the current epoch: restoring both (skipping the consumed
    batches with Accelerate's ``skip_first_batches``) replays exactly the same batches mid-epoch.
    """

    def __init__(self, accelerator, loader, generator: torch.Generator, grad_accum: int, n_samples: int,
                 batch_size: int, position: DataPosition | None = None, epoch_state: torch.Tensor | None = None):
        self.accelerator, self.loader, self.generator = accelerator, loader, generator
        self.grad_accum, self.n_samples, self.batch_size = grad_accum, n_samples, batch_size
        self.num_batches = len(loader)  # global batches per epoch
        self.position = position or DataPosition()
        self.epoch_state = generator.get_state() if epoch_state is None else epoch_state

    def samples_seen(self) -> int:
        return self.position.epoch * self.n_samples + min(self.position.batches * self.batch_size, self.n_samples)

    def epoch_float(self) -> float:
        return self.samples_seen() / self.n_samples

    def __iter__(self):
        while True:
            self.generator.set_state(self.epoch_state)  # the epoch's shuffle is drawn from it
            loader = self.loader
            if self.position.batches:
                loader = self.accelerator.skip_first_batches(self.loader, self.position.batches)
            group = []
            for batch in loader:
                group.append(batch)
                if len(group) == self.grad_accum or self.position.batches + len(group) == self.num_batches:
                    self._advance(len(group))
                    yield group
                    group = []

    def _advance(self, n: int) -> None:
        self.position.batches += n
        if self.position.batches == self.num_batches:
            # The epoch's draws are done: the next epoch starts from the generator's current state.
            self.position = DataPosition(self.position.epoch + 1, 0)
            self.epoch_state = self.generator.get_state()


def _answer_tokens(batch: dict, encoder_decoder: bool) -> int:
    """How many label tokens the model's mean loss averages over (decoder-only LMs shift by one)."""
    labels = batch["labels"] if encoder_decoder else batch["labels"][:, 1:]
    return int((labels != -100).sum())


def _optimizer_step(accelerator, model, optimizer, scheduler, micro_batches: list[dict],
                    encoder_decoder: bool, max_grad_norm: float = 0.0) -> float:
    """One optimizer step over the micro-batches of one global batch; returns its mean loss.

    Each micro-batch's mean loss is weighted by its share of all the answer tokens of the step (on
    every process; DDP then averages over processes, hence the num_processes factor), so the
    gradient is the mean over every answer token, whatever the number of processes and micro-batches.
    Accelerate's recipe for gradient accumulation over samples of varying size; gradients are only
    synchronised on the last micro-batch.
    """
    device = accelerator.device
    counts = [_answer_tokens(b, encoder_decoder) for b in micro_batches]
    total = int(accelerator.reduce(torch.tensor([sum(counts)], device=device), reduction="sum").item())
    loss_sum = torch.zeros(1, device=device)
    for i, (batch, n) in enumerate(zip(micro_batches, counts)):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = model(**batch, answer_logits_only=True).loss
            accelerator.backward(loss * (n * accelerator.num_processes / total))
        loss_sum += loss.detach().float() * n
    # The same value on every process, so that all of them stop together on a non-finite loss,
    # before the optimizer step: the weights (and the last checkpoint) stay good.
    mean_loss = float(accelerator.reduce(loss_sum, reduction="sum").item() / total)
    if not math.isfinite(mean_loss):
        return mean_loss
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return mean_loss


def _resume_dir(cfg: TrainConfig, out: Path, state) -> Path | None:
    """The checkpoint to resume from, as the main process sees it: all processes must agree (it
    must then be readable by all: put output_dir on storage the nodes share)."""
    from accelerate.utils import broadcast_object_list

    if not cfg.resume:
        return None
    found = [None]
    if state.is_main_process:
        found[0], notes = resolve_resume(cfg.resume, out)
        for note in notes:
            print(note)
    if state.num_processes > 1:
        broadcast_object_list(found)
    return found[0]


def _check_resumable(saved: dict, cfg: TrainConfig, n_train: int, num_processes: int, where: Path,
                     log: Callable[[str], None]) -> None:
    """After the images are read (skip_bad may drop samples); the config was compared before the models
    loaded (check_resume_config)."""
    if saved["train_samples"] != n_train:
        raise ValueError(f"cannot resume from {where}: it was trained on {saved['train_samples']} samples, "
                         f"this config gives {n_train}")
    if saved["num_processes"] != num_processes:
        log(f"note: {where} was written by {saved['num_processes']} process(es), this run has {num_processes}: "
            "per-process random states (dropout) differ from an uninterrupted run")


def _trainer_state(cfg: TrainConfig, step: int, batches: StepBatches, curve: list, history: list,
                   num_processes: int, train_fingerprint: str) -> dict:
    return {"step": step, "epoch": batches.position.epoch, "batches": batches.position.batches,
            "curve": curve, "history": history, "train_samples": batches.n_samples,
            "num_processes": num_processes, "config": dataclasses.asdict(cfg), "train_fingerprint": train_fingerprint}


COMMON_SHARE_WARNING = 0.8
"""Log a hint to centre the features when their common mean holds more of their energy than this."""


def _feature_statistics(model, visual, samples: list[Sample], log: Callable[[str], None]) -> float | None:
    """An instrument and a statistic: how much of the training features' energy is their common mean
    (logged, in metrics.json), and MemVP's feature_mean when ``center_features`` asks for it (not when
    training on from an adapter that has one). Also with use_images=false (the ablation): its adapter then
    reads images the same way if someone gives it some."""
    stats = visual_feature_statistics(visual, samples)
    if stats is None:
        return None
    mean, share = stats
    centring = getattr(model, "needs_feature_mean", False)
    if centring:
        model.set_feature_mean(mean)
    hint = ""
    memvp_config = getattr(model, "memvp_config", None)
    if share > COMMON_SHARE_WARNING and memvp_config is not None and not memvp_config.center_features:
        hint = ("; MemVP's keys and values will be near copies of each other, so retrieval cannot tell the entries "
                "apart: memvp.center_features: true subtracts the mean (docs/memory_scale.md)")
    log(f"visual features: {100 * share:.1f}% of their energy is their common mean"
        + (" (centred on it)" if centring else "") + hint)
    return share


def _train_loader(cfg: TrainConfig, tokenizer, visual, samples: list[Sample], encoded: list,
                  encoder_decoder: bool):
    """(DataLoader of global batches, its shuffling generator). Accelerate (split_batches) gives
    each process its 1/N slice of every batch."""

    def collate(indices: list[int]) -> dict:
        batch = collate_training(tokenizer, [encoded[i] for i in indices], encoder_decoder)
        if cfg.use_images:
            batch.update(visual.inputs([samples[i] for i in indices]))
        return batch

    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(list(range(len(encoded))), batch_size=cfg.batch_size, shuffle=True,
                                         generator=generator, collate_fn=collate, drop_last=cfg.drop_last,
                                         num_workers=cfg.dataloader_workers)
    return loader, generator


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate, save; returns the final metrics (also written to output_dir/metrics.json).

    Run it as one process or under ``accelerate launch`` / ``torchrun``: only the main process
    prints and writes files; every process returns the same metrics.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration
    from transformers import get_scheduler, set_seed

    cpu = use_cpu()
    state = PartialState(cpu=cpu)
    check_launch(cfg, state)
    log = print if state.is_main_process else (lambda *args, **kwargs: None)
    out = Path(cfg.output_dir)
    resume_dir = _resume_dir(cfg, out, state)
    if cfg.resume and resume_dir is None:
        log(f"resume={cfg.resume}: no checkpoint in {out} yet, starting from step 0")

    if state.is_main_process:
        check_output_dir(out)
    # Data files are read and checked before the models load (seconds instead of minutes to an error).
    train_split = read_split(cfg.train_data, "train_data", cfg.max_train_samples, cfg.skip_bad, log)
    eval_split = (read_split(cfg.eval_data, "eval_data", cfg.max_eval_samples, cfg.skip_bad, log)
                  if cfg.eval_data else [])
    train_fingerprint = data_fingerprint(train_split)
    saved = read_trainer_state(resume_dir) if resume_dir else None
    if saved:  # a changed config or train set is refused before the models load
        check_resume_config(saved, cfg, train_fingerprint, resume_dir, log)
    for adapter in (cfg.adapter, cfg.init_from):
        if adapter:
            check_adapter(adapter)
    set_seed(cfg.seed)
    with one_writer_at_a_time(state):
        model, tokenizer, visual = build(cfg, train_split)
        train_samples, train_skipped = prepare_samples(visual, train_split, cfg.skip_bad, "train", task_of(cfg.train_data), log)
        eval_samples, eval_skipped = (prepare_samples(visual, eval_split, cfg.skip_bad, "eval", task_of(cfg.eval_data), log)
                                      if eval_split else ([], {}))
    if visual.pixels and cfg.use_images:
        log("the vision encoder has ViT adapters, which train with the method: its images are encoded in every "
            "training step (no feature cache)")
    common_share = _feature_statistics(model, visual, train_samples, log)
    fp32_trainable(model, cfg)
    encoder_decoder = bool(model.config.is_encoder_decoder)
    encoded = [encode_sample(tokenizer, s, cfg.max_length, cfg.prompt_template) for s in train_samples]
    n_truncated = sum(e.truncated > 0 for e in encoded)
    if n_truncated:
        log(describe_truncation(n_truncated, len(encoded), cfg.max_length))

    loader, generator = _train_loader(cfg, tokenizer, visual, train_samples, encoded, encoder_decoder)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # split_batches: batch_size is global, and the scheduler steps once per optimizer step (without
    # it Accelerate steps it num_processes times per step).
    accelerator = Accelerator(cpu=cpu, mixed_precision=cfg.precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              kwargs_handlers=[ddp_kwargs(cfg, train_samples)])
    setup_fsdp(accelerator, model, cfg)
    skip_frozen_broadcast(accelerator, model)
    trainable, total = model.get_nb_trainable_parameters()  # before FSDP shards them
    if saved:
        _check_resumable(saved, cfg, len(encoded), accelerator.num_processes, resume_dir, log)
        load_trainable_weights(model, resume_dir)  # before FSDP shards the parameters
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    global_batch = cfg.batch_size * cfg.grad_accum
    log(f"effective lr {cfg.learning_rate:.4g}" + (f" = base_lr {cfg.base_lr:g} x global batch {global_batch} / 256"
                                                     if cfg.base_lr is not None else ""))
    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(f"{cfg.lr_schedule}_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule,
                              optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    check_fsdp_names(accelerator, model)
    task = task_of(cfg.eval_data) if cfg.eval_data else None

    step, curve, history, last_checkpoint = 0, [], [], resume_dir
    position, epoch_state = None, None  # a fresh run: the data's start, the shuffle's seed state
    if saved:  # last thing before the loop: it restores the RNG states
        epoch_state = load_training_state(accelerator, model, optimizer, scheduler, resume_dir)
        position = DataPosition(saved["epoch"], saved["batches"])
        step, curve, history = saved["step"], saved["curve"], saved["history"]
        log(f"resumed from {resume_dir} at step {step}")
    batches = StepBatches(accelerator, loader, generator, cfg.grad_accum, len(encoded), cfg.batch_size,
                          position, epoch_state)
    seen_start = window_seen = batches.samples_seen()
    t_start = t_window = time.perf_counter()
    eval_seconds = 0.0
    bar = tqdm(total=total_steps, initial=step, desc="training",
               disable=not (cfg.progress and accelerator.is_main_process))
    model.train()
    steps = iter(batches)
    scale_reports: list[dict] = []
    # The second step of this run: the first one also allocates the optimizer's state.
    memory = PeakMemory(accelerator.device, tune_glibc=False) if cfg.measure_memory else None
    memory_step, peak_bytes = step + min(2, total_steps - step) - 1, None

    def checkpoint_now() -> Path:
        path = save_checkpoint(accelerator, model, optimizer, scheduler, out / f"checkpoint-{step}",
                               _trainer_state(cfg, step, batches, curve, history, accelerator.num_processes,
                                              train_fingerprint),
                               batches.epoch_state, keep=cfg.save_total_limit)
        if accelerator.is_main_process:
            _write_curve(out / "loss_curve.csv", curve)
        return path

    with stop_signals() as received:
        while step < total_steps:
            micro_batches = next(steps)
            run_step = functools.partial(_optimizer_step, accelerator, model, optimizer, scheduler, micro_batches,
                                         encoder_decoder, cfg.max_grad_norm)
            if memory is not None and step == memory_step:
                losses: list[float] = []
                peak_bytes = memory.measure(lambda: losses.append(run_step()))
                loss = losses[0]
            else:
                loss = run_step()
            if not math.isfinite(loss):
                kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
                raise FloatingPointError(f"non-finite loss {loss} at step {step + 1}; the weights were not updated and "
                                         f"{kept}. Lower the learning rate, or use bf16 instead of fp16")
            step += 1
            now, seen = time.perf_counter(), batches.samples_seen()
            row = {"step": step, "epoch": batches.epoch_float(), "loss": loss, "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": (seen - window_seen) / max(now - t_window, 1e-9)}
            if _diagnose_now(cfg, accelerator, step, total_steps):
                with accelerator.autocast():  # as the training forward (bf16 weights, fp32 norms)
                    report = measure_scale(accelerator.unwrap_model(model), micro_batches[0])
                row.update(instruments.summary(report))
                scale_reports.append({"step": step, **report})
                message = instruments.warning(report, f"at step {step}")
                if message and accelerator.is_main_process:
                    bar.write(message)
            curve.append(row)
            window_seen, t_window = seen, now
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}")
            bar.update(1)
            if cfg.eval_every and eval_samples and step % cfg.eval_every == 0 and step < total_steps:
                t_eval = time.perf_counter()
                predictions = evaluate_distributed(accelerator, model, tokenizer, visual, eval_samples, cfg)
                # "train_seconds": training time so far, evaluations left out (accuracy against seconds).
                history.append({"step": step, "train_seconds": t_eval - t_start - eval_seconds,
                                **score_split(task, eval_split, predictions, eval_skipped, cfg)})
                eval_seconds += time.perf_counter() - t_eval
                t_window += time.perf_counter() - t_eval
                model.train()
            # After the evaluation: sampled decoding draws random numbers, and a resumed run continues
            # from the states saved here.
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                last_checkpoint = checkpoint_now()
            stop = stop_requested(received, accelerator) if step < total_steps else None
            if stop:  # Ctrl-C / SIGTERM: keep this step's state, then stop
                if last_checkpoint is None or checkpoint_step(last_checkpoint) != step:
                    last_checkpoint = checkpoint_now()
                bar.close()
                raise TrainingInterrupted(stop, step, total_steps, last_checkpoint)
    bar.close()
    train_seconds = time.perf_counter() - t_start - eval_seconds

    memvp = accelerator.unwrap_model(model)
    card_info = {"method": cfg.method, "training data": {k: v for k, v in (cfg.train_data or {}).items()
                                                          if not k.startswith("_")},
                 "training": {"steps": step, "batch_size": cfg.batch_size * cfg.grad_accum,
                              "lr": cfg.learning_rate, "seed": cfg.seed}}
    with full_parameters(accelerator, model):
        if accelerator.is_main_process:
            _save_adapter_somewhere(memvp, out / "adapter", card_info)
            _write_curve(out / "loss_curve.csv", curve)
    seen = batches.samples_seen()
    result: dict[str, Any] = {
        "steps": step, "train_samples": len(encoded), "samples_seen": seen, "train_seconds": train_seconds,
        "train_samples_per_s": (seen - seen_start) / train_seconds, "final_loss": curve[-1]["loss"] if curve else None,
        "trainable_parameters": trainable, "total_parameters": total, "truncated_prompts": n_truncated,
        "method": cfg.method, "use_images": cfg.use_images, "history": history, "num_processes": accelerator.num_processes,
    }
    if common_share is not None:
        result["visual_feature_common_share"] = common_share
    if memory is not None:
        result["peak_step_memory_bytes"] = peak_bytes
    if train_skipped["count"]:
        result["skipped"] = train_skipped
    if scale_reports:  # the last measurement in full, the earlier ones as their summaries
        result["scale"] = scale_reports[-1]
        result["scale_history"] = [{"step": r["step"], **instruments.summary(r)} for r in scale_reports]
    if eval_samples:
        predictions = evaluate_distributed(accelerator, model, tokenizer, visual, eval_samples, cfg)
        result["eval"] = score_split(task, eval_split, predictions, eval_skipped, cfg)
        result["eval"]["truncated_prompts"] = report_eval_truncation(tokenizer, eval_samples, cfg, log)
        if accelerator.is_main_process:
            write_json(out / "predictions_eval.json", predictions)
        if accelerator.is_main_process and not is_fsdp(accelerator):  # FSDP: the card keeps no metrics (sharded)
            metrics = {k: v for k, v in result["eval"].items() if not isinstance(v, dict) or k == "per_type"}
            memvp.write_model_card(out / "adapter", {**card_info, "evaluation data": {
                k: v for k, v in cfg.eval_data.items() if not k.startswith("_")}, "metrics": metrics})
    if accelerator.is_main_process:
        write_json(out / "metrics.json", result)
    accelerator.wait_for_everyone()
    return result


__all__ = ["train", "param_groups", "make_optimizer", "decays", "StepBatches"]
