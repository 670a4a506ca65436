"""MemVP + LoRA (methods/memvp_lora): the FFN hooks and peft's wrapped linears compose, one adapter
saves and loads both, and the paper's Table 9 trainable count (346M on Vicuna-7B) is reproduced."""

from __future__ import annotations

import pytest
import torch
from conftest import lm_inputs, tiny_model, train_steps
from peft import LoraConfig, TaskType, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from memvp import MemVPConfig, get_memvp_model
from memvp.methods import build_model, load_adapter
from memvp.methods.memvp_lora import MemVPLoraConfig, MemVPLoraModel

VIS, N = 8, 6


def _joint(arch: str, **options) -> MemVPLoraModel:
    cfg = MemVPLoraConfig(
        visual_dim=VIS, num_entries=N, dropout=0.0, lora_r=4, lora_alpha=8, lora_dropout=0.0, **options
    )
    return MemVPLoraModel(tiny_model(arch, dtype=torch.float64), cfg).double().eval()


def _randomise(params) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in params:
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_joint_equals_memvp_alone_when_lora_is_zero(arch):
    joint = _joint(arch)
    alone = (
        get_memvp_model(tiny_model(arch, dtype=torch.float64), MemVPConfig(visual_dim=VIS, num_entries=N, dropout=0.0))
        .double()
        .eval()
    )
    assert [k for k, _ in joint.entry_gains] == [k for k, _ in alone.entry_gains]  # FFN read through the wrappers
    _randomise([(n, p) for n, p in alone.visual_memory.named_parameters()])
    joint.visual_memory.load_state_dict(alone.visual_memory.state_dict())  # peft's LoRA starts at B = 0
    inputs, feats = lm_inputs(joint), torch.randn(2, 4, VIS, dtype=torch.float64)
    with torch.no_grad():
        got, want = joint(**inputs, visual_features=feats).logits, alone(**inputs, visual_features=feats).logits
    torch.testing.assert_close(got, want)
    bare = tiny_model(arch, dtype=torch.float64)(**inputs).logits
    assert not torch.allclose(got, bare)  # the memory is on


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_joint_equals_lora_alone_when_the_memory_is_silent(arch):
    joint = _joint(arch)
    lora_params = [(n, p) for n, p in joint.language_model.named_parameters() if "lora_" in n]
    assert lora_params and all(p.requires_grad for _, p in lora_params)
    _randomise(lora_params)  # the visual memory keeps its zero gates: it adds nothing
    peft_lm = (
        get_peft_model(
            tiny_model(arch, dtype=torch.float64),
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type=TaskType.CAUSAL_LM),
        )
        .get_base_model()
        .eval()
    )
    peft_lm.load_state_dict(dict(joint.language_model.state_dict()), strict=True)
    inputs, feats = lm_inputs(joint), torch.randn(2, 4, VIS, dtype=torch.float64)
    with torch.no_grad():
        got = joint(**inputs, visual_features=feats).logits
        torch.testing.assert_close(got, peft_lm(**inputs).logits)
        assert not torch.allclose(got, tiny_model(arch, dtype=torch.float64)(**inputs).logits)  # LoRA is on


def test_trains_both_and_saves_one_adapter(tmp_path):
    model = build_model(
        "memvp_lora",
        tiny_model("llama"),
        VIS,
        memvp={"num_entries": N, "lora_r": 4, "dropout": 0.0, "lora_dropout": 0.0},
    )
    names = set(model.trainable_state_dict())
    assert any("lora_A" in n for n in names) and any(n.startswith("visual_memory.projector") for n in names)
    assert "visual_memory.output_gate" in names
    inputs, feats = lm_inputs(model), torch.randn(2, 4, VIS)
    losses = train_steps(model, 6, 1e-2, **inputs, visual_features=feats, labels=inputs["input_ids"].clone())
    assert losses[-1] < losses[0]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all("lora_" not in n and not n.startswith("visual_memory") for n in frozen)
    model.eval().save_pretrained(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "README.md",
        "memvp_lora_config.json",
        "memvp_lora_model.safetensors",
    ]
    loaded = load_adapter(tiny_model("llama"), tmp_path / "a")
    assert isinstance(loaded, MemVPLoraModel)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs, visual_features=feats).logits, model(**inputs, visual_features=feats).logits
        )
    with pytest.raises(ValueError, match="saved for a llama model"):
        load_adapter(tiny_model("llama", seed=3), tmp_path / "a")


def test_table9_trainable_parameters_on_a_meta_vicuna_7b():
    """Vicuna-7B + CLIP-ViT-L/14@336: LoRA r=128 on q,k,v,o,gate,up,down (319,815,680), mlp2x_gelu
    1024 -> 4096 -> 4096 (20,979,712), position embeddings 2 x 576 x 4096 (4,718,592): 346M in the paper."""
    with torch.device("meta"):
        lm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=32000,
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
            )
        )
    model = build_model("memvp_lora", lm, 1024, memvp={"num_entries": 576, "projector": "mlp2x_gelu"})
    counts = {"lora": 0, "projector": 0, "positions": 0, "gates": 0}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (
                "lora"
                if "lora_" in name
                else "projector"
                if ".projector." in name
                else "positions"
                if "position" in name
                else "gates"
            )
            counts[key] += p.numel()
    assert counts == {"lora": 319_815_680, "projector": 20_979_712, "positions": 4_718_592, "gates": 64}
    trainable, _ = model.get_nb_trainable_parameters()
    assert abs(trainable - 346e6) / 346e6 < 0.01


def test_stage2_starts_from_the_stage1_adapter(tmp_path):
    """init_from: the stage-1 MemVP adapter's tensors (projector, position tables, gates) start the
    MemVP + LoRA model; LoRA keeps peft's initialisation; an adapter that does not fit is refused."""
    from memvp.methods import init_from_adapter

    stage1 = build_model("memvp", tiny_model("llama"), VIS, memvp={"num_entries": N})
    _randomise(list(stage1.visual_memory.named_parameters()))
    stage1.save_pretrained(tmp_path / "stage1")
    stage2 = build_model("memvp_lora", tiny_model("llama"), VIS, memvp={"num_entries": N, "lora_r": 4})
    lora_before = {n: p.clone() for n, p in stage2.trainable_state_dict().items() if "lora_" in n}
    loaded, new = init_from_adapter(stage2, tmp_path / "stage1")
    assert loaded == len(stage1.trainable_state_dict()) and new == len(lora_before)
    for name, tensor in stage1.trainable_state_dict().items():
        assert torch.equal(stage2.trainable_state_dict()[name], tensor), name
    assert all(torch.equal(stage2.trainable_state_dict()[n], t) for n, t in lora_before.items())
    other = build_model("memvp_lora", tiny_model("llama"), VIS, memvp={"num_entries": N + 2, "lora_r": 4})
    with pytest.raises(ValueError, match="do not fit this MemVPLoraModel, e.g. visual_memory.key_position"):
        init_from_adapter(other, tmp_path / "stage1")


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_the_lora_part_is_a_standard_peft_adapter(arch, tmp_path):
    """save_peft_adapter writes peft's own folder: PeftModel.from_pretrained on a fresh copy of the LM gives
    the joint model's logits with MemVP off (bypassed)."""
    from peft import PeftModel

    joint = _joint(arch)
    _randomise([(n, p) for n, p in joint.named_parameters() if p.requires_grad])
    joint.save_peft_adapter(tmp_path / "peft")
    assert {p.name for p in (tmp_path / "peft").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    inputs = lm_inputs(joint)
    with torch.no_grad(), joint.bypassed():
        ours = joint(**inputs).logits
    peft = PeftModel.from_pretrained(tiny_model(arch, dtype=torch.float64), tmp_path / "peft").double().eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(**inputs).logits, ours)


@pytest.mark.parametrize("arch", ["llama", "opt"])  # OPT's LoRA wraps fc1 / fc2, the very modules MemVP hooks
def test_merge_lora_keeps_the_outputs_and_memvp_hooked(arch, tmp_path):
    joint = _joint(arch, lora_target_modules="all-linear")
    _randomise([(n, p) for n, p in joint.named_parameters() if p.requires_grad])
    inputs, feats = lm_inputs(joint), torch.randn(2, 4, VIS, dtype=torch.float64)
    with torch.no_grad():
        before = joint(**inputs, visual_features=feats).logits
        blind = joint(**inputs).logits
    joint.merge_lora()
    assert not any("lora_" in n for n, _ in joint.language_model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(joint(**inputs, visual_features=feats).logits, before)
        torch.testing.assert_close(joint(**inputs).logits, blind)
    assert not torch.allclose(before, blind)  # the memory is still read after merging
    with pytest.raises(ValueError, match="merged into the language model"):
        joint.save_pretrained(tmp_path / "adapter")
