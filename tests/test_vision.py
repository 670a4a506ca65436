"""Vision encoders on tiny configs, and the paper's parameter counts on the meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5ForConditionalGeneration,
)

from memvp import HFVisionEncoder, MemVPConfig, PrecomputedFeatures, get_memvp_model, load_features, load_image
from memvp.vision import box_coverage, grid_region, grid_side_of

TINY_VIT = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=16, patch_size=4
)


def _images(n=2, size=20):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_patch_features_of_penultimate_layer_without_cls():
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    enc = HFVisionEncoder(clip, processor)
    pixels = enc.preprocess(_images())
    feats = enc(pixels)
    assert feats.shape == (2, 16, 32) and enc.num_tokens == 16 and enc.feature_dim == 32
    hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats, hidden[-2][:, 1:])
    torch.testing.assert_close(enc.encode(_images()), feats)


def test_siglip_has_no_cls_to_drop():
    torch.manual_seed(0)
    siglip = SiglipVisionModel(SiglipVisionConfig(**TINY_VIT)).eval()
    enc = HFVisionEncoder(siglip, feature_layer=-1)
    assert enc(torch.randn(1, 3, 16, 16)).shape == (1, 16, 32)


def test_vit_adapters_start_as_identity_and_are_the_only_trainable_part():
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).eval()
    pixels = torch.randn(2, 3, 16, 16)
    plain = HFVisionEncoder(clip)(pixels).detach()
    enc = HFVisionEncoder(clip, adapter_hidden=12).eval()
    assert len(enc.adapters) == 2  # layers 0 and 1 feed the penultimate hidden state
    torch.testing.assert_close(enc(pixels), plain)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {f"adapters.{i}.{w}.weight" for i in range(2) for w in ("down", "up")}
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=1.0)
    enc(pixels).pow(2).mean().backward()
    opt.step()
    assert not torch.allclose(enc(pixels), plain)


def test_image_and_feature_files_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(bad)
    good = tmp_path / "f.safetensors"
    save_file({"features": torch.randn(49, 8)}, str(good))
    assert load_features(good, 8).shape == (49, 8)
    with pytest.raises(ValueError, match=r"f.safetensors.*\[n_visual, 16\]"):
        load_features(good, 16)
    np.save(tmp_path / "g.npy", np.ones((4, 8), dtype=np.float32))
    pre = PrecomputedFeatures(8, 49)
    with pytest.raises(ValueError, match="different numbers of tokens"):
        pre.encode([good, tmp_path / "g.npy"])
    assert pre.encode([good, good]).shape == (2, 49, 8)
    (tmp_path / "h.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="h.pt"):
        load_features(tmp_path / "h.pt")


def _count(mem):
    return mem.get_nb_trainable_parameters()[0]


def _llama_with_clip(hidden, intermediate, layers, heads, n):
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(
            LlamaConfig(
                vocab_size=32000,
                hidden_size=hidden,
                intermediate_size=intermediate,
                num_hidden_layers=layers,
                num_attention_heads=heads,
            )
        )
        vit = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=14,
                image_size=224,
            )
        )
    enc = HFVisionEncoder(vit, adapter_hidden=12)
    return get_memvp_model(
        lm, MemVPConfig(visual_dim=1024, num_entries=n, projector_hidden=128, memory_scale="paper"), enc
    )


# Hand counts: shared p^k, p^v (2 n d) + projector 1024 -> 128 -> d with biases
# + bias-free ViT adapters 1024 -> 12 -> 1024 in the 23 blocks that feed the penultimate layer.
_ADAPTERS = 23 * 2 * 1024 * 12


@pytest.mark.parametrize(
    "hidden,intermediate,layers,heads,n,paper",
    [
        (4096, 11008, 32, 32, 320, 3.9e6),  # LLaMA-7B, Table 2
        (5120, 13824, 40, 40, 400, 5.5e6),  # LLaMA-13B, Table 2
    ],
)
def test_llama_parameter_counts_match_table_2(hidden, intermediate, layers, heads, n, paper):
    mem = _llama_with_clip(hidden, intermediate, layers, heads, n)
    expected = 2 * n * hidden + (1024 * 128 + 128 + 128 * hidden + hidden) + _ADAPTERS
    assert _count(mem) == expected
    assert abs(expected - paper) / paper < 0.02  # 3.85M vs 3.9M, 5.45M vs 5.5M: see the README


def test_t5_and_bart_base_parameter_counts_match_table_1():
    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(
            T5Config(
                vocab_size=32128, d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, feed_forward_proj="relu"
            )
        )
        bart = BartForConditionalGeneration(
            BartConfig(
                vocab_size=50265,
                d_model=768,
                encoder_layers=6,
                decoder_layers=6,
                encoder_attention_heads=12,
                decoder_attention_heads=12,
                encoder_ffn_dim=3072,
                decoder_ffn_dim=3072,
            )
        )
    cfg = MemVPConfig(visual_dim=2048, num_entries=240, projector="linear", memory_scale="paper")
    projector = 2048 * 768 + 768
    t5_count = _count(get_memvp_model(t5, cfg))
    assert t5_count == 12 * 2 * 240 * 768 + projector == 5_997_312  # paper: 6.00M
    bart_count = _count(get_memvp_model(bart, cfg))
    assert bart_count == 6 * 2 * 240 * 768 + projector == 3_785_472  # paper: 3.78M
    assert round(t5_count / 1e6, 2) == 6.00 and abs(bart_count / 1e6 - 3.78) < 0.01


def test_official_clip_features_post_layernorm_imagenet_norm_and_squash():
    """The official MemVP CLIP: blocks but the last, ln_post on the patch tokens, images squashed to the
    tower's square (torchvision Resize((s, s)), bicubic) and normalised with ImageNet's mean / std."""
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    official = HFVisionEncoder(clip, processor, post_layernorm=True, normalization="imagenet", resize="squash")
    image = _images(1, size=20)[0].resize((30, 20))  # not square: a crop and a squash differ
    pixels = official.preprocess([image])
    by_hand = np.asarray(image.resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255.0
    by_hand = (by_hand - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    torch.testing.assert_close(pixels[0], torch.from_numpy(by_hand.transpose(2, 0, 1)).float(), atol=1e-5, rtol=0)
    assert not torch.allclose(pixels, HFVisionEncoder(clip, processor).preprocess([image]))
    hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    tower = getattr(clip, "vision_model", clip)  # transformers 5 flattened CLIPVisionModel
    torch.testing.assert_close(official(pixels), tower.post_layernorm(hidden[-2][:, 1:]))
    # Another preprocessing is another feature cache.
    assert official.name != HFVisionEncoder(clip, processor).name and "ln_post" in official.name
    with pytest.raises(ValueError, match="vision.normalization must be one of"):
        HFVisionEncoder(clip, processor, normalization="imagenet-ish")


def test_vit_adapter_gradients_are_the_same_with_gradient_checkpointing():
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 16, 16)

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        enc = HFVisionEncoder(CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)), adapter_hidden=4, adapter_dropout=0.0)
        with torch.no_grad():
            for a in enc.adapters:
                a.up.weight.normal_()
        if checkpointing:
            enc.gradient_checkpointing_enable()
        enc.train()
        enc(pixels).pow(2).sum().backward()
        return enc, [p.grad for p in enc.parameters() if p.requires_grad]

    enc, checkpointed = grads(True)
    assert enc.model.is_gradient_checkpointing
    _, plain = grads(False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(checkpointed, plain))


def _crop_clip(**options):
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return HFVisionEncoder(CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)), processor, **options)  # 4 x 4 grid


def test_grid_region_follows_the_centre_crop_unless_squashed():
    clip = _crop_clip()
    assert grid_region(clip, 32, 16) == (8.0, 0.0, 24.0, 16.0)
    assert grid_region(clip, 40, 80) == (0.0, 20.0, 40.0, 60.0)
    assert grid_region(_crop_clip(resize="squash"), 32, 16) == (0.0, 0.0, 32.0, 16.0)
    assert grid_region(object(), 32, 16) == (0.0, 0.0, 32.0, 16.0)  # squashed whole (EfficientNet)


def test_box_coverage_is_the_share_of_each_grid_cell_inside_the_box():
    squash = _crop_clip(resize="squash")
    # the top-left quarter of a 64 x 32 image, squashed onto the 4 x 4 grid: cells (0..1, 0..1) whole
    got = box_coverage(squash, (0.0, 0.0, 0.5, 0.5), 64, 32).reshape(4, 4)
    want = torch.zeros(4, 4)
    want[:2, :2] = 1.0
    assert torch.equal(got, want)
    # a box over half of cell (0, 0) horizontally and a quarter of cell (1, 0)'s height... by hand
    got = box_coverage(squash, (0.125, 0.0, 0.25, 0.3125), 64, 32).reshape(4, 4)
    want = torch.zeros(4, 4)
    want[0, 0], want[1, 0] = 0.5, 0.125
    assert torch.allclose(got, want)
    # centre crop of a 32 x 16 image: the grid covers x 8..24; the box's left half lies outside it
    got = box_coverage(_crop_clip(), (0.0, 0.0, 0.5, 0.25), 32, 16).reshape(4, 4)
    want = torch.zeros(4, 4)
    want[0, :2] = 1.0  # x 8..16 of the crop = its columns 0-1; y 0..4 = row 0
    assert torch.equal(got, want)
    assert not box_coverage(_crop_clip(), (0.0, 0.0, 0.2, 1.0), 32, 16).any()  # wholly outside the crop


def test_grid_side_is_none_where_tokens_are_not_image_cells():
    assert grid_side_of(_crop_clip()) == 4
    assert grid_side_of(PrecomputedFeatures(8, 16)) is None
    assert grid_side_of(PrecomputedFeatures(8, 16, num_frames=4)) is None
    assert box_coverage(PrecomputedFeatures(8, 16), (0.0, 0.0, 1.0, 1.0), 10, 10) is None
