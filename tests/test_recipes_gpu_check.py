"""The GPU check (memvp gpu-check, scripts/gpu_check.sh) on CPU-sized models: every arm measured in
both precisions, the ratios, and `memvp train` through Accelerate with the loss going down."""

from __future__ import annotations

import json

import torch

from memvp.recipes.gpu_check import ARMS, format_report, run_gpu_check


def test_gpu_check_runs_end_to_end_on_tiny_models(tmp_path):
    lines = []
    result = run_gpu_check(tmp_path, size="tiny", device="cpu", steps=12, log=lines.append)
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == result
    assert [(r["precision"], r["arm"]) for r in result["speed"]] == [(p, a) for p in ("bf16", "fp16") for a in ARMS]
    for row in result["speed"]:
        assert row["train_step_s"] > 0 and row["generated_tokens_per_s"] > 0 and row["losses_finite"], row
    by_arm = {r["arm"]: r for r in result["speed"] if r["precision"] == "bf16"}
    # the ViT adapters add trainable parameters; input space trains LoRA instead of the memory
    assert by_arm["memvp+vit"]["trainable_parameters"] > by_arm["memvp"]["trainable_parameters"]
    assert set(result["ratios"]) == {"bf16", "fp16"} and result["ratios"]["bf16"]["train_speedup"] > 0
    # the real loop (a subprocess, bf16 on CPU: fp16 through Accelerate needs a GPU and is said so)
    (run,) = result["training"]
    assert run["precision"] == "bf16" and run["returncode"] == 0 and run["steps"] == 12
    assert run["loss_went_down"], run
    assert any("fp16 training through Accelerate needs a GPU" in line for line in lines)
    report = format_report(result)
    assert "| fp16 | memvp+vit |" in report and "loss" in report and torch.isfinite(torch.tensor(run["last_loss"]))
