"""Behaviour of the MemVP wrapper: batches, image-less samples, frozen base, ablations, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import VOCAB, lm_inputs, tiny_model
from transformers import BertConfig, BertModel

from memvp import ARCHITECTURES, FFNLayout, MemVPConfig, get_memvp_model, register_architecture

VIS_DIM = 12


def _mem(arch="llama", **overrides):
    cfg = dict(visual_dim=VIS_DIM, num_entries=6, memory_scale="paper", visual_scale=1.0, output_scale=1.0, dropout=0.0)
    cfg.update(overrides)
    mem = get_memvp_model(tiny_model(arch), MemVPConfig(**cfg)).eval()
    with torch.no_grad():
        mem.visual_memory.value_position.normal_(0, 0.5)
    return mem


def _logits(mem, inputs, **kw):
    with torch.no_grad():
        return mem(**inputs, **kw).logits


@pytest.mark.parametrize("arch", ["llama", "t5-gated", "opt"])
def test_sample_output_does_not_depend_on_other_samples(arch):
    mem = _mem(arch)
    inputs = lm_inputs(mem.language_model, batch=3)
    feats = torch.randn(3, 4, VIS_DIM)
    together = _logits(mem, inputs, visual_features=feats)
    other = feats.clone()
    other[1:] = torch.randn(2, 4, VIS_DIM) * 5  # change everybody else's image
    changed = _logits(mem, inputs, visual_features=other)
    torch.testing.assert_close(together[0], changed[0], rtol=1e-5, atol=1e-5)
    assert (together[1] - changed[1]).abs().max() > 1e-3
    alone = _logits(mem, {k: v[:1] for k, v in inputs.items()}, visual_features=feats[:1])
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)


def test_has_image_false_means_position_embeddings_only():
    """Paper 5.2: an image-less sample gets zero visual prompts (not f(0), which has a bias)."""
    mem = _mem()
    inputs = lm_inputs(mem.language_model, batch=3)
    feats = torch.randn(3, 4, VIS_DIM)
    mixed = _logits(mem, inputs, visual_features=feats, has_image=torch.tensor([True, False, True]))
    no_image = _logits(mem, inputs, visual_features=None)
    with_image = _logits(mem, inputs, visual_features=feats)
    torch.testing.assert_close(mixed[1], no_image[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[[0, 2]], with_image[[0, 2]], rtol=1e-5, atol=1e-5)
    # The same holds for zero features once the projector has no bias to add.
    with torch.no_grad():
        for m in mem.visual_memory.projector.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.zero_()
    zero_feats = _logits(mem, inputs, visual_features=torch.zeros(3, 4, VIS_DIM))
    torch.testing.assert_close(zero_feats[1], no_image[1], rtol=1e-5, atol=1e-5)


def test_only_memvp_parameters_train_and_base_stays_bit_identical():
    mem = _mem("llama", dropout=0.1)
    before = {k: v.clone() for k, v in mem.language_model.state_dict().items()}
    memory_before = {k: v.clone() for k, v in mem.visual_memory.state_dict().items()}
    opt = torch.optim.AdamW([p for p in mem.parameters() if p.requires_grad], lr=1e-2)
    inputs = lm_inputs(mem.language_model)
    mem.train()
    loss = mem(**inputs, visual_features=torch.randn(2, 4, VIS_DIM), labels=inputs["input_ids"]).loss
    loss.backward()
    with_grad = {n for n, p in mem.named_parameters() if p.grad is not None}
    assert with_grad == {"visual_memory." + n for n, _ in mem.visual_memory.named_parameters()}
    opt.step()
    for k, v in mem.language_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    changed = [k for k, v in mem.visual_memory.state_dict().items() if not torch.equal(v, memory_before[k])]
    assert len(changed) == len(memory_before)


def test_train_layernorms_unfreezes_norms_only():
    mem = _mem("t5-relu", train_layernorms=True)
    trainable = [n for n, p in mem.named_parameters() if p.requires_grad]
    lm_trainable = [n for n in trainable if n.startswith("language_model.")]
    assert lm_trainable and all("layer_norm" in n for n in lm_trainable)


def test_paper_defaults_per_architecture():
    dec = get_memvp_model(tiny_model("llama"), MemVPConfig(visual_dim=VIS_DIM))
    assert dec.memvp_config.share_position_embeddings is True
    assert dec.visual_memory.key_position.shape[0] == 1 and len(dec.sites) == 2
    encdec = get_memvp_model(tiny_model("bart"), MemVPConfig(visual_dim=VIS_DIM))
    assert encdec.memvp_config.share_position_embeddings is False
    assert [s.name for s in encdec.sites] == ["encoder.0", "encoder.1"]
    assert encdec.visual_memory.key_position.shape[0] == 2
    both = get_memvp_model(tiny_model("bart"), MemVPConfig(visual_dim=VIS_DIM, target_layers="all"))
    assert [s.name for s in both.sites] == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
    some = get_memvp_model(tiny_model("llama"), MemVPConfig(visual_dim=VIS_DIM, target_layers=[-1]))
    assert [s.name for s in some.sites] == ["decoder.1"]


def test_memory_is_built_once_per_call_when_shared():
    mem = _mem()
    calls = []
    mem.visual_memory.projector.register_forward_hook(lambda *a: calls.append(1))
    inputs = lm_inputs(mem.language_model)
    _logits(mem, inputs, visual_features=torch.randn(2, 4, VIS_DIM))
    assert len(calls) == 1
    mem.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        visual_features=torch.randn(2, 4, VIS_DIM),
        max_new_tokens=4,
        do_sample=False,
    )
    assert len(calls) == 2  # once for the whole generation, not once per decoding step


@pytest.mark.parametrize("arch", ["llama", "t5-gated"])
def test_generate_with_kv_cache_matches_full_forward(arch):
    mem = _mem(arch, target_layers="all") if arch.startswith("t5") else _mem(arch)
    ids = lm_inputs(mem.language_model, batch=2)["input_ids"]
    feats = torch.randn(2, 4, VIS_DIM)
    out = mem.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), visual_features=feats, max_new_tokens=5, do_sample=False
    )
    # Greedy check without cache: each generated token is the argmax of a full forward.
    with torch.no_grad():
        if arch.startswith("t5"):
            for t in range(1, out.shape[1]):
                logits = mem(input_ids=ids, visual_features=feats, decoder_input_ids=out[:, :t]).logits
                assert torch.equal(logits[:, -1].argmax(-1), out[:, t])
        else:
            for t in range(ids.shape[1], out.shape[1]):
                logits = mem(input_ids=out[:, :t], visual_features=feats).logits
                assert torch.equal(logits[:, -1].argmax(-1), out[:, t])
    beams = mem.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        visual_features=feats,
        max_new_tokens=3,
        num_beams=2,
        num_return_sequences=2,
        do_sample=False,
    )
    assert beams.shape[0] == 4


def test_ablation_switches():
    feats = torch.randn(2, 4, VIS_DIM)
    full = _mem(insert_into="keys_values")
    prompts = full.visual_memory.prompts(feats)
    k, v = full.visual_memory.entries(prompts, 0)
    vm = full.visual_memory
    torch.testing.assert_close(k, prompts + vm.key_position[0])
    torch.testing.assert_close(v, prompts + vm.value_position[0])

    keys_only = _mem(insert_into="keys")
    k, v = keys_only.visual_memory.entries(keys_only.visual_memory.prompts(feats), 0)
    assert torch.equal(v, keys_only.visual_memory.value_position[0].expand_as(v))
    assert not torch.equal(k, keys_only.visual_memory.key_position[0].expand_as(k))

    values_only = _mem(insert_into="values")
    k, v = values_only.visual_memory.entries(values_only.visual_memory.prompts(feats), 0)
    assert torch.equal(k, values_only.visual_memory.key_position[0].expand_as(k))

    concat = _mem(position_mode="concat")
    p = concat.visual_memory.prompts(feats)
    k, v = concat.visual_memory.entries(p, 0)
    assert k.shape == (2, 12, 32)  # n visual entries without position, then n position entries
    torch.testing.assert_close(k[:, :6], p)
    torch.testing.assert_close(v[:, 6:], concat.visual_memory.value_position[0].expand(2, -1, -1))
    assert full.get_nb_trainable_parameters() == concat.get_nb_trainable_parameters()


def test_prompts_are_zero_padded_to_num_entries():
    mem = _mem(num_entries=10)
    prompts = mem.visual_memory.prompts(torch.randn(2, 4, VIS_DIM))
    assert prompts.shape == (2, 10, 32)
    assert torch.all(prompts[:, 4:] == 0) and prompts[:, :4].abs().sum() > 0


def test_bad_inputs_get_clear_errors():
    mem = _mem()
    inputs = lm_inputs(mem.language_model)
    with pytest.raises(ValueError, match="visual_dim=12"):
        mem(**inputs, visual_features=torch.randn(2, 4, 13))
    with pytest.raises(ValueError, match="num_entries"):
        mem(**inputs, visual_features=torch.randn(2, 7, VIS_DIM))
    with pytest.raises(ValueError, match="has_image"):
        mem(**inputs, visual_features=torch.randn(2, 4, VIS_DIM), has_image=torch.tensor([True]))
    with pytest.raises(ValueError, match="has no vision encoder"):
        mem(**inputs, pixel_values=torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="no encoder stack"):
        get_memvp_model(tiny_model("llama"), MemVPConfig(visual_dim=4, target_layers="encoder"))
    with pytest.raises(ValueError, match="out of range"):
        get_memvp_model(tiny_model("llama"), MemVPConfig(visual_dim=4, target_layers=[5]))


def test_unknown_architecture_lists_supported_and_registration_works():
    bert = BertModel(
        BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    )
    with pytest.raises(ValueError) as err:
        get_memvp_model(bert, MemVPConfig(visual_dim=4))
    assert "'bert'" in str(err.value) and "llama" in str(err.value) and "register_architecture" in str(err.value)
    try:
        register_architecture(
            "bert",
            FFNLayout(
                {"decoder": "encoder.layer"},
                "intermediate.dense",
                "output.dense",
                "intermediate.intermediate_act_fn",
                gated=False,
            ),
        )
        mem = get_memvp_model(bert, MemVPConfig(visual_dim=4, num_entries=3))
        assert len(mem.sites) == 1
        out = mem(input_ids=torch.tensor([[1, 2, 3]]), visual_features=torch.randn(1, 3, 4))
        assert out.last_hidden_state.shape == (1, 3, 16)
    finally:
        ARCHITECTURES.pop("bert", None)


def test_config_json_round_trip_and_validation():
    cfg = MemVPConfig(visual_dim=1280, num_entries=64, target_layers=[0, 3], insert_into="keys")
    again = MemVPConfig.from_json(cfg.to_json())
    assert again == cfg
    with pytest.raises(ValueError, match="Unknown MemVPConfig key"):
        MemVPConfig.from_dict({**json.loads(cfg.to_json()), "num_entires": 3})
    for bad in (
        {"projector": "conv"},
        {"insert_into": "both"},
        {"position_mode": "mul"},
        {"target_layers": "middle"},
        {"num_entries": 0},
        {"dropout": 1.5},
        {"retrieval": "argmax"},
        {"retrieval": "softmax", "memory_scale": "paper"},  # the paper's form reads through phi
    ):
        with pytest.raises(ValueError):
            MemVPConfig(visual_dim=4, **bad)


def test_meta_device_model_builds_without_weights():
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(
            LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
        )
    mem = get_memvp_model(lm, MemVPConfig(visual_dim=VIS_DIM, num_entries=6))
    assert mem.visual_memory.key_position.is_meta
    out = mem(
        input_ids=torch.ones(1, 3, dtype=torch.long, device="meta"),
        visual_features=torch.randn(1, 4, VIS_DIM, device="meta"),
    )
    assert out.logits.shape == (1, 3, 64) and out.logits.is_meta


def test_bf16_language_model_keeps_fp32_memory():
    mem = get_memvp_model(tiny_model("llama", dtype=torch.bfloat16), MemVPConfig(visual_dim=VIS_DIM, num_entries=6))
    assert mem.visual_memory.key_position.dtype == torch.float32
    inputs = lm_inputs(mem.language_model)
    out = mem(**inputs, visual_features=torch.randn(2, 4, VIS_DIM), labels=inputs["input_ids"])
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert mem.visual_memory.key_position.grad.dtype == torch.float32


def test_gradient_checkpointing_reaches_the_visual_memory():
    mem = _mem()
    ref = copy.deepcopy(mem)
    inputs = lm_inputs(mem.language_model)
    feats = torch.randn(2, 4, VIS_DIM)
    mem.gradient_checkpointing_enable()
    mem.train(), ref.train()
    for m in (mem, ref):
        m(**inputs, visual_features=feats, labels=inputs["input_ids"]).loss.backward()
    for (n, p), (_, q) in zip(mem.visual_memory.named_parameters(), ref.visual_memory.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_deepcopy_gives_an_independent_model():
    mem = _mem()
    twin = copy.deepcopy(mem)
    with torch.no_grad():
        twin.visual_memory.value_position.mul_(3)
    inputs = lm_inputs(mem.language_model)
    feats = torch.randn(2, 4, VIS_DIM)
    assert not torch.allclose(_logits(mem, inputs, visual_features=feats), _logits(twin, inputs, visual_features=feats))
    assert twin.remove_hooks() is twin.language_model
    torch.testing.assert_close(twin.language_model(**inputs).logits, tiny_model("llama")(**inputs).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_answer_only_logits_give_the_same_loss_and_gradients(arch):
    mem = _mem(arch)
    inputs = lm_inputs(mem.language_model, length=8)
    labels = inputs["input_ids"].clone()
    labels[:, :5] = -100  # prompt
    feats = torch.randn(2, 4, VIS_DIM)
    full = mem(**inputs, visual_features=feats, labels=labels)
    full.loss.backward()
    grads = [p.grad.clone() for p in mem.visual_memory.parameters()]
    mem.zero_grad()
    fast = mem(**inputs, visual_features=feats, labels=labels, answer_logits_only=True)
    fast.loss.backward()
    assert fast.logits.shape == (2 * 3, 64)  # only the 3 labelled positions per row
    torch.testing.assert_close(fast.loss, full.loss)
    for g, p in zip(grads, mem.visual_memory.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_normalize_features_layer_normalises_z_before_the_projector():
    mem = _mem(normalize_features=True, visual_scale=0.5)
    feats = torch.randn(2, 4, VIS_DIM) * 50 + 3
    prompts = mem.visual_memory.prompts(feats)
    expected = 0.5 * mem.visual_memory.projector(torch.nn.functional.layer_norm(feats, (VIS_DIM,)))
    torch.testing.assert_close(prompts[:, :4], expected)
    torch.testing.assert_close(mem.visual_memory.prompts(feats * 7), prompts)  # scale-free


def test_text_and_image_batches_must_match():
    """Issue 12.2: two prompts with one image's features used to broadcast silently."""
    mem = _mem()
    inputs = lm_inputs(mem.language_model, batch=2)
    with pytest.raises(ValueError, match="visual features for 1 sample"):
        mem(**inputs, visual_features=torch.randn(1, 4, VIS_DIM))
    with pytest.raises(ValueError, match="one row of features per prompt"):
        mem.generate(**inputs, visual_features=torch.randn(3, 4, VIS_DIM), max_new_tokens=1)
    # Beam search expands the prompts inside generate(): one row per prompt is still right.
    out = mem.generate(
        **inputs,
        visual_features=torch.randn(2, 4, VIS_DIM),
        max_new_tokens=2,
        num_beams=2,
        do_sample=False,
        pad_token_id=0,
    )
    assert out.shape[0] == 2


def test_memory_of_a_call_does_not_outlive_it():
    """Issue 12.1: the wrapped LM called directly after model(...) used that call's images."""
    mem = _mem()
    inputs = lm_inputs(mem.language_model)
    feats = torch.randn(2, 4, VIS_DIM) * 3
    with torch.no_grad():
        before = mem.language_model(**inputs).logits  # no memory set yet: position entries only
        with_image = mem(**inputs, visual_features=feats).logits
        after = mem.language_model(**inputs).logits
        mem.generate(**inputs, visual_features=feats, max_new_tokens=1, pad_token_id=0)
        after_generate = mem.language_model(**inputs).logits
    assert (with_image - before).abs().max() > 1e-3
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(after_generate, before)
    # An explicitly set memory stays in place for direct calls (memvp.explain and the instruments use it).
    with torch.no_grad():
        mem.set_visual_memory(feats)
        torch.testing.assert_close(mem.language_model(**inputs).logits, with_image)


# ------------------------------------------------------------------ MemVP ablation switches
def test_global_features_give_one_visual_prompt_of_the_mean():
    cfg = dict(visual_dim=VIS_DIM, num_entries=6, dropout=0.0)
    local = get_memvp_model(tiny_model("llama"), MemVPConfig(**cfg))
    glob = get_memvp_model(tiny_model("llama"), MemVPConfig(**cfg, visual_tokens="global"))
    glob.visual_memory.load_state_dict(local.visual_memory.state_dict())
    feats = torch.randn(2, 4, VIS_DIM)
    p_local, p_global = local.visual_memory.prompts(feats), glob.visual_memory.prompts(feats)
    assert torch.all(p_global[:, 1:] == 0) and p_global[:, 0].abs().sum() > 0
    torch.testing.assert_close(p_global[:, 0], glob.visual_memory.prompts(feats.mean(1, keepdim=True))[:, 0])
    assert not torch.allclose(p_local[:, :4], p_global[:, :1].expand(-1, 4, -1))
    assert local.get_nb_trainable_parameters() == glob.get_nb_trainable_parameters()


def test_blocked_entries_are_removed_from_the_memory():
    cfg = MemVPConfig(
        visual_dim=VIS_DIM, num_entries=4, memory_scale="paper", visual_scale=1.0, output_scale=1.0, dropout=0.0
    )
    model = get_memvp_model(tiny_model("llama").double(), cfg).double().eval()
    with torch.no_grad():
        model.visual_memory.value_position.normal_(0, 0.5)
    ids = torch.randint(3, VOCAB, (2, 5))
    feats = torch.randn(2, 4, VIS_DIM, dtype=torch.double)
    blocked = torch.tensor([[True, False, True, False], [False, False, False, True]])
    with torch.no_grad():
        got = model(input_ids=ids, visual_features=feats, blocked_entries=blocked).logits
        plain = model(input_ids=ids, visual_features=feats).logits
        # The same as a memory without those entries: zero their keys *and* values.
        vm = model.visual_memory
        for b in range(2):
            keep = ~blocked[b]
            small = get_memvp_model(
                tiny_model("llama").double(), MemVPConfig(**{**cfg.to_dict(), "num_entries": int(keep.sum())})
            )
            small = small.double().eval()
            small.visual_memory.projector.load_state_dict(vm.projector.state_dict())
            small.visual_memory.key_position.copy_(vm.key_position[:, keep])
            small.visual_memory.value_position.copy_(vm.value_position[:, keep])
            want = small(input_ids=ids[b : b + 1], visual_features=feats[b : b + 1, keep]).logits
            torch.testing.assert_close(got[b : b + 1], want)
    assert not torch.allclose(got, plain)
    with pytest.raises(ValueError, match="blocked_entries must have 4 entries"):
        model(input_ids=ids, visual_features=feats, blocked_entries=blocked[:, :3])
