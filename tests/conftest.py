"""Tiny random-init models of every supported architecture, seeded and deterministic."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB, D, FF = 64, 32, 48

_DECODER_CONFIGS = {
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "mistral": lambda: MistralConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "qwen2": lambda: Qwen2Config(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "gemma": lambda: GemmaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=FF, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                 max_position_embeddings=64),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=D, n_inner=FF, n_layer=2, n_head=4, n_positions=64),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=D, ffn_dim=FF, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=D),
}
_SEQ2SEQ = {
    "t5-relu": lambda: T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=D, d_ff=FF, num_layers=2, num_heads=4, d_kv=8,
        feed_forward_proj="relu", decoder_start_token_id=0)),
    "t5-gated": lambda: T5ForConditionalGeneration(T5Config(
        vocab_size=VOCAB, d_model=D, d_ff=FF, num_layers=2, num_heads=4, d_kv=8,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0)),
    "bart": lambda: BartForConditionalGeneration(BartConfig(
        vocab_size=VOCAB, d_model=D, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=FF, decoder_ffn_dim=FF, max_position_embeddings=64)),
}
ALL_ARCHS = list(_DECODER_CONFIGS) + list(_SEQ2SEQ)
GATED = {"llama", "mistral", "qwen2", "gemma", "t5-gated"}


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    if arch in _DECODER_CONFIGS:
        model = AutoModelForCausalLM.from_config(_DECODER_CONFIGS[arch]())
    else:
        model = _SEQ2SEQ[arch]()
    return model.to(dtype).eval()


def lm_inputs(model, batch: int = 2, length: int = 6, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 4), generator=g)
    return inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, request):
    """``test_pipeline.make_tiny_run`` (tiny Llama, CLIP, VQA set, train.yaml) in a fresh folder,
    once per test module that asks for it."""
    from test_pipeline import make_tiny_run

    root = tmp_path_factory.mktemp(request.module.__name__)
    make_tiny_run(root)
    return root


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(1234)
    yield
