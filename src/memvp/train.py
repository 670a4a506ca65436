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
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .checkpoint import (DataPosition, checkpoint_step, full_parameters, is_fsdp, load_trainable_weights, load_training_state,
                         read_trainer_state, resolve_resume, save_checkpoint)
from .config import MemVPConfig, check_field_types
from .data import DEFAULT_PROMPT_TEMPLATE, VisualInputs, collate_training, describe_truncation, encode_sample
from .datasets import IMAGE_PATHS, Sample, load_samples
from . import instruments
from .evaluate import score
from .instruments import measure_scale
from .baselines import METHODS, BaselineConfig, build_model, check_adapter, check_adapter_features, load_adapter
from .predict import predict
from .pretrained import cache_dir, load_language_model, load_vision_encoder

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainConfig:
    train_data: dict | None = None
    """Dataset spec for ``datasets.load_samples``, e.g. {format: vqav2, questions_file: ..., ...}."""
    eval_data: dict | None = None
    output_dir: str = "runs/memvp"
    language_model: str = "smollm2"
    model_dtype: str = "float32"
    """dtype the frozen language model is stored in: 'float32', 'bfloat16' (half the weight memory)
    or 'float16'. Trainable parameters stay float32 whatever it is. Pair it with precision=bf16 /
    fp16. FSDP needs float32 (its bf16 mixed precision casts the shards for compute)."""
    vision_encoder: str = "efficientnet-lite0"
    feature_cache: str | None = None
    """Where image features are cached; default ``<memvp cache>/features``."""
    method: str = "memvp"
    """'memvp', or a baseline of the paper in the same harness: 'input_space' (LLaVA-style visual
    tokens in front of the text + LoRA) or 'text_only' (LoRA, no image)."""
    memvp: dict = field(default_factory=dict)
    """MemVPConfig fields; ``visual_dim`` comes from the vision encoder."""
    baseline: dict = field(default_factory=dict)
    """BaselineConfig fields for 'input_space' / 'text_only' (lora_r, lora_alpha, projector, ...)."""
    use_images: bool = True
    """False trains the 'w/o visual prompts' ablation (Table 4): position embeddings only."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_length: int = 128
    epochs: float = 1.0
    max_steps: int = 0
    """Optimizer steps; > 0 overrides ``epochs``."""
    batch_size: int = 16
    """The *global* batch of one forward pass, summed over all processes: with N processes (GPUs)
    each one gets batch_size / N samples (N must divide it). An optimizer step uses
    batch_size * grad_accum samples whatever N, so ``lr`` and the schedule stay as they are when
    scaling out, and N processes reach the same weights as one (up to float rounding; exactly the
    same batches when the train set size is a multiple of batch_size, else Accelerate fills the
    last batch of each epoch with samples from the epoch's start when N > 1)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (smaller forward passes, same step). The gradient is the
    mean over every answer token of the step, as for one big batch."""
    lr: float = 3e-3
    projector_lr: float | None = None
    """Learning rate of the visual projector f (LLaVA's ``mm_projector_lr``); None uses ``lr``.
    Position embeddings and LoRA weights keep ``lr``. The projector's first layer sees raw encoder
    features (norm ~220 per token on the demo's EfficientNet grid), so an Adam step of ``lr`` on
    each weight can move a pre-activation by up to lr * |z|_1."""
    weight_decay: float = 0.02
    max_grad_norm: float = 0.0
    """Clip the gradient's global norm to this before each optimizer step (transformers' Trainer
    uses 1.0); 0, the default, does not clip, as the official MemVP code."""
    warmup_ratio: float = 0.1
    precision: str = "no"
    """'no', 'bf16' or 'fp16' autocast (fp32 master weights for the trainable parameters). fp16
    adds dynamic loss scaling and needs a GPU; on CPU use bf16."""
    gradient_checkpointing: bool = False
    seed: int = 0
    eval_every: int = 0
    save_every: int = 0
    """Write a checkpoint (adapter, optimizer, scheduler, RNG states, data position) every this many
    optimizer steps, to ``output_dir/checkpoint-<step>``."""
    save_total_limit: int = 0
    """Keep only the newest this many checkpoints (0 keeps all)."""
    resume: str | None = None
    """Continue an interrupted run: 'latest' (the newest checkpoint in output_dir; a fresh start when
    there is none yet) or a checkpoint directory. The result is the same as without interruption."""
    max_train_samples: int = 0
    max_eval_samples: int = 0
    eval_batch_size: int = 32
    """Generation batch per process (evaluation splits the samples between processes)."""
    max_new_tokens: int = 10
    do_sample: bool = False
    """Greedy decoding by default; True samples with nucleus (top-p) sampling."""
    top_p: float = 0.9
    temperature: float = 1.0
    skip_bad: bool = False
    """Skip samples whose image (or feature file) is missing or unreadable instead of stopping;
    they are counted and listed under 'skipped' in metrics.json / eval_metrics.json."""
    score_skipped: str = "wrong"
    """How evaluation scores questions skipped by ``skip_bad``: 'wrong' (an empty answer, the
    default) or 'drop' (left out of the metrics)."""
    adapter: str | None = None
    """An adapter directory to start from (``memvp predict`` / ``eval`` evaluate it)."""
    allow_base_mismatch: bool = False
    """Load ``adapter`` even when the base model's weights differ from the ones it was trained on
    (same architecture and size, other weights: a sample of the input embeddings is compared)."""
    progress: bool = True
    diagnose_every: int = 50
    """Every this many optimizer steps (and at the first and last), measure on the batch at hand
    whether the visual memory stays in the LM's scale (``memvp.instruments``: memory / FFN output,
    residual norm / frozen LM's), log it to loss_curve.csv and metrics.json, and warn when the memory
    dominates. 0 turns it off. MemVP only; two extra forward passes each time."""

    def __post_init__(self) -> None:
        check_field_types(self)  # wrong types name their key here, not as a TypeError mid-run
        if self.score_skipped not in ("wrong", "drop"):
            raise ValueError(f"score_skipped must be 'wrong' or 'drop', got {self.score_skipped!r}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {self.precision!r}")
        if self.model_dtype not in _DTYPES:
            raise ValueError(f"model_dtype must be one of {list(_DTYPES)}, got {self.model_dtype!r}")
        for key in ("batch_size", "grad_accum"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ValueError(f"max_steps must be a whole number >= 0 (0: train for `epochs`), got {self.max_steps!r}")
        if self.max_steps == 0 and not float(self.epochs) > 0:
            raise ValueError(f"epochs must be > 0 when max_steps is 0 (nothing would be trained), got {self.epochs!r}")
        if not isinstance(self.diagnose_every, int) or self.diagnose_every < 0:
            raise ValueError(f"diagnose_every must be a whole number >= 0 (0: off), got {self.diagnose_every!r}")
        if self.save_total_limit < 0:
            raise ValueError(f"save_total_limit must be >= 0 (0 keeps all), got {self.save_total_limit}")
        if self.resume is not None and not isinstance(self.resume, str):
            raise ValueError(f"resume must be 'latest' or a checkpoint directory, got {self.resume!r}")
        # Unknown / invalid method options fail now, not after the models are loaded.
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        MemVPConfig.from_dict({"visual_dim": 1, **self.memvp})
        BaselineConfig.from_dict({"method": "text_only", **self.baseline})
        if self.method == "text_only":
            self.use_images = False

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: list[str] = ()) -> "TrainConfig":
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(e, "problem", None) or type(e).__name__
                raise ValueError(f"{path} is not valid YAML{where}: {problem}; fix the file") from None
            except UnicodeDecodeError:
                raise ValueError(f"{path} is not UTF-8 text; save it as UTF-8") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected a mapping of config keys")
            for key in ("train_data", "eval_data"):  # data paths are relative to the config file
                if isinstance(data.get(key), dict):
                    data[key] = {"_base_dir": str(path.parent.resolve()), **data[key]}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} must look like key=value (dotted keys for nested ones)")
            *parents, leaf = key.split(".")
            node = data
            for depth, p in enumerate(parents):
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    section = ".".join(parents[: depth + 1])
                    raise ValueError(f"override {item!r}: {section} is not a section of keys (it is {node!r}); "
                                     f"write {section}=VALUE, or dotted keys only below sections like memvp")
            try:
                node[leaf] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ValueError(f"override {item!r}: the value is not valid YAML; quote it") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


def read_split(spec: dict | None, what: str, limit: int = 0) -> list[Sample]:
    if not spec:
        raise ValueError(f"no {what} given in the config")
    spec = dict(spec)
    base_dir = spec.pop("_base_dir", None)
    samples = load_samples(spec, base_dir=base_dir)
    return samples[:limit] if limit > 0 else samples


def task_of(spec: dict) -> str:
    return spec["format"]


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters, the projector's in a group of their own when ``projector_lr`` is set."""
    if cfg.projector_lr is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    projector, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (projector if ".projector." in f".{name}" else rest).append(p)
    if not projector:
        raise ValueError(f"projector_lr is set but the {cfg.method!r} model has no trainable projector")
    return [g for g in ({"params": rest}, {"params": projector, "lr": cfg.projector_lr}) if g["params"]]


def build(cfg: TrainConfig, samples: list[Sample] = ()):
    """(model, tokenizer, VisualInputs) as the config says (adapter loaded if given). The model is
    a MemVPModel or, for the baselines, an InputSpaceModel with the same interface. ``samples``
    size a ``precomputed`` vision encoder (their feature files)."""
    lm, tokenizer = load_language_model(cfg.language_model, dtype=_DTYPES[cfg.model_dtype])
    example = next((s.features for s in samples if s.features is not None), None)
    encoder = load_vision_encoder(cfg.vision_encoder, example_features=example)
    visual = VisualInputs(encoder, cfg.feature_cache or str(cache_dir() / "features"))
    if cfg.adapter:
        model = load_adapter(lm, cfg.adapter, is_trainable=True, allow_base_mismatch=cfg.allow_base_mismatch)
        check_adapter_features(model, cfg.adapter, encoder.feature_dim, cfg.vision_encoder)
    else:
        model = build_model(cfg.method, lm, encoder.feature_dim, memvp=cfg.memvp, baseline=cfg.baseline)
    return model, tokenizer, visual


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
        raise ValueError(f"output_dir {out} is not writable ({e.strerror}); give a directory you can write to") from None


def _save_adapter_somewhere(model, directory: Path) -> None:
    """Save the trained adapter; when output_dir fails at the end (disk full, removed, ...), save it
    in a fresh temporary directory instead and say where: training time is never thrown away."""
    try:
        model.save_pretrained(directory)
    except OSError as e:
        rescue = Path(tempfile.mkdtemp(prefix="memvp-adapter-"))
        model.save_pretrained(rescue)
        raise ValueError(f"could not write the adapter to {directory} ({e.strerror or e}); the trained weights "
                         f"are saved in {rescue} instead: move them where you want them") from None


def _report_eval_truncation(tokenizer, samples: list[Sample], cfg: TrainConfig, log: Callable[[str], None]) -> int:
    """Prompts that generation will cut from the left (predict leaves max_new_tokens for the answer),
    reported as training reports its own; the count goes into the metrics."""
    room = cfg.max_length - cfg.max_new_tokens
    count = sum(encode_sample(tokenizer, s, room, cfg.prompt_template, with_answer=False).truncated > 0
                for s in samples)
    if count:
        log(describe_truncation(count, len(samples), room) + " (evaluation)")
    return count


def _diagnose_now(cfg: TrainConfig, accelerator, step: int, total_steps: int) -> bool:
    """MemVP runs measure their scale (instruments) now? Not under FSDP, whose sharded modules can
    not be run outside the wrapped forward."""
    if cfg.diagnose_every <= 0 or cfg.method != "memvp" or is_fsdp(accelerator):
        return False
    return step == 1 or step == total_steps or step % cfg.diagnose_every == 0


def _prepare(visual: VisualInputs, samples: list[Sample], skip_bad: bool, what: str, data_format: str,
             log: Callable[[str], None] = print) -> tuple[list[Sample], dict]:
    """(the samples whose images or feature files could be read, a report of the skipped ones:
    count, ids, and each unreadable file's error, for metrics.json)."""
    try:
        kept, bad = visual.prepare(samples, skip_bad=skip_bad)
    except FileNotFoundError as e:
        if "image not found" not in str(e):
            raise
        raise FileNotFoundError(f"{e} ({data_format} finds images at {IMAGE_PATHS[data_format]}; "
                                "--skip-bad skips missing ones)") from None
    kept_ids = {s.id for s in kept}
    skipped = {"count": len(samples) - len(kept), "ids": [s.id for s in samples if s.id not in kept_ids],
               "files": bad}
    if bad:
        log(f"skipped {skipped['count']} {what} sample(s) of {len(samples)}: {len(bad)} image or feature file(s) "
            f"could not be read, e.g. {next(iter(bad.values()))} (all listed under 'skipped' in the metrics)")
    if not kept:
        raise ValueError(f"the {what} split is empty (after skipping unreadable images)")
    return kept, skipped


def _score(task: str, split: list[Sample], predictions: dict[str, str], skipped: dict, cfg: TrainConfig) -> dict:
    """Metrics of ``predictions`` on ``split``. Questions skipped for an unreadable image count as
    answered wrong (an empty answer) unless ``score_skipped='drop'``: a run with broken images does
    not look better than one without."""
    if skipped["count"] and cfg.score_skipped == "wrong":
        predictions = {**{i: "" for i in skipped["ids"]}, **predictions}
    metrics = score(task, split, predictions)
    if skipped["count"]:
        metrics["skipped"] = {**skipped, "scored_as": cfg.score_skipped}
    return metrics


def predict_split(model, tokenizer, visual, samples, cfg: TrainConfig, progress: bool | None = None) -> dict[str, str]:
    return predict(model, tokenizer, samples, visual, batch_size=cfg.eval_batch_size,
                   max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length,
                   template=cfg.prompt_template, use_images=cfg.use_images,
                   progress=cfg.progress if progress is None else progress,
                   do_sample=cfg.do_sample, top_p=cfg.top_p, temperature=cfg.temperature)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


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


# ---------------------------------------------------------------------------------- launch checks
def _use_cpu() -> bool:
    """Whether Accelerate must be told to use the CPU: ``accelerate launch --cpu``, or several
    processes but no GPU. In the latter case Accelerate would otherwise treat torchrun-launched
    processes as independent single-process runs, each training alone and writing the same files."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accel = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return not (accel.is_available() if accel is not None else torch.cuda.is_available())


def _check_launch(cfg: TrainConfig, state) -> None:
    """Settings that Accelerate would otherwise ignore silently or fail on much later."""
    if cfg.precision == "fp16" and state.device.type == "cpu":
        raise ValueError("precision=fp16 needs a GPU: Accelerate has no fp16 autocast or loss scaling on "
                         "CPU and would silently train in fp32; use precision=bf16 on CPU")
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch`
    if launcher not in ("no", cfg.precision):
        raise ValueError(f"accelerate launch asks for mixed_precision={launcher} but the memvp config has "
                         f"precision={cfg.precision}; memvp takes it from its config: add precision={launcher}")
    if cfg.batch_size % state.num_processes:
        raise ValueError(f"batch_size={cfg.batch_size} is the global batch and must be a multiple of the "
                         f"number of processes ({state.num_processes})")


@contextlib.contextmanager
def _one_writer_at_a_time(state):
    """The main process first, then each node's first process, then the others: the feature cache
    (and the converted-model cache) get a single writer at a time, whether the cache directory is
    shared between nodes or node-local, and the later processes find it filled."""
    with state.main_process_first(), state.local_main_process_first():
        yield


def _fp32_trainable(model, cfg: TrainConfig) -> None:
    """Trainable parameters in fp32 whatever model_dtype: small optimizer updates round away in
    bf16 (8 bits of mantissa)."""
    low = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    for _, p in low:
        p.data = p.data.float()
    if low and cfg.precision == "no":
        raise ValueError(f"model_dtype={cfg.model_dtype} with trainable language-model parameters ({low[0][0]}, "
                         "...) needs autocast to mix them with fp32 master weights: set precision=bf16 or fp16")


def _ddp_kwargs(cfg: TrainConfig, samples: list[Sample]):
    from accelerate.utils import DistributedDataParallelKwargs

    # DDP expects every trainable parameter to get a gradient in every step. The visual projector
    # gets none when a batch has no image at all (use_images=false, or image-less samples).
    unused = not cfg.use_images or not all(s.has_image for s in samples)
    return DistributedDataParallelKwargs(find_unused_parameters=unused)


def _skip_frozen_broadcast(accelerator, model) -> None:
    """DDP all-reduces only parameters with requires_grad, but its constructor broadcasts *every*
    parameter from rank 0, i.e. the whole frozen LM (GBs for a 7B model), although every process
    loaded the same weights. Telling DDP to ignore the frozen parameters skips that copy."""
    from accelerate.utils import DistributedType
    from torch.nn.parallel import DistributedDataParallel

    if not (accelerator.multi_device or accelerator.distributed_type == DistributedType.MULTI_CPU):
        return
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)


def _setup_fsdp(accelerator, model, cfg: TrainConfig) -> None:
    """Settings MemVP needs from FSDP (configs/accelerate/fsdp.yaml has them)."""
    if not is_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 1:
        raise ValueError("memvp train supports FSDP version 1 (fsdp_version: 1, as configs/accelerate/fsdp.yaml)")
    if not plugin.use_orig_params:
        raise ValueError("FSDP needs fsdp_use_orig_params: true: a few trainable parameters live among frozen "
                         "ones, which FSDP can only flatten together with use_orig_params")
    if cfg.model_dtype != "float32":
        raise ValueError("under FSDP keep model_dtype=float32 (FSDP flattens frozen and fp32 trainable "
                         "parameters together, which needs one dtype); precision=bf16 computes in bf16")
    if plugin.transformer_cls_names_to_wrap is None:  # TRANSFORMER_BASED_WRAP without a class named
        # One FSDP unit per transformer layer, as transformers declares them; MemVP wraps the LM, so
        # look for the declaration on its submodules.
        plugin.transformer_cls_names_to_wrap = next(
            (list(m._no_split_modules) for m in model.modules() if getattr(m, "_no_split_modules", None)), None)


def _check_fsdp_names(accelerator, model) -> None:
    # The adapter is saved by the unwrapped model's own save_pretrained, which sees FSDP's wrapper
    # modules in the names of parameters inside wrapped layers (e.g. train_layernorms).
    if is_fsdp(accelerator):
        wrapped = [n for n in accelerator.unwrap_model(model).trainable_state_dict() if "_fsdp_wrapped_module" in n]
        if wrapped:
            raise ValueError(f"trainable parameters inside FSDP-wrapped layers ({wrapped[0]}) are not supported "
                             "under FSDP (e.g. memvp.train_layernorms); use DDP (configs/accelerate/ddp.yaml)")


# ---------------------------------------------------------------------------------- training steps
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


# ---------------------------------------------------------------------------------- evaluation
class _SyncedGenerate:
    """The model with ``generate(..., synced_gpus=True)``: under FSDP every forward pass all-gathers
    weights, so every process must run as many as the others, also after its own batch finished."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        return self._model.generate(*args, synced_gpus=True, **kwargs)


def _evaluate(accelerator, model, tokenizer, visual, samples: list[Sample], cfg: TrainConfig) -> dict[str, str]:
    """{sample id: prediction}: each process generates for its share, then all shares are gathered
    (every process gets all of them; each sample once)."""
    from accelerate.utils import gather_object

    memvp, fsdp = accelerator.unwrap_model(model), is_fsdp(accelerator)
    generation = contextlib.nullcontext()
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # generate() bypasses the FSDP root's forward: gather the root's own parameters (embeddings,
        # LM head, visual memory); the wrapped layers gather theirs in their forward.
        generation, memvp = FSDP.summon_full_params(model, recurse=False, writeback=False), _SyncedGenerate(memvp)
    # FSDP needs the same number of batches on every process: pad by repeating the last sample
    # (predictions are keyed by sample id, so a repeat counts once).
    with accelerator.split_between_processes(samples, apply_padding=fsdp) as mine, generation:
        mine_predicted = predict_split(memvp, tokenizer, visual, mine, cfg,
                                       progress=cfg.progress and accelerator.is_main_process)
    merged: dict[str, str] = {}
    for part in gather_object([mine_predicted]):
        merged.update(part)
    return {s.id: merged[s.id] for s in samples}


# ---------------------------------------------------------------------------------- resume
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
    for key in ("batch_size", "grad_accum"):
        if saved["config"][key] != getattr(cfg, key):
            raise ValueError(f"cannot resume from {where}: it was trained with {key}={saved['config'][key]}, "
                             f"this config has {key}={getattr(cfg, key)} (the data position would not match)")
    if saved["train_samples"] != n_train:
        raise ValueError(f"cannot resume from {where}: it was trained on {saved['train_samples']} samples, "
                         f"this config gives {n_train}")
    if saved["num_processes"] != num_processes:
        log(f"note: {where} was written by {saved['num_processes']} process(es), this run has {num_processes}: "
            "per-process random states (dropout) differ from an uninterrupted run")


def _trainer_state(cfg: TrainConfig, step: int, batches: StepBatches, curve: list, history: list,
                   num_processes: int) -> dict:
    return {"step": step, "epoch": batches.position.epoch, "batches": batches.position.batches,
            "curve": curve, "history": history, "train_samples": batches.n_samples,
            "num_processes": num_processes, "config": dataclasses.asdict(cfg)}


# ---------------------------------------------------------------------------------- interruption
class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` on SIGINT / SIGTERM once the checkpoint of the step just finished is written
    (a KeyboardInterrupt, so code that stops on Ctrl-C still does)."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint: Path):
        self.signal_name, self.step, self.total_steps, self.checkpoint = signal_name, step, total_steps, checkpoint
        super().__init__(f"{signal_name} after step {step} of {total_steps}; saved {checkpoint}")


@contextlib.contextmanager
def _stop_signals():
    """SIGINT / SIGTERM set a flag that the loop reads between steps (a step is never cut in half); a
    second signal stops at once, as Ctrl-C normally does. Yields the list of signals received."""
    import signal
    import threading

    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_requested(received: list[str], accelerator) -> str | None:
    """The signal any process received (all processes must stop at the same step to checkpoint)."""
    if accelerator.num_processes == 1:
        return received[0] if received else None
    flags = accelerator.gather(torch.tensor([1 if received else 0], device=accelerator.device))
    return (received[0] if received else "SIGTERM") if bool(flags.any()) else None


# ---------------------------------------------------------------------------------- train
def _train_loader(cfg: TrainConfig, tokenizer, visual, samples: list[Sample], encoded: list,
                  encoder_decoder: bool):
    """(DataLoader of global batches, its shuffling generator). Accelerate (split_batches) gives
    each process its 1/N slice of every batch."""

    def collate(indices: list[int]) -> dict:
        batch = collate_training(tokenizer, [encoded[i] for i in indices], encoder_decoder)
        if cfg.use_images:
            batch["visual_features"], batch["has_image"] = visual.batch([samples[i] for i in indices])
        return batch

    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(list(range(len(encoded))), batch_size=cfg.batch_size, shuffle=True,
                                         generator=generator, collate_fn=collate, drop_last=False)
    return loader, generator


def train(cfg: TrainConfig) -> dict:
    """Train, evaluate, save; returns the final metrics (also written to output_dir/metrics.json).

    Run it as one process or under ``accelerate launch`` / ``torchrun``: only the main process
    prints and writes files; every process returns the same metrics.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration
    from transformers import get_cosine_schedule_with_warmup, set_seed

    cpu = _use_cpu()
    state = PartialState(cpu=cpu)
    _check_launch(cfg, state)
    log = print if state.is_main_process else (lambda *args, **kwargs: None)
    out = Path(cfg.output_dir)
    resume_dir = _resume_dir(cfg, out, state)
    if cfg.resume and resume_dir is None:
        log(f"resume={cfg.resume}: no checkpoint in {out} yet, starting from step 0")

    if state.is_main_process:
        check_output_dir(out)
    # Data files are read and checked before the models load (seconds instead of minutes to an error).
    train_split = read_split(cfg.train_data, "train_data", cfg.max_train_samples)
    eval_split = read_split(cfg.eval_data, "eval_data", cfg.max_eval_samples) if cfg.eval_data else []
    if cfg.adapter:
        check_adapter(cfg.adapter)
    set_seed(cfg.seed)
    with _one_writer_at_a_time(state):
        model, tokenizer, visual = build(cfg, train_split)
        train_samples, train_skipped = _prepare(visual, train_split, cfg.skip_bad, "train", task_of(cfg.train_data), log)
        eval_samples, eval_skipped = (_prepare(visual, eval_split, cfg.skip_bad, "eval", task_of(cfg.eval_data), log)
                                      if eval_split else ([], {}))
    _fp32_trainable(model, cfg)
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
                              kwargs_handlers=[_ddp_kwargs(cfg, train_samples)])
    _setup_fsdp(accelerator, model, cfg)
    _skip_frozen_broadcast(accelerator, model)
    trainable, total = model.get_nb_trainable_parameters()  # before FSDP shards them
    saved = read_trainer_state(resume_dir) if resume_dir else None
    if saved:
        _check_resumable(saved, cfg, len(encoded), accelerator.num_processes, resume_dir, log)
        load_trainable_weights(model, resume_dir)  # before FSDP shards the parameters
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    _check_fsdp_names(accelerator, model)
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

    def checkpoint_now() -> Path:
        path = save_checkpoint(accelerator, model, optimizer, scheduler, out / f"checkpoint-{step}",
                               _trainer_state(cfg, step, batches, curve, history, accelerator.num_processes),
                               batches.epoch_state, keep=cfg.save_total_limit)
        if accelerator.is_main_process:
            _write_curve(out / "loss_curve.csv", curve)
        return path

    with _stop_signals() as received:
        while step < total_steps:
            micro_batches = next(steps)
            loss = _optimizer_step(accelerator, model, optimizer, scheduler, micro_batches, encoder_decoder,
                                   cfg.max_grad_norm)
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
                predictions = _evaluate(accelerator, model, tokenizer, visual, eval_samples, cfg)
                # "train_seconds": training time so far, evaluations left out (accuracy against seconds).
                history.append({"step": step, "train_seconds": t_eval - t_start - eval_seconds,
                                **_score(task, eval_split, predictions, eval_skipped, cfg)})
                eval_seconds += time.perf_counter() - t_eval
                t_window += time.perf_counter() - t_eval
                model.train()
            # After the evaluation: sampled decoding draws random numbers, and a resumed run continues
            # from the states saved here.
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                last_checkpoint = checkpoint_now()
            stop = _stop_requested(received, accelerator) if step < total_steps else None
            if stop:  # Ctrl-C / SIGTERM: keep this step's state, then stop
                if last_checkpoint is None or checkpoint_step(last_checkpoint) != step:
                    last_checkpoint = checkpoint_now()
                bar.close()
                raise TrainingInterrupted(stop, step, total_steps, last_checkpoint)
    bar.close()
    train_seconds = time.perf_counter() - t_start - eval_seconds

    memvp = accelerator.unwrap_model(model)
    with full_parameters(accelerator, model):
        if accelerator.is_main_process:
            _save_adapter_somewhere(memvp, out / "adapter")
            _write_curve(out / "loss_curve.csv", curve)
    seen = batches.samples_seen()
    result: dict[str, Any] = {
        "steps": step, "train_samples": len(encoded), "samples_seen": seen, "train_seconds": train_seconds,
        "train_samples_per_s": (seen - seen_start) / train_seconds, "final_loss": curve[-1]["loss"] if curve else None,
        "trainable_parameters": trainable, "total_parameters": total, "truncated_prompts": n_truncated,
        "method": cfg.method, "use_images": cfg.use_images, "history": history, "num_processes": accelerator.num_processes,
    }
    if train_skipped["count"]:
        result["skipped"] = train_skipped
    if scale_reports:  # the last measurement in full, the earlier ones as their summaries
        result["scale"] = scale_reports[-1]
        result["scale_history"] = [{"step": r["step"], **instruments.summary(r)} for r in scale_reports]
    if eval_samples:
        predictions = _evaluate(accelerator, model, tokenizer, visual, eval_samples, cfg)
        result["eval"] = _score(task, eval_split, predictions, eval_skipped, cfg)
        result["eval"]["truncated_prompts"] = _report_eval_truncation(tokenizer, eval_samples, cfg, log)
        if accelerator.is_main_process:
            _write_json(out / "predictions_eval.json", predictions)
    if accelerator.is_main_process:
        _write_json(out / "metrics.json", result)
    accelerator.wait_for_everyone()
    return result


def run_eval(cfg: TrainConfig, with_metrics: bool = True) -> dict:
    """``memvp predict`` / ``memvp eval``: the adapter of ``cfg.adapter`` on ``cfg.eval_data``."""
    if not cfg.adapter:
        raise ValueError("give the adapter to evaluate: adapter=DIR")
    out = Path(cfg.output_dir)
    check_output_dir(out)
    split = read_split(cfg.eval_data, "eval_data", cfg.max_eval_samples)  # before the models load
    check_adapter(cfg.adapter)
    model, tokenizer, visual = build(cfg, split)
    samples, skipped = _prepare(visual, split, cfg.skip_bad, "eval", task_of(cfg.eval_data))
    truncated = _report_eval_truncation(tokenizer, samples, cfg, print)
    predictions = predict_split(model, tokenizer, visual, samples, cfg)
    _write_json(out / "predictions.json", predictions)
    if not with_metrics:
        return {"predictions": len(predictions), "path": str(out / "predictions.json")}
    metrics = {**_score(task_of(cfg.eval_data), split, predictions, skipped, cfg), "truncated_prompts": truncated}
    _write_json(out / "eval_metrics.json", metrics)
    return metrics
