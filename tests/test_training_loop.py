"""The optimizer set-up of ``train``: projector learning rate and gradient clipping."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_model
from transformers.modeling_outputs import CausalLMOutputWithPast

from memvp.methods import build_model
from memvp.training import TrainConfig
from memvp.training.loop import _optimizer_step, make_optimizer, param_groups


@pytest.mark.parametrize("method", ["memvp", "input_space"])
def test_projector_lr_puts_the_projector_in_its_own_groups(method):
    model = build_model(method, tiny_model("llama"), visual_dim=8)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    plain = param_groups(model, TrainConfig(method=method))
    assert all("lr" not in g for g in plain) and {id(p) for g in plain for p in g["params"]} == trainable

    groups = param_groups(model, TrainConfig(method=method, projector_lr=1e-4))
    projector = [p for g in groups if g.get("lr") == 1e-4 for p in g["params"]]
    rest = [p for g in groups if "lr" not in g for p in g["params"]]
    assert projector and all(".projector." in f".{names[id(p)]}" for p in projector)
    assert not any("projector" in names[id(p)] for p in rest)
    assert {id(p) for p in rest + projector} == trainable

    optimizer = make_optimizer(model, TrainConfig(method=method, lr=3e-3, projector_lr=1e-4))
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [1e-4, 3e-3]


def test_weight_decay_skips_biases_and_1d_tensors_as_timm():
    model = build_model("memvp", tiny_model("llama"), visual_dim=8, memvp={"num_entries": 4})
    decay = {
        n: g["weight_decay"]
        for g in param_groups(model, TrainConfig(weight_decay=0.02))
        for n, p in model.named_parameters()
        for q in g["params"]
        if p is q
    }
    assert decay["visual_memory.key_position"] == decay["visual_memory.value_position"] == 0.02  # [1, n, d]
    assert decay["visual_memory.projector.0.weight"] == 0.02
    assert decay["visual_memory.projector.0.bias"] == decay["visual_memory.projector.2.bias"] == 0.0
    assert decay["visual_memory.output_gate"] == decay["visual_memory.key_log_gain"] == 0.0  # 1-d: per-layer scalars
    assert set(decay) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_base_lr_is_scaled_by_the_global_batch_as_the_official_code():
    assert TrainConfig(base_lr=9e-3, batch_size=32).learning_rate == pytest.approx(1.125e-3)
    assert TrainConfig(base_lr=9e-3, batch_size=64, grad_accum=8).learning_rate == pytest.approx(9e-3 * 2)
    assert TrainConfig(lr=1e-3).learning_rate == 1e-3 and TrainConfig().learning_rate == 3e-3
    with pytest.raises(ValueError, match="give lr .* or base_lr .*, not both"):
        TrainConfig(lr=1e-3, base_lr=9e-3)
    with pytest.raises(ValueError, match="adam_betas must be two numbers"):
        TrainConfig(adam_betas=[0.9])


def test_optimizer_takes_the_effective_lr_and_betas():
    model = build_model("memvp", tiny_model("llama"), visual_dim=8)
    optimizer = make_optimizer(model, TrainConfig(base_lr=9e-3, batch_size=32, adam_betas=[0.9, 0.95]))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1.125e-3] * len(optimizer.param_groups))
    assert {g["betas"] for g in optimizer.param_groups} == {(0.9, 0.95)}


def test_projector_lr_without_a_projector_is_an_error():
    model = build_model("text_only", tiny_model("llama"), visual_dim=8)
    with pytest.raises(ValueError, match="projector_lr is set but the 'text_only' model has no trainable projector"):
        param_groups(model, TrainConfig(method="text_only", projector_lr=1e-4))


def test_projector_lr_from_yaml_text_is_a_number():
    assert TrainConfig.from_yaml(None, ["projector_lr=1e-4"]).projector_lr == 1e-4
    assert TrainConfig.from_yaml(None, []).projector_lr is None


class _Quadratic(torch.nn.Module):
    """loss = sum(w * t) with answer tokens counted as _optimizer_step expects."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))

    def forward(self, target, labels, answer_logits_only=True):
        return CausalLMOutputWithPast(loss=(self.w * target).sum())


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.5])
def test_max_grad_norm_clips_the_step(max_grad_norm):
    accelerator = Accelerator(cpu=True)
    model = _Quadratic()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is the (clipped) gradient itself
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batch = {"target": torch.tensor([3.0, 4.0, 0.0, 0.0]), "labels": torch.tensor([[0, 1]])}
    _optimizer_step(
        accelerator, model, optimizer, scheduler, [batch], encoder_decoder=False, max_grad_norm=max_grad_norm
    )
    step = model.w.detach().norm().item()
    assert step == pytest.approx(5.0 if max_grad_norm == 0 else 0.5, rel=1e-5)
