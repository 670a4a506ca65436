"""Golden outputs: MemVP's logits on the tiny seeded models, stored once (tests/data/golden/*.pt).

Every other test checks a property (an equation, an invariance); these check the numbers
themselves, so that a refactor of the memory (projector, entries, gains, gates, hooks, the
per-architecture FFN layouts) that changes any output by more than float noise fails here.
Each case: one architecture family x memory_scale, all trainable MemVP parameters set to seeded
random values (the initialisation zeroes the output gate or p^v, which would hide the memory),
seeded visual features for 4 of 6 entries (the padding matters too). Computed in float64, so the
numbers do not depend on the machine's BLAS or thread count, and stored as float32 slices of the
logits; the memory's own contribution (logits - bare LM's) is stored too and compared relative to
its size, since with memory_scale='ffn' it is small next to the logits (the FFN's scale).

When a change of the numbers is intended, regenerate and commit the files with
``.venv/bin/python tests/data/golden/make_golden.py`` (see there).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch
from conftest import lm_inputs, tiny_model

from memvp import MemVPConfig, get_memvp_model

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
# family -> (tiny model of conftest, MemVPConfig fields beyond the common ones)
FAMILIES = {
    "llama": ("llama", {}),  # gated SwiGLU FFN (eq. 12), shared position tables
    "gemma": ("gemma", {}),  # gated, GELU-tanh
    "gpt2": ("gpt2", {}),  # Conv1D c_fc / c_proj
    "opt": ("opt", {}),  # fc1 / fc2 on flattened tokens
    "t5": ("t5-gated", {}),  # encoder-decoder, memory in the encoder, one table per layer
    "t5-relu": ("t5-relu", {"projector": "linear"}),  # T5 v1.0 ReLU FFN, the paper's linear projector
    "bart": ("bart", {"projector": "linear", "target_layers": "all"}),  # encoder and decoder layers
}
SCALES = ("ffn", "paper")
CASES = [(f, s) for f in FAMILIES for s in SCALES]
# 'ffn' with retrieval='softmax' (the 'ffn' files hold phi's, the default): a gated decoder, an
# FFN on flattened tokens, an encoder-decoder
CASES += [(f, "ffn-softmax") for f in ("llama", "opt", "t5")]
VIS_DIM, N_ENTRIES, N_VISUAL = 12, 6, 4
PARAM_STD = 0.5


def golden_path(family: str, scale: str) -> Path:
    return GOLDEN_DIR / f"{family}_{scale}.pt"


def build_case(family: str, scale: str):
    """(MemVP model with seeded random trainable parameters, bare LM, LM inputs, visual features)."""
    arch, extra = FAMILIES[family]
    lm = tiny_model(arch, dtype=torch.float64)
    base = tiny_model(arch, dtype=torch.float64)  # the same seed: an untouched copy of the frozen LM
    cfg = MemVPConfig(
        visual_dim=VIS_DIM,
        num_entries=N_ENTRIES,
        memory_scale=scale.removesuffix("-softmax"),
        retrieval="softmax" if scale.endswith("-softmax") else "activation",
        projector_hidden=8,
        visual_scale=0.5,
        dropout=0.0,
        **extra,
    )
    model = get_memvp_model(lm, cfg).double().eval()
    with torch.no_grad():
        # One generator per parameter, seeded by its name: adding or reordering parameters leaves
        # the others' values as they were (renaming one changes the checkpoint format anyway).
        for name, p in model.named_parameters():
            if p.requires_grad:
                g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                p.copy_(PARAM_STD * torch.randn(p.shape, generator=g, dtype=torch.float32))
    inputs = lm_inputs(base, batch=2, length=6, seed=1)
    feats = torch.randn(2, N_VISUAL, VIS_DIM, generator=torch.Generator().manual_seed(2)).double()
    return model, base, inputs, feats


def _slice(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -3:, :16].detach().float().clone()


def compute_case(family: str, scale: str) -> dict:
    """What tests/data/golden/<family>_<scale>.pt holds (make_golden.py writes exactly this)."""
    model, base, inputs, feats = build_case(family, scale)
    with torch.no_grad():
        logits = model(**inputs, visual_features=feats).logits
        no_image = model(**inputs, visual_features=None).logits
        plain = base(**inputs).logits
    out = {
        "logits": _slice(logits),
        "no_image_logits": _slice(no_image),
        "lm_logits": _slice(plain),
        "memory_delta": _slice(logits - plain),
        "no_image_delta": _slice(no_image - plain),
    }
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    out["trainable_names"] = names
    out["trainable"] = torch.tensor(model.get_nb_trainable_parameters()[0])
    cfg = model.memvp_config
    if scale == "ffn":
        out["key_norms"] = torch.tensor(cfg.key_norms, dtype=torch.float64)
        out["value_norms"] = torch.tensor(cfg.value_norms, dtype=torch.float64)
    return out


def test_every_case_has_a_golden_file_and_no_file_is_stale():
    stored = sorted(p.name for p in GOLDEN_DIR.glob("*.pt"))
    assert stored == sorted(golden_path(f, s).name for f, s in CASES)
    assert sum(p.stat().st_size for p in GOLDEN_DIR.glob("*.pt")) < 100_000


@pytest.mark.parametrize("family,scale", CASES)
def test_outputs_match_the_golden_file(family, scale):
    want = torch.load(golden_path(family, scale), weights_only=True)
    got = compute_case(family, scale)
    assert sorted(got) == sorted(want), "stored keys differ: regenerate with make_golden.py?"
    # The bare LM first: if it moved, the tiny model itself changed (e.g. transformers' init), not MemVP.
    torch.testing.assert_close(
        got["lm_logits"],
        want["lm_logits"],
        atol=1e-5,
        rtol=1e-4,
        msg=lambda m: f"the tiny {family} LM itself changed (not MemVP):\n{m}",
    )
    assert got["trainable_names"] == want["trainable_names"]
    assert int(got["trainable"]) == int(want["trainable"])
    if scale == "ffn":
        torch.testing.assert_close(got["key_norms"], want["key_norms"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got["value_norms"], want["value_norms"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got["no_image_logits"], want["no_image_logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got["logits"], want["logits"], atol=1e-5, rtol=1e-4)
    # The memory's contribution alone, to 1e-4 of its size (float64 makes that far above noise).
    for key in ("memory_delta", "no_image_delta"):
        atol = 1e-4 * float(want[key].abs().max())
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=1e-4, msg=lambda m: f"{key}:\n{m}")  # noqa: B023 (used at once)
    # The stored numbers do depend on the memory and on the image.
    assert want["memory_delta"].abs().max() > 1e-4
    assert (want["memory_delta"] - want["no_image_delta"]).abs().max() > 1e-4
