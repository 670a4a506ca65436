"""TrainConfig: every key of a training run (``memvp train CONFIG.yaml key=value ...``), with the
YAML reading and command-line overrides, checked before anything expensive starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import check_field_types
from ..datasets import STRICT_RULE
from ..inputs import DEFAULT_PROMPT_TEMPLATE
from ..loading import recorded_pipeline
from ..methods import METHODS, get_method
from ..metrics import CHOICE_RULES
from ..vision import VisionOptions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LR = 3e-3
DEFAULT_GROUNDING_WEIGHT = 5.0
"""``grounding_weight`` where the default grounds: docs/memory_scale.md section 6.4 (place words: 5 far
above 2); with exact boxes 2 was the steadiest (section 6.2)."""
SECTIONS = ("memvp", "baseline", "adem")
"""Method sections that are TrainConfig fields; other registered sections live in ``method_options``."""
SCHEDULES = ("cosine", "linear", "constant")


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
    vision: dict = field(default_factory=dict)
    """``VisionOptions`` of a CLIP / SigLIP encoder: feature_layer, post_layernorm, normalization,
    resize, and ViT adapters (adapter_hidden, adapter_scale), e.g. the paper's LLaMA recipe:
    {post_layernorm: true, normalization: imagenet, resize: squash, adapter_hidden: 12}. With
    adapters the encoder runs inside every training step and its images are not cached."""
    dataloader_workers: int = 0
    """Processes that assemble training batches (decoding images with ViT adapters); 0: in the
    training process."""
    num_frames: int = 64
    """Video data (tvqa, how2qa): frames sampled per video (or rows per pre-extracted feature file),
    each frame's global feature one visual token (the paper: 64 CLIP-ViT-B/32 [CLS] features).
    MemVP's ``num_entries`` should be at least this (its position embeddings carry frame order)."""
    feature_cache: str | None = None
    """Where image features are cached; default ``<memvp cache>/features``."""
    method: str = "memvp"
    """'memvp'; 'memvp_lora' (MemVP + LoRA in the LM, the paper's visual instruction tuning); a
    baseline of the paper in the same harness: 'input_space' (LLaVA-style visual tokens in front of
    the text + LoRA) or 'text_only' (LoRA, no image); or 'adem' (ADEM-VL-style fusion)."""
    memvp: dict = field(default_factory=dict)
    """MemVPConfig fields; ``visual_dim`` comes from the vision encoder."""
    baseline: dict = field(default_factory=dict)
    adem: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    """Options of methods registered outside this library, by their section (a YAML key named after a
    registered method's section lands here)."""
    """AdemConfig fields for 'adem' (rank, scales, drop_ratio, ...); ``num_patches`` comes from the
    vision encoder."""
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
    lr: float | None = None
    """Learning rate (absolute) of the optimizer step; None: 3e-3, or ``base_lr`` scaled."""
    base_lr: float | None = None
    """The official MemVP code's ``--blr``: lr = base_lr x (batch_size x grad_accum) / 256, the
    optimizer step's global batch (the paper's Table 7 lists 9e-3, with batch 32: lr 1.125e-3). Give
    ``lr`` or ``base_lr``, not both; the run logs the effective lr."""
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2); the official MemVP code uses [0.9, 0.95]."""
    projector_lr: float | None = None
    """Learning rate of the visual projector f (LLaVA's ``mm_projector_lr``); None uses ``lr``.
    Position embeddings and LoRA weights keep ``lr``. The projector's first layer sees raw encoder
    features (norm ~220 per token on the demo's EfficientNet grid), so an Adam step of ``lr`` on
    each weight can move a pre-activation by up to lr * |z|_1."""
    weight_decay: float = 0.02
    """AdamW weight decay of tensors of 2 or more dimensions (weights, position tables); biases, gates,
    gains and norms (1-d tensors) are not decayed, as timm's ``param_groups_weight_decay`` and the
    official MemVP code."""
    max_grad_norm: float = 0.0
    """Clip the gradient's global norm to this before each optimizer step (transformers' Trainer
    uses 1.0); 0, the default, does not clip, as the official MemVP code."""
    warmup_ratio: float = 0.1
    lr_schedule: str = "cosine"
    """After the linear warmup: 'cosine' decay to 0 (the official MemVP code), 'linear' decay to 0
    (VL-Adapter / VL-PET, whose recipe the paper's BART / T5 runs follow) or 'constant'."""
    adam_eps: float = 1e-8
    """AdamW's epsilon (VL-PET uses 1e-6)."""
    drop_last: bool = False
    """Drop each epoch's last, incomplete batch (the official MemVP code does)."""
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
    num_beams: int = 1
    """Beam search width of generation (1: greedy or sampling; VL-PET evaluates with 5 beams)."""
    do_sample: bool = False
    """Greedy decoding by default; True samples with nucleus (top-p) sampling."""
    top_p: float = 0.9
    temperature: float = 1.0
    skip_bad: bool = False
    """Skip samples whose image (or feature file) is missing or unreadable instead of stopping;
    they are counted and listed under 'skipped' in metrics.json / eval_metrics.json."""
    choice_rule: str = "default"
    """How a predicted option letter is read (ScienceQA, MMBench): 'default' (tolerant), 'memvp' (the
    official MemVP ``eval.py``: the first capital letter of the output), 'llava' (LLaVA's
    ``eval_science_qa.py``), 'vlmevalkit' (VLMEvalKit's matching: option letters and option text) or
    'strict': the rule of the format's reference tool (ScienceQA: 'llava', MMBench: 'vlmevalkit'); the
    rule used is named in the metrics."""
    output_formats: list = field(default_factory=list)
    """``memvp predict`` / ``memvp eval``: files for the field's tools written next to predictions.json,
    by name (``llava_jsonl``, ``vqav2_eval_ai``, ``mmbench_submission``, ``pope``, ``mme``, ``gqa_eval``,
    ``coco_results``; ``all``: every one the eval_data format has); ``--output-format`` on the command line."""
    score_skipped: str = "wrong"
    """How evaluation scores questions skipped by ``skip_bad``: 'wrong' (an empty answer, the
    default) or 'drop' (left out of the metrics)."""
    adapter: str | None = None
    """An adapter directory to start from (``memvp predict`` / ``eval`` evaluate it)."""
    init_from: str | None = None
    """An adapter of another method whose weights start this run where they match: stage 2 of
    visual instruction tuning (``method=memvp_lora``) from the stage-1 ``memvp`` adapter (projector,
    position embeddings, gates), the LoRA weights new. Every tensor of that adapter must exist here
    with the same shape."""
    allow_base_mismatch: bool = False
    """Load ``adapter`` even when the base model's weights differ from the ones it was trained on
    (same architecture and size, other weights: a sample of the input embeddings is compared)."""
    progress: bool = True
    report_to: list = field(default_factory=list)
    """Experiment trackers through Accelerate's ``log_with``: 'tensorboard', 'wandb', 'mlflow', 'comet_ml',
    ... or 'all' (each needs its package). Every step's loss, lr, samples/s and the instruments' columns,
    and every evaluation's metrics (``eval/...``); TensorBoard writes under ``output_dir/logs``."""
    measure_memory: bool = False
    """Measure the peak memory of one training step (the run's second; ``memvp.peak_memory``: CUDA
    ``max_memory_allocated``, on Linux CPUs the peak RSS above the step's start) and report it as
    ``peak_step_memory_bytes`` in metrics.json. ``memvp demo --compare`` turns it on for every arm."""
    grounding_weight: float | None = None
    """Retrieval grounding (attention supervision, as HINT and Qiao et al. supervise VQA attention
    with human maps): for training questions that say where they look (``asked_box``, or with
    ``grounding_place_words`` a place their question or answer names: "what is in the top left?",
    "where is the cat?" -> "bottom right"; ``datasets.place_box``), add this weight x the mean over
    MemVP layers of -log(the share of the retrieval weight there) at the tokens that predict the
    answer. None (default): ``DEFAULT_GROUNDING_WEIGHT`` when the method has a visual memory that
    reads images, the training data has such questions, ``memory_scale`` is not 'paper' (the paper's
    exact form) and gradient checkpointing is off; else 0. 0 is off. Measured: docs/memory_scale.md
    sections 6.2 (boxes) and 6.4 (place words)."""
    grounding_place_words: bool = True
    """Let place words stand in for a box (``grounding_weight``); false: only ``asked_box`` grounds."""
    diagnose_every: int = 50
    """Every this many optimizer steps (and at the first and last), measure on the batch at hand
    whether the visual memory stays in the LM's scale (``memvp.instruments``: memory / FFN output,
    residual norm / frozen LM's), log it to loss_curve.csv and metrics.json, and warn when the memory
    dominates. 0 turns it off. MemVP only; two extra forward passes each time."""

    def __post_init__(self) -> None:
        check_field_types(self)  # wrong types name their key here, not as a TypeError mid-run
        if self.score_skipped not in ("wrong", "drop"):
            raise ValueError(f"score_skipped must be 'wrong' or 'drop', got {self.score_skipped!r}")
        from accelerate.utils import LoggerType

        trackers = {t.value for t in LoggerType}
        if not isinstance(self.report_to, list) or not all(t in trackers for t in self.report_to):
            raise ValueError(f"report_to must be a list of trackers from {sorted(trackers)}, got {self.report_to!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.choice_rule not in (*CHOICE_RULES, STRICT_RULE):
            raise ValueError(f"choice_rule must be one of {[*CHOICE_RULES, STRICT_RULE]}, got {self.choice_rule!r}")
        if not all(isinstance(f, str) for f in self.output_formats):
            raise ValueError(f"output_formats must be a list of names, e.g. [llava_jsonl], got {self.output_formats!r}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"precision must be 'no', 'bf16' or 'fp16', got {self.precision!r}")
        if self.model_dtype not in DTYPES:
            raise ValueError(f"model_dtype must be one of {list(DTYPES)}, got {self.model_dtype!r}")
        for key in ("batch_size", "grad_accum", "num_frames"):
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
        if self.lr is not None and self.base_lr is not None:
            raise ValueError(
                f"give lr (absolute) or base_lr (scaled by the global batch / 256), not both: "
                f"lr={self.lr}, base_lr={self.base_lr}"
            )
        for key in ("lr", "base_lr"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        betas = self.adam_betas
        if (
            not isinstance(betas, (list, tuple))
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got {betas!r}")
        self.adam_betas = [float(b) for b in betas]
        if not isinstance(self.dataloader_workers, int) or self.dataloader_workers < 0:
            raise ValueError(f"dataloader_workers must be a whole number >= 0, got {self.dataloader_workers!r}")
        VisionOptions.from_dict(self.vision)  # unknown or bad vision keys fail now
        if self.adapter and self.init_from:
            raise ValueError(
                "give either adapter (continue / evaluate that adapter) or init_from (start another "
                "method from its weights), not both"
            )
        if self.resume is not None and not isinstance(self.resume, str):
            raise ValueError(f"resume must be 'latest' or a checkpoint directory, got {self.resume!r}")
        # Unknown / invalid method options fail now, not after the models are loaded.
        method = get_method(self.method)
        checkers = {m.section: m for m in reversed(list(METHODS.values()))}  # the first registered per section
        checkers[method.section] = method  # the chosen method checks its own section
        for checker in checkers.values():
            checker.make_config(1, self.options_for(checker))
        if not method.reads_images:
            self.use_images = False
        weight = self.grounding_weight
        if weight is not None and weight < 0:  # its type: check_field_types
            raise ValueError(
                f"grounding_weight must be a number >= 0 (0: off; leave it out for the default), got {weight!r}"
            )
        if weight and not (method.model_class.supports_probing and self.use_images):
            raise ValueError(
                f"grounding_weight supervises MemVP's retrieval of the image: method {self.method!r} "
                f"{'has no visual memory' if not method.model_class.supports_probing else 'reads no image here'} "
                "(use memvp or memvp_lora with use_images: true, or grounding_weight: 0)"
            )
        if weight and self.gradient_checkpointing:
            # the loss reads retrieval weights computed beside the checkpointed layers' outputs, which
            # recomputation in the backward pass would not produce again
            raise ValueError("grounding_weight and gradient_checkpointing do not go together; turn one off")

    @property
    def grounds_by_default(self) -> bool:
        """Whether the default (``grounding_weight`` left out) grounds this run wherever its training
        questions say where they look: a visual memory that reads images, not the paper's exact form
        (``memory_scale: paper``), no gradient checkpointing."""
        return (
            get_method(self.method).model_class.supports_probing
            and self.use_images
            and self.memvp.get("memory_scale") != "paper"
            and not self.gradient_checkpointing
        )

    def options_for(self, method) -> dict:
        """The options of a registered ``Method`` from its section (``memvp``, ``baseline``, ``adem``, or
        ``method_options[section]`` for a method registered elsewhere)."""
        if method.section in SECTIONS:
            return getattr(self, method.section)
        return self.method_options.get(method.section, {})

    @property
    def learning_rate(self) -> float:
        """The optimizer's learning rate: ``lr``, or ``base_lr`` x global batch / 256, else 3e-3."""
        if self.base_lr is not None:
            return self.base_lr * self.batch_size * self.grad_accum / 256
        return DEFAULT_LR if self.lr is None else self.lr

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
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
                    raise ValueError(
                        f"override {item!r}: {section} is not a section of keys (it is {node!r}); "
                        f"write {section}=VALUE, or dotted keys only below sections like memvp"
                    )
            try:
                node[leaf] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ValueError(f"override {item!r}: the value is not valid YAML; quote it") from None
        if data.get("adapter"):  # what the adapter recorded of its training, unless the config or a flag says
            try:
                recorded = recorded_pipeline(data["adapter"])
            except (OSError, ValueError):  # reported in order, naming the file, by the run's own adapter check
                recorded = {}
            for key, value in recorded.items():
                data.setdefault(key, value)
        known = {f.name for f in dataclasses.fields(cls)}
        for section in {m.section for m in METHODS.values()} - known:  # a registered method's own section
            if section in data:
                data.setdefault("method_options", {})[section] = data.pop(section)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


def resolved_config(cfg: TrainConfig) -> dict:
    """The run's config as a YAML file holds it: every key, data paths absolute (``_base_dir`` applied),
    so that the file trains the same run from any folder."""
    from ..datasets import resolve_paths

    data = dataclasses.asdict(cfg)
    for key in ("train_data", "eval_data"):
        if data.get(key):
            spec = dict(data[key])
            base = spec.pop("_base_dir", None)
            data[key] = resolve_paths(spec, base)
    return data


__all__ = ["resolved_config", "TrainConfig", "DTYPES", "DEFAULT_LR"]
