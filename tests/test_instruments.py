"""memory_scale='ffn' (the visual memory in the LM's own scale) and the instruments that check it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import lm_inputs, tiny_model

from memvp import MemVPConfig, get_memvp_model
from memvp.instruments import (
    RESIDUAL_WARNING,
    answer_positions,
    first_answer_positions,
    format_report,
    grounding_loss,
    measure_scale,
    measure_selectivity,
    summary,
    warning,
)
from memvp.save_load import model_card

VIS_DIM, N_VIS = 12, 4


def _ffn_model(arch="llama", **cfg):
    return get_memvp_model(tiny_model(arch), MemVPConfig(visual_dim=VIS_DIM, num_entries=N_VIS, dropout=0.0, **cfg))


@pytest.mark.parametrize(
    "arch,key,value", [("llama", "mlp.up_proj", "mlp.down_proj"), ("gpt2", None, None), ("bart", "fc1", "fc2")]
)
def test_ffn_scale_reads_key_rows_and_value_columns_of_each_layer(arch, key, value):
    mem = _ffn_model(arch)
    cfg = mem.memvp_config
    assert len(cfg.key_norms) == len(cfg.value_norms) == len(mem.sites)
    if arch == "gpt2":  # Conv1D weights are [in, out]: key rows are columns of c_fc
        layer = mem.language_model.transformer.h[0]
        k, v = layer.mlp.c_fc.weight.t(), layer.mlp.c_proj.weight
    else:
        layers = mem.language_model.model.layers if arch == "llama" else mem.language_model.model.encoder.layers
        k = layers[0].get_submodule(key).weight
        v = layers[0].get_submodule(value).weight.t()
    assert cfg.key_norms[0] == pytest.approx(float(k.norm(dim=1).median()))
    assert cfg.value_norms[0] == pytest.approx(float(v.norm(dim=1).median()))
    d = mem.language_model.config.hidden_size
    assert mem.entry_gains[0][0] == pytest.approx(cfg.key_norms[0] / d**0.5)


@pytest.mark.parametrize("retrieval", ["activation", "softmax"])
def test_ffn_scale_equals_its_equation_and_starts_as_the_frozen_lm(retrieval):
    """FFN + s g a_v sum_i phi(a_k e^t <x, u_i + p^k_i>) (u_i + p^v_i), u = RMS-normalised f(LN(z));
    retrieval='softmax': phi is a softmax over the entries and s = 1."""
    base = tiny_model("llama", dtype=torch.float64)
    config = MemVPConfig(visual_dim=VIS_DIM, num_entries=N_VIS + 1, dropout=0.0, retrieval=retrieval)
    mem = get_memvp_model(copy.deepcopy(base), config).double().eval()
    inputs = lm_inputs(base, batch=1)
    feats = torch.randn(1, N_VIS, VIS_DIM, dtype=torch.float64) * 30
    with torch.no_grad():
        torch.testing.assert_close(mem(**inputs, visual_features=feats).logits, base(**inputs).logits)  # gate 0
        vm = mem.visual_memory
        vm.output_gate.normal_(0, 1.0)
        vm.key_log_gain.normal_(0, 0.5)
        vm.value_position.normal_(0, 1.0)
        got = mem(**inputs, visual_features=feats).logits
        u = vm.projector(F.layer_norm(feats[0], (VIS_DIM,)))
        u = u / u.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        u = torch.cat([u, u.new_zeros(1, u.shape[1])])  # zero-padded to num_entries
        s, d = mem.memvp_config.output_scale, base.config.hidden_size
        assert s == pytest.approx(1.0 if retrieval == "softmax" else 1 / (N_VIS + 1) ** 0.5)
        ref = copy.deepcopy(base)
        for i, layer in enumerate(ref.model.layers):
            ak, av = mem.memvp_config.key_norms[i] / d**0.5, mem.memvp_config.value_norms[i] / d**0.5
            keys = ak * vm.key_log_gain[i].exp() * (u + vm.key_position[0])
            values = av * (u + vm.value_position[0])
            original = layer.mlp.forward
            act = (lambda scores: scores.softmax(-1)) if retrieval == "softmax" else layer.mlp.act_fn

            def forward(x, original=original, act=act, keys=keys, values=values, g=vm.output_gate[i]):
                return original(x) + s * g * act(x @ keys.T) @ values

            layer.mlp.forward = forward
        torch.testing.assert_close(got, ref(**inputs).logits, rtol=1e-9, atol=1e-9)


def test_ffn_scale_survives_save_and_load_and_a_meta_device_build(tmp_path):
    mem = _ffn_model()
    with torch.no_grad():
        mem.visual_memory.output_gate.fill_(0.7)
    mem.save_pretrained(tmp_path)
    other = tiny_model("llama", seed=5)  # other weights: the saved gains must win over re-reading
    loaded = type(mem).from_pretrained(other, tmp_path, allow_base_mismatch=True)
    assert loaded.memvp_config.key_norms == mem.memvp_config.key_norms
    assert loaded.entry_gains == mem.entry_gains
    assert torch.equal(loaded.visual_memory.output_gate, mem.visual_memory.output_gate)
    with torch.device("meta"):
        meta_lm = tiny_model("llama")
    meta = get_memvp_model(meta_lm, MemVPConfig(visual_dim=VIS_DIM, num_entries=N_VIS))
    assert meta.visual_memory.output_gate.is_meta and meta.memvp_config.key_norms is None
    with pytest.raises(ValueError, match="key_norms must be a list of positive numbers"):
        MemVPConfig(visual_dim=VIS_DIM, key_norms=[1.0, -2.0])


def test_ffn_prompts_do_not_depend_on_the_feature_scale():
    mem = _ffn_model()
    feats = torch.randn(2, N_VIS, VIS_DIM)
    prompts = mem.visual_memory.prompts(feats)
    torch.testing.assert_close(mem.visual_memory.prompts(feats * 200 + 5), prompts, rtol=1e-4, atol=1e-4)
    rms = prompts.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)


def test_measure_scale_sees_a_silent_memory_and_a_dominating_one():
    mem = _ffn_model()
    inputs = lm_inputs(mem.language_model, batch=2)
    batch = {**inputs, "visual_features": torch.randn(2, N_VIS, VIS_DIM)}
    quiet = measure_scale(mem, batch)
    assert quiet["residual_ratio"] == pytest.approx([1.0] * len(mem.sites))
    assert quiet["max_memory_to_ffn"] == 0.0 and not quiet["dominates"] and warning(quiet) is None
    with torch.no_grad():
        mem.visual_memory.output_gate.fill_(500.0)
    mem.train()
    loud = measure_scale(mem, batch)
    assert mem.training  # measured in eval mode, mode restored
    assert loud["max_residual_ratio"] > RESIDUAL_WARNING and loud["dominates"]
    assert loud["max_memory_to_ffn"] > 1.0
    assert "dominates the residual stream" in warning(loud, "at step 3")
    assert "warning above 2" in format_report(loud)
    assert set(summary(loud)) == {
        "residual_ratio_max",
        "memory_to_ffn_max",
        "memory_to_ffn_mean",
        "positive_scores_mean",
        "top_share_mean",
    }
    # The memory was not left behind: the next plain forward has the memory and no probe.
    assert mem._probe is None and not mem._bypass


def _two_token_task(n: int, vocab: int, seed: int):
    """Prompt: 5 random tokens; the image's class c (its features) picks the answer's first token
    10 + c, whose fixed follower 20 + c is the second token: a text-only LM can learn token 2, not 1."""
    centres = torch.randn(3, VIS_DIM, generator=torch.Generator().manual_seed(123)) * 3  # same in every split
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (n,), generator=g)
    feats = centres[classes].unsqueeze(1).repeat(1, N_VIS, 1) + 0.1 * torch.randn(n, N_VIS, VIS_DIM, generator=g)
    prompt = torch.randint(30, vocab, (n, 5), generator=g)
    ids = torch.cat([prompt, (10 + classes)[:, None], (20 + classes)[:, None]], 1)
    labels = torch.full_like(ids, -100)
    labels[:, 5:] = ids[:, 5:]
    return ids, labels, feats


def _train(mem, ids, labels, feats, use_images: bool, steps: int, lr: float):
    opt = torch.optim.AdamW([p for p in mem.parameters() if p.requires_grad], lr=lr)
    worst = 1.0
    for step in range(steps):
        idx = torch.arange(step * 16, step * 16 + 16) % ids.shape[0]
        batch = {"input_ids": ids[idx], "labels": labels[idx]}
        if use_images:
            batch["visual_features"] = feats[idx]
        mem(**batch, answer_logits_only=True).loss.backward()
        opt.step()
        opt.zero_grad()
        if use_images and step % 10 == 9:
            worst = max(worst, measure_scale(mem, batch)["max_residual_ratio"])
    return worst


def _token_accuracy(mem, ids, labels, feats, position: int, use_images: bool) -> float:
    with torch.no_grad():
        logits = mem(input_ids=ids, visual_features=feats if use_images else None).logits
    return float((logits[:, position - 1].argmax(-1) == ids[:, position]).float().mean())


def test_high_lr_keeps_the_residual_in_scale_and_the_second_answer_token():
    """With phi: the position-only memory is an extra FFN that learns the text-only follower token
    (a softmax memory is a reader and does not, in these 60 steps: docs/memory_scale.md 6.5)."""
    torch.manual_seed(0)
    vocab = tiny_model("llama").config.vocab_size
    ids, labels, feats = _two_token_task(320, vocab, seed=0)
    test = _two_token_task(96, vocab, seed=1)
    runs = {}
    for use_images in (True, False):
        torch.manual_seed(0)
        mem = _ffn_model()
        worst = _train(mem, ids, labels, feats, use_images, steps=60, lr=0.02)  # 18x the paper's lr
        mem.eval()
        runs[use_images] = (worst, _token_accuracy(mem, *test, 6, use_images))
    (worst, second), (_, second_ablation) = runs[True], runs[False]
    assert worst < RESIDUAL_WARNING
    assert second >= second_ablation - 0.02 and second_ablation > 0.5  # the follower token is not lost


def test_paper_scale_at_a_high_lr_is_caught_by_the_instruments():
    """The same task with eq. 7 as written, lambda = s = 1: the memory swamps the residual stream."""
    vocab = tiny_model("llama").config.vocab_size
    ids, labels, feats = _two_token_task(320, vocab, seed=0)
    torch.manual_seed(0)
    mem = _ffn_model(memory_scale="paper", visual_scale=1.0, output_scale=1.0)
    worst = _train(mem, ids, labels, feats, True, steps=60, lr=0.02)
    assert worst > RESIDUAL_WARNING


def test_centred_features_subtract_the_training_mean_and_reload_with_it(tmp_path):
    """center_features: z - feature_mean before everything else, the mean kept in the saved config;
    without a mean set the model refuses to guess."""
    mem = _ffn_model(center_features=True)
    plain = _ffn_model()
    plain.visual_memory.load_state_dict(mem.visual_memory.state_dict())
    feats = torch.randn(2, N_VIS, VIS_DIM)
    with pytest.raises(ValueError, match="center_features is on but feature_mean is not set"):
        mem.visual_memory.prompts(feats)
    assert mem.needs_feature_mean and not plain.needs_feature_mean
    common = torch.randn(VIS_DIM) * 50  # one large direction shared by every feature
    mem.set_feature_mean(feats + common)
    assert not mem.needs_feature_mean
    torch.testing.assert_close(mem.memvp_config.feature_mean, (feats + common).mean(dim=(0, 1)).tolist())
    centred = feats - feats.mean(dim=(0, 1))
    torch.testing.assert_close(mem.visual_memory.prompts(feats + common), plain.visual_memory.prompts(centred))
    mem.save_pretrained(tmp_path)
    loaded = type(mem).from_pretrained(tiny_model("llama"), tmp_path)
    torch.testing.assert_close(loaded.visual_memory.prompts(feats + common), mem.visual_memory.prompts(feats + common))
    meta = mem._adapter_metadata()
    meta["config"]["feature_mean"] = [0.5] * 1024  # a real encoder's width: summarised on the model card
    card = model_card(meta, "MemVPModel", 10)
    assert '"feature_mean": "<1024 numbers, in the config file>"' in card and "    0.5,\n" not in card
    with pytest.raises(ValueError, match="feature_mean must be null or visual_dim=12 finite numbers"):
        MemVPConfig(visual_dim=VIS_DIM, feature_mean=[0.0] * 3)
    with pytest.raises(ValueError, match="features for the mean must end in visual_dim=12"):
        mem.set_feature_mean(torch.zeros(4, 5))


# ----------------------------------------------------------------------------- selectivity
def _selective_model(key_gain=0.0, **cfg):
    mem = _ffn_model(**cfg).eval()
    with torch.no_grad():
        mem.visual_memory.output_gate.fill_(1.0)
        mem.visual_memory.key_log_gain.fill_(key_gain)
    return mem


def test_answer_positions_are_the_tokens_before_labelled_ones_or_the_last_attended():
    ids = torch.arange(12).reshape(2, 6)
    labels = torch.full_like(ids, -100)
    labels[0, 4:6], labels[1, 3] = 1, 1
    got = answer_positions({"input_ids": ids, "labels": labels})
    assert got.nonzero().tolist() == [[0, 3], [0, 4], [1, 2]]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # right padding
    assert answer_positions({"input_ids": ids, "attention_mask": mask}).nonzero().tolist() == [[0, 3], [1, 5]]
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding (generation)
    assert answer_positions({"input_ids": ids, "attention_mask": left}).nonzero().tolist() == [[0, 5], [1, 5]]


def test_first_answer_positions_keep_each_rows_first_answer_predicting_token():
    ids = torch.arange(12).reshape(2, 6)
    labels = torch.full_like(ids, -100)
    labels[0, 3:6], labels[1, 2:4] = 1, 1  # a three- and a two-token answer
    assert first_answer_positions({"input_ids": ids, "labels": labels}).nonzero().tolist() == [[0, 2], [1, 1]]
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # no labels: the last attended token
    assert first_answer_positions({"input_ids": ids, "attention_mask": mask}).nonzero().tolist() == [[0, 3], [1, 5]]


@pytest.mark.parametrize(
    "mask",
    [
        torch.tensor([[True, False, False, False], [False, True, True, False]]),
        torch.tensor([[1.0, 0.25, 0.0, 0.0], [0.0, 0.5, 1.0, 0.0]]),  # coverage: each entry weighed by it
    ],
)
@pytest.mark.parametrize("retrieval", ["activation", "softmax"])
def test_selectivity_equals_the_weight_share_on_the_marked_entries_over_uniform(mask, retrieval):
    mem = _selective_model(retrieval=retrieval)
    inputs = lm_inputs(mem.language_model, batch=2)
    feats = torch.randn(2, N_VIS, VIS_DIM)
    got = measure_selectivity(mem, {**inputs, "visual_features": feats}, mask)
    # by hand: the last token's weights phi(<x, K_i>) in each MemVP layer, captured with a hook
    captured = []
    hooks = [
        site.ffn_input.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
        for site in mem.sites
    ]  # the FFN input x: the input of ffn_input (architectures.py)
    with torch.no_grad():
        mem(**inputs, visual_features=feats)
    for h in hooks:
        h.remove()
    for index, (site, x) in enumerate(zip(mem.sites, captured)):
        keys, _ = mem.visual_memory.entries(mem.visual_memory.prompts(feats), site.table)
        key_gain, _ = mem.site_gains(index)
        with torch.no_grad():
            scores = x[:, -1:] @ keys.transpose(-1, -2) * key_gain
            w = (scores.softmax(-1) if retrieval == "softmax" else site.activation(scores)).abs()[:, 0]  # [B, n]
        share = (w * mask).sum(-1) / w.sum(-1)
        uniform = mask.sum(-1) / N_VIS
        assert got["asked_share"][site.name] == pytest.approx(float(share.mean()), rel=1e-4)
        assert got["asked_uniform"][site.name] == pytest.approx(float(uniform.mean()))
        assert got["selectivity"][site.name] == pytest.approx(float((share / uniform).mean()), rel=1e-4)
    assert got["max_selectivity"] == max(got["selectivity"].values())


def test_selectivity_sees_a_memory_that_reads_the_asked_entries():
    """Keys that single out entry 0 for every query (a large component pointing along the queries) put
    almost all the weight there: selectivity near n for a one-entry mask, below 1 for the others."""
    mem = _selective_model()
    inputs = lm_inputs(mem.language_model, batch=2)
    feats = torch.randn(2, N_VIS, VIS_DIM)
    captured = []
    hooks = [
        site.ffn_input.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
        for site in mem.sites
    ]
    with torch.no_grad():
        mem(**inputs, visual_features=feats)
        for h in hooks:
            h.remove()
        # entry 0's key position: 50x the mean query direction of every layer's last tokens
        direction = torch.stack([x[:, -1].mean(0) for x in captured]).mean(0)
        mem.visual_memory.key_position[0, 0] = 50 * direction / direction.norm()
    first = torch.zeros(2, N_VIS, dtype=torch.bool)
    first[:, 0] = True
    got = measure_selectivity(mem, {**inputs, "visual_features": feats}, first)
    assert got["max_selectivity"] > 0.5 * N_VIS
    other = measure_selectivity(mem, {**inputs, "visual_features": feats}, ~first)
    assert min(other["selectivity"].values()) < 1.0


def test_selectivity_rides_on_measure_scale_and_its_report():
    mem = _selective_model()
    inputs = lm_inputs(mem.language_model, batch=2)
    batch = {**inputs, "visual_features": torch.randn(2, N_VIS, VIS_DIM)}
    mask = torch.tensor([[True, True, False, False], [False, False, False, False]])  # row 2: no object asked
    report = measure_scale(mem, batch, entry_mask=mask)
    alone = measure_selectivity(mem, batch, mask)
    assert report["selectivity"] == pytest.approx(alone["selectivity"])
    assert report["asked_uniform"][mem.sites[0].name] == pytest.approx(0.5)  # row 1 only
    assert summary(report)["selectivity_max"] == pytest.approx(report["max_selectivity"])
    # the same at each row's first answer token (here the rows' last tokens, as there are no labels)
    first = measure_selectivity(mem, batch, mask, positions=first_answer_positions(batch))
    assert report["first_token_selectivity"] == pytest.approx(first["selectivity"])
    assert summary(report)["selectivity_first_max"] == pytest.approx(first["max_selectivity"])
    labelled = {**batch, "labels": torch.full_like(batch["input_ids"], -100)}
    labelled["labels"][:, -3:] = 1  # a two-token answer + EOS: three positions, the first of them alone
    both = measure_scale(mem, labelled, entry_mask=mask)
    query = torch.zeros_like(labelled["input_ids"], dtype=torch.bool)
    query[:, -4] = True
    by_hand = measure_selectivity(mem, labelled, mask, query)["selectivity"]
    assert both["first_token_selectivity"] == pytest.approx(by_hand)
    assert both["first_token_selectivity"] != pytest.approx(both["selectivity"])
    assert "first answer token" in format_report(both) and "first answer token" not in format_report(report)
    assert "asked object / uniform" in format_report(report)
    assert "selectivity" not in measure_scale(mem, batch)  # no mask, no selectivity
    with pytest.raises(ValueError, match="entry_mask"):
        measure_selectivity(mem, batch, torch.ones(2, N_VIS + 3, dtype=torch.bool))


def test_selectivity_is_among_the_images_entries_not_the_position_only_padding():
    """num_entries > visual tokens: the extra entries hold positions only. A memory whose image
    entries all have the same key reads the image uniformly (selectivity 1), whatever weight the
    padding entries take; counting them in would make it look n / n_visual times selective."""
    mem = get_memvp_model(tiny_model("llama"), MemVPConfig(visual_dim=VIS_DIM, num_entries=4 * N_VIS, dropout=0.0))
    with torch.no_grad():
        mem.visual_memory.output_gate.fill_(1.0)
        mem.visual_memory.key_position[:, :N_VIS] = 0.0  # the image's keys: its (identical) prompts only
    inputs = lm_inputs(mem.language_model, batch=2)
    same = torch.randn(1, 1, VIS_DIM).expand(2, N_VIS, VIS_DIM)  # one feature everywhere
    mask = torch.tensor([[True, False, False, False], [False, True, True, False]])
    got = measure_selectivity(mem, {**inputs, "visual_features": same}, mask)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in got["selectivity"].values())
    assert got["asked_uniform"][mem.sites[0].name] == pytest.approx((1 / 4 + 2 / 4) / 2)


def test_the_grounding_loss_is_the_asked_share_and_trains_retrieval_towards_it():
    mem = _selective_model()
    inputs = lm_inputs(mem.language_model, batch=2)
    batch = {**inputs, "visual_features": torch.randn(2, N_VIS, VIS_DIM)}
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]])
    query = answer_positions(batch)
    before = measure_selectivity(mem, batch, mask)
    with torch.no_grad(), mem.probing(mask) as sites:
        mem(**batch)
    # by hand: -log(asked share) at the last tokens, averaged over rows, then over MemVP layers
    share = {s: before["asked_share"][s] for s in before["asked_share"]}
    got = grounding_loss(sites, query, mask)
    by_hand = torch.stack([-(site["asked_share"][query.reshape(-1)] + 1e-6).log().mean() for site in sites]).mean()
    assert float(got) == pytest.approx(float(by_hand)) and all(0 < v < 1 for v in share.values())
    assert grounding_loss(sites, query, torch.zeros_like(mask)) is None  # nobody asks about one object
    # trained on the grounding loss alone, retrieval leans towards the marked entries
    mem.train()
    optimizer = torch.optim.Adam([p for p in mem.parameters() if p.requires_grad], lr=0.05)
    for _ in range(20):
        with mem.probing(mask) as sites:
            mem(**batch)
        loss = grounding_loss(sites, query, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = measure_selectivity(mem.eval(), batch, mask)
    assert after["max_selectivity"] > 2 * before["max_selectivity"] and after["max_selectivity"] > 2.5


@pytest.mark.parametrize("arch", ["gpt2", "bart"])
def test_selectivity_on_other_layouts(arch):
    mem = _selective_model(arch=arch)
    inputs = lm_inputs(mem.language_model, batch=2)
    mask = torch.tensor([[True, False, False, False], [False, False, True, True]])
    got = measure_selectivity(mem, {**inputs, "visual_features": torch.randn(2, N_VIS, VIS_DIM)}, mask)
    assert len(got["selectivity"]) == len(mem.sites)
    assert all(v > 0 for v in got["selectivity"].values())
