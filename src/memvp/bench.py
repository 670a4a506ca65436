"""Speed and memory of MemVP against input-space prompting and text-only, side by side.

Same language model, same batch, same visual features. Methods are interleaved (A B C A B C ...)
after a warm-up and the median of the repeats is reported, so that drifting machine load hits
every method alike. Measured per method:

* training step: forward (loss on the answer tokens) + backward + AdamW step;
* prefill: one forward over the prompt with the KV cache on (time to the first token);
* decode: tokens/s of greedy generation at a fixed output length, prefill excluded;
* peak training-step memory (``memvp.peak_memory``): CUDA ``max_memory_allocated``; on CPU the
  peak resident set size during the step;
* KV-cache bytes per sequence after the prefill.

``run_bench`` returns a dict (written as JSON by the CLI); ``format_bench`` makes the table;
``plot_sweep`` draws training / prefill time against text length like the paper's Fig. 2.
"""

from __future__ import annotations

import copy
import functools
import gc
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .flops import METHOD_ORDER
from .methods import build_model
from .peak_memory import PeakMemory

ANSWER_TOKENS = 4


@dataclass
class BenchConfig:
    model: str = "smollm2"
    """'smollm2' (real weights), 'llama-1024' (random init, hidden 1024) or a transformers model path."""
    batch_size: int = 4
    text_length: int = 64
    n_visual: int = 256
    visual_dim: int = 1024
    decode_tokens: int = 16
    warmup: int = 1
    repeats: int = 5
    methods: tuple[str, ...] = METHOD_ORDER
    dtype: str = "float32"
    device: str = "auto"
    sweep_lengths: tuple[int, ...] = ()
    """Text lengths for the Fig. 2 sweep (training step and prefill, n fixed)."""
    sweep_n: tuple[int, ...] = ()
    """Visual-token counts for a sweep at fixed text length."""
    sweep_repeats: int = 3
    seed: int = 0
    progress: bool = True


# ----------------------------------------------------------------------------- models
def random_llama_1024():
    """A random-init LLaMA-architecture LM with hidden size 1024 (8 layers keep it CPU-sized)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    return AutoModelForCausalLM.from_config(cfg)


def load_bench_model(name: str) -> nn.Module:
    if name == "llama-1024":
        return random_llama_1024()
    from .pretrained import load_language_model

    return load_language_model(name)[0]


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def cache_bytes(cache) -> int:
    """Bytes held by a transformers KV cache (DynamicCache layers or legacy tuples)."""
    if hasattr(cache, "layers"):
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    else:
        tensors = [t for pair in cache for t in pair]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Workload:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    visual_features: torch.Tensor

    def inputs(self, model) -> dict:
        feats = self.visual_features if model.reads_images else None
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "visual_features": feats}


def make_workload(vocab: int, batch: int, length: int, n_visual: int, visual_dim: int, device, seed: int) -> Workload:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (batch, length), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, -ANSWER_TOKENS:] = ids[:, -ANSWER_TOKENS:]
    feats = torch.randn(batch, n_visual, visual_dim, generator=g)
    return Workload(ids.to(device), torch.ones_like(ids).to(device), labels.to(device), feats.to(device))


class MethodRunner:
    """One method's model (its own copy of the LM) and the three timed operations."""

    def __init__(self, method: str, language_model: nn.Module, cfg: BenchConfig):
        self.method = method
        memvp = {"num_entries": max(cfg.n_visual, *cfg.sweep_n) if cfg.sweep_n else cfg.n_visual}
        # Methods sized by the encoder's token count (adem) get n_visual; they can not take part in --sweep-n.
        self.model = build_model(method, language_model, cfg.visual_dim, cfg.n_visual, memvp=memvp)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)

    def train_step(self, w: Workload) -> None:
        self.model.train()
        loss = self.model(**w.inputs(self.model), labels=w.labels, answer_logits_only=True).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def prefill(self, w: Workload):
        self.model.eval()
        out = self.model(**w.inputs(self.model), use_cache=True, logits_to_keep=1)
        return out.cache if getattr(out, "cache", None) is not None else out.past_key_values

    @torch.no_grad()
    def generate(self, w: Workload, tokens: int) -> None:
        self.model.eval()
        self.model.generate(
            **w.inputs(self.model), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0
        )


def _interleaved(runners: list[MethodRunner], op, warmup: int, repeats: int, device, bar=None) -> dict[str, float]:
    """Median seconds of ``op(runner)`` per method, methods interleaved round by round."""
    times: dict[str, list[float]] = {r.method: [] for r in runners}
    for round_ in range(warmup + repeats):
        for r in runners:
            seconds = _timed(functools.partial(op, r), device)
            if round_ >= warmup:
                times[r.method].append(seconds)
            if bar is not None:
                bar.update(1)
    return {m: statistics.median(t) for m, t in times.items()}


def run_bench(cfg: BenchConfig, language_model: nn.Module | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    lm = language_model if language_model is not None else load_bench_model(cfg.model)
    lm = lm.to(device=device, dtype=dtype)
    lm.config.use_cache = True
    vocab, dim = int(lm.config.vocab_size), int(lm.config.hidden_size)
    layers = int(getattr(lm.config, "num_hidden_layers", 0))
    memory = PeakMemory(device)  # tunes glibc before the models are built
    runners = [MethodRunner(m, copy.deepcopy(lm), cfg) for m in cfg.methods]
    del lm
    gc.collect()
    w = make_workload(vocab, cfg.batch_size, cfg.text_length, cfg.n_visual, cfg.visual_dim, device, cfg.seed)

    n_ops = 4 * (cfg.warmup + cfg.repeats) * len(runners)
    bar = tqdm(total=n_ops, desc="bench", disable=not cfg.progress)
    train = _interleaved(runners, lambda r: r.train_step(w), cfg.warmup, cfg.repeats, device, bar)
    prefill = _interleaved(runners, lambda r: r.prefill(w), cfg.warmup, cfg.repeats, device, bar)
    gen_1 = _interleaved(runners, lambda r: r.generate(w, 1), cfg.warmup, cfg.repeats, device, bar)
    gen_n = _interleaved(runners, lambda r: r.generate(w, cfg.decode_tokens), cfg.warmup, cfg.repeats, device, bar)
    bar.close()

    results: dict[str, dict] = {}
    for r in runners:
        m = r.method
        decode_seconds = max(gen_n[m] - gen_1[m], 1e-9)
        peak = memory.measure(functools.partial(r.train_step, w))
        kv = cache_bytes(r.prefill(w)) / cfg.batch_size
        trainable, total = r.model.get_nb_trainable_parameters()
        results[m] = {
            "train_step_s": train[m],
            "prefill_s": prefill[m],
            "decode_tokens_per_s": cfg.batch_size * (cfg.decode_tokens - 1) / decode_seconds,
            "peak_train_memory_bytes": peak,
            "kv_cache_bytes_per_sequence": kv,
            "trainable_parameters": trainable,
            "total_parameters": total,
        }
    models = {r.method: r.model for r in runners}
    out = {
        "config": {k: v for k, v in asdict(cfg).items()},
        "machine": machine_description(device),
        "model": {
            "name": cfg.model,
            "model_type": runners[0].model.config.model_type,
            "hidden_size": dim,
            "layers": layers,
            "dtype": cfg.dtype,
        },
        "methods": results,
        "ratios": _ratios(results, models, cfg, dim),
    }
    if cfg.sweep_lengths or cfg.sweep_n:
        out["sweep"] = _sweep(runners, cfg, vocab, device)
    return out


def _ratios(results: dict, models: dict, cfg: BenchConfig, dim: int) -> dict:
    if not {"memvp", "input_space"} <= set(results):
        return {}
    mv, inp = results["memvp"], results["input_space"]
    analytic = models["input_space"].analytic_layer_flops(cfg.text_length, dim, cfg.n_visual) / models[
        "memvp"
    ].analytic_layer_flops(cfg.text_length, dim, cfg.n_visual)
    ratios = {
        "analytic_input_space_over_memvp": analytic,
        "train_speedup_vs_input_space": inp["train_step_s"] / mv["train_step_s"],
        "prefill_speedup_vs_input_space": inp["prefill_s"] / mv["prefill_s"],
        "decode_speedup_vs_input_space": mv["decode_tokens_per_s"] / inp["decode_tokens_per_s"],
        "kv_cache_vs_input_space": mv["kv_cache_bytes_per_sequence"] / inp["kv_cache_bytes_per_sequence"],
    }
    ratios["train_measured_over_analytic"] = ratios["train_speedup_vs_input_space"] / analytic
    ratios["prefill_measured_over_analytic"] = ratios["prefill_speedup_vs_input_space"] / analytic
    if mv["peak_train_memory_bytes"] and inp["peak_train_memory_bytes"]:
        ratios["memory_vs_input_space"] = mv["peak_train_memory_bytes"] / inp["peak_train_memory_bytes"]
    if "text_only" in results:
        txt = results["text_only"]
        ratios["train_slowdown_vs_text_only"] = mv["train_step_s"] / txt["train_step_s"]
        ratios["prefill_slowdown_vs_text_only"] = mv["prefill_s"] / txt["prefill_s"]
    return ratios


def _sweep(runners: list[MethodRunner], cfg: BenchConfig, vocab: int, device) -> dict:
    points = [("text_length", L, L, cfg.n_visual) for L in cfg.sweep_lengths]
    points += [("n_visual", n, cfg.text_length, n) for n in cfg.sweep_n]
    rows = []
    for axis, value, length, n in tqdm(points, desc="sweep", disable=not cfg.progress):
        w = make_workload(vocab, cfg.batch_size, length, n, cfg.visual_dim, device, cfg.seed)
        train = _interleaved(runners, functools.partial(MethodRunner.train_step, w=w), 1, cfg.sweep_repeats, device)
        prefill = _interleaved(runners, functools.partial(MethodRunner.prefill, w=w), 1, cfg.sweep_repeats, device)
        rows.append(
            {
                "axis": axis,
                "value": value,
                "text_length": length,
                "n_visual": n,
                "train_step_s": train,
                "prefill_s": prefill,
            }
        )
    return {"rows": rows}


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    import os

    return (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
        f"({os.cpu_count()} cores visible), torch {torch.__version__}"
    )


# ----------------------------------------------------------------------------- reporting
def format_bench(result: dict) -> str:
    cfg, model = result["config"], result["model"]
    lines = [
        f"model {model['name']} ({model['model_type']}, hidden {model['hidden_size']}, {model['layers']} layers, "
        f"{model['dtype']}), batch {cfg['batch_size']}, text length {cfg['text_length']}, "
        f"{cfg['n_visual']} visual tokens; median of {cfg['repeats']} interleaved repeats; {result['machine']}",
        "",
        "| method | train step (ms) | prefill (ms) | decode (tok/s) | peak train memory (MiB) "
        "| KV cache / seq (KiB) | trainable params |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in result["methods"].items():
        mem = r["peak_train_memory_bytes"]
        lines.append(
            f"| {method} | {1e3 * r['train_step_s']:.0f} | {1e3 * r['prefill_s']:.0f} "
            f"| {r['decode_tokens_per_s']:.1f} | {'n/a' if mem is None else f'{mem / 2**20:.0f}'} "
            f"| {r['kv_cache_bytes_per_sequence'] / 2**10:.0f} | {r['trainable_parameters']:,d} |"
        )
    ratios = result.get("ratios", {})
    if ratios:

        def check(value, target, higher_is_better=True):
            ok = value >= target if higher_is_better else value <= target
            return f"{value:.2f}x (target {'>=' if higher_is_better else '<='} {target}x: {'met' if ok else 'MISSED'})"

        a = ratios["analytic_input_space_over_memvp"]
        lines += [
            "",
            f"analytic input_space / MemVP FLOPs ratio (eq. 13-15, the ceiling): {a:.2f}x",
            f"training step, input_space / MemVP: {check(ratios['train_speedup_vs_input_space'], 3.0)}; "
            f"measured / analytic {ratios['train_measured_over_analytic']:.2f}",
            f"prefill, input_space / MemVP: {check(ratios['prefill_speedup_vs_input_space'], 3.0)}; "
            f"measured / analytic {ratios['prefill_measured_over_analytic']:.2f}",
            f"decode tokens/s, MemVP / input_space: {ratios['decode_speedup_vs_input_space']:.2f}x; "
            f"KV cache MemVP / input_space: {ratios['kv_cache_vs_input_space']:.2f}",
        ]
        if "train_slowdown_vs_text_only" in ratios:
            lines.append(
                "MemVP / text_only: training step "
                f"{check(ratios['train_slowdown_vs_text_only'], 1.10, False)}, prefill "
                f"{check(ratios['prefill_slowdown_vs_text_only'], 1.10, False)}"
            )
        if "memory_vs_input_space" in ratios:
            lines.append(
                f"peak training memory, MemVP / input_space: {check(ratios['memory_vs_input_space'], 0.5, False)}"
            )
    if "sweep" in result:
        lines += [
            "",
            "| sweep | value | " + " | ".join(f"{m} train / prefill (ms)" for m in result["methods"]) + " |",
            "|---|---|" + "---|" * len(result["methods"]),
        ]
        for row in result["sweep"]["rows"]:
            cells = [f"{1e3 * row['train_step_s'][m]:.0f} / {1e3 * row['prefill_s'][m]:.0f}" for m in result["methods"]]
            lines.append(f"| {row['axis']} | {row['value']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(result: dict, path: str | Path) -> None:
    """Training-step and prefill time against text length (and n), like the paper's Fig. 2."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # object API: no pyplot state, works headless

    from .atomic import atomic_write

    rows = result.get("sweep", {}).get("rows", [])
    if not rows:
        raise ValueError("no sweep in this benchmark result: run it with --sweep-lengths and/or --sweep-n")
    axes_present = [a for a in ("text_length", "n_visual") if any(r["axis"] == a for r in rows)]
    fig = Figure(figsize=(10, 3.6 * len(axes_present)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(axes_present), 2, squeeze=False)
    for i, axis in enumerate(axes_present):
        sub = [r for r in rows if r["axis"] == axis]
        xs = [r["value"] for r in sub]
        for j, (key, title) in enumerate((("train_step_s", "training step"), ("prefill_s", "prefill (inference)"))):
            ax = axes[i][j]
            for method in result["methods"]:
                ax.plot(xs, [1e3 * r[key][method] for r in sub], marker="o", label=method)
            ax.set_xlabel("text tokens" if axis == "text_length" else "visual tokens n")
            ax.set_ylabel("ms")
            ax.set_xscale("log", base=2)
            ax.set_title(
                f"{title}, "
                + (
                    f"n = {result['config']['n_visual']}"
                    if axis == "text_length"
                    else f"L = {result['config']['text_length']}"
                )
            )
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(f"{result['model']['name']}, batch {result['config']['batch_size']} — {result['machine']}", fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


__all__ = ["BenchConfig", "run_bench", "format_bench", "plot_sweep", "cache_bytes", "PeakMemory"]
