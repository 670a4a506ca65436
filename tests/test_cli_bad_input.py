"""Bad input through the CLI (issue 12): exit 2 and one line naming the file or key, before the
models load; Ctrl-C / SIGTERM keeps a checkpoint; skipped samples are counted and scored."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import memvp.training.build as build_module
import memvp.training.loop as loop_module
from memvp import load_features, load_image
from memvp.cli import main
from memvp.datasets import load_samples
from memvp.training import checkpoint


def _one_error_line(capsys, *needles: str) -> str:
    """The one line of stderr that is memvp's message (progress bars of loading may precede it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("memvp ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a language model gets loaded: the error must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the language model was loaded before the bad input was reported")

    monkeypatch.setattr(build_module, "load_language_model", refuse)


# ------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, needle",
    [
        ("max_steps=abc", "max_steps must be a whole number"),
        ("max_length=abc", "max_length must be a whole number"),
        ("seed=abc", "seed must be a whole number"),
        ("lr=fast", "lr must be a number"),
        ("progress=maybe", "progress must be true or false"),
        ("memvp=64", "memvp must be a mapping"),
        ("memvp.num_entries=x", "MemVPConfig.num_entries must be a whole number"),
        ("baseline.lora_r=1.5", "BaselineConfig.lora_r must be a whole number"),
        ("batch_size.x=1", "batch_size is not a section"),
    ],
)
def test_wrong_types_name_the_key(tiny, capsys, no_model_load, override, needle):
    assert main(["train", str(tiny / "train.yaml"), override]) == 2
    _one_error_line(capsys, needle)


def test_yaml_syntax_error_and_non_utf8_config(tmp_path, capsys, no_model_load):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1,\n")
    assert main(["train", str(bad)]) == 2
    _one_error_line(capsys, str(bad), "not valid YAML at line 2")
    bad.write_bytes(b"output_dir: caf\xe9\n")
    assert main(["train", str(bad)]) == 2
    _one_error_line(capsys, str(bad), "UTF-8")


# ------------------------------------------------------------------------------------- data
def test_non_utf8_questions_file(tiny, tmp_path, capsys, no_model_load):
    questions = tmp_path / "questions.json"
    questions.write_bytes((tiny / "data" / "questions_train.json").read_bytes().replace(b'"What', b'"Wh\xe4t', 1))
    assert main(["train", str(tiny / "train.yaml"), f"train_data.questions_file={questions}"]) == 2
    _one_error_line(capsys, str(questions), "not UTF-8")


def test_decompression_bomb_is_an_error_naming_the_file_and_skippable(tmp_path, monkeypatch):
    from memvp.feature_cache import FeatureCache
    from memvp.vision import PrecomputedFeatures

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(big)
    Image.new("RGB", (8, 8)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2 x 1000: a "bomb"
    with pytest.raises(ValueError, match="big.png is too large to decode safely"):
        load_image(big)
    assert load_image(small).size == (8, 8)

    class TinyEncoder(PrecomputedFeatures):  # encodes images to their mean colour
        def encode(self, images):
            return torch.stack([torch.from_numpy(np.array(load_image(i))).float().mean((0, 1))[None] for i in images])

    cache = FeatureCache(tmp_path / "cache", TinyEncoder(3, 1))
    bad = cache.add(["big", "small"], [big, small], skip_bad=True, progress=False)
    assert list(bad) == ["big"] and "too large" in bad["big"] and "small" in cache


def test_feature_file_holding_a_dict(tmp_path):
    feats = torch.randn(4, 6)
    torch.save({"features": feats, "label": 3}, tmp_path / "ok.pt")
    torch.save({"a": feats, "b": feats}, tmp_path / "two.pt")
    torch.save({"meta": "x"}, tmp_path / "meta.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    assert torch.equal(load_features(tmp_path / "ok.pt", 6), feats)
    with pytest.raises(ValueError, match="two.pt holds a dict with keys \\['a', 'b'\\]"):
        load_features(tmp_path / "two.pt", 6)
    with pytest.raises(ValueError, match="meta.pt holds a dict with keys \\['meta'\\]"):
        load_features(tmp_path / "meta.pt", 6)
    with pytest.raises(ValueError, match="list.pt holds a list, not a tensor"):
        load_features(tmp_path / "list.pt", 6)


def test_missing_image_hints_at_image_pattern(tiny, tmp_path, capsys):
    cfg = str(tiny / "train.yaml")
    pattern = "train_data.image_pattern=COCO_{data_subtype}_{image_id:012d}.jpg"
    assert main(["train", cfg, pattern, f"output_dir={tmp_path / 'run'}", f"feature_cache={tmp_path / 'c'}"]) == 2
    _one_error_line(capsys, "image not found", ".jpg", "image_pattern")


# ------------------------------------------------------------------------------------- adapters
def _damaged_adapters(adapter, root):
    weights, config = "memvp_model.safetensors", "memvp_config.json"
    cases = {
        "truncated": (weights, (adapter / weights).read_bytes()[:100]),
        "empty": (weights, b""),
        "tail_cut": (weights, (adapter / weights).read_bytes()[:-8]),  # header intact, data short
        "not_json": (config, b"{not json"),
        "not_an_adapter": (config, b"{}"),
    }
    for name, (file, content) in cases.items():
        shutil.copytree(adapter, root / name)
        (root / name / file).write_bytes(content)
        yield name, root / name / file


def test_damaged_adapter_files_fail_before_the_model_loads(tiny, tmp_path, capsys, request):
    adapter = tmp_path / "adapter"
    assert main(["train", str(tiny / "train.yaml"), "max_steps=1", f"output_dir={tmp_path / 'run'}"]) == 0
    shutil.copytree(tmp_path / "run" / "adapter", adapter)
    capsys.readouterr()
    request.getfixturevalue("no_model_load")
    for name, damaged_file in _damaged_adapters(adapter, tmp_path):
        for command in ("eval", "train"):
            args = [command, str(tiny / "train.yaml"), f"output_dir={tmp_path / 'out'}"]
            args += ["--adapter", str(damaged_file.parent)] if command == "eval" else [f"adapter={damaged_file.parent}"]
            assert main(args) == 2, name
            _one_error_line(capsys, str(damaged_file), "damaged")


def test_a_failing_final_write_keeps_the_weights_elsewhere(tiny, tmp_path, monkeypatch, capsys):
    from memvp import MemVPModel

    real_save, out = MemVPModel.save_pretrained, tmp_path / "run"

    def disk_full_in_output_dir(self, directory, card_info=None):
        if str(directory).startswith(str(out)):
            raise OSError(28, "No space left on device")
        real_save(self, directory, card_info)

    monkeypatch.setattr(MemVPModel, "save_pretrained", disk_full_in_output_dir)
    assert main(["train", str(tiny / "train.yaml"), "max_steps=1", f"output_dir={out}"]) == 2
    err = _one_error_line(capsys, "No space left on device", "the trained weights are saved in")
    rescue = err.rsplit("saved in ", 1)[1].split(" instead")[0]
    assert sorted(os.listdir(rescue)) == ["README.md", "memvp_config.json", "memvp_model.safetensors"]
    shutil.rmtree(rescue)


# ------------------------------------------------------------------------------------- checkpoints
def _fake_checkpoint(root, step: int) -> None:
    d = root / f"checkpoint-{step}"
    d.mkdir()
    save_file({"w": torch.ones(64)}, str(d / checkpoint.TRAINABLE))
    files = {checkpoint.TRAINABLE: (d / checkpoint.TRAINABLE).stat().st_size}
    (d / checkpoint.TRAINER_STATE).write_text(json.dumps({"step": step, "files": files}))


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step)
    assert checkpoint.resolve_resume("latest", tmp_path) == (tmp_path / "checkpoint-6", [])
    newest = tmp_path / "checkpoint-6" / checkpoint.TRAINABLE
    newest.write_bytes(newest.read_bytes()[:50])
    (tmp_path / "checkpoint-4" / checkpoint.TRAINER_STATE).write_text("{")
    found, notes = checkpoint.resolve_resume("latest", tmp_path)
    assert found == tmp_path / "checkpoint-2"
    assert len(notes) == 2 and "checkpoint-6 is damaged: trainable.safetensors is truncated" in notes[0]
    assert "checkpoint-4 is damaged: trainer_state.json is damaged" in notes[1]
    with pytest.raises(
        ValueError, match="checkpoint-6: trainable.safetensors is truncated .* resume from .*checkpoint-2"
    ):
        checkpoint.resolve_resume(str(tmp_path / "checkpoint-6"), tmp_path)


# ------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_finishes_the_same(tiny, tmp_path, monkeypatch, capsys, sig):
    cfg = str(tiny / "train.yaml")
    common = ["max_steps=6", "save_every=0", f"feature_cache={tiny / 'cache'}"]
    assert main(["train", cfg, *common, f"output_dir={tmp_path / 'straight'}"]) == 0

    real_step, calls = loop_module._optimizer_step, [0]

    def step_then_signal(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), sig)  # arrives mid-run, as from a terminal or a scheduler
        return loss

    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        m.setattr(loop_module, "_optimizer_step", step_then_signal)
        assert main(["train", cfg, *common, f"output_dir={out}"]) == 130
    err = _one_error_line(capsys, f"stopped by {sig.name} after step 3 of 6", "resume with: memvp train", "--resume")
    assert str(out / "checkpoint-3") in err and calls[0] == 3
    assert checkpoint.list_checkpoints(out) == [out / "checkpoint-3"] and not (out / "adapter").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    assert main(["train", cfg, *common, f"output_dir={out}", "--resume"]) == 0
    resumed = load_file(str(out / "adapter" / "memvp_model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "adapter" / "memvp_model.safetensors"))
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


# ------------------------------------------------------------------------------------- output formats
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_an_output_format_the_data_set_does_not_have_fails_before_the_models_load(
    tiny, tmp_path, capsys, no_model_load, command
):
    args = [command, str(tiny / "train.yaml"), "--adapter", str(tmp_path / "none"), f"output_dir={tmp_path}"]
    assert main([*args, "--output-format", "llava_jsonl,mmbench_submission"]) == 2
    _one_error_line(
        capsys,
        "output format 'mmbench_submission' is not written for dataset format 'vqav2'",
        "choices: llava_jsonl, vqav2_eval_ai, all",
    )
    assert main([*args, "choice_rule=exact"]) == 2
    _one_error_line(capsys, "choice_rule must be one of ['default', 'memvp', 'llava', 'vlmevalkit', 'strict']")


# ------------------------------------------------------------------------------------- --skip-bad
def test_skipped_questions_are_counted_listed_and_scored_wrong(tiny, tmp_path, capsys):
    cfg = str(tiny / "train.yaml")
    common = ["max_steps=2", f"feature_cache={tmp_path / 'cache'}", "--skip-bad"]
    image = tiny / "data" / "images" / "COCO_test_000000000015.png"  # one test scene, 3 questions
    assert image.is_file()
    image.rename(tmp_path / "moved.png")
    try:
        assert main(["train", cfg, *common, f"output_dir={tmp_path / 'run'}"]) == 0
        eval_args = [
            "eval",
            cfg,
            "--adapter",
            str(tmp_path / "run" / "adapter"),
            "--skip-bad",
            f"feature_cache={tmp_path / 'cache'}",
        ]
        assert main([*eval_args, f"output_dir={tmp_path / 'wrong'}"]) == 0
        assert main([*eval_args, f"output_dir={tmp_path / 'drop'}", "score_skipped=drop"]) == 0
    finally:
        (tmp_path / "moved.png").rename(image)
    assert "skipped 3 eval sample(s) of 12" in capsys.readouterr().err
    train_metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "skipped" not in train_metrics and train_metrics["eval"]["skipped"]["count"] == 3
    wrong = json.loads((tmp_path / "wrong" / "eval_metrics.json").read_text())
    drop = json.loads((tmp_path / "drop" / "eval_metrics.json").read_text())
    assert wrong["skipped"]["count"] == 3 and len(wrong["skipped"]["ids"]) == 3
    assert list(wrong["skipped"]["files"]) == [str(image)] and wrong["skipped"]["scored_as"] == "wrong"
    assert wrong["count"] == 12 and drop["count"] == 9
    # The same 9 answers; the 3 skipped ones add nothing but count in the denominator.
    assert wrong["overall"] == pytest.approx(drop["overall"] * 9 / 12)


# ------------------------------------------------------------------------------------- features
def test_pre_extracted_features_from_the_cli(tiny, tmp_path):
    """features_dir + vision_encoder=precomputed: no image is opened, no encoder loaded."""
    feats = tmp_path / "feats"
    feats.mkdir()
    spec = {
        "format": "vqav2",
        "questions_file": str(tiny / "data" / "questions_train.json"),
        "annotations_file": str(tiny / "data" / "annotations_train.json"),
        "image_dir": str(tmp_path / "none"),
        "features_dir": str(feats),
        "features_pattern": "img{image_id}.pt",
    }
    samples = load_samples(spec)
    g = torch.Generator().manual_seed(0)
    for image_id in {s.image_id for s in samples}:
        torch.save(torch.randn(5, 12, generator=g), feats / f"img{image_id}.pt")
    assert all(s.image is None and s.features == str(feats / f"img{s.image_id}.pt") for s in samples)
    out = tmp_path / "run"
    overrides = [
        f"train_data={json.dumps(spec)}",
        "eval_data=null",
        "vision_encoder=precomputed",
        f"output_dir={out}",
        "max_steps=2",
        f"feature_cache={tmp_path / 'cache'}",
    ]
    assert main(["train", str(tiny / "train.yaml"), *overrides]) == 0
    config = json.loads((out / "adapter" / "memvp_config.json").read_text())
    assert config["config"]["visual_dim"] == 12
    with pytest.raises(FileNotFoundError, match="features_dir not found"):
        load_samples({**spec, "features_dir": str(tmp_path / "missing")})


def test_a_recipe_stopped_by_a_signal_says_where_its_checkpoint_is(monkeypatch, capsys, tmp_path):
    """`memvp demo` / `instruct-demo` train through the same loop: its TrainingInterrupted is one line too."""
    from memvp.recipes import demo
    from memvp.training import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("SIGTERM", 7, 400, tmp_path / "checkpoint-7")

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo", "--output-dir", str(tmp_path)]) == 130
    line = _one_error_line(capsys, "memvp demo: stopped by SIGTERM after step 7 of 400", "checkpoint-7")
    assert "resume with" not in line


# ------------------------------------------------------------------------------------- issue 24
def test_disk_full_in_the_feature_cache_is_one_line_naming_the_folder(tiny, tmp_path, monkeypatch, capsys):
    """Issue 24.2: a SafetensorError traceback (exit 1) before."""
    import errno

    import memvp.feature_cache as feature_cache

    def disk_full(tensors, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feature_cache, "save_file", disk_full)
    cache = tmp_path / "cache"
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={tmp_path / 'run'}", f"feature_cache={cache}"]) == 2
    _one_error_line(capsys, f"the disk of the feature cache {cache}", "MiB free", "features still to write need about")


def test_non_finite_pre_extracted_features_are_refused_naming_the_file_and_skippable(tiny, tmp_path, capsys):
    """Issue 24.5: NaN / Inf in a feature file made eval answer "" (exit 0) and train blame the learning rate."""
    import h5py

    bad = torch.ones(5, 12)
    bad[2, 3] = float("nan")
    np.save(tmp_path / "nan.npy", bad.numpy())
    save_file({"features": torch.full((5, 12), float("inf"))}, str(tmp_path / "inf.safetensors"))
    with h5py.File(tmp_path / "clips.h5", "w") as f:
        f["clip0"], f["clip1"] = np.ones((5, 12), dtype=np.float32), bad.numpy()
    for name, count in (("nan.npy", 1), ("inf.safetensors", 60), ("clips.h5#clip1", 1)):
        with pytest.raises(ValueError, match=f"features in .*{name} hold {count} NaN or infinite value"):
            load_features(tmp_path / name, 12)
    assert load_features(f"{tmp_path / 'clips.h5'}#clip0", 12).shape == (5, 12)

    feats = tmp_path / "feats"
    feats.mkdir()
    spec = {
        "format": "vqav2",
        "questions_file": str(tiny / "data" / "questions_train.json"),
        "annotations_file": str(tiny / "data" / "annotations_train.json"),
        "image_dir": str(tmp_path / "none"),
        "features_dir": str(feats),
        "features_pattern": "img{image_id}.npy",
    }
    image_ids = sorted({s.image_id for s in load_samples(spec)}, key=int)
    for image_id in image_ids:
        np.save(feats / f"img{image_id}.npy", np.ones((5, 12), dtype=np.float32))
    broken = feats / f"img{image_ids[1]}.npy"
    np.save(broken, bad.numpy())
    args = [
        "train",
        str(tiny / "train.yaml"),
        f"train_data={json.dumps(spec)}",
        "eval_data=null",
        "vision_encoder=precomputed",
        "max_steps=1",
        f"feature_cache={tmp_path / 'cache'}",
    ]
    assert main([*args, f"output_dir={tmp_path / 'run'}"]) == 2
    _one_error_line(capsys, str(broken), "NaN or infinite", "--skip-bad")
    assert main([*args, f"output_dir={tmp_path / 'skipped'}", "--skip-bad"]) == 0
    skipped = json.loads((tmp_path / "skipped" / "metrics.json").read_text())["skipped"]
    assert list(skipped["files"]) == [str(broken)] and skipped["count"] == 3  # the scene's 3 questions


def _llava_file(tiny, path, extra: list) -> dict:
    """A LLaVA conversation file of the tiny run's training scenes, plus ``extra`` entries."""
    entries = [
        {
            "id": f"scene{k}",
            "image": f"COCO_train_{k:012d}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat shape is the red object?"},
                {"from": "gpt", "value": "square"},
            ],
        }
        for k in range(1, 5)
    ]
    path.write_text(json.dumps(entries + extra))
    return {"format": "llava", "json_file": str(path), "image_dir": str(tiny / "data" / "images")}


def test_malformed_llava_message_names_the_conversation_and_skip_bad_lists_it(tiny, tmp_path, capsys):
    """Issue 24.7: an AttributeError traceback (exit 1), with --skip-bad too."""
    extra = [
        {"id": "bad-string", "conversations": ["hello", {"from": "gpt", "value": "x"}]},
        {"id": "bad-null", "conversations": [{"from": "human", "value": "q"}, None]},
        {
            "id": "escapes",
            "image": "../../../etc/passwd",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        },
    ]
    spec = _llava_file(tiny, tmp_path / "llava.json", extra)
    args = [
        "train",
        str(tiny / "train.yaml"),
        f"train_data={json.dumps(spec)}",
        "eval_data=null",
        "max_steps=1",
        f"feature_cache={tmp_path / 'cache'}",
    ]
    with pytest.MonkeyPatch.context() as m:  # refused before the models load
        m.setattr(build_module, "load_language_model", lambda *a, **k: pytest.fail("the model loaded first"))
        assert main([*args, f"output_dir={tmp_path / 'run'}"]) == 2
    _one_error_line(
        capsys, str(tmp_path / "llava.json"), "conversation 'bad-string'", "message 0 is 'hello'", "--skip-bad"
    )
    assert main([*args, f"output_dir={tmp_path / 'skipped'}", "--skip-bad"]) == 0
    out = capsys.readouterr().err
    assert (
        "skipped 3 malformed record(s) of train_data: conversation 'bad-string', conversation 'bad-null', "
        "conversation 'escapes' (e.g."
    ) in out
    assert json.loads((tmp_path / "skipped" / "metrics.json").read_text())["train_samples"] == 4


def test_more_frames_than_memvp_entries_fails_before_any_model_loads(tiny, tmp_path, capsys, no_model_load):
    """Issue 24.8: found only after both models loaded and every frame was decoded (~60 GB at 224 px)."""
    questions = tmp_path / "tvqa_train.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps(
                {"qid": k, "q": "Who?", "a0": "x", "a1": "y", "answer_idx": 0, "vid_name": f"clip{k}", "ts": "1.0-2.0"}
            )
            for k in range(3)
        )
        + "\n"
    )
    spec = {"format": "tvqa", "questions_file": str(questions)}
    args = [
        "train",
        str(tiny / "train.yaml"),
        f"train_data={json.dumps(spec)}",
        "eval_data=null",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert main([*args, "num_frames=32"]) == 2  # the tiny config's memvp.num_entries is 16
    _one_error_line(capsys, "num_frames=32 is more than memvp.num_entries=16", "set memvp.num_entries >= 32")
    assert main([*args, "num_frames=8", "memvp.num_entries=4"]) == 2
    _one_error_line(capsys, "num_frames=8 is more than memvp.num_entries=4")
    # The same config on images, or with entries enough: no such error (the model is what loads next).
    from memvp.training import TrainConfig
    from memvp.training.build import check_frames_fit_entries

    check_frames_fit_entries(TrainConfig.from_yaml(tiny / "train.yaml", ["num_frames=32"]))
    check_frames_fit_entries(
        TrainConfig.from_yaml(tiny / "train.yaml", [f"train_data={json.dumps(spec)}", "num_frames=16"])
    )
