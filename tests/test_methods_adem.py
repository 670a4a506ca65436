"""ADEM-VL-style fusion (methods/adem): the fusion against its literal formula, adaptive dropping,
the global token's place, frozen-LM equivalence, training, save/load, batched generation, counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, tiny_model, train_steps

from memvp.methods.adem import AdemConfig, AdemModel, fusion_weights, trainable_parameter_count

VIS_DIM, GRID = 12, 4
N_PATCH = GRID * GRID  # scales [1, 2] on a 4 x 4 grid: 16 + 4 = 20 entries


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only contend (10-100x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _adem(arch="llama", dtype=torch.float32, value_std=0.5, **overrides):
    cfg = dict(visual_dim=VIS_DIM, num_patches=N_PATCH, rank=8)
    cfg.update(overrides)
    model = AdemModel(tiny_model(arch, dtype=dtype), AdemConfig(**cfg)).eval()
    if value_std:
        with torch.no_grad():  # p^v starts at 0 (as ADEM-VL); give it something to carry
            model.visual.value_position.normal_(0, value_std)
    return model


def _feats(batch=2, dtype=torch.float32, extra=0):
    return torch.randn(batch, N_PATCH + extra, VIS_DIM, dtype=dtype)


def test_fusion_in_a_layer_is_the_literal_formula_float64():
    alpha, beta = 0.3, 0.5
    model = _adem(dtype=torch.float64, visual_scale=beta, output_scale=alpha, drop_ratio=0.1)
    vis = model.visual
    vis.double()
    with torch.no_grad():
        vis.key_position.normal_(0, 0.5)
    mlp = model.language_model.model.layers[1].mlp
    seen = {}
    mlp.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))  # runs after ADEM's
    ids = torch.randint(3, VOCAB, (2, 5))
    z = _feats(dtype=torch.float64)
    with torch.no_grad():
        model(input_ids=ids, visual_features=z)
        x = seen["x"]
        fc1, fc2 = vis.projector[0], vis.projector[2]
        for b in range(2):
            cells = [z[b, i] for i in range(N_PATCH)]  # scale 1: every patch
            for i in range(2):  # scale 2: the mean of each 2 x 2 block of the row-major 4 x 4 grid
                for j in range(2):
                    block = [z[b, (2 * i + di) * GRID + 2 * j + dj] for di in (0, 1) for dj in (0, 1)]
                    cells.append(sum(block) / 4)
            e = torch.stack([beta * fc2(F.silu(fc1(c))) for c in cells])  # [20, d]
            keys = F.silu(e + vis.key_position[0])
            values = e + vis.value_position[0]
            for t in range(x.shape[1]):
                scores = (F.silu(x[b, t]) * keys).sum(-1)  # [20]
                scores[scores.argsort()[:2]] = 0.0  # floor(0.1 * 20) = 2 lowest dropped
                want = mlp.forward(x[b, t]) + alpha * (scores.unsqueeze(-1) * values).sum(0)
                torch.testing.assert_close(seen["out"][b, t], want, rtol=1e-10, atol=1e-12)
    assert model.adem_config.num_entries == 20 and model.adem_config.num_dropped == 2


def test_drop_ratio_removes_exactly_the_lowest_scoring_entries_per_token():
    x, keys = torch.randn(2, 7, 16), torch.randn(2, 10, 16)
    raw = F.silu(x) @ keys.transpose(1, 2)
    kept = fusion_weights(x, keys, 3)
    for b in range(2):
        for t in range(7):
            lowest = set(raw[b, t].argsort()[:3].tolist())
            zeroed = {i for i in range(10) if kept[b, t, i] == 0}
            assert zeroed == lowest
            others = [i for i in range(10) if i not in lowest]
            assert torch.equal(kept[b, t, others], raw[b, t, others])
    assert torch.equal(fusion_weights(x, keys, 0), raw)
    assert AdemConfig(visual_dim=4, num_patches=256, scales=[1, 2], drop_ratio=0.1).num_dropped == 32  # ADEM's 320


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_untrained_model_without_images_is_the_frozen_lm(arch):
    """p^v starts at 0 (ADEM-VL's adapter_emb2): image-less samples get nothing from the fusion, and
    their global-token slot is masked out without shifting positions."""
    model, frozen = _adem(arch, value_std=0), tiny_model(arch)
    ids = torch.randint(3, VOCAB, (2, 6))
    feats = _feats()
    with torch.no_grad():
        want = frozen(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        blind = model(input_ids=ids, visual_features=feats, has_image=torch.tensor([False, False])).logits
        torch.testing.assert_close(blind[:, 1:], want, rtol=1e-5, atol=1e-5)
        mixed = model(input_ids=ids, visual_features=feats, has_image=torch.tensor([True, False])).logits
        torch.testing.assert_close(mixed[1, 1:], want[1], rtol=1e-5, atol=1e-5)
        assert (mixed[0, 1:] - want[0]).abs().max() > 1e-4
        # ... and with alpha = 0 and no global token, images change nothing either.
        silent = _adem(arch, output_scale=0.0, global_token="none")
        torch.testing.assert_close(silent(input_ids=ids, visual_features=feats).logits, want, rtol=1e-5, atol=1e-5)


def test_global_token_goes_after_a_leading_bos_and_labels_shift():
    model = _adem()
    bos = model.config.bos_token_id
    ids = torch.tensor([[0, bos, 7, 8], [5, 6, 7, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])  # left-padded with BOS, right-padded without
    labels = torch.tensor([[-100, -100, -100, 8], [-100, -100, 7, -100]])
    feats = _feats()
    inputs = model.lm_inputs(ids, mask, feats, None, labels)
    token = model.visual.global_tokens(feats)
    embed = model.language_model.get_input_embeddings()
    torch.testing.assert_close(inputs["inputs_embeds"][0, 2], token[0, 0])
    torch.testing.assert_close(inputs["inputs_embeds"][1, 0], token[1, 0])
    torch.testing.assert_close(inputs["inputs_embeds"][0, [0, 1, 3, 4]], embed(ids[0]))
    assert inputs["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert inputs["labels"].tolist() == [[-100, -100, -100, -100, 8], [-100, -100, -100, 7, -100]]
    assert inputs["position_ids"].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3]]
    # An image-less row: the slot is masked, in front of everything attended.
    blind = model.lm_inputs(ids, mask, feats, torch.tensor([False, True]), generation=True)
    assert blind["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5-relu"])
def test_training_a_few_steps_lowers_the_loss_and_only_adem_trains(arch):
    torch.manual_seed(0)
    model = _adem(arch, value_std=0, visual_scale=1.0, output_scale=1.0)
    base = {n: p.clone() for n, p in model.language_model.named_parameters()}
    ids = torch.randint(3, VOCAB, (4, 6))
    feats = _feats(4)
    if model.config.is_encoder_decoder:
        batch = {"input_ids": ids, "labels": torch.randint(3, VOCAB, (4, 3))}
    else:
        labels = torch.full_like(ids, -100)
        labels[:, -2:] = ids[:, -2:]
        batch = {"input_ids": ids, "labels": labels}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "visual." + n for n, _ in model.visual.named_parameters()
    }
    losses = train_steps(model, 12, 1e-1, **batch, visual_features=feats, answer_logits_only=True)
    assert losses[-1] < losses[0] - 0.3, losses  # random labels: ln(64) = 4.16 at start
    for n, p in model.language_model.named_parameters():
        assert torch.equal(p, base[n]), n


def test_answer_logits_only_and_gradient_checkpointing_give_the_same_loss_and_gradients():
    model = _adem()
    model.train()
    ref = copy.deepcopy(model)
    ids = torch.randint(3, VOCAB, (2, 7))
    labels = ids.clone()
    labels[:, :4] = -100
    feats = _feats()
    ref(input_ids=ids, labels=labels, visual_features=feats).loss.backward()
    model.gradient_checkpointing_enable()
    out = model(input_ids=ids, labels=labels, visual_features=feats, answer_logits_only=True)
    out.loss.backward()
    assert out.logits.shape == (2 * 3, VOCAB)
    for (n, p), (_, q) in zip(model.visual.named_parameters(), ref.visual.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_save_load_round_trip_and_another_base_is_refused(tmp_path):
    model = _adem(drop_ratio=0.2, scales=[1, 2, 4])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "a")
    loaded = AdemModel.from_pretrained(tiny_model("llama"), tmp_path / "a")
    assert loaded.adem_config == model.adem_config and not any(p.requires_grad for p in loaded.parameters())
    ids, feats = torch.randint(3, VOCAB, (2, 5)), _feats()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, visual_features=feats).logits,
            model(input_ids=ids, visual_features=feats).logits,
            rtol=0,
            atol=0,
        )
    trainable = AdemModel.from_pretrained(tiny_model("llama"), tmp_path / "a", is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] > 0
    with pytest.raises(ValueError, match="other weights"):
        AdemModel.from_pretrained(tiny_model("llama", seed=1), tmp_path / "a")
    with pytest.raises(ValueError, match="saved for a llama model"):
        AdemModel.from_pretrained(tiny_model("gpt2"), tmp_path / "a")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_batched_left_padded_generation_matches_one_by_one(arch):
    model = _adem(arch, visual_scale=1.0, output_scale=1.0)
    bos = model.config.bos_token_id if arch == "llama" else 5  # llama: BOS-led prompt, token after it
    feats = _feats(3)
    prompts = [torch.tensor([[9, 10, 11]]), torch.tensor([[bos, 12, 13, 14, 15]]), torch.tensor([[20, 21, 22, 23]])]
    width = 5
    ids = torch.cat([F.pad(p, (width - p.shape[1], 0)) for p in prompts])
    mask = torch.cat([F.pad(torch.ones_like(p), (width - p.shape[1], 0)) for p in prompts])
    has_image = torch.tensor([True, True, False])
    for extra in ({}, {"num_beams": 2}):
        kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, **extra)
        batched = model.generate(input_ids=ids, attention_mask=mask, visual_features=feats, has_image=has_image, **kw)
        assert batched[:, :width].tolist() == ids.tolist()  # prompt (as given, padded) + new tokens
        for row, single in enumerate(prompts):
            alone = model.generate(
                input_ids=single, visual_features=feats[row : row + 1], has_image=has_image[row : row + 1], **kw
            )
            assert batched[row, width:].tolist() == alone[0, single.shape[1] :].tolist(), (row, extra)


def test_generate_with_kv_cache_matches_full_forwards_and_entries_are_built_once():
    model = _adem(visual_scale=1.0, output_scale=1.0)
    calls = []
    model.visual.projector.register_forward_hook(lambda *a: calls.append(1))
    ids, feats = torch.randint(3, VOCAB, (2, 5)), _feats()
    out = model.generate(input_ids=ids, visual_features=feats, max_new_tokens=4, do_sample=False)
    assert len(calls) == 1  # once for the whole generation, not once per decoding step
    with torch.no_grad():
        for t in range(ids.shape[1], out.shape[1]):
            logits = model(input_ids=out[:, :t], visual_features=feats).logits
            assert torch.equal(logits[:, -1].argmax(-1), out[:, t])


@pytest.mark.parametrize("global_token", ["mean", "first", "none"])
def test_trainable_parameter_count_is_the_formula(global_token):
    extra = 1 if global_token == "first" else 0
    model = _adem(global_token=global_token, scales=[1, 2, 4])
    d, r, n_entries = 32, 8, 16 + 4 + 1
    projection = VIS_DIM * r + r + r * d + d
    want = (2 if global_token != "none" else 1) * projection + 2 * n_entries * d
    assert model.get_nb_trainable_parameters()[0] == want == trainable_parameter_count(model.adem_config, d)
    with torch.no_grad():  # the features' row count follows global_token
        model(input_ids=torch.randint(3, VOCAB, (2, 4)), visual_features=_feats(extra=extra))


def test_config_round_trip_and_clear_errors():
    cfg = AdemConfig(visual_dim=8, num_patches=49, scales=[1, 2, 7])
    assert AdemConfig.from_json(cfg.to_json()) == cfg
    assert cfg.grid_sizes == [7, 4, 1] and cfg.num_entries == 49 + 16 + 1
    assert AdemConfig(visual_dim=8, num_patches=10, scales=[1]).num_entries == 10
    for bad, match in [
        ({"scales": [2, 2]}, "distinct"),
        ({"scales": []}, "scales"),
        ({"scales": [0]}, "scales"),
        ({"num_patches": 10}, "square"),
        ({"drop_ratio": 1.0}, r"\[0, 1\)"),
        ({"global_token": "cls"}, "global_token"),
        ({"rank": 0}, "rank"),
        ({"target_layers": []}, "target_layers"),
        ({"bogus": 1}, "Unknown"),
    ]:
        with pytest.raises(ValueError, match=match):
            AdemConfig.from_dict({"visual_dim": 8, **bad})
    model = _adem()
    with pytest.raises(ValueError, match="num_patches"):
        model(input_ids=torch.randint(3, VOCAB, (2, 4)), visual_features=torch.randn(2, 9, VIS_DIM))
    with pytest.raises(ValueError, match="one row of features per prompt"):
        model(input_ids=torch.randint(3, VOCAB, (2, 4)), visual_features=_feats(1))
    with pytest.raises(ValueError, match="visual_dim"):
        model(input_ids=torch.randint(3, VOCAB, (2, 4)), visual_features=torch.randn(2, N_PATCH, 5))


def test_entries_of_a_call_do_not_outlive_it_and_bf16_lm_keeps_fp32_weights():
    model = _adem()
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        model(input_ids=ids, visual_features=_feats())
        after = model.language_model(input_ids=ids).logits  # a direct call: no image, position entries only
        torch.testing.assert_close(after, model(input_ids=ids).logits)
    half = _adem(dtype=torch.bfloat16)
    half.train()
    labels = ids.clone()
    half(input_ids=ids, labels=labels, visual_features=_feats()).loss.backward()
    for n, p in half.visual.named_parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all(), n
