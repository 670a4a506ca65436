"""Adapter save / load: round trip, wrong base model, atomic writes."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from conftest import lm_inputs, tiny_model
from transformers import CLIPVisionConfig, CLIPVisionModel

from memvp import HFVisionEncoder, MemVPConfig, MemVPModel, get_memvp_model
from memvp.methods.memvp.model import CONFIG_NAME, WEIGHTS_NAME

CFG = MemVPConfig(visual_dim=12, num_entries=6, dropout=0.0, train_layernorms=True)


def _trained(arch="llama", seed=0):
    mem = get_memvp_model(tiny_model(arch, seed=seed), CFG)
    opt = torch.optim.AdamW([p for p in mem.parameters() if p.requires_grad], lr=5e-2)
    inputs = lm_inputs(mem.language_model)
    for _ in range(3):
        mem(**inputs, visual_features=torch.randn(2, 4, 12), labels=inputs["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    return mem.eval()


def test_round_trip_gives_identical_logits(tmp_path):
    mem = _trained()
    mem.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(["README.md", CONFIG_NAME, WEIGHTS_NAME])
    card = (tmp_path / "README.md").read_text()  # a model card, ready to share
    assert card.startswith("---\nlibrary_name: memvp\n") and "# memvp adapter for a llama model" in card
    assert f"- trainable parameters: {mem.get_nb_trainable_parameters()[0]:,d}" in card
    assert f'"num_entries": {CFG.num_entries}' in card and "load_adapter(language_model" in card
    # without the pipeline training records, the card says the models must be given
    assert 'load_pretrained("path/to/this/folder", language_model="...", vision_encoder="...")' in card
    loaded = MemVPModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    inputs, feats = lm_inputs(mem.language_model), torch.randn(2, 4, 12)
    with torch.no_grad():
        assert torch.equal(mem(**inputs, visual_features=feats).logits, loaded(**inputs, visual_features=feats).logits)
    trainable = MemVPModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == mem.get_nb_trainable_parameters()
    assert trainable.memvp_config == mem.memvp_config


def test_softmax_retrieval_round_trips(tmp_path):
    mem = get_memvp_model(
        tiny_model("llama"), MemVPConfig(visual_dim=12, num_entries=6, dropout=0.0, retrieval="softmax")
    ).eval()
    with torch.no_grad():
        mem.visual_memory.output_gate.fill_(1.0)  # the zero gate would hide the read
    mem.save_pretrained(tmp_path)
    loaded = MemVPModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert loaded.memvp_config.retrieval == "softmax" and loaded.memvp_config.output_scale == 1.0
    inputs, feats = lm_inputs(mem.language_model), torch.randn(2, 4, 12)
    with torch.no_grad():
        got = loaded(**inputs, visual_features=feats).logits
        assert torch.equal(mem(**inputs, visual_features=feats).logits, got)
        mem.memvp_config.retrieval = "activation"  # the same weights read through phi differ
        assert not torch.allclose(mem(**inputs, visual_features=feats).logits, got)


def test_loading_onto_another_model_fails_clearly(tmp_path):
    _trained("gpt2").save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="saved for a gpt2 model"):
        MemVPModel.from_pretrained(tiny_model("llama"), tmp_path / "gpt2")
    _trained("llama").save_pretrained(tmp_path / "llama")
    from transformers import AutoModelForCausalLM, LlamaConfig

    wider = AutoModelForCausalLM.from_config(
        LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    )
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=48"):
        MemVPModel.from_pretrained(wider, tmp_path / "llama")
    with pytest.raises(FileNotFoundError, match="not a MemVPModel adapter directory"):
        MemVPModel.from_pretrained(tiny_model("llama"), tmp_path / "nothing")


def test_vision_adapters_are_saved_and_required(tmp_path):
    torch.manual_seed(0)
    vit_cfg = CLIPVisionConfig(
        hidden_size=12, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=4
    )
    enc = HFVisionEncoder(CLIPVisionModel(vit_cfg), adapter_hidden=4)
    mem = get_memvp_model(tiny_model("llama"), CFG, vision_encoder=enc)
    with torch.no_grad():
        enc.adapters[0].up.weight.normal_()
    mem.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="its ViT adapters differ"):
        MemVPModel.from_pretrained(tiny_model("llama"), tmp_path)
    torch.manual_seed(0)
    enc2 = HFVisionEncoder(CLIPVisionModel(vit_cfg), adapter_hidden=4)
    loaded = MemVPModel.from_pretrained(tiny_model("llama"), tmp_path, vision_encoder=enc2)
    assert torch.equal(loaded.vision_encoder.adapters[0].up.weight, enc.adapters[0].up.weight)
    pixels = torch.randn(1, 3, 8, 8)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(
            mem.eval()(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits
        )


def test_failed_save_leaves_previous_adapter_intact(tmp_path, monkeypatch):
    first = _trained(seed=0)
    first.save_pretrained(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("memvp.save_load.save_file", crash)
    second = _trained(seed=1)
    with pytest.raises(OSError, match="disk full"):
        second.save_pretrained(tmp_path)
    monkeypatch.setattr("memvp.save_load.save_file", safetensors.torch.save_file)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before  # no temp files left
    loaded = MemVPModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert torch.equal(loaded.visual_memory.key_position, first.visual_memory.key_position)


def test_same_shape_other_weights_is_refused_unless_allowed(tmp_path):
    """Issue 12.7: an adapter of one model loaded onto a random model of the same shape answered garbage."""
    _trained("llama", seed=0).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="other weights"):
        MemVPModel.from_pretrained(tiny_model("llama", seed=1), tmp_path)
    MemVPModel.from_pretrained(tiny_model("llama", seed=1), tmp_path, allow_base_mismatch=True)
    MemVPModel.from_pretrained(tiny_model("llama", seed=0).to(torch.bfloat16), tmp_path)  # same weights, bf16
