"""MemVP against direct implementations of the paper's equations, in float64.

Standard FFNs: eq. 8, the visual entries concatenated into W1 and W2 of a copy of the model.
Gated FFNs: eq. 12, the FFN output plus a literal sum over visual entries with the gate dropped.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_ARCHS, GATED, lm_inputs, tiny_model
from torch import nn

from memvp import MemVPConfig, get_memvp_model

N_VIS, N_ENTRIES, VIS_DIM = 4, 5, 12


def _ffns(arch: str, model: nn.Module) -> list[nn.Module]:
    """The FFN modules of the default MemVP stack, found by hand (not via memvp's registry)."""
    if arch in ("llama", "mistral", "qwen2", "gemma"):
        return [layer.mlp for layer in model.model.layers]
    if arch == "gpt2":
        return [layer.mlp for layer in model.transformer.h]
    if arch == "opt":
        return list(model.model.decoder.layers)
    if arch == "bart":
        return list(model.model.encoder.layers)
    return [block.layer[1].DenseReluDense for block in model.encoder.block]  # T5 encoder


def _reference_entries(mem, feats: torch.Tensor, table: int):
    """K = lambda f(z) + p^k, V = lambda f(z) + p^v (eq. 7), computed from the raw weights."""
    cfg, vm = mem.memvp_config, mem.visual_memory
    if cfg.projector == "linear":
        f = feats @ vm.projector.weight.T + vm.projector.bias
    else:
        l1, l2 = vm.projector[0], vm.projector[2]
        f = F.silu(feats @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    prompts = torch.cat([cfg.visual_scale * f, feats.new_zeros(N_ENTRIES - feats.shape[0], f.shape[1])])
    return prompts + vm.key_position[table], prompts + vm.value_position[table]


def _concat_into_weights(arch: str, ffn: nn.Module, keys: torch.Tensor, values: torch.Tensor, s: float):
    """Eq. 8: W1' = (k_1..k_D, K), W2' = (v_1..v_D, s V)^T, zero bias for the new hidden units."""
    n = keys.shape[0]
    if arch == "gpt2":  # Conv1D stores weight as [in, out]
        fc_in, fc_out = ffn.c_fc, ffn.c_proj
        fc_in.weight = nn.Parameter(torch.cat([fc_in.weight, keys.T], 1))
        fc_in.bias = nn.Parameter(torch.cat([fc_in.bias, keys.new_zeros(n)]))
        fc_in.nf += n
        fc_out.weight = nn.Parameter(torch.cat([fc_out.weight, s * values], 0))
        return
    fc_in, fc_out = (ffn.wi, ffn.wo) if arch.startswith("t5") else (ffn.fc1, ffn.fc2)
    fc_in.weight = nn.Parameter(torch.cat([fc_in.weight, keys], 0))
    if fc_in.bias is not None:
        fc_in.bias = nn.Parameter(torch.cat([fc_in.bias, keys.new_zeros(n)]))
    fc_out.weight = nn.Parameter(torch.cat([fc_out.weight, s * values.T], 1))


def _add_gated_reference(ffn: nn.Module, keys: torch.Tensor, values: torch.Tensor, s: float):
    """Eq. 12: FFN(x) + s * sum_i phi(<x, K_i>) V_i, written as a literal loop over entries."""
    original, act = ffn.forward, getattr(ffn, "act_fn", None) or ffn.act

    def forward(x):
        extra = sum(act(x @ keys[i]).unsqueeze(-1) * values[i] for i in range(keys.shape[0]))
        return original(x) + s * extra

    ffn.forward = forward


def _memvp(base, shared: bool, projector: str = "mlp"):
    cfg = MemVPConfig(
        visual_dim=VIS_DIM,
        num_entries=N_ENTRIES,
        memory_scale="paper",
        visual_scale=0.7,
        output_scale=0.9,
        projector=projector,
        projector_hidden=8,
        share_position_embeddings=shared,
        dropout=0.0,
    )
    mem = get_memvp_model(copy.deepcopy(base), cfg).double().eval()
    with torch.no_grad():  # random p^v too, so every part of K and V matters
        mem.visual_memory.key_position.normal_(0, 0.5)
        mem.visual_memory.value_position.normal_(0, 0.5)
    return mem


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("shared", [True, False])
def test_memvp_equals_equations(arch, shared):
    base = tiny_model(arch, dtype=torch.float64)
    mem = _memvp(base, shared, projector="linear" if arch in ("bart", "t5-relu") else "mlp")
    inputs = lm_inputs(base, batch=2)
    feats = torch.randn(2, N_VIS, VIS_DIM, dtype=torch.float64)
    with torch.no_grad():
        got = mem(**inputs, visual_features=feats).logits
        plain = base(**inputs).logits
    assert (got - plain).abs().max() > 1e-3, "the visual memory should change the output"
    s = mem.memvp_config.output_scale
    for b in range(2):
        ref_model = copy.deepcopy(base)
        with torch.no_grad():
            for i, ffn in enumerate(_ffns(arch, ref_model)):
                keys, values = _reference_entries(mem, feats[b], 0 if shared else i)
                if arch in GATED:
                    _add_gated_reference(ffn, keys, values, s)
                else:
                    _concat_into_weights(arch, ffn, keys, values, s)
            ref = ref_model(**{k: v[b : b + 1] for k, v in inputs.items()}).logits
        torch.testing.assert_close(got[b : b + 1], ref, rtol=1e-9, atol=1e-9)


def test_untrained_memvp_changes_nothing_visible():
    """p^v = 0 and lambda = 0.01 at init: the wrapped model starts close to the frozen LM."""
    base = tiny_model("llama")
    mem = get_memvp_model(copy.deepcopy(base), MemVPConfig(visual_dim=VIS_DIM, num_entries=N_ENTRIES)).eval()
    inputs = lm_inputs(base)
    with torch.no_grad():
        diff = mem(**inputs, visual_features=torch.randn(2, N_VIS, VIS_DIM)).logits - base(**inputs).logits
    assert diff.abs().max() < 1e-3
