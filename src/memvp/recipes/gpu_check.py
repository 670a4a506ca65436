"""The GPU check (``memvp gpu-check``, ``scripts/gpu_check.sh``): what a machine with a GPU must show in
a few minutes, on random-init models (no weights to download).

1. Speed and memory, side by side: bf16 and fp16 training steps (autocast; fp16 with a GradScaler)
   and greedy generation of MemVP, MemVP + ViT adapters (the paper's LLaMA recipe: the encoder runs
   in the step) and input-space LoRA (LLaVA-LoRA) on a LLaMA of about 1B parameters, with the images
   of a CLIP ViT-L/14-sized tower: step time, training tokens/s, generated tokens/s, peak memory,
   and MemVP / input-space ratios.
2. The real training loop, through Accelerate, in bf16 and in fp16 (``memvp train``, one process each,
   since Accelerate keeps one mixed precision per process): ``steps`` optimizer steps of MemVP + ViT
   adapters on a small synthetic VQA set; the loss must go down.

``size='tiny'`` runs the same code on CPU-sized models, so that the tests keep it working.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from ..atomic import atomic_write_text
from ..methods import build_model
from ..peak_memory import PeakMemory
from .scenes import COLORS, SHAPES, TEMPLATES, generate_dataset

SIZES = {
    # ~1B: TinyLlama-like width, 16 layers (0.95B parameters); CLIP ViT-L/14 at 224 px (256 patches).
    "1b": {
        "lm": dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=32000,
            max_position_embeddings=2048,
        ),
        "vit": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        "batch": 8,
        "text": 64,
        "generate": 32,
        "repeats": 5,
        "memvp_entries": 320,
    },
    "tiny": {
        "lm": dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=128,
            max_position_embeddings=256,
        ),
        "vit": dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "batch": 2,
        "text": 12,
        "generate": 3,
        "repeats": 1,
        "memvp_entries": 16,
    },
}
ARMS = ("memvp", "memvp+vit", "input_space")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def random_llama(size: str, device: torch.device, dtype: torch.dtype):
    """A random-init LLaMA built directly on ``device`` in ``dtype`` (no full-size copy on the host)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device(device):
        return LlamaForCausalLM._from_config(LlamaConfig(**SIZES[size]["lm"]), dtype=dtype).eval()


def random_clip(size: str, device: torch.device, dtype: torch.dtype = torch.float32):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device(device):
        return CLIPVisionModel(CLIPVisionConfig(**SIZES[size]["vit"])).to(dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocations, kernels, optimizer state)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _arm(arm: str, size: str, device: torch.device, dtype: torch.dtype):
    """(model, its visual inputs) of one arm; trainable weights fp32, the frozen LM in ``dtype``."""
    from ..vision import HFVisionEncoder

    spec = SIZES[size]
    lm = random_llama(size, device, dtype)
    vit_cfg = spec["vit"]
    grid = (vit_cfg["image_size"] // vit_cfg["patch_size"]) ** 2
    options = {
        "memvp": {"num_entries": max(spec["memvp_entries"], grid), "memory_scale": "paper"},
        "baseline": {"lora_r": 6},
    }
    method = "input_space" if arm == "input_space" else "memvp"
    model = build_model(method, lm, vit_cfg["hidden_size"], grid, **options)
    g = torch.Generator().manual_seed(0)
    if arm == "memvp+vit":
        encoder = HFVisionEncoder(random_clip(size, device, dtype), adapter_hidden=12, adapter_scale=0.1)
        model.attach_vision_encoder(encoder)
        side = vit_cfg["image_size"]
        visual = {"pixel_values": torch.randn(spec["batch"], 3, side, side, generator=g).to(device)}
    else:
        visual = {"visual_features": torch.randn(spec["batch"], grid, vit_cfg["hidden_size"], generator=g).to(device)}
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.to(device), visual


def measure_arm(arm: str, precision: str, size: str, device: torch.device) -> dict:
    """Training step (autocast; fp16 with a GradScaler) and greedy generation of one arm."""
    spec, dtype = SIZES[size], PRECISIONS[precision]
    torch.manual_seed(0)
    model, visual = _arm(arm, size, device, dtype)
    vocab = SIZES[size]["lm"]["vocab_size"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (spec["batch"], spec["text"]), generator=g).to(device)
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    losses: list[float] = []

    def step() -> None:
        model.train()
        with torch.autocast(device.type, dtype=dtype):
            loss = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, answer_logits_only=True, **visual
            ).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    @torch.no_grad()
    def generate() -> None:
        model.eval()
        with torch.autocast(device.type, dtype=dtype):
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=spec["generate"],
                min_new_tokens=spec["generate"],
                do_sample=False,
                pad_token_id=0,
                **visual,
            )

    step_s = _median_seconds(step, device, spec["repeats"])
    peak = PeakMemory(device, tune_glibc=False).measure(step)
    generate_s = _median_seconds(generate, device, spec["repeats"])
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "arm": arm,
        "precision": precision,
        "train_step_s": step_s,
        "train_tokens_per_s": spec["batch"] * spec["text"] / step_s,
        "generated_tokens_per_s": spec["batch"] * spec["generate"] / generate_s,
        "peak_train_memory_bytes": peak,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
    }


def ratios(rows: list[dict]) -> dict:
    """MemVP / input-space per precision: speed-ups (>1: MemVP faster) and the memory ratio."""
    out = {}
    for precision in PRECISIONS:
        by_arm = {r["arm"]: r for r in rows if r["precision"] == precision}
        if {"memvp", "input_space"} <= by_arm.keys():
            mv, inp = by_arm["memvp"], by_arm["input_space"]
            out[precision] = {
                "train_speedup": inp["train_step_s"] / mv["train_step_s"],
                "generation_speedup": mv["generated_tokens_per_s"] / inp["generated_tokens_per_s"],
            }
            if mv["peak_train_memory_bytes"] and inp["peak_train_memory_bytes"]:
                out[precision]["memory_ratio"] = mv["peak_train_memory_bytes"] / inp["peak_train_memory_bytes"]
    return out


# ----------------------------------------------------------------------------- the training loop
def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w.strip("?").lower() for t in TEMPLATES.values() for w in t.format("x").split()}
    words |= set(COLORS) | set(SHAPES) | {"left", "right", "top", "bottom", "answer:"} | {str(i) for i in range(10)}
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def prepare_training_run(root: Path, size: str, steps: int) -> Path:
    """A random LLaMA + word tokenizer, a random CLIP with its processor, a small scenes set, and the
    config of a MemVP + ViT adapters run under ``root``; returns the config's path."""
    from transformers import CLIPImageProcessor

    tok = _word_tokenizer()
    lm = random_llama(size, torch.device("cpu"), torch.bfloat16 if size != "tiny" else torch.float32)
    lm.config.update(
        {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    )
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    del lm
    side = SIZES[size]["vit"]["image_size"]
    random_clip(size, torch.device("cpu")).save_pretrained(root / "vit")
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        root / "vit"
    )
    n_train = 12 if size == "tiny" else 400
    generate_dataset(
        root / "data",
        n_train=n_train,
        n_val=2,
        n_test=4,
        questions_per_scene=3,
        num_objects=1,
        question_types=("shape", "horizontal", "vertical"),
        progress=False,
    )
    data = {
        "format": "vqav2",
        "image_dir": "data/images",
        "image_pattern": "COCO_{data_subtype}_{image_id:012d}.png",
        "questions_file": "data/questions_train.json",
        "annotations_file": "data/annotations_train.json",
    }
    config = {
        "train_data": data,
        "language_model": str(root / "lm"),
        "vision_encoder": str(root / "vit"),
        "vision": {"adapter_hidden": 12, "adapter_scale": 0.1},
        "max_length": 32,
        "max_steps": steps,
        "batch_size": SIZES[size]["batch"] * 2,
        "lr": 3e-3,
        "warmup_ratio": 0.05,
        "progress": False,
        "diagnose_every": 0,
        "dataloader_workers": 0 if size == "tiny" else 4,
    }
    path = root / "train.yaml"
    atomic_write_text(path, yaml.safe_dump(config))
    return path


def run_training(config: Path, precision: str, out: Path, env: dict | None = None) -> dict:
    """``memvp train config precision=...`` in its own process; the loss curve's start and end."""
    dtype = {"bf16": "bfloat16", "fp16": "float16", "no": "float32"}[precision]
    cmd = [
        sys.executable,
        "-m",
        "memvp.cli",
        "train",
        str(config),
        f"output_dir={out}",
        f"precision={precision}",
        f"model_dtype={dtype}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        return {"precision": precision, "returncode": proc.returncode, "error": proc.stderr.strip()[-2000:]}
    losses = [float(line.split(",")[2]) for line in (out / "loss_curve.csv").read_text().splitlines()[1:]]
    k = max(1, len(losses) // 10)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "precision": precision,
        "returncode": 0,
        "steps": len(losses),
        "first_loss": first,
        "last_loss": last,
        "loss_went_down": last < first,
        "train_seconds": metrics["train_seconds"],
    }


def run_gpu_check(
    output_dir: str | Path,
    size: str = "1b",
    device: str = "cuda",
    steps: int = 100,
    precisions: tuple[str, ...] = ("bf16", "fp16"),
    log=print,
) -> dict:
    """Both parts; writes ``output_dir/gpu_check.json`` and returns it."""
    device = torch.device(device)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    result: dict = {
        "size": size,
        "device": str(device),
        "machine": machine,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "config": {k: v for k, v in SIZES[size].items()},
    }
    rows = []
    for precision in precisions:
        for arm in ARMS:
            rows.append(measure_arm(arm, precision, size, device))
            log(format_row(rows[-1]))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["speed"], result["ratios"] = rows, ratios(rows)
    config = prepare_training_run(out / "run", size, steps)
    env = {} if device.type == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}
    trained = [p for p in precisions if device.type == "cuda" or p != "fp16"]
    if trained != list(precisions):
        log("fp16 training through Accelerate needs a GPU: not run on the CPU")
    result["training"] = [run_training(config, p, out / f"train-{p}", env) for p in trained]
    for run in result["training"]:
        log(
            f"memvp train, {run['precision']}: "
            + (
                f"loss {run['first_loss']:.3f} -> {run['last_loss']:.3f} over {run['steps']} steps"
                if run["returncode"] == 0
                else f"FAILED (exit {run['returncode']}): {run['error']}"
            )
        )
    atomic_write_text(out / "gpu_check.json", json.dumps(result, indent=2))
    return result


def format_row(r: dict) -> str:
    mem = r["peak_train_memory_bytes"]
    return (
        f"{r['precision']} {r['arm']:>11}: train step {1e3 * r['train_step_s']:.1f} ms "
        f"({r['train_tokens_per_s']:.0f} tokens/s), generation {r['generated_tokens_per_s']:.0f} tokens/s, "
        f"peak {'n/a' if mem is None else f'{mem / 2**20:.0f} MiB'}, trainable {r['trainable_parameters']:,d}"
    )


def format_report(result: dict) -> str:
    lines = [
        f"GPU check ({result['size']}, {result['machine']}, torch {result['torch']}, {result['date']})",
        "",
        "| precision | arm | train step (ms) | train tokens/s | generated tokens/s | peak memory (MiB) | trainable |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["speed"]:
        mem = r["peak_train_memory_bytes"]
        lines.append(
            f"| {r['precision']} | {r['arm']} | {1e3 * r['train_step_s']:.1f} | {r['train_tokens_per_s']:.0f} "
            f"| {r['generated_tokens_per_s']:.0f} | {'n/a' if mem is None else f'{mem / 2**20:.0f}'} "
            f"| {r['trainable_parameters']:,d} |"
        )
    for precision, q in result["ratios"].items():
        lines.append(
            f"{precision}: input space / MemVP step time {q['train_speedup']:.2f}x, MemVP / input space "
            f"generation {q['generation_speedup']:.2f}x"
            + (f", memory MemVP / input space {q['memory_ratio']:.2f}" if "memory_ratio" in q else "")
        )
    for run in result["training"]:
        if run["returncode"] == 0:
            lines.append(
                f"memvp train ({run['precision']}, MemVP + ViT adapters, {run['steps']} steps): loss "
                f"{run['first_loss']:.3f} -> {run['last_loss']:.3f} ({'down' if run['loss_went_down'] else 'NOT down'})"
            )
        else:
            lines.append(f"memvp train ({run['precision']}): FAILED, exit {run['returncode']}")
    return "\n".join(lines)


__all__ = [
    "SIZES",
    "ARMS",
    "random_llama",
    "measure_arm",
    "ratios",
    "prepare_training_run",
    "run_training",
    "run_gpu_check",
    "format_report",
]
