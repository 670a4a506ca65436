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
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from tqdm.auto import tqdm

from .. import instruments
from ..atomic import atomic_write_text
from ..datasets import Sample, asked_region
from ..inputs import collate_training, describe_truncation, encode_sample
from ..instruments import ASKED_ENTRIES, answer_positions, measure_scale
from ..methods import check_adapter
from ..peak_memory import PeakMemory
from .build import build, check_output_dir, prepare_samples, read_split, task_of, visual_feature_statistics
from .checkpoint import (
    DataPosition,
    check_resume_config,
    checkpoint_step,
    data_fingerprint,
    full_parameters,
    is_fsdp,
    list_checkpoints,
    load_trainable_weights,
    load_training_state,
    read_trainer_state,
    resolve_resume,
    save_checkpoint,
)
from .config import DEFAULT_GROUNDING_WEIGHT, TrainConfig, resolved_config
from .distributed import (
    check_fsdp_names,
    check_launch,
    ddp_kwargs,
    fp32_trainable,
    one_writer_at_a_time,
    setup_fsdp,
    skip_frozen_broadcast,
    use_cpu,
)
from .evaluation import evaluate_distributed, report_eval_truncation, score_split, write_json
from .interrupt import TrainingInterrupted, stop_requested, stop_signals

logger = logging.getLogger(__name__)


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
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            **({"lr": cfg.projector_lr} if projector else {}),
        }
        for (projector, decay), params in sorted(groups.items())
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` at the config's effective lr and betas."""
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps
    )


def _save_adapter_somewhere(model, directory: Path, card_info: dict) -> None:
    """Save the trained adapter; when output_dir fails at the end (disk full, removed, ...), save it
    in a fresh temporary directory instead and say where: training time is never thrown away."""
    try:
        model.save_pretrained(directory, card_info)
    except OSError as e:
        rescue = Path(tempfile.mkdtemp(prefix="memvp-adapter-"))
        model.save_pretrained(rescue, card_info)
        raise ValueError(
            f"could not write the adapter to {directory} ({e.strerror or e}); the trained weights "
            f"are saved in {rescue} instead: move them where you want them"
        ) from None


def _diagnose_now(cfg: TrainConfig, accelerator, model, step: int, total_steps: int) -> bool:
    """Measure the memory's scale (instruments) now? Models that support probing (MemVP), not under
    FSDP, whose sharded modules can not be run outside the wrapped forward."""
    if cfg.diagnose_every <= 0 or not accelerator.unwrap_model(model).supports_probing or is_fsdp(accelerator):
        return False
    return step == 1 or step == total_steps or step % cfg.diagnose_every == 0


_SCALE_COLUMNS = (
    "residual_ratio_max",
    "memory_to_ffn_max",
    "memory_to_ffn_mean",
    "positive_scores_mean",
    "top_share_mean",
    "selectivity_max",  # data with asked boxes only: retrieval on the asked object / uniform
    "selectivity_mean",
    "selectivity_first_max",  # the same at each row's first answer token (docs/memory_scale.md)
    "grounding_loss",  # grounding_weight > 0 only, every step
)


def _write_curve(path: Path, rows: list[dict]) -> None:
    """The loss curve; the instruments' columns are filled on the steps they were measured."""
    lines = [",".join(("step", "epoch", "loss", "lr", "samples_per_s") + _SCALE_COLUMNS)]
    for r in rows:
        scale = [f"{r[c]:.4f}" if c in r else "" for c in _SCALE_COLUMNS]
        lines.append(
            ",".join(
                [
                    str(r["step"]),
                    f"{r['epoch']:.4f}",
                    f"{r['loss']:.6f}",
                    f"{r['lr']:.6g}",
                    f"{r['samples_per_s']:.2f}",
                    *scale,
                ]
            )
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


class StepBatches:
    """The training data as optimizer steps: lists of up to ``grad_accum`` micro-batches, epoch
    after epoch, forever.

    It tracks the data position (epoch, global batches consumed) and the state the sampler's
    generator must have at the start of the current epoch: restoring both (skipping the consumed
    batches with Accelerate's ``skip_first_batches``) replays exactly the same batches mid-epoch.
    """

    def __init__(
        self,
        accelerator,
        loader,
        generator: torch.Generator,
        grad_accum: int,
        n_samples: int,
        batch_size: int,
        position: DataPosition | None = None,
        epoch_state: torch.Tensor | None = None,
    ):
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


class StepLosses(NamedTuple):
    loss: float
    """The LM's mean loss over the step's answer tokens."""
    grounding: float | None
    """The micro-batches' mean grounding loss; None when no micro-batch grounded (or it is off)."""


def _optimizer_step(
    accelerator,
    model,
    optimizer,
    scheduler,
    micro_batches: list[dict],
    encoder_decoder: bool,
    max_grad_norm: float = 0.0,
    grounding_weight: float = 0.0,
) -> StepLosses:
    """One optimizer step over the micro-batches of one global batch; returns its mean loss (the
    LM's) and, with ``grounding_weight``, the micro-batches' mean grounding loss.

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
    grounding: list[float] = []
    for i, (batch, n) in enumerate(zip(micro_batches, counts)):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            inputs = {k: v for k, v in batch.items() if k != ASKED_ENTRIES}  # the instruments' only
            asked = batch.get(ASKED_ENTRIES) if grounding_weight else None
            probed = accelerator.unwrap_model(model).probing(asked) if asked is not None else contextlib.nullcontext()
            with probed as sites:
                loss = model(**inputs, answer_logits_only=True).loss
            objective = loss
            if asked is not None:
                aux = instruments.grounding_loss(sites, answer_positions(inputs), asked)
                if aux is not None:  # this micro-batch asks about one object somewhere
                    objective = loss + grounding_weight * aux
                    grounding.append(float(aux.detach()))
            accelerator.backward(objective * (n * accelerator.num_processes / total))
        loss_sum += loss.detach().float() * n
    # The same value on every process, so that all of them stop together on a non-finite loss,
    # before the optimizer step: the weights (and the last checkpoint) stay good.
    mean_loss = float(accelerator.reduce(loss_sum, reduction="sum").item() / total)
    grounding_mean = sum(grounding) / len(grounding) if grounding else None
    if not math.isfinite(mean_loss):
        return StepLosses(mean_loss, grounding_mean)
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return StepLosses(mean_loss, grounding_mean)


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
            logger.info(note)
    if state.num_processes > 1:
        broadcast_object_list(found)
    return found[0]


def _check_resumable(
    saved: dict, cfg: TrainConfig, n_train: int, num_processes: int, where: Path, log: Callable[[str], None]
) -> None:
    """After the images are read (skip_bad may drop samples); the config was compared before the models
    loaded (check_resume_config)."""
    if saved["train_samples"] != n_train:
        raise ValueError(
            f"cannot resume from {where}: it was trained on {saved['train_samples']} samples, "
            f"this config gives {n_train}"
        )
    if saved["num_processes"] != num_processes:
        log(
            f"note: {where} was written by {saved['num_processes']} process(es), this run has {num_processes}: "
            "per-process random states (dropout) differ from an uninterrupted run"
        )


def _trainer_state(
    cfg: TrainConfig,
    step: int,
    batches: StepBatches,
    curve: list,
    history: list,
    num_processes: int,
    train_fingerprint: str,
) -> dict:
    return {
        "step": step,
        "epoch": batches.position.epoch,
        "batches": batches.position.batches,
        "curve": curve,
        "history": history,
        "train_samples": batches.n_samples,
        "num_processes": num_processes,
        "config": dataclasses.asdict(cfg),
        "train_fingerprint": train_fingerprint,
    }


def _feature_statistics(model, visual, samples: list[Sample], log: Callable[[str], None]) -> float | None:
    """An instrument and a statistic: how much of the training features' energy is their common mean
    (logged, in metrics.json); the model may keep the mean (MemVP's ``center_features``) and add a hint.
    Also with use_images=false (the ablation): its adapter then reads images the same way if someone
    gives it some."""
    stats = visual_feature_statistics(visual, samples)
    if stats is None:
        return None
    mean, share = stats
    note = model.use_feature_statistics(mean, share)
    log(f"visual features: {100 * share:.1f}% of their energy is their common mean" + (f"; {note}" if note else ""))
    return share


def _train_loader(cfg: TrainConfig, tokenizer, visual, samples: list[Sample], encoded: list, encoder_decoder: bool):
    """(DataLoader of global batches, its shuffling generator). Accelerate (split_batches) gives
    each process its 1/N slice of every batch."""

    def collate(indices: list[int]) -> dict:
        batch = collate_training(tokenizer, [encoded[i] for i in indices], encoder_decoder)
        if cfg.use_images:
            chosen = [samples[i] for i in indices]
            batch.update(visual.inputs(chosen))
            asked = visual.asked_entries(chosen, cfg.grounding_place_words)  # data that knows where it looks
            if asked is not None:
                batch[ASKED_ENTRIES] = asked
        return batch

    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        list(range(len(encoded))),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=collate,
        drop_last=cfg.drop_last,
        num_workers=cfg.dataloader_workers,
    )
    return loader, generator


@dataclass
class DataSplits:
    """The samples a run trains and evaluates on, read and checked before the models load."""

    train: list[Sample]
    eval: list[Sample]
    train_skipped: dict = field(default_factory=dict)
    eval_skipped: dict = field(default_factory=dict)
    eval_split: list[Sample] = field(default_factory=list)
    """The eval split as read (skipped samples included: they are scored as wrong or dropped)."""
    n_encoded: int = 0
    n_truncated: int = 0
    common_share: float | None = None
    task: str | None = None


@dataclass
class Run:
    """A training run between ``setup`` and ``finish``: what its steps read and update."""

    cfg: TrainConfig
    out: Path
    log: Callable[[str], None]
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    visual: Any
    batches: StepBatches
    data: DataSplits
    total_steps: int
    encoder_decoder: bool
    train_fingerprint: str
    parameters: tuple[int, int]
    step: int = 0
    curve: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    scale_reports: list[dict] = field(default_factory=list)
    last_checkpoint: Path | None = None
    memory: PeakMemory | None = None
    memory_step: int = 0
    peak_bytes: int | None = None
    eval_seconds: float = 0.0
    t_start: float = field(default_factory=time.perf_counter)
    window: tuple[int, float] = (0, 0.0)
    """(samples seen, time) at the last logged step: the samples/s of the next one."""
    seen_start: int = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def _grounding_weight(cfg: TrainConfig, train_split: list[Sample], log: Callable[[str], None]) -> float:
    """``grounding_weight`` for this run: as given, or the default's (docs/memory_scale.md 6.4) when
    left out; refuses a weight > 0 that no training question can use."""
    weight = DEFAULT_GROUNDING_WEIGHT if cfg.grounding_weight is None else float(cfg.grounding_weight)
    if not weight or (cfg.grounding_weight is None and not cfg.grounds_by_default):
        return 0.0
    located = sum(s.image is not None and asked_region(s, cfg.grounding_place_words) is not None for s in train_split)
    where = "asked_box" + (" or place words" if cfg.grounding_place_words else "")
    if not located:
        if cfg.grounding_weight:
            raise ValueError(
                f"grounding_weight {weight:g} needs training questions that say where they look ({where}); "
                f"none of the {len(train_split)} in train_data does"
            )
        return 0.0
    how = "the default; grounding_weight: 0 turns it off" if cfg.grounding_weight is None else "grounding_weight"
    log(f"grounding {weight:g} ({how}): {located} of {len(train_split)} training questions say where ({where})")
    return weight


def _read_data(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[list[Sample], list[Sample]]:
    """The train and eval splits; data files are read and checked before the models load (seconds
    instead of minutes to an error)."""
    train_split = read_split(cfg.train_data, "train_data", cfg.max_train_samples, cfg.skip_bad, log)
    eval_split = (
        read_split(cfg.eval_data, "eval_data", cfg.max_eval_samples, cfg.skip_bad, log) if cfg.eval_data else []
    )
    return train_split, eval_split


def _schedule(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = f"{cfg.lr_schedule}_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(
        name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps), num_training_steps=total_steps
    )


def setup(cfg: TrainConfig) -> Run:
    """Everything before the first step: data, models, Accelerate, optimizer, and a checkpoint's
    state when resuming (a changed config or train set refused before the models load)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration
    from transformers import set_seed

    cpu = use_cpu()
    state = PartialState(cpu=cpu)
    check_launch(cfg, state)
    log = logger.info if state.is_main_process else (lambda *args, **kwargs: None)
    out = Path(cfg.output_dir)
    resume_dir = _resume_dir(cfg, out, state)
    if cfg.resume and resume_dir is None:
        none = "no intact checkpoint" if list_checkpoints(out) else "no checkpoint"
        log(f"resume={cfg.resume}: {none} in {out} yet, starting from step 0")
    if state.is_main_process:
        check_output_dir(out)
    train_split, eval_split = _read_data(cfg, log)
    # the default resolved here, so that config.yaml (and a resumed run's check) says what ran
    cfg = dataclasses.replace(cfg, grounding_weight=_grounding_weight(cfg, train_split, log))
    train_fingerprint = data_fingerprint(train_split)
    saved = read_trainer_state(resume_dir) if resume_dir else None
    if saved:
        check_resume_config(saved, cfg, train_fingerprint, resume_dir, log)
    for adapter in (cfg.adapter, cfg.init_from):
        if adapter:
            check_adapter(adapter)
    if state.is_main_process:  # after the checks: a refused run leaves the last one's config.yaml as it was
        # What this run is, keys and defaults resolved: `memvp train output_dir/config.yaml` runs it again.
        atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved_config(cfg), sort_keys=False))
    set_seed(cfg.seed)
    with one_writer_at_a_time(state):
        model, tokenizer, visual = build(cfg, train_split)
        train_samples, train_skipped = prepare_samples(
            visual, train_split, cfg.skip_bad, "train", task_of(cfg.train_data), log
        )
        eval_samples, eval_skipped = (
            prepare_samples(visual, eval_split, cfg.skip_bad, "eval", task_of(cfg.eval_data), log)
            if eval_split
            else ([], {})
        )
    data = DataSplits(
        train_samples,
        eval_samples,
        train_skipped,
        eval_skipped,
        eval_split,
        task=task_of(cfg.eval_data) if cfg.eval_data else None,
    )
    if visual.pixels and cfg.use_images:
        log(
            "the vision encoder has ViT adapters, which train with the method: its images are encoded in every "
            "training step (no feature cache)"
        )
    data.common_share = _feature_statistics(model, visual, train_samples, log)
    fp32_trainable(model, cfg)
    encoder_decoder = bool(model.config.is_encoder_decoder)
    encoded = [encode_sample(tokenizer, s, cfg.max_length, cfg.prompt_template) for s in train_samples]
    data.n_encoded, data.n_truncated = len(encoded), sum(e.truncated > 0 for e in encoded)
    if data.n_truncated:
        log(describe_truncation(data.n_truncated, len(encoded), cfg.max_length))

    loader, generator = _train_loader(cfg, tokenizer, visual, train_samples, encoded, encoder_decoder)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    # split_batches: batch_size is global, and the scheduler steps once per optimizer step (without
    # it Accelerate steps it num_processes times per step).
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[ddp_kwargs(cfg, train_samples)],
        log_with=cfg.report_to or None,
        project_dir=str(out / "logs") if cfg.report_to else None,
    )
    if cfg.report_to:
        accelerator.init_trackers(out.resolve().name, config=_tracker_config(cfg))
    setup_fsdp(accelerator, model, cfg)
    skip_frozen_broadcast(accelerator, model)
    parameters = model.get_nb_trainable_parameters()  # before FSDP shards them
    if saved:
        _check_resumable(saved, cfg, len(encoded), accelerator.num_processes, resume_dir, log)
        load_trainable_weights(model, resume_dir)  # before FSDP shards the parameters
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    log(
        f"effective lr {cfg.learning_rate:.4g}"
        + (
            f" = base_lr {cfg.base_lr:g} x global batch {cfg.batch_size * cfg.grad_accum} / 256"
            if cfg.base_lr is not None
            else ""
        )
    )
    optimizer = make_optimizer(model, cfg)
    scheduler = _schedule(cfg, optimizer, total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    check_fsdp_names(accelerator, model)

    step, curve, history = 0, [], []
    position, epoch_state = None, None  # a fresh run: the data's start, the shuffle's seed state
    if saved:  # last thing before the loop: it restores the RNG states
        epoch_state = load_training_state(accelerator, model, optimizer, scheduler, resume_dir)
        position = DataPosition(saved["epoch"], saved["batches"])
        step, curve, history = saved["step"], saved["curve"], saved["history"]
        log(f"resumed from {resume_dir} at step {step}")
    batches = StepBatches(
        accelerator, loader, generator, cfg.grad_accum, len(encoded), cfg.batch_size, position, epoch_state
    )
    run = Run(
        cfg,
        out,
        log,
        accelerator,
        model,
        optimizer,
        scheduler,
        tokenizer,
        visual,
        batches,
        data,
        total_steps,
        encoder_decoder,
        train_fingerprint,
        parameters,
        step=step,
        curve=curve,
        history=history,
        last_checkpoint=resume_dir,
    )
    run.seen_start = batches.samples_seen()
    run.window = (run.seen_start, run.t_start)
    if cfg.measure_memory:  # the run's second step: the first one also allocates the optimizer's state
        run.memory = PeakMemory(accelerator.device, tune_glibc=False)
        run.memory_step = step + min(2, total_steps - step) - 1
    return run


def take_step(run: Run, micro_batches: list[dict]) -> dict:
    """One optimizer step (its memory measured when it is the one to measure); the loss curve's row.
    A non-finite loss stops the run before it touches the weights."""
    step = functools.partial(
        _optimizer_step,
        run.accelerator,
        run.model,
        run.optimizer,
        run.scheduler,
        micro_batches,
        run.encoder_decoder,
        run.cfg.max_grad_norm,
        run.cfg.grounding_weight,
    )
    lr = run.optimizer.param_groups[0]["lr"]  # the lr this step uses (the scheduler then moves on)
    if run.memory is not None and run.step == run.memory_step:
        losses: list[StepLosses] = []
        run.peak_bytes = run.memory.measure(lambda: losses.append(step()))
        loss, grounding = losses[0]
    else:
        loss, grounding = step()
    if not math.isfinite(loss):
        kept = (
            f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint else "no checkpoint was written"
        )
        raise FloatingPointError(
            f"non-finite loss {loss} at step {run.step + 1}; the weights were not updated and "
            f"{kept}. Lower the learning rate, or use bf16 instead of fp16"
        )
    run.step += 1
    now, seen = time.perf_counter(), run.batches.samples_seen()
    row = {
        "step": run.step,
        "epoch": run.batches.epoch_float(),
        "loss": loss,
        "lr": lr,
        "samples_per_s": (seen - run.window[0]) / max(now - run.window[1], 1e-9),
    }
    if grounding is not None:
        row["grounding_loss"] = grounding
    run.window = (seen, now)
    return row


def diagnose(run: Run, micro_batches: list[dict], row: dict) -> str | None:
    """Measure the memory's scale on the step's first micro-batch when the cadence says so (its
    summary joins the row); returns a warning when the memory dominates."""
    if not _diagnose_now(run.cfg, run.accelerator, run.model, run.step, run.total_steps):
        return None
    batch = micro_batches[0]
    with run.accelerator.autocast():  # as the training forward (bf16 weights, fp32 norms)
        report = measure_scale(run.accelerator.unwrap_model(run.model), batch, entry_mask=batch.get(ASKED_ENTRIES))
    row.update(instruments.summary(report))
    run.scale_reports.append({"step": run.step, **report})
    return instruments.warning(report, f"at step {run.step}")


def evaluate_now(run: Run) -> dict:
    """Predictions on the eval split and their metrics; the evaluation's time is kept out of the
    training seconds (accuracy against training time)."""
    t_eval = time.perf_counter()
    train_seconds = t_eval - run.t_start - run.eval_seconds
    predictions = evaluate_distributed(run.accelerator, run.model, run.tokenizer, run.visual, run.data.eval, run.cfg)
    metrics = score_split(run.data.task, run.data.eval_split, predictions, run.data.eval_skipped, run.cfg)
    spent = time.perf_counter() - t_eval
    run.eval_seconds += spent
    run.window = (run.window[0], run.window[1] + spent)
    run.model.train()
    return {"predictions": predictions, "metrics": metrics, "train_seconds": train_seconds}


def checkpoint(run: Run) -> Path:
    """A checkpoint of this step (atomic; the loss curve so far beside it)."""
    run.last_checkpoint = save_checkpoint(
        run.accelerator,
        run.model,
        run.optimizer,
        run.scheduler,
        run.out / f"checkpoint-{run.step}",
        _trainer_state(
            run.cfg, run.step, run.batches, run.curve, run.history, run.accelerator.num_processes, run.train_fingerprint
        ),
        run.batches.epoch_state,
        keep=run.cfg.save_total_limit,
    )
    if run.is_main:
        _write_curve(run.out / "loss_curve.csv", run.curve)
    return run.last_checkpoint


def _due(every: int, run: Run) -> bool:
    """A cadence (eval_every, save_every) falls on this step, which is not the last (finish does that)."""
    return bool(every) and run.step % every == 0 and run.step < run.total_steps


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate, save; returns the final metrics (also written to output_dir/metrics.json).

    Run it as one process or under ``accelerate launch`` / ``torchrun``: only the main process
    prints and writes files; every process returns the same metrics.
    """
    run = setup(cfg)
    bar = tqdm(total=run.total_steps, initial=run.step, desc="training", disable=not (cfg.progress and run.is_main))
    run.model.train()
    steps = iter(run.batches)
    with stop_signals() as received:
        while run.step < run.total_steps:
            micro_batches = next(steps)
            row = take_step(run, micro_batches)
            warning = diagnose(run, micro_batches, row)
            if warning and run.is_main:
                bar.write(warning)
            run.curve.append(row)
            if cfg.report_to:
                run.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=run.step)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", sps=f"{row['samples_per_s']:.1f}")
            bar.update(1)
            if _due(cfg.eval_every, run) and run.data.eval:
                evaluation = evaluate_now(run)
                run.history.append(
                    {"step": run.step, "train_seconds": evaluation["train_seconds"], **evaluation["metrics"]}
                )
                _log_metrics(run, evaluation["metrics"])
            # After the evaluation: sampled decoding draws random numbers, and a resumed run continues
            # from the states saved here.
            if _due(cfg.save_every, run):
                checkpoint(run)
            stop = stop_requested(received, run.accelerator) if run.step < run.total_steps else None
            if stop:  # Ctrl-C / SIGTERM: keep this step's state, then stop
                if run.last_checkpoint is None or checkpoint_step(run.last_checkpoint) != run.step:
                    checkpoint(run)
                bar.close()
                raise TrainingInterrupted(stop, run.step, run.total_steps, run.last_checkpoint)
    bar.close()
    return finish(run)


def finish(run: Run) -> dict:
    """Save the adapter and the loss curve, evaluate, write metrics.json; the run's metrics."""
    cfg, accelerator, data = run.cfg, run.accelerator, run.data
    train_seconds = time.perf_counter() - run.t_start - run.eval_seconds
    model = accelerator.unwrap_model(run.model)
    card_info = {
        "method": cfg.method,
        "training data": {k: v for k, v in (cfg.train_data or {}).items() if not k.startswith("_")},
        "training": {
            "steps": run.step,
            "batch_size": cfg.batch_size * cfg.grad_accum,
            "lr": cfg.learning_rate,
            "seed": cfg.seed,
        },
    }
    with full_parameters(accelerator, run.model):
        if run.is_main:
            _save_adapter_somewhere(model, run.out / "adapter", card_info)
            _write_curve(run.out / "loss_curve.csv", run.curve)
    seen = run.batches.samples_seen()
    trainable, total = run.parameters
    result: dict[str, Any] = {
        "steps": run.step,
        "train_samples": data.n_encoded,
        "samples_seen": seen,
        "train_seconds": train_seconds,
        "train_samples_per_s": (seen - run.seen_start) / train_seconds,
        "final_loss": run.curve[-1]["loss"] if run.curve else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "truncated_prompts": data.n_truncated,
        "method": cfg.method,
        "use_images": cfg.use_images,
        "history": run.history,
        "num_processes": accelerator.num_processes,
    }
    if data.common_share is not None:
        result["visual_feature_common_share"] = data.common_share
    if run.memory is not None:
        result["peak_step_memory_bytes"] = run.peak_bytes
    if data.train_skipped["count"]:
        result["skipped"] = data.train_skipped
    if run.scale_reports:  # the last measurement in full, the earlier ones as their summaries
        result["scale"] = run.scale_reports[-1]
        result["scale_history"] = [{"step": r["step"], **instruments.summary(r)} for r in run.scale_reports]
    if data.eval:
        evaluation = evaluate_now(run)
        result["eval"] = evaluation["metrics"]
        result["eval"]["truncated_prompts"] = report_eval_truncation(run.tokenizer, data.eval, cfg, run.log)
        _log_metrics(run, result["eval"])
        if run.is_main:
            write_json(run.out / "predictions_eval.json", evaluation["predictions"])
        if run.is_main and not is_fsdp(accelerator):  # FSDP: the card keeps no metrics (sharded)
            metrics = {k: v for k, v in result["eval"].items() if not isinstance(v, dict) or k == "per_type"}
            model.write_model_card(
                run.out / "adapter",
                {
                    **card_info,
                    "evaluation data": {k: v for k, v in cfg.eval_data.items() if not k.startswith("_")},
                    "metrics": metrics,
                },
            )
    if run.is_main:
        write_json(run.out / "metrics.json", result)
    if cfg.report_to:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return result


def _tracker_config(cfg: TrainConfig) -> dict:
    """The run's config as trackers take hyper-parameters: numbers, strings and booleans (the rest as JSON)."""
    flat = {}
    for key, value in dataclasses.asdict(cfg).items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
    return flat


def _log_metrics(run: Run, metrics: dict) -> None:
    """An evaluation's numbers to the trackers as ``eval/<name>`` (``eval/per_type/<type>`` too)."""
    if not run.cfg.report_to:
        return
    flat = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name, value in (metrics.get("per_type") or {}).items():
        if isinstance(value, (int, float)):
            flat[f"eval/per_type/{name}"] = value
    run.accelerator.log(flat, step=run.step)


__all__ = [
    "train",
    "setup",
    "take_step",
    "diagnose",
    "evaluate_now",
    "checkpoint",
    "finish",
    "Run",
    "DataSplits",
    "param_groups",
    "make_optimizer",
    "decays",
    "StepBatches",
]
