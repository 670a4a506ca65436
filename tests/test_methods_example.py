"""A new method in one file: what ``docs/design.md`` ("Adding a method") shows. It subclasses
``FFNMemoryModel`` (entries from the image, one read per layer), registers itself with one line, and
trains, saves, loads and evaluates through `memvp train` / `memvp eval` with nothing else changed."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memvp.cli import main
from memvp.config import DictConfig
from memvp.methods import METHODS, Method, register_method
from memvp.methods.base import FFNMemoryModel, read_entries


@dataclass
class MeanEntryConfig(DictConfig):
    visual_dim: int
    target_layers: str | list[int] | None = None


class MeanEntryModel(FFNMemoryModel):
    """One visual entry per image, its mean feature projected to a key and a value, read by every
    target FFN with SiLU; a gate (zero at the start) sets how loud."""

    config_class, config_name, weights_name = MeanEntryConfig, "mean_entry_config.json", "mean_entry.safetensors"
    config_attr = "mean_entry_config"

    def __init__(self, language_model: nn.Module, config: MeanEntryConfig):
        super().__init__()
        self.mean_entry_config = config
        self._setup_sites(language_model, config.target_layers or "decoder")
        d = int(language_model.config.hidden_size)
        self.key, self.value = nn.Linear(config.visual_dim, d), nn.Linear(config.visual_dim, d)
        self.gate = nn.Parameter(torch.zeros(1))

    def make_entries(self, visual_features, has_image):
        if visual_features is None:
            return None
        z = visual_features.float().mean(dim=1, keepdim=True)
        if has_image is not None:
            z = z * has_image.to(z).view(-1, 1, 1)
        return self.key(z), self.value(z)

    def read(self, index, x, entries, ffn_output):
        if entries is None:
            return None
        keys, values = entries
        return read_entries(x, keys, values, lambda rows, k: F.silu(rows @ k.transpose(-1, -2)), self.gate)


@pytest.fixture
def mean_entry():
    register_method(Method("mean_entry", MeanEntryConfig, MeanEntryModel, section="mean_entry"))  # the one line
    yield
    del METHODS["mean_entry"]


def test_a_new_method_trains_saves_loads_and_evaluates_through_the_cli(tiny, mean_entry, capsys):
    run = tiny / "run-mean-entry"
    assert (
        main(
            [
                "train",
                str(tiny / "train.yaml"),
                "method=mean_entry",
                "mean_entry.target_layers=[1]",
                "max_steps=2",
                f"output_dir={run}",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    d = 32  # the tiny Llama's width; 12-d CLIP features (conftest)
    assert metrics["method"] == "mean_entry" and metrics["trainable_parameters"] == 2 * (16 * d + d) + 1
    assert "scale" not in metrics  # no probing: the instruments are MemVP's
    saved = json.loads((run / "adapter" / "mean_entry_config.json").read_text())
    assert saved["config"] == {"visual_dim": 16, "target_layers": [1]} and saved["base_model"]["sites"] == ["decoder.1"]
    assert (
        main(
            [
                "eval",
                str(tiny / "train.yaml"),
                "--adapter",
                str(run / "adapter"),
                "method=mean_entry",
                f"output_dir={tiny / 'eval-mean-entry'}",
            ]
        )
        == 0
    )
    assert json.loads((tiny / "eval-mean-entry" / "predictions.json").read_text()) == json.loads(
        (run / "predictions_eval.json").read_text()
    )
