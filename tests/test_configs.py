"""The shipped configs (configs/*.yaml): valid, pointing at the files their formats read, and the
paper's recipes holding the values a reproduction depends on (docs/reproducing.md is their table)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from memvp.methods import get_method
from memvp.training import TrainConfig
from memvp.training.build import read_split
from memvp.vision import VisionOptions

REPO = Path(__file__).parent.parent
CONFIGS, FIXTURES = REPO / "configs", Path(__file__).parent / "fixtures" / "datasets"
STAND_INS = {  # format -> the path keys of its spec, and the fixture files for them
    "scienceqa": {"root": FIXTURES / "scienceqa", "captions_file": FIXTURES / "scienceqa" / "captions.json"},
    "vqav2": {
        "questions_file": FIXTURES / "vqav2" / "questions.json",
        "annotations_file": FIXTURES / "vqav2" / "annotations.json",
        "image_dir": FIXTURES / "vqav2",
        "features_dir": FIXTURES / "vqav2",
    },
    "gqa": {
        "questions_file": FIXTURES / "gqa" / "testdev_balanced_questions.json",
        "image_dir": FIXTURES / "gqa",
        "features_dir": FIXTURES / "gqa",
    },
    "coco_captions": {
        "karpathy_file": FIXTURES / "coco" / "dataset_coco.json",
        "image_root": FIXTURES / "coco",
        "features_dir": FIXTURES / "coco",
    },
    "llava": {"json_file": FIXTURES / "llava" / "conversations.json", "image_dir": FIXTURES / "llava"},
    "tvqa": {
        "questions_file": FIXTURES / "tvqa" / "tvqa_val.jsonl",
        "features_dir": FIXTURES / "tvqa" / "features",
        "subtitles_file": FIXTURES / "tvqa" / "tvqa_preprocessed_subtitles.jsonl",
    },
    "how2qa": {"questions_file": FIXTURES / "how2qa" / "how2QA_val_release.csv", "features_dir": FIXTURES / "how2qa"},
}
PATHS = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_config_parses_to_its_yaml_and_its_data_specs_load(path):
    """Exactly its YAML over TrainConfig's defaults; its method section a valid config with those
    values; its data specs name the files their format reads, under the repository's data/ folder,
    and load them (the fixtures' copies standing in for the real files)."""
    defaults = dataclasses.asdict(TrainConfig())
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    parsed = dataclasses.asdict(TrainConfig.from_yaml(path))
    specs = {key: raw.pop(key) for key in ("train_data", "eval_data") if key in raw}
    for key, spec in specs.items():
        assert parsed.pop(key) == {"_base_dir": str(CONFIGS.resolve()), **spec}, key
        files = {k: v for k, v in STAND_INS[spec["format"]].items() if k in spec}
        assert set(spec) - {"format", "split", "image_pattern", "per_conversation", "features_pattern"} == set(files), (
            key
        )
        for k in files:
            assert (CONFIGS / spec[k]).resolve().is_relative_to(REPO / "data"), (key, k)
        split = {"coco_captions": "test"}.get(spec["format"], spec.get("split"))  # the fixture's one image
        samples = read_split(
            {**spec, **{k: str(v) for k, v in files.items()}, **({"split": split} if split else {})}, key
        )
        assert samples and all(s.answers and s.target for s in samples), key
    assert parsed == {**{k: v for k, v in defaults.items() if k not in specs}, **raw}
    method = get_method(raw.get("method", "memvp"))
    options = raw.get(method.section, {})
    made = method.make_config(1024, options)
    assert {k: getattr(made, k) for k in options} == options
    VisionOptions.from_dict(raw.get("vision", {}))


# What a reproduction depends on, per config: the paper (Tables 5, 7, appendix A/B) and, for LLaMA, the
# official code (scripts/finetuning_sqa_*.sh, train.py, eval.py, util/datasets.py, clip/model.py).
LLAMA = {
    "learning_rate": 9e-3 * 32 / 256,
    "batch_size": 32,
    "grad_accum": 1,
    "epochs": 20,
    "warmup_ratio": 0.1,
    "lr_schedule": "cosine",
    "adam_betas": [0.9, 0.95],
    "weight_decay": 0.02,
    "max_length": 512,
    "seed": 0,
    "drop_last": True,
    "max_new_tokens": 1,
    "choice_rule": "memvp",
    "prompt_template": "{prompt}",
    "vision": {
        "feature_layer": -2,
        "post_layernorm": True,
        "normalization": "imagenet",
        "resize": "squash",
        "adapter_hidden": 12,
        "adapter_scale": 0.1,
        "adapter_dropout": 0.1,
    },
}
MEMVP_LLAMA = {
    "memory_scale": "paper",
    "visual_scale": 0.01,
    "output_scale": 0.1,
    "projector": "mlp",
    "projector_hidden": 128,
    "dropout": 0.1,
    "share_position_embeddings": True,
}
TABLE5 = {
    "learning_rate": 1e-3,
    "batch_size": 512,
    "grad_accum": 1,
    "epochs": 20,
    "vision_encoder": "precomputed",
    "warmup_ratio": 0.1,
    "lr_schedule": "linear",
    "adam_eps": 1e-6,
    "weight_decay": 0.01,
    "max_grad_norm": 5.0,
    "num_beams": 5,
}
MEMVP_TABLE5 = {
    "num_entries": 240,
    "projector": "linear",
    "memory_scale": "paper",
    "visual_scale": 0.01,
    "train_layernorms": True,
    "target_layers": "encoder",
    "share_position_embeddings": False,
}
RECIPES = {
    "scienceqa_llama.yaml": ({**LLAMA, "method": "memvp"}, {**MEMVP_LLAMA, "num_entries": 320}),
    "scienceqa_llama13b.yaml": ({**LLAMA, "method": "memvp"}, {**MEMVP_LLAMA, "num_entries": 400}),
    "scienceqa_llama2_7b.yaml": ({**LLAMA, "method": "memvp"}, {**MEMVP_LLAMA, "num_entries": 320}),
    "scienceqa_llava_lora.yaml": (
        {**LLAMA, "method": "input_space"},
        {"lora_r": 6, "lora_target_modules": ["q_proj", "v_proj"], "projector": "mlp"},
    ),
    **{
        f"{task}_{lm}.yaml": ({**TABLE5, "method": "memvp"}, MEMVP_TABLE5)
        for task in ("vqav2", "gqa", "coco")
        for lm in ("t5", "bart")
    },
    **{
        f"{task}_bart.yaml": (
            {"learning_rate": 1e-3, "batch_size": 64, "epochs": 20, "num_frames": 64, "vision_encoder": "precomputed"},
            MEMVP_TABLE5,
        )
        for task in ("tvqa", "how2qa")
    },
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_paper_configs_hold_the_papers_recipe(name):
    cfg = TrainConfig.from_yaml(CONFIGS / name)
    run, method_options = RECIPES[name]
    for key, value in run.items():
        got = getattr(cfg, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    made = get_method(cfg.method).make_config(1024, getattr(cfg, get_method(cfg.method).section))
    for key, value in method_options.items():
        assert getattr(made, key) == value, key
    if cfg.train_data["format"] == "scienceqa":  # the official eval.py reads captions; its training does not
        assert "captions_file" in cfg.eval_data and "captions_file" not in cfg.train_data


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_paper_configs_keep_the_papers_form(path):
    """The library's defaults added since (grounding, one entry per visual token) leave the paper's
    recipes as the paper ran them: no grounding by default, MemVP's entries given."""
    cfg = TrainConfig.from_yaml(path)
    assert not cfg.grounds_by_default
    assert cfg.method not in ("memvp", "memvp_lora") or "num_entries" in cfg.memvp


def test_every_shipped_config_is_checked():
    assert {p.name for p in PATHS} - {"llava_stage1.yaml", "llava_stage2.yaml"} == set(RECIPES)
