"""Tiny random-init models of every supported architecture, seeded and deterministic."""

from __future__ import annotations

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    T5Config,
    T5ForConditionalGeneration,
)

from memvp.recipes.scenes import COLORS, TEMPLATES, generate_dataset

VOCAB, D, FF = 64, 32, 48

_DECODER_CONFIGS = {
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "mistral": lambda: MistralConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    ),
    "gemma": lambda: GemmaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    ),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=D, n_inner=FF, n_layer=2, n_head=4, n_positions=64),
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        ffn_dim=FF,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=D,
    ),
}
_SEQ2SEQ = {
    "t5-relu": lambda: T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB,
            d_model=D,
            d_ff=FF,
            num_layers=2,
            num_heads=4,
            d_kv=8,
            feed_forward_proj="relu",
            decoder_start_token_id=0,
        )
    ),
    "t5-gated": lambda: T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB,
            d_model=D,
            d_ff=FF,
            num_layers=2,
            num_heads=4,
            d_kv=8,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
        )
    ),
    "bart": lambda: BartForConditionalGeneration(
        BartConfig(
            vocab_size=VOCAB,
            d_model=D,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=FF,
            decoder_ffn_dim=FF,
            max_position_embeddings=64,
        )
    ),
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


def word_tokenizer():
    words = {w.strip("?").lower() for t in TEMPLATES.values() for w in t.format("x").split()}
    words |= set(COLORS) | {"square", "circle", "left", "right", "top", "bottom", "answer:"}
    words |= {str(i) for i in range(10)}
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def make_tiny_run(root) -> dict:
    """A tiny random-init Llama + word tokenizer, a CLIP tower and a Sort-of-CLEVR VQA set under
    ``root``; returns a training config for them (also written to root/train.yaml). Seeded: the
    same files every time. The `tiny` fixture gives each test module its own copy."""
    torch.manual_seed(0)
    tok = word_tokenizer()
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    vit = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        )
    )
    vit.save_pretrained(root / "vit")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    generate_dataset(root / "data", n_train=12, n_val=2, n_test=4, questions_per_scene=3, progress=False)
    data = {"format": "vqav2", "image_dir": "data/images", "image_pattern": "COCO_{data_subtype}_{image_id:012d}.png"}
    config = {
        "train_data": {
            **data,
            "questions_file": "data/questions_train.json",
            "annotations_file": "data/annotations_train.json",
        },
        "eval_data": {
            **data,
            "questions_file": "data/questions_test.json",
            "annotations_file": "data/annotations_test.json",
        },
        "output_dir": str(root / "run"),
        "language_model": str(root / "lm"),
        "vision_encoder": str(root / "vit"),
        "feature_cache": str(root / "cache"),
        "memvp": {"num_entries": 16, "dropout": 0.0, "memory_scale": "paper"},
        "max_steps": 8,
        "batch_size": 12,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "max_new_tokens": 2,
        "max_length": 32,
        "progress": False,
    }
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    return config


def train_steps(model, steps: int, lr: float, **batch) -> list[float]:
    """``steps`` AdamW steps of ``model(**batch).loss`` on its trainable parameters; the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, request):
    """``make_tiny_run`` (tiny Llama, CLIP, VQA set, train.yaml) in a fresh folder,
    once per test module that asks for it."""
    root = tmp_path_factory.mktemp(request.module.__name__)
    make_tiny_run(root)
    return root


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(1234)
    yield
