"""Launch checks and the Accelerate / DDP / FSDP settings MemVP needs (a frozen LM with a few
trainable parameters among its modules); nothing here runs a training step."""

from __future__ import annotations

import contextlib
import os

import torch

from ..datasets import Sample
from .checkpoint import is_fsdp
from .config import TrainConfig


def use_cpu() -> bool:
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


def check_launch(cfg: TrainConfig, state) -> None:
    """Settings that Accelerate would otherwise ignore silently or fail on much later."""
    if cfg.precision == "fp16" and state.device.type == "cpu":
        raise ValueError(
            "precision=fp16 needs a GPU: Accelerate has no fp16 autocast or loss scaling on "
            "CPU and would silently train in fp32; use precision=bf16 on CPU"
        )
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch`
    if launcher not in ("no", cfg.precision):
        raise ValueError(
            f"accelerate launch asks for mixed_precision={launcher} but the memvp config has "
            f"precision={cfg.precision}; memvp takes it from its config: add precision={launcher}"
        )
    if cfg.batch_size % state.num_processes:
        raise ValueError(
            f"batch_size={cfg.batch_size} is the global batch and must be a multiple of the "
            f"number of processes ({state.num_processes})"
        )


@contextlib.contextmanager
def one_writer_at_a_time(state):
    """The main process first, then each node's first process, then the others: the feature cache
    (and the converted-model cache) get a single writer at a time, whether the cache directory is
    shared between nodes or node-local, and the later processes find it filled."""
    with state.main_process_first(), state.local_main_process_first():
        yield


def fp32_trainable(model, cfg: TrainConfig) -> None:
    """Trainable parameters in fp32 whatever model_dtype: small optimizer updates round away in
    bf16 (8 bits of mantissa)."""
    low = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    for _, p in low:
        p.data = p.data.float()
    if low and cfg.precision == "no":
        raise ValueError(
            f"model_dtype={cfg.model_dtype} with trainable language-model parameters ({low[0][0]}, "
            "...) needs autocast to mix them with fp32 master weights: set precision=bf16 or fp16"
        )


def ddp_kwargs(cfg: TrainConfig, samples: list[Sample]):
    from accelerate.utils import DistributedDataParallelKwargs

    # DDP expects every trainable parameter to get a gradient in every step. The visual projector
    # gets none when a batch has no image at all (use_images=false, or image-less samples).
    unused = not cfg.use_images or not all(s.has_image for s in samples)
    return DistributedDataParallelKwargs(find_unused_parameters=unused)


def skip_frozen_broadcast(accelerator, model) -> None:
    """DDP all-reduces only parameters with requires_grad, but its constructor broadcasts *every*
    parameter from rank 0, i.e. the whole frozen LM (GBs for a 7B model), although every process
    loaded the same weights. Telling DDP to ignore the frozen parameters skips that copy."""
    from accelerate.utils import DistributedType
    from torch.nn.parallel import DistributedDataParallel

    if not (accelerator.multi_device or accelerator.distributed_type == DistributedType.MULTI_CPU):
        return
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)


def setup_fsdp(accelerator, model, cfg: TrainConfig) -> None:
    """Settings MemVP needs from FSDP (configs/accelerate/fsdp.yaml has them)."""
    if not is_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 1:
        raise ValueError("memvp train supports FSDP version 1 (fsdp_version: 1, as configs/accelerate/fsdp.yaml)")
    if not plugin.use_orig_params:
        raise ValueError(
            "FSDP needs fsdp_use_orig_params: true: a few trainable parameters live among frozen "
            "ones, which FSDP can only flatten together with use_orig_params"
        )
    if cfg.model_dtype != "float32":
        raise ValueError(
            "under FSDP keep model_dtype=float32 (FSDP flattens frozen and fp32 trainable "
            "parameters together, which needs one dtype); precision=bf16 computes in bf16"
        )
    if plugin.transformer_cls_names_to_wrap is None:  # TRANSFORMER_BASED_WRAP without a class named
        # One FSDP unit per transformer layer, as transformers declares them; MemVP wraps the LM, so
        # look for the declaration on its submodules.
        plugin.transformer_cls_names_to_wrap = next(
            (list(m._no_split_modules) for m in model.modules() if getattr(m, "_no_split_modules", None)), None
        )


def check_fsdp_names(accelerator, model) -> None:
    # The adapter is saved by the unwrapped model's own save_pretrained, which sees FSDP's wrapper
    # modules in the names of parameters inside wrapped layers (e.g. train_layernorms).
    if is_fsdp(accelerator):
        wrapped = [n for n in accelerator.unwrap_model(model).trainable_state_dict() if "_fsdp_wrapped_module" in n]
        if wrapped:
            raise ValueError(
                f"trainable parameters inside FSDP-wrapped layers ({wrapped[0]}) are not supported "
                "under FSDP (e.g. memvp.train_layernorms); use DDP (configs/accelerate/ddp.yaml)"
            )


class SyncedGenerate:
    """The model with ``generate(..., synced_gpus=True)``: under FSDP every forward pass all-gathers
    weights, so every process must run as many as the others, also after its own batch finished."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        return self._model.generate(*args, synced_gpus=True, **kwargs)


__all__ = [
    "use_cpu",
    "check_launch",
    "one_writer_at_a_time",
    "fp32_trainable",
    "ddp_kwargs",
    "skip_frozen_broadcast",
    "setup_fsdp",
    "check_fsdp_names",
    "SyncedGenerate",
]
