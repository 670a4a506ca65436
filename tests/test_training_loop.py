"""The optimizer set-up of ``train``: projector learning rate and gradient clipping."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_model
from transformers.modeling_outputs import CausalLMOutputWithPast

from memvp.methods import build_model
from memvp.training import TrainConfig
from memvp.training.loop import _optimizer_step, param_groups


@pytest.mark.parametrize("method", ["memvp", "input_space"])
def test_projector_lr_puts_the_projector_in_its_own_group(method):
    model = build_model(method, tiny_model("llama"), visual_dim=8)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    (single,) = param_groups(model, TrainConfig(method=method))
    assert {id(p) for p in single["params"]} == trainable and "lr" not in single

    rest, projector = param_groups(model, TrainConfig(method=method, projector_lr=1e-4))
    assert projector["lr"] == 1e-4 and "lr" not in rest
    names = {id(p): n for n, p in model.named_parameters()}
    assert projector["params"] and all(".projector." in f".{names[id(p)]}" for p in projector["params"])
    assert not any("projector" in names[id(p)] for p in rest["params"])
    assert {id(p) for p in rest["params"] + projector["params"]} == trainable

    optimizer = torch.optim.AdamW(param_groups(model, TrainConfig(method=method, projector_lr=1e-4)), lr=3e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [3e-3, 1e-4]


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
    _optimizer_step(accelerator, model, optimizer, scheduler, [batch], encoder_decoder=False,
                    max_grad_norm=max_grad_norm)
    step = model.w.detach().norm().item()
    assert step == pytest.approx(5.0 if max_grad_norm == 0 else 0.5, rel=1e-5)
