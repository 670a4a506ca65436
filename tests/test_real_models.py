"""Integration on the real pretrained models shipped on PyPI: SmolLM2-135M-Instruct and EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data

from memvp import EfficientNetLite0Encoder, MemVPConfig, get_memvp_model
from memvp.pretrained import load_smollm2

pytestmark = pytest.mark.slow  # every test here loads the real weights


@pytest.fixture(scope="module")
def vision():
    return EfficientNetLite0Encoder()


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_efficientnet_lite0_is_really_pretrained(vision):
    cat = Image.fromarray(data.chelsea())
    pixels = vision.preprocess([cat])
    assert pixels.shape == (1, 3, 224, 224)
    with torch.no_grad():
        feats = vision(pixels)
        logits = vision.model(pixels)  # the full ImageNet classifier
    assert feats.shape == (1, 49, 1280)
    assert 281 <= int(logits.argmax()) <= 287  # ImageNet's domestic / wild cat classes


def test_memvp_on_smollm2_forward_backward(vision, smollm2):
    lm, tokenizer = smollm2
    assert lm.config.model_type == "llama" and lm.config.hidden_size == 576
    with torch.no_grad():
        feats = vision.encode([Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea())])
    model = get_memvp_model(lm, MemVPConfig(visual_dim=1280, num_entries=64))
    assert len(model.sites) == 30
    lm_before = {k: v.clone() for k, v in lm.state_dict().items() if "layers.0." in k}
    batch = tokenizer(
        ["Who is in the photo? An astronaut.", "What animal is this? A cat."], return_tensors="pt", padding=True
    )
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    out = model(**batch, visual_features=feats, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad and all(n.startswith("visual_memory.") for n in with_grad)
    # memory_scale='ffn' starts with every gate at 0 (the frozen LM): only the gates get a gradient
    # at first; one step later every part of the memory does.
    grads = {n: p.grad.abs().sum() for n, p in model.visual_memory.named_parameters()}
    assert grads.pop("output_gate") > 0 and all(g == 0 for g in grads.values())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    opt.step()
    opt.zero_grad()
    model(**batch, visual_features=feats, labels=labels).loss.backward()
    assert all(p.grad.abs().sum() > 0 for p in model.visual_memory.parameters())
    opt.step()
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in lm_before.items())
    model.remove_hooks()


def test_efficientnet_layer_choice(vision):
    from memvp.pretrained import load_vision_encoder

    both = load_vision_encoder("efficientnet-lite0:block6,head")
    assert both.layers == ("block6", "head") and both.feature_dim == 80 + 1280
    pixels = vision.preprocess([Image.fromarray(data.chelsea())])
    with torch.no_grad():
        feats = both(pixels)
        head = vision.model.extract_features(pixels).flatten(2).transpose(1, 2)
    assert feats.shape == (1, 49, 1360)
    torch.testing.assert_close(feats[..., 80:], head)
    assert both.name != vision.name  # a feature cache keys on it
    with pytest.raises(ValueError, match="block99"):
        load_vision_encoder("efficientnet-lite0:block99")


def test_efficientnet_image_size_sets_a_finer_grid():
    from memvp.pretrained import load_vision_encoder
    from memvp.vision import box_coverage, grid_side_of

    fine = load_vision_encoder("efficientnet-lite0:448px:block6,head")  # the parts in either order
    assert fine.layers == ("block6", "head") and fine.num_tokens == 196 and grid_side_of(fine) == 14
    photo = Image.fromarray(data.chelsea())
    pixels = fine.preprocess([photo])
    assert pixels.shape == (1, 3, 448, 448)
    with torch.no_grad():
        feats = fine(pixels)
        head = fine.model.extract_features(pixels).flatten(2).transpose(1, 2)
    assert feats.shape == (1, 196, 1360)
    torch.testing.assert_close(feats[..., 80:], head)  # the head's own 14 x 14 map, row-major
    assert fine.name != load_vision_encoder("efficientnet-lite0:block6,head").name  # a feature cache keys on it
    # the top-left quarter covers the top-left 7 x 7 cells of the 14 x 14 grid
    covered = box_coverage(fine, (0.0, 0.0, 0.5, 0.5), *photo.size).reshape(14, 14)
    assert covered[:7, :7].eq(1).all() and covered.sum() == 49
    for bad in ("efficientnet-lite0:400px", "efficientnet-lite0:block6:head"):
        with pytest.raises(ValueError, match="(?i)efficientnet-lite0"):
            load_vision_encoder(bad)
