"""The paper's baselines in the same harness: input-space (LLaVA-LoRA) and text-only, plus the
Table 4 ablation switches that were added with them (global features, blocked entries)."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_model, train_steps

from memvp import MemVPConfig, get_memvp_model
from memvp.methods import build_model, load_adapter
from memvp.methods.common import insert_tokens
from memvp.methods.input_space import BaselineConfig, InputSpaceModel

VIS_DIM, N_VIS = 12, 4


def _input_space(arch="llama", **overrides):
    cfg = dict(method="input_space", visual_dim=VIS_DIM, lora_dropout=0.0)
    cfg.update(overrides)
    return InputSpaceModel(tiny_model(arch), BaselineConfig(**cfg)).eval()


def test_insert_visual_tokens_keeps_each_row_one_contiguous_block():
    d = 2
    embeds = torch.arange(1, 9, dtype=torch.float).view(2, 4, 1).expand(-1, -1, d)  # rows 1..4, 5..8
    mask = torch.tensor(
        [
            [0, 0, 1, 1],  # left-padded (generation)
            [1, 1, 1, 0],
        ]
    )  # right-padded (training)
    labels = torch.tensor([[-100, -100, -100, 7], [-100, -100, 9, -100]])
    visual = -torch.ones(2, 2, d)
    out, out_mask, out_labels = insert_tokens(
        embeds, mask, visual, torch.ones(2, 2, dtype=torch.long), mask.argmax(dim=1), labels
    )
    assert out[..., 0].tolist() == [[1, 2, -1, -1, 3, 4], [-1, -1, 5, 6, 7, 8]]
    assert out_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    assert out_labels.tolist() == [[-100, -100, -100, -100, -100, 7], [-100, -100, -100, -100, 9, -100]]


def test_input_space_forward_is_the_lm_on_visual_then_text_embeddings():
    model = _input_space()
    ids = torch.randint(3, VOCAB, (2, 5))
    feats = torch.randn(2, N_VIS, VIS_DIM)
    with torch.no_grad():
        # Give LoRA a non-zero B so that the adapted LM differs from the base.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        got = model(input_ids=ids, visual_features=feats).logits
        lm = model.language_model
        embeds = torch.cat([model.projector(feats), lm.get_input_embeddings()(ids)], dim=1)
        want = lm(inputs_embeds=embeds).logits
    torch.testing.assert_close(got, want)
    assert got.shape == (2, N_VIS + 5, VOCAB)


def test_image_less_samples_see_no_visual_tokens():
    model = _input_space()
    ids = torch.randint(3, VOCAB, (2, 5))
    feats = torch.randn(2, N_VIS, VIS_DIM)
    with torch.no_grad():
        mixed = model(input_ids=ids, visual_features=feats, has_image=torch.tensor([True, False])).logits
        blind = model(input_ids=ids[1:]).logits
        seeing = model(input_ids=ids[:1], visual_features=feats[:1]).logits
    torch.testing.assert_close(mixed[1, N_VIS:], blind[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[0], seeing[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "t5-relu"])
def test_batched_left_padded_generation_matches_one_by_one(arch):
    model = _input_space(arch)
    feats = torch.randn(2, N_VIS, VIS_DIM)
    short, long_ = torch.randint(3, VOCAB, (1, 3)), torch.randint(3, VOCAB, (1, 5))
    encdec = model.config.is_encoder_decoder
    pad = torch.zeros(1, 2, dtype=torch.long)
    ids = torch.cat([torch.cat([short, pad], 1) if encdec else torch.cat([pad, short], 1), long_])
    mask = (torch.arange(5) >= (0 if encdec else 2)).long().unsqueeze(0)
    mask = torch.cat([mask if not encdec else (torch.arange(5) < 3).long().unsqueeze(0), torch.ones(1, 5).long()])
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    batched = model.generate(input_ids=ids, attention_mask=mask, visual_features=feats, **kw)
    for row, single in enumerate((short, long_)):
        alone = model.generate(input_ids=single, visual_features=feats[row : row + 1], **kw)
        if encdec:
            assert batched[row, : alone.shape[1]].tolist() == alone[0].tolist()
        else:  # prompt (as given, padded) + new tokens, like MemVPModel.generate
            assert batched[row, 5:].tolist() == alone[0, single.shape[1] :].tolist()
            assert batched[row, :5].tolist() == ids[row].tolist()


def test_text_only_ignores_images_and_trains_lora_only():
    model = build_model("text_only", tiny_model("llama"), visual_dim=VIS_DIM, baseline={"lora_dropout": 0.0})
    assert model.projector is None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        a = model(input_ids=ids, visual_features=torch.randn(2, N_VIS, VIS_DIM)).logits
        b = model(input_ids=ids).logits
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["memvp", "input_space", "text_only"])
@pytest.mark.parametrize("arch", ["llama", "t5-relu"])
def test_every_method_learns_a_few_steps(method, arch):
    torch.manual_seed(0)
    model = build_model(
        method,
        tiny_model(arch),
        visual_dim=VIS_DIM,
        memvp={"num_entries": N_VIS, "dropout": 0.0, "memory_scale": "paper", "visual_scale": 1.0, "output_scale": 1.0},
        baseline={"lora_dropout": 0.0, "lora_r": 4},
    )
    ids = torch.randint(3, VOCAB, (4, 6))
    feats = torch.randn(4, N_VIS, VIS_DIM)
    if model.config.is_encoder_decoder:
        batch = {"input_ids": ids, "labels": torch.randint(3, VOCAB, (4, 3))}
    else:
        labels = torch.full_like(ids, -100)
        labels[:, -2:] = ids[:, -2:]
        batch = {"input_ids": ids, "labels": labels}
    losses = train_steps(model, 12, 1e-1, **batch, visual_features=feats, answer_logits_only=True)
    assert losses[-1] < losses[0] - 0.3, losses  # random labels: ln(64) = 4.16 at start


def test_answer_logits_only_gives_the_same_loss_for_input_space():
    model = _input_space()
    ids = torch.randint(3, VOCAB, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[:, -2:] = ids[:, -2:]
    feats = torch.randn(2, N_VIS, VIS_DIM)
    with torch.no_grad():
        full = model(input_ids=ids, labels=labels, visual_features=feats).loss
        fast = model(input_ids=ids, labels=labels, visual_features=feats, answer_logits_only=True).loss
    torch.testing.assert_close(full, fast)


def test_save_load_round_trip_and_dispatch(tmp_path):
    model = _input_space()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    model.save_pretrained(tmp_path / "a")
    loaded = load_adapter(tiny_model("llama"), tmp_path / "a")
    assert isinstance(loaded, InputSpaceModel) and not any(p.requires_grad for p in loaded.parameters())
    ids, feats = torch.randint(3, VOCAB, (2, 5)), torch.randn(2, N_VIS, VIS_DIM)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, visual_features=feats).logits, model(input_ids=ids, visual_features=feats).logits
        )
    memvp = get_memvp_model(tiny_model("llama"), MemVPConfig(visual_dim=VIS_DIM, num_entries=N_VIS))
    memvp.save_pretrained(tmp_path / "m")
    assert type(load_adapter(tiny_model("llama"), tmp_path / "m")).__name__ == "MemVPModel"
    with pytest.raises(ValueError, match="saved for a llama model"):
        load_adapter(tiny_model("gpt2"), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="holds no adapter"):
        load_adapter(tiny_model("llama"), tmp_path / "nothing")


def test_bad_baseline_configs_and_features():
    with pytest.raises(ValueError, match="visual_dim must be positive"):
        BaselineConfig(method="input_space")
    with pytest.raises(ValueError, match="method must be one of"):
        build_model("llava", tiny_model("llama"), visual_dim=VIS_DIM)
    with pytest.raises(ValueError, match="Unknown BaselineConfig key"):
        BaselineConfig.from_dict({"method": "text_only", "rank": 4})
    with pytest.raises(ValueError, match="visual_dim=12"):
        _input_space()(input_ids=torch.randint(3, VOCAB, (1, 4)), visual_features=torch.randn(1, 3, 7))


def test_input_space_lora_exports_as_peft_and_merges(tmp_path):
    from peft import PeftModel

    model = _input_space()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        text_only = model(input_ids=ids).logits  # the LM with LoRA, no visual tokens
        with_image = model(input_ids=ids, visual_features=torch.randn(2, N_VIS, VIS_DIM)).logits
    model.save_peft_adapter(tmp_path / "peft")
    peft = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, text_only)
    model.merge_lora()
    assert not any("lora_" in n for n, _ in model.language_model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, text_only, atol=1e-5, rtol=1e-5)
    assert with_image.shape[1] == text_only.shape[1] + N_VIS
