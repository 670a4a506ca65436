"""FLOPs accounting: eq. 13-15 by hand, and torch's flop counter on tiny models against them."""

from __future__ import annotations

import pytest

from memvp.flops import PaperSetting, format_table, measure, meta_model, paper_table
from memvp.methods import build_model


def analytic_layer_flops(method: str, length, d, n=0, **options):
    """Each method model's own formula (``analytic_layer_flops``), asked of a model on a meta T5."""
    model = build_model(method, meta_model("t5", T5_TINY), 12, n or 16, **options)
    return model.analytic_layer_flops(length, d, n)


T5_TINY = dict(
    d_model=32,
    d_ff=128,
    d_kv=8,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    vocab_size=64,
    feed_forward_proj="relu",
    decoder_start_token_id=0,
)


def test_analytic_formulas_by_hand():
    # L=2, d=3, n=4: eq. 13 = 4*2*3*(18+2) = 480; eq. 14 adds 4*4*3*(18+4+4) = 1248; eq. 15 adds 4*4*3*2 = 96.
    assert analytic_layer_flops("text_only", 2, 3) == 480
    assert analytic_layer_flops("input_space", 2, 3, 4) == 480 + 1248
    assert analytic_layer_flops("memvp", 2, 3, 4) == 480 + 96
    # Input space is exactly text-only at length L + n (the formula is one sequence of L + n tokens).
    assert analytic_layer_flops("input_space", 7, 16, 5) == analytic_layer_flops("text_only", 12, 16)


@pytest.mark.parametrize("method", ["text_only", "input_space", "memvp"])
def test_counted_encoder_flops_equal_the_formula_plus_lora(method):
    # T5 with d_ff = 4d and heads * d_kv = d is exactly the paper's layer; LoRA (rank r on q and v)
    # adds 2 * (2*d*r + 2*r*d) per token per layer for the baselines.
    length, n, d, layers, r = 5, 7, 32, 2, 6
    counted = measure(method, meta_model("t5", T5_TINY), length, n, visual_dim=12, baseline={"lora_r": r})
    tokens = length + n if method == "input_space" else length
    lora = 0 if method == "memvp" else layers * tokens * 8 * d * r
    assert counted["encoder"] == layers * counted["analytic_layer"](length) + lora
    assert counted["analytic_layer"](length) == analytic_layer_flops(method, length, d, n)
    assert counted["decoder"] > 0 and counted["total"] > counted["encoder"] + counted["decoder"]  # + LM head


def test_counted_llama_flops_differ_only_by_the_gated_ffn():
    cfg = dict(
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64,
    )
    length, n, d, layers = 6, 4, 32, 2
    counted = measure("memvp", meta_model("llama", cfg), length, n, visual_dim=12)
    gated_extra = layers * length * (3 * 2 * d * 80 - 16 * d * d)  # 3 matrices of d x d_ff vs 2 of d x 4d
    assert counted["decoder"] == layers * analytic_layer_flops("memvp", length, d, n) + gated_extra
    assert counted["analytic_layer"](length) == analytic_layer_flops("memvp", length, d, n)


def test_paper_table_orders_the_methods_as_the_paper():
    setting = PaperSetting(
        "tiny-llama",
        "llama",
        dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, vocab_size=100),
        "fake",
        16,
        8,
        "ScienceQA",
        8.5,
    )
    [row] = paper_table([setting])
    m = row["methods"]
    assert m["input_space"]["counted_total"] > m["memvp"]["counted_total"] > m["text_only"]["counted_total"]
    assert row["measured_length"] == 8 and row["input_space_over_memvp"] > 1
    assert "tiny-llama" in format_table([row])


def test_instruction_pair_counts_the_same_lora_on_both_sides():
    """Table 9's pair: MemVP + LoRA against input space + the same LoRA. On a tiny Llama, each side
    minus its LoRA-free counterpart is exactly the LoRA cost: 2 FLOPs x r x (d_in + d_out) per token
    per adapted linear layer (q, k, v, o: d -> d; gate, up: d -> ff; down: ff -> d)."""
    from memvp.flops import instruction_table

    cfg = dict(
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64,
    )
    lora = {"lora_r": 4, "lora_alpha": 8.0, "lora_target_modules": "all-linear", "projector": "mlp2x_gelu"}
    length, n, d, ff, r, layers = 6, 9, 32, 80, 4, 2
    pair = instruction_table(length, n, 12, config=cfg, lora=lora)
    adapted = 4 * (d + d) + 2 * (d + ff) + (ff + d)  # sum of d_in + d_out over the adapted linears of a layer
    lora_flops = layers * length * 2 * r * adapted  # per linear and token: 2 r d_in (A) + 2 r d_out (B)
    memvp = measure("memvp", meta_model("llama", cfg), length, n, 12, memvp={"projector": "mlp2x_gelu"})["total"]
    assert pair["counted_total"]["memvp_lora"] - memvp == lora_flops
    assert pair["input_space_over_memvp_lora"] > 1


def test_counted_adem_flops_equal_its_formula():
    """ADEM-VL on T5 (fusion in the encoder): the text at L + 1 tokens (the global token) plus
    silu(x) K^T and its product with V over N pooled entries: 4 N d (L + 1) per layer."""
    length, n, d, layers = 5, 16, 32, 2  # a 4 x 4 grid pooled at scales 1 and 2: N = 16 + 4 entries
    counted = measure("adem", meta_model("t5", T5_TINY), length, n, visual_dim=12)
    assert counted["encoder"] == layers * counted["analytic_layer"](length)
    assert counted["analytic_layer"](length) - analytic_layer_flops("text_only", length + 1, d) == (
        4 * 20 * d * (length + 1)
    )
