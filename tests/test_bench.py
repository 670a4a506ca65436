"""The side-by-side benchmark on a tiny model: what it measures, not how fast (no timed assertions)."""

from __future__ import annotations

import json

import torch
from conftest import tiny_model

from memvp.bench import BenchConfig, cache_bytes, format_bench, plot_sweep, run_bench
from memvp.cli import main


def test_bench_measures_every_method_and_the_kv_cache_exactly(tmp_path):
    cfg = BenchConfig(
        model="tiny",
        batch_size=2,
        text_length=6,
        n_visual=10,
        visual_dim=12,
        repeats=1,
        decode_tokens=3,
        sweep_lengths=(4, 8),
        sweep_n=(5,),
        sweep_repeats=1,
        progress=False,
    )
    result = run_bench(cfg, language_model=tiny_model("llama"))
    methods = result["methods"]
    assert list(methods) == ["text_only", "input_space", "memvp"]
    for r in methods.values():
        assert r["train_step_s"] > 0 and r["prefill_s"] > 0 and r["decode_tokens_per_s"] > 0
    # KV cache: 2 layers x (K, V) x 2 kv heads x 8 dims x 4 bytes per token; input_space holds L + n tokens.
    per_token = 2 * 2 * 2 * 8 * 4
    assert methods["text_only"]["kv_cache_bytes_per_sequence"] == 6 * per_token
    assert methods["memvp"]["kv_cache_bytes_per_sequence"] == 6 * per_token
    assert methods["input_space"]["kv_cache_bytes_per_sequence"] == 16 * per_token
    assert result["ratios"]["kv_cache_vs_input_space"] == 6 / 16
    # Only the method's own parameters train: MemVP's memory, LoRA (+ projector for input_space).
    assert methods["input_space"]["trainable_parameters"] > methods["text_only"]["trainable_parameters"] > 0
    assert [r["value"] for r in result["sweep"]["rows"]] == [4, 8, 5]
    table = format_bench(result)
    assert "| memvp |" in table and "target >= 3.0x" in table
    plot_sweep(result, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_runs_adem_through_the_registry():
    """ADEM-VL's bench row: its one global token is in the KV cache (L + 1 positions), its pooled
    entries are not."""
    cfg = BenchConfig(
        model="tiny",
        batch_size=2,
        text_length=6,
        n_visual=16,
        visual_dim=12,
        repeats=1,
        decode_tokens=2,
        methods=("memvp", "adem"),
        progress=False,
    )
    methods = run_bench(cfg, language_model=tiny_model("llama"))["methods"]
    per_token = 2 * 2 * 2 * 8 * 4
    assert methods["adem"]["kv_cache_bytes_per_sequence"] == 7 * per_token
    assert methods["memvp"]["kv_cache_bytes_per_sequence"] == 6 * per_token
    assert methods["adem"]["train_step_s"] > 0 and methods["adem"]["trainable_parameters"] > 0


def test_cache_bytes_counts_legacy_tuples():
    cache = ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)),)
    assert cache_bytes(cache) == 2 * 24 * 4


def test_flops_command_writes_the_paper_table(tmp_path, capsys):
    assert main(["flops", "--output", str(tmp_path / "f.json")]) == 0
    written = json.loads((tmp_path / "f.json").read_text())
    rows = written["paper_table"]
    assert [(r["model"], r["task"]) for r in rows] == [
        ("LLaMA-7B", "ScienceQA"),
        ("LLaMA-13B", "ScienceQA"),
        ("T5-base", "VQAv2"),
        ("BART-base", "VQAv2"),
        ("BART-base", "TVQA video"),
    ]
    video = rows[-1]  # Table 8: 64 frame features, the FFN-only overhead of MemVP next to input space
    assert (video["n_visual"], video["measured_length"]) == (64, 160)
    gap = video["methods"]["input_space"]["analytic_layers"] - video["methods"]["memvp"]["analytic_layers"]
    assert round(gap / 1e9, 1) == round(44.6 - 38.9, 1)  # the length was chosen to give the paper's TVQA gap
    assert video["input_space_over_memvp"] > 1 and video["memvp_over_text_only"] < 1.1
    for r in rows:
        for m in r["methods"].values():  # counted within 1% of eq. 13-15 (gated FFN, LoRA)
            assert abs(m["counted_layers"] / m["analytic_layers"] - 1) < 0.01
    pair = written["instruction_tuning"]  # Table 9: 576 visual tokens + LoRA r=128 against MemVP + the same LoRA
    assert pair["n_visual"] == 576 and 9 < pair["input_space_over_memvp_lora"] < 11
    printed = capsys.readouterr().out
    assert "LLaMA-7B (ScienceQA)" in printed and "Table 9 pair" in printed


def test_bench_plot_needs_a_sweep(capsys):
    assert main(["bench", "--plot"]) == 2
    assert "--sweep-lengths" in capsys.readouterr().err
