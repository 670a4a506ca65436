"""Adapters that carry everything (memvp.loading): after `memvp train`, predict / eval / explain / serve
need only the adapter, for every method; old adapters still load with the models given; Hub ids
resolve through huggingface_hub's cache offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memvp.cli import build_parser, main
from memvp.loading import load_pretrained, recorded_pipeline

METHOD_OPTIONS = {
    "memvp": [],
    "memvp_lora": ["memvp.lora_r=4", "memvp.lora_alpha=8"],
    "adem": ["adem.rank=8", "adem.scales=[1]"],
}


@pytest.fixture(scope="module")
def trained(tiny):
    """One adapter of each FFN-memory method, trained for two steps on the tiny run."""
    runs = {}
    for method, options in METHOD_OPTIONS.items():
        run = tiny / f"run-{method}"
        assert (
            main(
                [
                    "train",
                    str(tiny / "train.yaml"),
                    f"method={method}",
                    *options,
                    "max_steps=2",
                    "max_eval_samples=4",
                    f"output_dir={run}",
                ]
            )
            == 0
        )
        runs[method] = run
    return runs


def _eval_only_config(tiny: Path) -> Path:
    """A config that names only the data: the models and prompt settings come from the adapter."""
    full = yaml.safe_load((tiny / "train.yaml").read_text())
    path = tiny / "eval-only.yaml"
    path.write_text(yaml.safe_dump({"eval_data": full["eval_data"], "max_eval_samples": 4, "progress": False}))
    return path


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_predict_and_eval_need_only_the_adapter(tiny, trained, method, capsys):
    run, config = trained[method], _eval_only_config(tiny)
    recorded = recorded_pipeline(run / "adapter")
    assert recorded["language_model"] == str(tiny / "lm") and recorded["vision_encoder"] == str(tiny / "vit")
    assert recorded["max_length"] == 32 and recorded["max_new_tokens"] == 2
    meta = json.loads(next((run / "adapter").glob("*_config.json")).read_text())
    assert meta["format_version"] == 2 and meta["method"] == method and meta["memvp_version"]
    assert (
        main(["predict", str(config), "--adapter", str(run / "adapter"), f"output_dir={tiny / f'pred-{method}'}"]) == 0
    )
    predictions = json.loads((tiny / f"pred-{method}" / "predictions.json").read_text())
    assert predictions == json.loads((run / "predictions_eval.json").read_text())
    assert main(["eval", str(config), "--adapter", str(run / "adapter"), f"output_dir={tiny / f'eval-{method}'}"]) == 0
    metrics = json.loads((tiny / f"eval-{method}" / "eval_metrics.json").read_text())
    assert metrics == json.loads((run / "metrics.json").read_text())["eval"]
    # A flag still overrides what the adapter records.
    assert (
        main(
            [
                "predict",
                str(config),
                "--adapter",
                str(run / "adapter"),
                "max_new_tokens=1",
                f"output_dir={tiny / f'pred1-{method}'}",
            ]
        )
        == 0
    )
    shorter = json.loads((tiny / f"pred1-{method}" / "predictions.json").read_text())
    assert all(len(a.split()) <= 1 for a in shorter.values())


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_load_pretrained_answers_as_predict_and_serve_loads_from_the_adapter_alone(tiny, trained, method):
    from memvp.cli import _load_adapter
    from memvp.datasets import load_samples
    from memvp.serve import Answerer

    run = trained[method]
    loaded = load_pretrained(run / "adapter")
    assert loaded.method == method and loaded.max_length == 32 and loaded.max_new_tokens == 2
    predictions = json.loads((run / "predictions_eval.json").read_text())
    spec = yaml.safe_load((tiny / "train.yaml").read_text())["eval_data"]
    sample = next(s for s in load_samples(spec, base_dir=tiny) if s.id in predictions)
    assert loaded.ask(sample.image, sample.prompt) == predictions[sample.id]
    # memvp serve --adapter DIR: the same model, the same answer, no other flag
    served = _load_adapter(build_parser().parse_args(["serve", "--adapter", str(run / "adapter")]))
    answerer = Answerer(
        served.model,
        served.tokenizer,
        served.vision_encoder,
        served.max_new_tokens,
        served.max_length,
        served.prompt_template,
    )
    from PIL import Image

    with Image.open(sample.image) as image:
        answers = list(answerer.stream(sample.prompt, answerer.features(image.convert("RGB"))))
    assert answers[-1] == predictions[sample.id]


@pytest.mark.parametrize("method", ["memvp", "memvp_lora", "adem"])
def test_explain_needs_only_the_adapter_and_refuses_methods_without_maps(tiny, trained, method, tmp_path, capsys):
    image = sorted((tiny / "data" / "images").glob("*.png"))[0]
    code = main(
        [
            "explain",
            "--adapter",
            str(trained[method] / "adapter"),
            "--image",
            str(image),
            "--question",
            "what shape is the red object ?",
            "--output",
            str(tmp_path / "map.png"),
        ]
    )
    if method == "adem":
        assert code == 2 and "knowledge-locating maps read MemVP's memory; a adem adapter" in capsys.readouterr().err
    else:
        assert code == 0 and (tmp_path / "map.png").is_file()


@pytest.mark.parametrize(
    "command, method, flags, message",
    [
        ("explain", "adem", [], "knowledge-locating maps read MemVP's memory; a adem adapter"),
        ("explain", "memvp", ["--max-length", "2"], "--max-length (2) must exceed --max-new-tokens (2)"),
        ("explain", "memvp", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        ("serve", "memvp", ["--max-length", "0"], "--max-length (0) must exceed --max-new-tokens (2)"),
        ("serve", "memvp", ["--vision-encoder", "efficientnet-lite0"], "expects 16-d visual features"),
        ("serve", "memvp", ["--device", "gpu7"], "--device 'gpu7' is not a torch device"),
    ],
)
def test_what_needs_no_language_model_is_refused_before_it_loads(
    tiny, trained, monkeypatch, capsys, command, method, flags, message
):
    """Review of issue 23: these were found only after the language model had loaded (minutes for a 7B
    model), and 0 for a length flag was taken as 'not given'."""
    import memvp.loading

    def refuse(*args, **kwargs):
        raise AssertionError("the language model was loaded before the bad input was reported")

    monkeypatch.setattr(memvp.loading, "load_language_model", refuse)
    image = sorted((tiny / "data" / "images").glob("*.png"))[0]
    asked = ["--image", str(image), "--question", "what shape ?"] if command == "explain" else []
    capsys.readouterr()
    assert main([command, "--adapter", str(trained[method] / "adapter"), *asked, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bfloat16_on_the_device_asked_for(tiny, trained, tmp_path):
    """--dtype / --device (load_pretrained's dtype / device): a 7B adapter served in bf16 on a GPU."""
    import torch

    loaded = load_pretrained(trained["memvp"] / "adapter", dtype=torch.bfloat16, device="cpu")
    assert loaded.model.language_model.dtype == torch.bfloat16
    image = sorted((tiny / "data" / "images").glob("*.png"))[0]
    assert isinstance(loaded.ask(image, "what shape is the red object ?"), str)
    argv = ["explain", "--adapter", str(trained["memvp"] / "adapter"), "--image", str(image), "--question", "what ?"]
    assert main([*argv, "--dtype", "bfloat16", "--output", str(tmp_path / "map.png")]) == 0


def test_an_adapter_of_format_1_loads_with_the_models_given(tiny, trained, tmp_path):
    old = tmp_path / "old-adapter"
    shutil.copytree(trained["memvp"] / "adapter", old)
    meta = json.loads((old / "memvp_config.json").read_text())
    for key in ("format_version", "memvp_version", "method", "pipeline", "vision_encoder"):
        meta.pop(key, None)
    (old / "memvp_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not record its language_model and vision_encoder .* give"):
        load_pretrained(old)
    loaded = load_pretrained(old, language_model=str(tiny / "lm"), vision_encoder=str(tiny / "vit"))
    assert loaded.method == "memvp" and loaded.max_length == 128  # the defaults of before
    assert recorded_pipeline(old) == {}


def _hub_repo(cache: Path, repo_id: str, files: Path) -> None:
    """A repository in huggingface_hub's cache layout, as a download leaves it (no network needed)."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(files, folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


def test_hub_ids_resolve_through_the_cache_offline(tiny, tmp_path):
    """Language model, vision encoder and adapter by Hub id, HF_HUB_OFFLINE=1 and a cache in the Hub's
    layout: train, then predict with nothing but the adapter's id (from a fresh process each)."""
    cache = tmp_path / "hub"
    _hub_repo(cache, "memvp-test/tiny-llama", tiny / "lm")
    _hub_repo(cache, "memvp-test/tiny-clip", tiny / "vit")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def memvp(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "memvp.cli", *args], cwd=tiny, env=env, capture_output=True, text=True, timeout=300
        )

    run = tmp_path / "run"
    done = memvp(
        "train",
        str(tiny / "train.yaml"),
        "language_model=memvp-test/tiny-llama",
        "vision_encoder=memvp-test/tiny-clip",
        "max_steps=1",
        "max_eval_samples=4",
        f"output_dir={run}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _hub_repo(cache, "memvp-test/tiny-adapter", run / "adapter")
    done = memvp(
        "predict",
        str(_eval_only_config(tiny)),
        "--adapter",
        "memvp-test/tiny-adapter",
        f"output_dir={tmp_path / 'pred'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text()) == json.loads(
        (run / "predictions_eval.json").read_text()
    )
    missing = memvp(
        "predict", str(_eval_only_config(tiny)), "--adapter", "memvp-test/not-cached", f"output_dir={tmp_path / 'none'}"
    )
    assert missing.returncode == 2
    assert "'memvp-test/not-cached' is neither a local folder nor a Hugging Face repository in the cache" in (
        missing.stderr
    )
