"""Training checkpoints: trainable weights only, written atomically, enough state to resume exactly.

A checkpoint ``<output_dir>/checkpoint-<step>/`` holds

* ``memvp_config.json`` + ``memvp_model.safetensors`` (``model.save_pretrained``): the adapter, so that
  ``memvp eval --adapter <output_dir>/checkpoint-<step>`` works as before;
* ``trainable.safetensors``: ``model.trainable_state_dict()``, what a resume loads back through
  ``model.load_trainable_state`` (so resuming works for any model class ``train.build`` returns);
* ``optimizer.bin``, ``scheduler.bin`` (and ``scaler.bin`` for fp16 loss scaling);
* ``rng_state.bin``: python / numpy / torch (and CUDA) RNG states of every process, and the state the
  data sampler's generator had at the start of the current epoch;
* ``trainer_state.json``: step, data position (epoch, batches of it consumed), loss curve and eval
  history so far, the training config, and the size and sha256 of every other file. Written last.

The frozen language model is never written: Accelerate's ``save_state`` would write the whole model
(all 135M parameters of SmolLM2, billions for a 7B LM) into every checkpoint, so this module saves
the trainable weights and the optimizer / scheduler / RNG states itself.

Atomicity: the main process writes everything into ``.checkpoint-<step>.tmp``, fsyncs the files and
the directory, then renames it to ``checkpoint-<step>`` (and fsyncs the parent). A run killed while
writing leaves at most a ``.tmp`` directory, which is never taken for a checkpoint and is removed by
the next save. Shared storage is assumed for resuming on several nodes (every process reads the
checkpoint); only the main process writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..atomic import remove_tree, write_directory_atomically

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.bin"
SCHEDULER = "scheduler.bin"
SCALER = "scaler.bin"
RNG = "rng_state.bin"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass
class DataPosition:
    """Where training is in the data: ``batches`` global batches of epoch ``epoch`` consumed."""

    epoch: int = 0
    batches: int = 0


# ------------------------------------------------------------------------------ finding checkpoints
def checkpoint_step(path: str | os.PathLike) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first (temporary / partial directories left out)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=checkpoint_step)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_problem(path: Path) -> str | None:
    """Why ``path`` can not be loaded (None when it can): for checkpoints written before checksums."""
    try:
        if path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".bin":
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to load is damage: pickle, zip and safetensors errors differ
        return f"{path.name} can not be loaded ({type(e).__name__})"
    return None


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint directory (None when it is intact): its trainer state must
    parse, and every file it lists must have the size and sha256 it was written with (a truncated
    copy, a disk that filled up or bytes damaged in place show here, before anything is loaded).
    Checkpoints written before the checksums are loaded on trial instead."""
    path = Path(path)
    try:
        state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE} in it"
    except (OSError, ValueError) as e:
        return f"{TRAINER_STATE} is damaged ({e})"
    checksums = state.get("sha256")
    for name, size in (state.get("files") or {}).items():  # checkpoints before the manifest list none
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is truncated ({f.stat().st_size} of {size} bytes)"
        if checksums is None:
            problem = _load_problem(f)
            if problem:
                return problem
        elif _sha256(f) != checksums.get(name):
            return f"{name} is damaged (its sha256 differs from the one recorded when it was written)"
    return None


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """(the checkpoint ``resume`` names, notes on damaged ones passed over).

    ``"latest"``: the newest intact checkpoint of output_dir (None when there is none yet); damaged
    newer ones are passed over and named in the notes. A path: that checkpoint, or a ValueError that
    says what is wrong with it and which intact checkpoint precedes it.
    """
    if resume == "latest":
        notes = []
        for candidate in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                return candidate, notes
            notes.append(f"{candidate} is damaged: {problem}; passed over")
        return None, notes
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"resume={resume!r} is not a training checkpoint (no {TRAINER_STATE} in it); "
            f"give resume=latest or a {PREFIX}<step> directory of a run"
        )
    problem = checkpoint_problem(path)
    if problem is not None:
        step = checkpoint_step(path)
        earlier = [
            c
            for c in list_checkpoints(path.parent)
            if step is not None and checkpoint_step(c) < step and checkpoint_problem(c) is None
        ]
        hint = f"resume from {earlier[-1]} instead" if earlier else "no earlier intact checkpoint: start afresh"
        raise ValueError(f"cannot resume from {path}: {problem}; {hint}")
    return path, []


# ------------------------------------------------------------------------------ what may change on resume
RESUME_HONOURED: dict[str, str] = {
    "output_dir": "where this run writes (a checkpoint of another run may continue into a new folder)",
    "resume": "which checkpoint to continue",
    "max_steps": "the run stops at the new count; the learning-rate schedule is rebuilt for the new length",
    "epochs": "as max_steps",
    "warmup_ratio": "the learning-rate schedule is rebuilt with the new warm-up",
    "lr": "the schedule continues from its step with the new peak value (lr(step) = lr x the schedule's factor); "
    "the optimizer's moments are kept",
    "base_lr": "as lr (the effective lr is base_lr x global batch / 256)",
    "projector_lr": "as lr, for the projector's group (switching it on or off is refused: the optimizer's groups "
    "would change)",
    "max_grad_norm": "read at every step",
    "eval_every": "read at every step",
    "save_every": "read at every step",
    "save_total_limit": "read at every save",
    "diagnose_every": "read at every step",
    "measure_memory": "read at every step",
    "progress": "display only",
    "eval_data": "evaluation only",
    "max_eval_samples": "evaluation only",
    "eval_batch_size": "evaluation only",
    "max_new_tokens": "evaluation only",
    "do_sample": "evaluation only",
    "top_p": "evaluation only",
    "temperature": "evaluation only",
    "score_skipped": "evaluation only",
    "num_beams": "evaluation only",
    "choice_rule": "evaluation only",
    "report_to": "logging only",
    "output_formats": "memvp predict / eval only",
    "dataloader_workers": "how batches are assembled, not which",
    "skip_bad": "the train set is still compared sample by sample, and counted after skipping",
    "feature_cache": "where features are cached (keyed by encoder and file, so they are the same)",
    "gradient_checkpointing": "memory against time; the same gradients",
}
"""TrainConfig keys a resumed run may change, and how it honours them. Every other key, including keys
added later, must equal the checkpoint's: a new key is safe by default."""


def data_fingerprint(samples: Sequence) -> str:
    """sha256 of what training reads of a split: each sample's id, prompt, answers, target, earlier turns
    and visual input (file names, not folders: a moved data set is the same data). Catches a train file
    replaced by another of the same size."""
    digest = hashlib.sha256()
    for s in samples:
        visual = [os.path.basename(p) if p else None for p in (s.image, s.video, s.features)]
        record = [s.id, s.prompt, s.answers, s.target, s.metadata.get("history"), s.image_id, visual, s.span]
        digest.update(json.dumps(record, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if key != "_base_dir":  # the config file's folder: relative data paths are compared as written
            flat.update(_flatten(item, f"{prefix}.{key}"))
    return flat or {prefix: {}}


def resume_changes(saved: dict, current: dict, defaults: dict) -> tuple[list[str], list[str]]:
    """(refused, honoured) differences between a checkpoint's config and this run's, each as
    ``key=old (this config: new)``; nested sections (memvp.num_entries, train_data.questions_file) by dotted
    key. A key the checkpoint does not record (added since) is compared with its default."""
    refused, honoured = [], []
    for key in sorted(current):
        old, new = saved.get(key, defaults.get(key)), current[key]
        before, after = _flatten(old, key), _flatten(new, key)
        differing = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
        if not differing:
            continue
        described = [f"{k}={before.get(k)!r} (this config: {after.get(k)!r})" for k in differing]
        switched = key == "projector_lr" and (old is None) != (new is None)
        (honoured if key in RESUME_HONOURED and not switched else refused).extend(described)
    return refused, honoured


def check_resume_config(
    saved_state: dict, cfg, train_fingerprint: str, where: Path, log: Callable[[str], None] = logger.info
) -> None:
    """Refuse to resume when a setting that can not change mid-run (data, method, sizes, seed, ...)
    differs from the checkpoint's, naming each; log the changes the run honours. Needs no model."""
    defaults = {
        f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        for f in dataclasses.fields(cfg)
    }
    # Both as the checkpoint recorded its config: through JSON (tuples become lists, ...).
    current, defaults = (json.loads(json.dumps(d)) for d in (dataclasses.asdict(cfg), defaults))
    refused, honoured = resume_changes(saved_state.get("config", {}), current, defaults)
    fresh = "set them back, or start afresh (another output_dir, or without --resume)"
    if refused:
        raise ValueError(
            f"cannot resume from {where}: settings that can not change mid-run differ from the "
            f"checkpoint's: {', '.join(refused)}; {fresh}"
        )
    recorded = saved_state.get("train_fingerprint")
    if recorded is not None and recorded != train_fingerprint:
        raise ValueError(
            f"cannot resume from {where}: the train set differs from the one it was trained on (the "
            f"same train_data spec, other samples: a data file was replaced or edited); restore the "
            f"data, or start afresh (another output_dir, or without --resume)"
        )
    step = saved_state.get("step", 0)
    if cfg.max_steps and step > cfg.max_steps:
        raise ValueError(
            f"cannot resume from {where}: it is at step {step}, past max_steps={cfg.max_steps}; "
            "give max_steps >= its step, or resume from an earlier checkpoint"
        )
    if honoured:
        log(f"resuming with changed settings: {', '.join(honoured)}")


def _honour_configured_lrs(optimizer, scheduler, configured: list[float]) -> None:
    """Loading the optimizer and scheduler states brings back the learning rates of the run that wrote
    them; keep this run's (its lr / projector_lr, its schedule: max_steps, warmup): the schedule continues
    at its step, scaled to them, from the very next step. Unchanged settings give the loaded lrs bit for
    bit (LambdaLR computes them by the same product)."""
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(configured, scheduler.lr_lambdas)]
    for group, base, lr in zip(optimizer.param_groups, configured, lrs):
        group["initial_lr"], group["lr"] = base, lr
    scheduler.base_lrs, scheduler._last_lr = list(configured), lrs


# ------------------------------------------------------------------------------ atomic directories
def prune_checkpoints(output_dir: str | os.PathLike, keep: int, step: int | None = None) -> None:
    """Keep the ``keep`` newest checkpoints (all when keep <= 0); remove what killed runs left behind.

    ``step``: the step of the checkpoint just written. Checkpoints past it belong to a run this one
    resumed before (a damaged newer checkpoint passed over, or ``resume=`` an earlier one): they are
    the first to go, so the one just written and those it follows on are never pruned for them."""
    root = Path(output_dir)
    for leftover in [*root.glob(f".{PREFIX}*.tmp"), *root.glob(f".{PREFIX}*.deleting")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if keep > 0:
        found = list_checkpoints(root)  # by step
        if step is not None:
            found = [c for c in found if checkpoint_step(c) > step] + [c for c in found if checkpoint_step(c) <= step]
        for old in found[:-keep]:
            remove_tree(old)


# ------------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """This process's global RNG states (dropout, sampling, anything that draws from them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        # as plain lists, so that torch.load(weights_only=True) can read them back
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------ FSDP specifics
def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _offload(accelerator) -> bool:
    # Gather into CPU memory rather than GPU memory. Not on a CPU device: there FSDP's "offload"
    # frees the gathered storage (seen with torch 2.13 + gloo: zero-byte parameters, garbage
    # optimizer moments), and the data is in CPU memory anyway.
    return accelerator.device.type != "cpu"


@contextlib.contextmanager
def full_parameters(accelerator, model):
    """Under FSDP the trainable parameters are shards: gather them (onto rank 0's CPU) to read them.

    A no-op otherwise. Must be entered by every process (it is a collective). It gathers the frozen
    weights too (FSDP has no way to gather only some), so rank 0 needs the model's size in CPU RAM."""
    if not is_fsdp(accelerator):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=_offload(accelerator)):
        yield


# ------------------------------------------------------------------------------ save / load
def _optimizer_state(accelerator, model, optimizer) -> dict | None:
    """The full optimizer state on the main process (None on the others)."""
    if not is_fsdp(accelerator):
        return optimizer.state_dict()  # DDP: every process holds the same, complete state
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # FSDP shards the optimizer state with the parameters: gather it onto rank 0 (a collective).
    offload = _offload(accelerator)
    with FSDP.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True),
    ):
        state = FSDP.optim_state_dict(model, optimizer)
    return state if accelerator.is_main_process else None


def _load_optimizer_state(accelerator, model, optimizer, state: dict, directory: Path) -> None:
    saved, now = len(state.get("param_groups", [])), len(optimizer.param_groups)
    if saved != now:  # torch's own error names neither the checkpoint nor the cause
        raise ValueError(
            f"cannot resume from {directory}: its optimizer has {saved} parameter group(s), this run's has {now} "
            "(checkpoints written before biases and 1-d tensors were exempted from weight decay, or with "
            "projector_lr switched, have other groups); start afresh, or resume with the memvp version that wrote it"
        )
    if not is_fsdp(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.state_dict_type(
        model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(), FullOptimStateDictConfig(rank0_only=False)
    ):
        optimizer.load_state_dict(FSDP.optim_state_dict_to_load(model, optimizer, state))


def save_checkpoint(
    accelerator,
    model,
    optimizer,
    scheduler,
    directory: str | os.PathLike,
    trainer_state: dict,
    sampler_state: torch.Tensor,
    keep: int = 0,
) -> Path:
    """Write ``directory`` atomically (main process), then keep the ``keep`` newest checkpoints.

    Every process must call this (gathering RNG states, and under FSDP the weights and optimizer
    state, are collectives). ``model`` / ``optimizer`` / ``scheduler`` are the prepared objects.
    """
    from accelerate.utils import gather_object

    directory = Path(directory)
    rng = {"processes": gather_object([rng_state()]), "sampler": sampler_state}
    optimizer_state = _optimizer_state(accelerator, model, optimizer)
    memvp = accelerator.unwrap_model(model)

    def write(tmp: Path) -> None:
        memvp.save_pretrained(tmp)
        save_file(
            {n: t.detach().to("cpu").contiguous() for n, t in memvp.trainable_state_dict().items()},
            str(tmp / TRAINABLE),
        )
        torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / SCALER)
        torch.save(rng, tmp / RNG)
        # Last: a directory with trainer_state.json has everything else, and lists it with its sizes
        # and checksums (damage that keeps the size is found by resolve_resume too).
        written = [f for f in sorted(tmp.iterdir()) if f.is_file()]
        files = {f.name: f.stat().st_size for f in written}
        checksums = {f.name: _sha256(f) for f in written}
        (tmp / TRAINER_STATE).write_text(
            json.dumps({**trainer_state, "files": files, "sha256": checksums}, indent=1, sort_keys=True),
            encoding="utf-8",
        )

    with full_parameters(accelerator, model):
        if accelerator.is_main_process:
            write_directory_atomically(directory, write)
            prune_checkpoints(directory.parent, keep, checkpoint_step(directory))
    accelerator.wait_for_everyone()
    return directory


def load_trainable_weights(model, directory: str | os.PathLike) -> None:
    """Put the checkpoint's trainable weights into the (unprepared) model: before FSDP shards it."""
    model.load_trainable_state(load_file(str(Path(directory) / TRAINABLE)))


def read_trainer_state(directory: str | os.PathLike) -> dict:
    return json.loads((Path(directory) / TRAINER_STATE).read_text(encoding="utf-8"))


def load_training_state(accelerator, model, optimizer, scheduler, directory: str | os.PathLike) -> torch.Tensor:
    """Restore optimizer, scheduler, loss scaler and this process's RNG states from a checkpoint.

    Returns the sampler generator state of the checkpoint's epoch start. RNG states are per
    process: resuming with another number of processes is allowed but not bit-exact. The learning
    rates of this run's config are kept (``_honour_configured_lrs``).
    """
    directory = Path(directory)
    schedule = getattr(scheduler, "scheduler", scheduler)  # the LambdaLR inside Accelerate's wrapper
    configured = list(schedule.base_lrs)

    def load(name: str):
        try:
            return torch.load(directory / name, map_location="cpu", weights_only=True)
        except Exception as e:  # damaged after resolve_resume checked it: still one line, not a pickle traceback
            raise ValueError(
                f"cannot resume from {directory}: {name} can not be loaded ({type(e).__name__}); "
                "resume from an earlier checkpoint (resume=DIR) or start afresh"
            ) from None

    _load_optimizer_state(accelerator, model, optimizer, load(OPTIMIZER), directory)
    scheduler.load_state_dict(load(SCHEDULER))
    _honour_configured_lrs(optimizer, schedule, configured)
    if accelerator.scaler is not None and (directory / SCALER).is_file():
        accelerator.scaler.load_state_dict(load(SCALER))
    rng = load(RNG)
    states = rng["processes"]
    set_rng_state(states[accelerator.process_index % len(states)])
    return rng["sampler"]


__all__ = [
    "DataPosition",
    "list_checkpoints",
    "resolve_resume",
    "checkpoint_problem",
    "write_directory_atomically",
    "prune_checkpoints",
    "save_checkpoint",
    "load_trainable_weights",
    "load_training_state",
    "read_trainer_state",
    "checkpoint_step",
    "full_parameters",
    "is_fsdp",
    "RESUME_HONOURED",
    "data_fingerprint",
    "resume_changes",
    "check_resume_config",
]
