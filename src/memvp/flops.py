"""FLOPs accounting: the paper's formulas (eq. 13-15) and torch's flop counter, side by side.

Per transformer layer, with L text tokens, n visual tokens and width d (matmuls only, 2 FLOPs per
multiply-add, an FFN of 4d, no biases or norms), each method model's ``analytic_layer_flops``:

    text only     4Ld(6d + L)                                  (eq. 13)
    input space   text only + 4nd(6d + n + 2L)                 (eq. 14: the sequence is L + n long)
    MemVP         text only + 4ndL                             (eq. 15: n more FFN key/value entries)
    ADEM-VL       text only at L + 1 + 4N d(L + 1)             (one global token; silu(x) K^T V over N
                                                                pooled entries at every MLP, not in the paper)

``measure`` builds the real architectures from their configs on the meta device (no weights, no
memory), wraps them with the real method classes, and counts one forward pass with
``torch.utils.flop_counter.FlopCounterMode``: the FLOPs of the forward that yields the first
answer token (prefill; LM head at one position; for encoder-decoders the decoder on one token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

METHOD_ORDER = ("text_only", "input_space", "memvp")
TABLE_METHODS = (*METHOD_ORDER, "adem")
"""``memvp flops`` adds ADEM-VL (the strongest successor) to the paper's three."""


@dataclass(frozen=True)
class PaperSetting:
    """A language model of the paper, its vision encoder's output and the text length of a task."""

    name: str
    model_type: str
    config: dict
    visual: str
    n_visual: int
    visual_dim: int
    task: str
    text_length: float
    projector: str = "mlp"
    """The paper's projector: two layers on LLaMA, one linear layer on BART / T5."""


_LLAMA_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)
_LLAMA_13B = dict(
    hidden_size=5120,
    intermediate_size=13824,
    num_hidden_layers=40,
    num_attention_heads=40,
    num_key_value_heads=40,
    vocab_size=32000,
)
_T5_BASE = dict(
    d_model=768,
    d_ff=3072,
    d_kv=64,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    vocab_size=32128,
    feed_forward_proj="relu",
    decoder_start_token_id=0,
)
_BART_BASE = dict(
    d_model=768,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
    vocab_size=50265,
)
# Mean text lengths of the paper (section 1 / Table 1): VQAv2 6.3 tokens, ScienceQA 81.
PAPER_SETTINGS = (
    PaperSetting("LLaMA-7B", "llama", _LLAMA_7B, "CLIP ViT-L/14", 256, 1024, "ScienceQA", 81.0),
    PaperSetting("LLaMA-13B", "llama", _LLAMA_13B, "CLIP ViT-L/14", 256, 1024, "ScienceQA", 81.0),
    PaperSetting("T5-base", "t5", _T5_BASE, "CLIP ResNet-101 7x7", 49, 2048, "VQAv2", 6.3, "linear"),
    PaperSetting("BART-base", "bart", _BART_BASE, "CLIP ResNet-101 7x7", 49, 2048, "VQAv2", 6.3, "linear"),
)

# Table 8 (appendix B.1, video QA): BART-base with the [CLS] features of 64 frames from CLIP-ViT-B/32
# (512-d) and one linear projector. The paper gives no text length: 160 tokens is where eq. 14 minus
# eq. 15 over BART-base's 6 encoder layers equals its TVQA gap between LoRA with the frames in the
# input and MemVP (44.6 - 38.9 G), an estimate, not a number from the paper.
VIDEO_SETTINGS = (
    PaperSetting(
        "BART-base", "bart", _BART_BASE, "CLIP ViT-B/32 [CLS] x 64 frames", 64, 512, "TVQA video", 160.0, "linear"
    ),
)


def meta_model(model_type: str, config: dict) -> nn.Module:
    """The architecture built from its config on the meta device: shapes only, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cfg = AutoConfig.for_model(model_type, **config)
    auto = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        # Eager attention: its two matmuls are what eq. 13 counts (SDPA kernels may not be counted).
        return auto.from_config(cfg, attn_implementation="eager")


_LAYER = re.compile(r"\.(layers|block|h)\.\d+$")


def _stack_flops(counts: dict[str, dict]) -> dict[str, int]:
    """Sum the FLOPs of the transformer layers per stack (encoder / decoder) from module counts."""
    stacks = {"encoder": 0, "decoder": 0}
    for name, ops in counts.items():
        if _LAYER.search(name):
            stacks["encoder" if ".encoder." in name else "decoder"] += sum(ops.values())
    return stacks


def measure(
    method: str,
    language_model: nn.Module,
    length: int,
    n_visual: int,
    visual_dim: int,
    memvp: dict | None = None,
    baseline: dict | None = None,
) -> dict[str, int]:
    """Counted FLOPs of one sample's prefill: total, per stack, and per layer of the main stack; and the
    method's analytic FLOPs of one layer (``analytic_layer(text_length)``, the model's own formula)."""
    dim = int(language_model.config.hidden_size)
    from .methods import build_model

    model = build_model(
        method,
        language_model,
        visual_dim,
        n_visual,
        memvp={"num_entries": n_visual, **(memvp or {})},
        baseline=baseline,
    )
    device = next(language_model.parameters()).device
    ids = torch.zeros(1, length, dtype=torch.long, device=device)
    feats = torch.zeros(1, n_visual, visual_dim, device=device)
    kwargs = {}
    if language_model.config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = torch.zeros(1, 1, dtype=torch.long, device=device)
    else:
        kwargs["logits_to_keep"] = 1  # the LM head at the position that predicts the next token
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        # No attention mask: nothing is padded, and mask utilities read values (impossible on meta).
        model(input_ids=ids, visual_features=feats if model.reads_images else None, **kwargs)
    total = counter.get_total_flops()
    stacks = _stack_flops(counter.get_flop_counts())
    main = "encoder" if language_model.config.is_encoder_decoder else "decoder"
    _unwrap(model)
    return {
        "total": total,
        **stacks,
        "main_stack": main,
        "main_stack_flops": stacks[main],
        "analytic_layer": lambda text_length: model.analytic_layer_flops(text_length, dim, n_visual),
    }


def _unwrap(model: nn.Module) -> None:
    """Give the shared meta LM back unchanged (hooks removed, LoRA unloaded) for the next method."""
    model.remove_hooks()


def paper_table(settings=PAPER_SETTINGS) -> list[dict]:
    """Analytic and counted FLOPs of every method for the paper's models and text lengths."""
    rows = []
    for s in settings:
        lm = meta_model(s.model_type, s.config)
        dim, layers = int(lm.config.hidden_size), _num_main_layers(lm)
        length = round(s.text_length)
        row = {
            "model": s.name,
            "visual": s.visual,
            "task": s.task,
            "text_length": s.text_length,
            "measured_length": length,
            "n_visual": s.n_visual,
            "dim": dim,
            "layers": layers,
            "methods": {},
        }
        for method in TABLE_METHODS:
            counted = measure(
                method,
                lm,
                length,
                s.n_visual,
                s.visual_dim,
                memvp={"projector": s.projector},
                baseline={"projector": s.projector},
            )
            analytic = counted["analytic_layer"]
            row["methods"][method] = {
                "analytic_layers_at_mean_length": layers * analytic(s.text_length),
                "analytic_layers": layers * analytic(length),
                "counted_layers": counted["main_stack_flops"],
                "counted_total": counted["total"],
                "counted_other_stack": counted["decoder" if counted["main_stack"] == "encoder" else "encoder"],
            }
        m = row["methods"]
        row["input_space_over_memvp"] = m["input_space"]["counted_total"] / m["memvp"]["counted_total"]
        row["memvp_over_text_only"] = m["memvp"]["counted_total"] / m["text_only"]["counted_total"]
        row["analytic_input_space_over_memvp"] = (
            m["input_space"]["analytic_layers_at_mean_length"] / m["memvp"]["analytic_layers_at_mean_length"]
        )
        rows.append(row)
    return rows


VICUNA_7B = dict(_LLAMA_7B)
INSTRUCTION_LORA = {"lora_r": 128, "lora_alpha": 256.0, "lora_target_modules": "all-linear", "projector": "mlp2x_gelu"}


def instruction_table(
    text_length: int = 64,
    n_visual: int = 576,
    visual_dim: int = 1024,
    config: dict | None = None,
    lora: dict | None = None,
) -> dict:
    """The paper's Table 9 pair, counted on a meta Vicuna-7B: LLaVA-1.5-style input space (576 visual
    tokens of CLIP-ViT-L/14@336 in front of the text, mlp2x_gelu) against MemVP + LoRA (576 FFN
    entries), both with the same LoRA (rank 128 on every linear layer) standing in for LLaVA-1.5's
    full fine-tuning. ``text_length`` is the prompt's length (the paper gives none for Table 9)."""
    lm, lora = meta_model("llama", config or VICUNA_7B), lora or INSTRUCTION_LORA
    counts = {
        method: measure(method, lm, text_length, n_visual, visual_dim, memvp=lora, baseline=lora)["total"]
        for method in ("input_space", "memvp_lora")
    }
    return {
        "model": "Vicuna-7B + CLIP-ViT-L/14@336",
        "text_length": text_length,
        "n_visual": n_visual,
        "counted_total": counts,
        "input_space_over_memvp_lora": counts["input_space"] / counts["memvp_lora"],
    }


def _num_main_layers(lm: nn.Module) -> int:
    from .architectures import get_path, layout_for

    stacks = layout_for(lm).stacks
    return len(get_path(lm.base_model, stacks["encoder" if "encoder" in stacks else "decoder"]))


def format_table(rows: list[dict]) -> str:
    g = 1e9
    lines = [
        "| model (task, L, n) | method | analytic layers (G) | counted layers (G) | counted / analytic "
        "| counted total (G) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = f"{r['model']} ({r['task']}, L={r['measured_length']}, n={r['n_visual']})"
        for method in TABLE_METHODS:
            m = r["methods"][method]
            lines.append(
                f"| {label} | {method} | {m['analytic_layers'] / g:.2f} | {m['counted_layers'] / g:.2f} "
                f"| {m['counted_layers'] / m['analytic_layers']:.4f} | {m['counted_total'] / g:.2f} |"
            )
            label = ""
    lines += [
        "",
        "| model | input_space / MemVP (counted total) | analytic ceiling (layers, mean L) "
        "| MemVP / text_only (counted total) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['task']}) | {r['input_space_over_memvp']:.2f}x "
            f"| {r['analytic_input_space_over_memvp']:.2f}x | {r['memvp_over_text_only']:.3f}x |"
        )
    return "\n".join(lines)


__all__ = [
    "measure",
    "meta_model",
    "paper_table",
    "format_table",
    "instruction_table",
    "PAPER_SETTINGS",
    "VIDEO_SETTINGS",
    "PaperSetting",
    "METHOD_ORDER",
    "TABLE_METHODS",
]
