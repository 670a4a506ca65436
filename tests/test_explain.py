"""Knowledge-locating maps and knowledge distortion (memvp.explain, memvp.explain_plot) on tiny models."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from PIL import Image
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from memvp import MemVPConfig, get_memvp_model
from memvp.cli import main
from memvp.datasets import Sample
from memvp.explain import (
    blocked_mask,
    encode_prompt,
    explain,
    generate_answer,
    group_words,
    hottest_cells,
    similarity_maps,
    top_entries,
)
from memvp.explain_plot import plot_explanation
from memvp.inputs import DEFAULT_PROMPT_TEMPLATE, encode_sample
from memvp.recipes.scenes import Scene, SceneObject, draw_scene

CHARS = "abcdefghijklmnopqrstuvwxyzAWIH ?:\n"
SILU_MIN = -0.2785  # min of x * sigmoid(x)
QUESTION = "What shape is the red object?"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: every word is several tokens, spaces and '?' belong to none."""
    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "</s>", *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def memvp_model(n_entries: int = 12, visual_dim: int = 8, lm=None, **config):
    """Tiny Llama + MemVP with lambda = s = 1 and random position embeddings, so that the memory
    visibly changes the model (the paper's initialisation adds nothing before training)."""
    lm = lm if lm is not None else tiny_model("llama")
    model = get_memvp_model(
        lm,
        MemVPConfig(
            visual_dim=visual_dim,
            num_entries=n_entries,
            memory_scale="paper",
            visual_scale=1.0,
            output_scale=1.0,
            **config,
        ),
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.visual_memory.key_position.copy_(torch.randn(model.visual_memory.key_position.shape, generator=g))
        model.visual_memory.value_position.copy_(
            0.5 * torch.randn(model.visual_memory.value_position.shape, generator=g)
        )
    return model.eval()


def features(n_visual: int = 9, dim: int = 8, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, n_visual, dim, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- words
def test_group_words_joins_subword_tokens_and_skips_punctuation():
    question = "What shape is the orange object?"
    # GPT-2 style: leading spaces inside the tokens, "orange" split in two, a BOS spanning (0, 0).
    offsets = [(0, 0), (0, 4), (4, 10), (10, 13), (13, 17), (17, 20), (20, 24), (24, 31), (31, 32), (32, 33)]
    words = group_words(question, offsets)
    assert [(w.text, w.tokens) for w in words] == [
        ("What", (1,)),
        ("shape", (2,)),
        ("is", (3,)),
        ("the", (4,)),
        ("orange", (5, 6)),
        ("object", (7,)),
    ]
    # The question inside a template: word spans shift by where the question starts.
    shifted = [(s + 3, e + 3) for s, e in offsets[1:]]
    assert [w.tokens for w in group_words(question, shifted, question_start=3)] == [
        (0,),
        (1,),
        (2,),
        (3,),
        (4, 5),
        (6,),
    ]


def test_encode_prompt_is_the_training_prompt():
    tok = char_tokenizer()
    enc = encode_prompt(tok, QUESTION)
    train = encode_sample(tok, Sample(id="q", prompt=QUESTION, answers=[]), 128, with_answer=False)
    assert enc.input_ids == train.prompt_ids
    assert enc.prompt == DEFAULT_PROMPT_TEMPLATE.format(prompt=QUESTION)
    assert [w.text for w in enc.words] == ["What", "shape", "is", "the", "red", "object"]
    shape = enc.words[1]
    assert shape.tokens == (5, 6, 7, 8, 9)  # one token per character
    assert "".join(tok.convert_ids_to_tokens([enc.input_ids[i] for i in shape.tokens])) == "shape"
    with pytest.raises(ValueError, match="too long"):
        encode_prompt(tok, QUESTION, max_length=20)
    with pytest.raises(ValueError, match="empty"):
        encode_prompt(tok, "  ")
    with pytest.raises(ValueError, match="no \\{prompt\\}"):
        encode_prompt(tok, QUESTION, template="Answer:")


@pytest.mark.slow
def test_words_with_the_real_smollm2_tokenizer():
    from transformers import AutoTokenizer

    from memvp.pretrained import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())  # converted from the GGUF on first use (~20 s)
    enc = encode_prompt(tok, "Is the yellowish thingamajig left-most?")
    assert [w.text for w in enc.words] == ["Is", "the", "yellowish", "thingamajig", "left-most"]
    assert max(len(w.tokens) for w in enc.words) > 1  # some word is several subword tokens
    for w in enc.words:
        assert tok.decode([enc.input_ids[i] for i in w.tokens]).strip() == w.text


# ----------------------------------------------------------------------------- maps
def test_similarity_maps_shapes_ranges_and_averaging():
    model, tok, feats = memvp_model(), char_tokenizer(), features()
    maps = similarity_maps(model, tok, feats, QUESTION)
    n_tokens = len(maps.encoded.input_ids)
    assert maps.per_layer.shape == (2, n_tokens, 3, 3)  # 9 visual tokens of 12 entries: a 3 x 3 grid
    assert maps.token_maps.shape == (n_tokens, 3, 3) and maps.word_maps.shape == (6, 3, 3)
    assert maps.site_names == ["decoder.0", "decoder.1"]
    assert np.isfinite(maps.per_layer).all() and maps.per_layer.min() >= SILU_MIN
    assert maps.per_layer.std() > 1e-3  # the maps do vary over entries
    np.testing.assert_allclose(maps.token_maps, maps.per_layer.mean(axis=0), rtol=1e-6)
    red = maps.words[4]
    np.testing.assert_allclose(maps.word_maps[4], maps.token_maps[list(red.tokens)].mean(axis=0), rtol=1e-6)
    assert not np.allclose(maps.word_maps[4], maps.word_maps[1])  # words differ
    np.testing.assert_allclose(maps.mean_map, maps.word_maps.mean(axis=0), rtol=1e-6)

    only = similarity_maps(model, tok, feats, QUESTION, words=["RED", "shape"])
    assert [w.text for w in only.words] == ["shape", "red"]  # question order, case-insensitive
    np.testing.assert_allclose(only.word_maps, maps.word_maps[[1, 4]], rtol=1e-6)
    with pytest.raises(ValueError, match="not in the question"):
        similarity_maps(model, tok, feats, QUESTION, words=["blue"])

    magnitude = maps.magnitude()
    assert magnitude.absolute and magnitude.per_layer.min() >= 0
    np.testing.assert_allclose(magnitude.token_maps, np.abs(maps.per_layer).mean(axis=0), rtol=1e-6)


def test_similarity_is_phi_of_ffn_input_and_visual_prompt_without_position():
    model, tok, feats = memvp_model(), char_tokenizer(), features()
    maps = similarity_maps(model, tok, feats, QUESTION)
    # Our own capture of the FFN inputs during an ordinary forward with the memory in place.
    ids = torch.tensor([maps.encoded.input_ids])
    seen = []
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        for layer in model.language_model.model.layers
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), visual_features=feats)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        prompt = 1.0 * model.visual_memory.projector(feats)  # lambda f(z), lambda = 1 here
    for layer, x in enumerate(seen):
        expected = F.silu(x[0] @ prompt[0].T).reshape(-1, 3, 3).numpy()
        np.testing.assert_allclose(maps.per_layer[layer], expected, rtol=1e-4, atol=1e-6)

    # The position embeddings are not part of the similarity (layer 0 is unchanged), but the
    # memory is in place (layer 1 reads layer 0's retrieval, which they change).
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.visual_memory.key_position.add_(1.0)
    other = similarity_maps(moved, tok, feats, QUESTION)
    np.testing.assert_allclose(other.per_layer[0], maps.per_layer[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(other.per_layer[1], maps.per_layer[1], atol=1e-4)

    # Entry i is grid cell i (row-major): permuting the visual tokens permutes layer 0's map.
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    permuted = similarity_maps(model, tok, feats[:, perm], QUESTION)
    flat = maps.per_layer[0].reshape(len(seen[0][0]), 9)
    np.testing.assert_allclose(permuted.per_layer[0].reshape(-1, 9), flat[:, perm.numpy()], rtol=1e-5, atol=1e-6)


# The FFN input modules (by hand, not via memvp's registry) and the FFN activation phi of each architecture.
_FFN_INPUTS = {
    "gpt2": lambda lm: [layer.mlp for layer in lm.transformer.h],
    "opt": lambda lm: [layer.fc1 for layer in lm.model.decoder.layers],  # input flattened to [B * L, d]
    "bart": lambda lm: [layer.fc1 for layer in lm.model.encoder.layers],
    "t5-gated": lambda lm: [block.layer[1].DenseReluDense for block in lm.encoder.block],
}
_PHI = {
    "gpt2": lambda x: F.gelu(x, approximate="tanh"),
    "opt": F.relu,
    "bart": F.gelu,
    "t5-gated": lambda x: F.gelu(x, approximate="tanh"),
}


@pytest.mark.parametrize("arch", ["gpt2", "opt", "bart", "t5-gated"])
def test_other_architectures(arch):
    """OPT flattens the FFN input; on encoder-decoders the prompt is read by the encoder's layers."""
    model, tok, feats = memvp_model(lm=tiny_model(arch)), char_tokenizer(), features()
    result = explain(model, tok, feats, QUESTION, block_top=1, max_new_tokens=2)
    maps, ids = result.maps, result.maps.encoded.input_ids
    assert maps.per_layer.shape == (2, len(ids), 3, 3)
    stack = "encoder" if model.config.is_encoder_decoder else "decoder"
    assert maps.site_names == [f"{stack}.0", f"{stack}.1"]

    # Each layer's map is phi(<x, lambda f(z_i)>) (lambda = 1) of that layer's FFN input x during an
    # ordinary forward with the memory in place, for the 9 visual tokens (not the 3 padding entries).
    batch = {"input_ids": torch.tensor([ids]), "visual_features": feats}
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.tensor([[model.config.decoder_start_token_id]])
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        for m in _FFN_INPUTS[arch](model.language_model)
    ]
    try:
        with torch.no_grad():
            full = model(**batch).logits
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        prompt = model.visual_memory.projector(feats)[0]
    assert len(seen) == 2
    for layer, x in enumerate(seen):
        expected = _PHI[arch](x.reshape(-1, x.shape[-1]) @ prompt.T).reshape(-1, 3, 3).numpy()
        np.testing.assert_allclose(maps.per_layer[layer], expected, rtol=1e-4, atol=1e-6)

    # The blocked entry is the hottest cell of the mean map; the blocked answer is that of a model
    # whose blocked entry reads nothing (V_i = lambda f(z_i) + p^v_i = 0 in every layer's table).
    assert result.blocked == [int(maps.mean_map.argmax())]
    assert result.answer == generate_answer(model, tok, ids, feats, max_new_tokens=2)
    removed = copy.deepcopy(model)
    entry = result.blocked[0]
    with torch.no_grad():
        removed.visual_memory.value_position[:, entry] = -removed.visual_memory.prompts(feats)[0, entry]
        blocked = model(**batch, blocked_entries=blocked_mask(model, result.blocked)).logits
        reference = removed(**batch).logits
    torch.testing.assert_close(blocked, reference, rtol=1e-4, atol=1e-5)
    assert (blocked - full).abs().max() > 1e-4  # blocking does change the output
    assert result.answer_blocked == generate_answer(removed, tok, ids, feats, max_new_tokens=2)


def test_non_square_visual_tokens_are_a_clear_error():
    with pytest.raises(ValueError, match="square grid"):
        similarity_maps(memvp_model(), char_tokenizer(), features(n_visual=6), QUESTION)


def test_hottest_cells_and_top_entries():
    maps = np.zeros((2, 3, 3))
    maps[0, 2, 1] = 5.0
    maps[1] -= 1.0
    maps[1, 0, 2] = -0.1  # all negative: the largest is the one nearest 0
    assert hottest_cells(maps).tolist() == [[2, 1], [0, 2]]
    assert hottest_cells(maps[0]).tolist() == [2, 1]
    score = np.array([[0.1, 0.9, 0.3], [0.8, -1.0, 0.2], [0.0, 0.5, 0.7]])
    assert top_entries(score, 3) == [1, 3, 8]
    assert top_entries(score, 0) == []
    with pytest.raises(ValueError, match="cannot block 10"):
        top_entries(score, 10)


# ----------------------------------------------------------------------------- blocking
def test_blocking_top_k_equals_removing_those_entries_from_memory():
    model, tok, feats = memvp_model(), char_tokenizer(), features()
    result = explain(model, tok, feats, QUESTION, block_top=2, max_new_tokens=4)
    assert result.blocked == top_entries(result.maps.mean_map, 2)
    assert sorted(result.maps.mean_map.reshape(-1).argsort()[-2:].tolist()) == sorted(result.blocked)

    mask = blocked_mask(model, result.blocked)
    assert mask.shape == (1, 12) and mask.sum() == 2 and mask[0, result.blocked].all()
    # Blocking sets phi(x K_i^T) = 0, so entry i adds nothing: the same as a memory whose
    # values V_i = lambda f(z_i) + p^v_i are zero for the blocked entries.
    removed = copy.deepcopy(model)
    with torch.no_grad():
        prompts = removed.visual_memory.prompts(feats)
        for i in result.blocked:
            removed.visual_memory.value_position[0, i] = -prompts[0, i]
    ids = torch.tensor([result.maps.encoded.input_ids])
    with torch.no_grad():
        blocked = model(input_ids=ids, visual_features=feats, blocked_entries=mask).logits
        reference = removed(input_ids=ids, visual_features=feats).logits
        plain = model(input_ids=ids, visual_features=feats).logits
    torch.testing.assert_close(blocked, reference, rtol=1e-4, atol=1e-5)
    assert (blocked - plain).abs().max() > 1e-3  # and it does change the output
    assert result.answer_blocked == generate_answer(
        removed, tok, result.maps.encoded.input_ids, feats, max_new_tokens=4
    )
    assert result.answer == generate_answer(model, tok, result.maps.encoded.input_ids, feats, max_new_tokens=4)

    with pytest.raises(ValueError, match="out of range"):
        blocked_mask(model, [12])
    concat = memvp_model(position_mode="concat")
    assert blocked_mask(concat, [0, 3]).shape == (1, 24)
    with pytest.raises(ValueError, match="block_top"):
        explain(model, tok, feats, QUESTION, block_top=-1)


def test_explain_leaves_training_mode_and_hooks_as_they_were():
    model, tok, feats = memvp_model(), char_tokenizer(), features()
    model.train()
    hooks = {name: len(m._forward_pre_hooks) for name, m in model.named_modules()}
    a = similarity_maps(model, tok, feats, QUESTION)
    b = similarity_maps(model, tok, feats, QUESTION)  # dropout on: would differ if not in eval
    np.testing.assert_array_equal(a.per_layer, b.per_layer)
    assert model.training
    assert hooks == {name: len(m._forward_pre_hooks) for name, m in model.named_modules()}


# ----------------------------------------------------------------------------- drawing and the command
def test_plot_writes_a_png_atomically(tmp_path):
    model, tok, feats = memvp_model(), char_tokenizer(), features()
    result = explain(model, tok, feats, QUESTION, words=["shape", "red"], block_top=2, max_new_tokens=2)
    image = Image.new("RGB", (60, 40), (200, 30, 30))
    out = plot_explanation(image, result, tmp_path / "maps.png", region=(10.0, 0.0, 50.0, 40.0))
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.png"]  # no temporary file left
    plot_explanation(image, dataclasses.replace(result, maps=result.maps.magnitude(), blocked=[]), tmp_path / "abs.png")
    assert (tmp_path / "abs.png").stat().st_size > 0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LM (character tokenizer), a tiny CLIP (4 x 4 patches) and a MemVP adapter on disk."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    tok = char_tokenizer()
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        )
    ).save_pretrained(root / "vit")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    memvp_model(n_entries=16, visual_dim=16, lm=lm).save_pretrained(root / "adapter")
    memvp_model(n_entries=16, visual_dim=8, lm=lm).save_pretrained(root / "adapter8")
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    )
    memvp_model(n_entries=16, visual_dim=16, lm=other).save_pretrained(root / "foreign")
    draw_scene(Scene([SceneObject("red", "square", 60, 60), SceneObject("blue", "circle", 160, 150)])).save(
        root / "scene.png"
    )
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _args(root, *extra):
    return [
        "explain",
        "--adapter",
        str(root / "adapter"),
        "--image",
        str(root / "scene.png"),
        "--question",
        QUESTION,
        "--language-model",
        str(root / "lm"),
        "--vision-encoder",
        str(root / "vit"),
        "--output",
        str(root / "out.png"),
        "--max-new-tokens",
        "3",
        *extra,
    ]


def test_explain_command(saved, capsys):
    assert main(_args(saved, "--block-top", "2", "--tokens", "red", "shape")) == 0
    printed = capsys.readouterr().out
    assert "answer: " in printed and "top 2 entries blocked" in printed and "4x4 grid" in printed
    assert "shape (" in printed and "red (" in printed and "What (" not in printed
    with Image.open(saved / "out.png") as png:
        assert png.format == "PNG"
    assert "asked object / uniform" not in printed  # no box given, no selectivity


def test_explain_command_prints_the_selectivity_on_the_asked_box(saved, capsys):
    # the red square: centre (60, 60), 28 px, of the 224 px scene
    assert main(_args(saved, "--asked-box", f"{46 / 224},{46 / 224},{74 / 224},{74 / 224}")) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if "asked object / uniform" in x)
    values = [float(v) for v in line.split(": ")[1].split(" (")[0].split()]
    assert len(values) == 2 and all(0 < v < 16 for v in values)  # two MemVP layers, 16 entries


def test_explain_command_reads_the_place_a_question_names_as_its_box(saved, capsys):
    assert main(_args(saved, "--question", "What shape is in the top left?")) == 0  # the last --question wins
    printed = capsys.readouterr().out
    assert "the part of the image the question names, (x0, y0, x1, y1) = (0.0, 0.0, 0.5, 0.5)" in printed
    line = next(x for x in printed.splitlines() if "asked object / uniform" in x)
    assert len(line.split(": ")[1].split(" (")[0].split()) == 2  # both MemVP layers


def test_explain_selectivity_is_the_instruments_on_the_boxed_cells(saved):
    from memvp.instruments import measure_selectivity
    from memvp.loading import load_pretrained
    from memvp.vision import box_coverage

    loaded = load_pretrained(saved / "adapter", str(saved / "lm"), str(saved / "vit"))
    image = Image.open(saved / "scene.png")
    coverage = box_coverage(loaded.vision_encoder, (0.2, 0.2, 0.34, 0.34), *image.size)
    feats = loaded.vision_encoder.encode([image])
    result = explain(loaded.model, loaded.tokenizer, feats, QUESTION, asked_entries=coverage, max_new_tokens=2)
    ids = torch.tensor([list(result.maps.encoded.input_ids)])
    direct = measure_selectivity(loaded.model, {"input_ids": ids, "visual_features": feats}, coverage[None])
    assert result.scale["selectivity"] == pytest.approx(direct["selectivity"])
    assert result.summary()["scale"]["max_selectivity"] == pytest.approx(direct["max_selectivity"])
    with pytest.raises(ValueError, match="marks no entry"):
        explain(loaded.model, loaded.tokenizer, feats, QUESTION, asked_entries=torch.zeros(16))


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--image", "missing.png"), "image not found"),
        (("--image", "broken.png"), "cannot read image"),
        (("--adapter", "nowhere"), "holds no adapter"),
        (("--adapter", "adapter8"), "expects 8-d visual features"),
        (("--adapter", "foreign"), "saved for a llama model"),
        (("--max-length", "20"), "too long"),
        (("--tokens", "green"), "not in the question"),
        (("--block-top", "-1"), "block-top"),
        (("--block-top", "17"), "cannot block 17"),
        (("--question", " "), "empty"),
        (("--asked-box", "0.5,0.1,0.2,0.3"), "--asked-box: asked_box is"),
        (("--asked-box", "a,b,c,d"), "--asked-box: asked_box is"),
    ],
)
def test_explain_command_bad_input(saved, capsys, extra, message):
    flag, value = extra
    if flag in ("--image", "--adapter"):
        value = str(saved / value)
    assert main(_args(saved, flag, value)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]
