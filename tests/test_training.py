"""train -> save -> load -> predict -> eval, end to end through the CLI, on tiny random models."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from conftest import word_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from memvp.cli import main
from memvp.peak_memory import PeakMemory
from memvp.training import loop


def test_train_save_load_predict_eval(tiny, capsys):
    root = tiny
    assert main(["train", str(root / "train.yaml")]) == 0
    run = root / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["train_samples"] == 36
    curve = (run / "loss_curve.csv").read_text().splitlines()
    assert (
        curve[0]
        == (
            "step,epoch,loss,lr,samples_per_s,residual_ratio_max,memory_to_ffn_max,"
            "memory_to_ffn_mean,positive_scores_mean,top_share_mean,selectivity_max,selectivity_mean,"
            "selectivity_first_max,grounding_loss"
        )
        and len(curve) == 9
    )
    losses = [float(line.split(",")[2]) for line in curve[1:]]
    assert losses[-1] < losses[0]
    # The instruments ran at the first and the last step (diagnose_every=50 > 8 steps) and nowhere else.
    measured = [line.split(",")[0] for line in curve[1:] if line.split(",")[5]]
    assert measured == ["1", "8"]
    assert [h["step"] for h in metrics["scale_history"]] == [1, 8]
    scale = metrics["scale"]
    assert len(scale["residual_ratio"]) == 2 and 0.5 < scale["max_residual_ratio"] < 2.0
    assert set(scale["memory_to_ffn"]) == {"decoder.0", "decoder.1"} and scale["max_memory_to_ffn"] > 0
    # The scenes' one-object questions carry asked_box: the selectivity is measured with the rest.
    assert set(scale["selectivity"]) == {"decoder.0", "decoder.1"}
    assert all(0 < v < 16 for v in scale["selectivity"].values())  # 16 entries: at most 16x uniform
    assert all(h["selectivity_max"] >= h["selectivity_mean"] > 0 for h in metrics["scale_history"])
    assert all(line.split(",")[10] for line in curve[1:] if line.split(",")[5])  # logged where measured
    assert set(scale["first_token_selectivity"]) == {"decoder.0", "decoder.1"}
    assert all(h["selectivity_first_max"] > 0 for h in metrics["scale_history"])
    assert set(metrics["eval"]) >= {"overall", "count", "per_type"} and metrics["eval"]["count"] == 12
    train_predictions = json.loads((run / "predictions_eval.json").read_text())
    assert len(train_predictions) == 12
    # The adapter folder is ready to share: a Hugging Face model card with method, data and metrics
    # (the metrics as model-index results; no base_model: a local path is not a Hub id).
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "adapter" / "README.md")
    assert card.data.library_name == "memvp" and card.data.pipeline_tag == "image-text-to-text"
    assert "memvp" in card.data.tags and card.data.base_model is None
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["overall"] == metrics["eval"]["overall"] and "count" not in results
    assert "# memvp adapter for " + str(root / "lm") in card.text
    assert f"- trainable parameters: {metrics['trainable_parameters']:,d}" in card.text
    assert "questions_train.json" in card.text and "questions_test.json" in card.text
    assert 'load_pretrained("path/to/this/folder")' in card.text  # the adapter records its pipeline

    # choice_rule=strict stands for each format's reference rule; VQAv2 reads no letters, so nothing changes
    eval_args = ["eval", str(root / "train.yaml"), "--adapter", str(run / "adapter"), f"output_dir={root / 'eval'}"]
    assert main([*eval_args, "choice_rule=strict"]) == 0
    assert json.loads((root / "eval" / "predictions.json").read_text()) == train_predictions
    assert json.loads((root / "eval" / "eval_metrics.json").read_text()) == metrics["eval"]
    capsys.readouterr()
    predict = ["predict", str(root / "train.yaml"), "--adapter", str(run / "adapter"), f"output_dir={root / 'pred'}"]
    assert main([*predict, "--output-format", "all"]) == 0
    assert json.loads((root / "pred" / "predictions.json").read_text()) == train_predictions
    # The files of the field's tools beside it, one line each in the log: the VQAv2 set's own (EvalAI) and
    # LLaVA's answers, every question in the split's order with the prediction as its text.
    out = capsys.readouterr().err
    assert f"wrote {root / 'pred' / 'llava_answers.jsonl'} (llava_jsonl)" in out
    assert f"wrote {root / 'pred' / 'vqav2_eval_ai.json'} (vqav2_eval_ai)" in out
    answers = [json.loads(line) for line in (root / "pred" / "llava_answers.jsonl").read_text().splitlines()]
    assert [(str(a["question_id"]), a["text"]) for a in answers] == list(train_predictions.items())
    assert {a["model_id"] for a in answers} == {"run"}  # the run's folder names run/adapter
    eval_ai = json.loads((root / "pred" / "vqav2_eval_ai.json").read_text())
    assert [e["question_id"] for e in eval_ai] == [a["question_id"] for a in answers]
    assert all(isinstance(e["question_id"], int) for e in eval_ai)

    # Sampling options reach generate: a nucleus of one token (top_p -> 0) is greedy decoding whatever
    # the temperature; a very hot, full nucleus (seeded) draws nearly uniform words instead.
    def sampled(name, *options):
        torch.manual_seed(0)
        assert (
            main(
                [
                    "predict",
                    str(root / "train.yaml"),
                    "--adapter",
                    str(run / "adapter"),
                    f"output_dir={root / name}",
                    "do_sample=true",
                    *options,
                ]
            )
            == 0
        )
        return json.loads((root / name / "predictions.json").read_text())

    assert sampled("nucleus1", "top_p=1e-9", "temperature=2.0") == train_predictions
    hot = sampled("hot", "top_p=1.0", "temperature=1000.0")
    assert hot.keys() == train_predictions.keys() and hot != train_predictions
    vocab = set(word_tokenizer().get_vocab())
    assert all(set(answer.split()) <= vocab for answer in hot.values())  # decoded words, cut as greedy ones


@pytest.mark.parametrize("method", ["input_space", "text_only"])
def test_baselines_train_and_evaluate_through_the_same_commands(tiny, capsys, method):
    root = tiny
    run = root / f"run-{method}"
    assert main(["train", str(root / "train.yaml"), f"method={method}", f"output_dir={run}", "baseline.lora_r=4"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["use_images"] == (method == "input_space")
    losses = [float(line.split(",")[2]) for line in (run / "loss_curve.csv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0]
    # eval finds the method from the adapter directory alone and reproduces the predictions.
    assert (
        main(
            [
                "eval",
                str(root / "train.yaml"),
                "--adapter",
                str(run / "adapter"),
                f"output_dir={root / ('eval-' + method)}",
            ]
        )
        == 0
    )
    assert json.loads((root / f"eval-{method}" / "predictions.json").read_text()) == json.loads(
        (run / "predictions_eval.json").read_text()
    )
    assert main(["train", str(root / "train.yaml"), "method=llava"]) == 2
    assert "method must be one of" in capsys.readouterr().err


def test_measure_memory_reports_one_step_and_leaves_training_as_it_was(tiny, monkeypatch):
    root = tiny
    for name, extra in (("plain", []), ("measured", ["measure_memory=true"])):
        assert (
            main(
                [
                    "train",
                    str(root / "train.yaml"),
                    f"output_dir={root / name}",
                    "max_steps=3",
                    "eval_data=null",
                    *extra,
                ]
            )
            == 0
        )
    plain, measured = (json.loads((root / n / "metrics.json").read_text()) for n in ("plain", "measured"))
    assert "peak_step_memory_bytes" not in plain
    curve = lambda n: [line.split(",")[2] for line in (root / n / "loss_curve.csv").read_text().splitlines()[1:]]
    assert curve("measured") == curve("plain")
    peak = measured["peak_step_memory_bytes"]
    if PeakMemory(torch.device("cpu"), tune_glibc=False).available:  # a tiny step reuses the heap: 0 is fair
        assert isinstance(peak, int) and 0 <= peak < 256 * 2**20
    else:
        assert peak is None
    # Exactly one step is measured, the second, and its reading is what metrics.json reports.
    measured_steps = []

    steps_started = []
    real_step = loop._optimizer_step
    monkeypatch.setattr(loop, "_optimizer_step", lambda *a, **k: steps_started.append(1) or real_step(*a, **k))
    monkeypatch.setattr(
        PeakMemory, "measure", lambda self, fn: measured_steps.append(len(steps_started) + 1) or fn() or 4321
    )
    assert (
        main(
            [
                "train",
                str(root / "train.yaml"),
                f"output_dir={root / 'spy'}",
                "max_steps=3",
                "eval_data=null",
                "measure_memory=true",
            ]
        )
        == 0
    )
    assert measured_steps == [2]
    assert json.loads((root / "spy" / "metrics.json").read_text())["peak_step_memory_bytes"] == 4321


def test_bad_input_is_a_clear_error_with_nonzero_exit(tiny, capsys, tmp_path):
    root = tiny
    cfg = str(root / "train.yaml")
    assert main(["train", cfg, "learning_rate=0.1"]) == 2
    assert "unknown config key(s) ['learning_rate']" in capsys.readouterr().err
    assert main(["train", cfg, "memvp.num_entires=3"]) == 2
    assert "num_entires" in capsys.readouterr().err
    assert main(["train", cfg, "memvp.num_entries=8"]) == 2  # 16 visual tokens > 8 entries
    assert "num_entries" in capsys.readouterr().err

    # A missing image: an error naming it, or skipped and reported with skip_bad.
    image = root / "data" / "images" / "COCO_train_000000000003.png"
    image.rename(tmp_path / "moved.png")
    try:
        out = f"output_dir={tmp_path / 'run'}"
        assert main(["train", cfg, out, "max_steps=1", "feature_cache=" + str(tmp_path / "c1")]) == 2
        assert "COCO_train_000000000003.png" in capsys.readouterr().err
        assert not (tmp_path / "run" / "metrics.json").exists()
        assert main(["train", cfg, out, "max_steps=1", "--skip-bad", "feature_cache=" + str(tmp_path / "c2")]) == 0
        assert "skipped 3 train sample(s) of 36: 1 image" in capsys.readouterr().err
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train_samples"] == 33
    finally:
        (tmp_path / "moved.png").rename(image)

    # An adapter saved for another base model.
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4)
    )
    from memvp import MemVPConfig, get_memvp_model

    get_memvp_model(other, MemVPConfig(visual_dim=16, num_entries=16)).save_pretrained(tmp_path / "foreign")
    assert main(["eval", cfg, "--adapter", str(tmp_path / "foreign"), f"output_dir={tmp_path / 'e'}"]) == 2
    assert "saved for a llama model (hidden_size=24" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e" / "predictions.json")

    # An empty split.
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"data_subtype": "test", "questions": []}))
    assert (
        main(
            [
                "eval",
                cfg,
                "--adapter",
                str(root / "run" / "adapter"),
                f"eval_data.questions_file={empty}",
                "eval_data.annotations_file=null",
            ]
        )
        == 2
    )
    assert "no samples" in capsys.readouterr().err


def test_numbers_in_overrides_are_numbers():
    from memvp.training import TrainConfig

    # YAML 1.1 reads 1e-4 (no dot) as a string; torch would fail much later on it.
    assert TrainConfig.from_yaml(None, ["lr=1e-4", "weight_decay=0"]).lr == 1e-4
    with pytest.raises(ValueError, match="lr must be a number"):
        TrainConfig.from_yaml(None, ["lr=fast"])


@pytest.mark.parametrize(
    "bad", [{"max_steps": 0, "epochs": 0}, {"epochs": -1}, {"max_steps": -5}, {"diagnose_every": -1}]
)
def test_a_budget_that_trains_nothing_is_rejected_before_any_work(bad):
    """Issue 12.4: these used to train 1 step / a full epoch and overwrite the previous run."""
    from memvp.training import TrainConfig

    with pytest.raises(ValueError, match="must be"):
        TrainConfig(**bad)


def test_unwritable_output_and_bad_data_fail_before_the_models_load(tiny, capsys, tmp_path, monkeypatch):
    """Issue 12.3 and 12.13: these used to fail after loading (or after training)."""
    import memvp.training.build

    def no_model(*args, **kwargs):
        raise AssertionError("the language model was loaded before the bad input was found")

    monkeypatch.setattr(memvp.training.build, "load_language_model", no_model)
    cfg = str(tiny / "train.yaml")
    a_file = tmp_path / "taken"
    a_file.write_text("not a directory")
    assert main(["train", cfg, f"output_dir={a_file}"]) == 2
    assert f"output_dir {a_file} is a file" in capsys.readouterr().err
    assert main(["eval", cfg, "--adapter", str(tmp_path), f"output_dir={a_file}"]) == 2
    assert "is a file" in capsys.readouterr().err
    missing = str(tmp_path / "nope.json")
    assert main(["train", cfg, f"output_dir={tmp_path / 'run'}", f"train_data.questions_file={missing}"]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert a_file.read_text() == "not a directory"


def test_evaluation_reports_truncated_prompts(tiny, capsys, tmp_path):
    """Issue 12.8: eval and predict cut long prompts without a word; training reported it."""
    cfg = str(tiny / "train.yaml")
    assert main(["train", cfg, f"output_dir={tmp_path / 'run'}", "max_steps=1", "max_length=8"]) == 0
    printed = capsys.readouterr().err
    assert "(evaluation)" in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval"]["truncated_prompts"] == metrics["eval"]["count"] == 12
    assert (
        main(
            [
                "eval",
                cfg,
                "--adapter",
                str(tmp_path / "run" / "adapter"),
                "max_length=8",
                f"output_dir={tmp_path / 'eval'}",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["truncated_prompts"] == 12


def test_training_measures_the_features_common_share_and_centres_on_the_training_mean(tiny, capsys, monkeypatch):
    """Every run with images logs how much of the features' energy is their common mean (metrics.json:
    visual_feature_common_share); center_features fills MemVP's feature_mean from the training split,
    saved with the adapter, and a high share without it gets a hint."""
    from memvp.datasets import Sample, load_samples
    from memvp.inputs import VisualInputs
    from memvp.pretrained import load_vision_encoder
    from memvp.training.build import visual_feature_statistics

    root = tiny
    args = ["train", str(root / "train.yaml"), "max_steps=1", "eval_data=null"]
    assert main([*args, f"output_dir={root / 'plain'}"]) == 0
    plain_log = capsys.readouterr()
    assert main([*args, f"output_dir={root / 'centred'}", "memvp.center_features=true"]) == 0
    centred_log = capsys.readouterr()
    share = json.loads((root / "plain" / "metrics.json").read_text())["visual_feature_common_share"]
    assert json.loads((root / "centred" / "metrics.json").read_text())["visual_feature_common_share"] == share
    assert 0.0 < share < 1.0 and f"visual features: {100 * share:.1f}% of their energy is their common mean" in (
        plain_log.out + plain_log.err
    )
    assert "common mean; centred on it" in centred_log.out + centred_log.err
    saved = json.loads((root / "centred" / "adapter" / "memvp_config.json").read_text())
    cfg = yaml.safe_load((root / "train.yaml").read_text())
    visual = VisualInputs(load_vision_encoder(cfg["vision_encoder"]), cfg["feature_cache"])
    samples = load_samples(cfg["train_data"], base_dir=root)
    mean, again = visual_feature_statistics(visual, samples)
    assert again == pytest.approx(share)
    feats, _ = visual.batch([s for s in samples if s.has_image])
    torch.testing.assert_close(mean, feats.reshape(-1, feats.shape[-1]).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(saved["config"]["feature_mean"]), mean, rtol=1e-6, atol=1e-6)
    assert visual_feature_statistics(visual, []) is None

    class Shared:  # every token the same vector (share 1), or +-v (mean 0, share 0)
        def __init__(self, sign):
            self.sign = sign

        def batch(self, batch):
            v = torch.tensor([1.0, 2.0, 3.0])
            return torch.stack([v, self.sign * v]).expand(len(batch), 2, 3), None

    pictured = [Sample(id=str(i), prompt="q", answers=["a"], image="x.png") for i in range(3)]
    assert visual_feature_statistics(Shared(1.0), pictured)[1] == pytest.approx(1.0)
    assert visual_feature_statistics(Shared(-1.0), pictured)[1] == pytest.approx(0.0)
    monkeypatch.setattr(loop, "visual_feature_statistics", lambda v, s: (mean, 0.95))
    assert main([*args, f"output_dir={root / 'hint'}"]) == 0
    assert "memvp.center_features: true subtracts the mean" in "".join(capsys.readouterr())


def test_vit_adapters_train_save_load_and_predict_through_the_cli(tiny, capsys):
    """vision.adapter_hidden: the ViT adapters train with MemVP through `memvp train` (the images encoded
    in each step, no feature cache), are saved in the adapter, and predict / eval load and use them."""
    from memvp.methods import load_adapter
    from memvp.pretrained import load_language_model, load_vision_encoder

    root, run = tiny, tiny / "run-vit-adapters"
    overrides = [
        f"output_dir={run}",
        "vision.adapter_hidden=4",
        "vision.adapter_dropout=0.0",
        "max_steps=3",
        "lr=0.05",
        f"feature_cache={root / 'no-cache-here'}",
    ]
    assert main(["train", str(root / "train.yaml"), *overrides]) == 0
    out = capsys.readouterr().err
    assert "ViT adapters, which train with the method" in out and "effective lr 0.05" in out
    assert not (root / "no-cache-here").exists()  # nothing encoded ahead: the adapters change the features
    from safetensors.torch import load_file

    state = load_file(str(run / "adapter" / "memvp_model.safetensors"))
    ups = [t for n, t in state.items() if n.startswith("vision_encoder.adapters.") and n.endswith("up.weight")]
    assert len(ups) == 1 and ups[0].abs().sum() > 0  # trained away from their zero start (1 of 2 layers used)
    meta = json.loads((run / "adapter" / "memvp_config.json").read_text())
    assert meta["vision_encoder"]["options"]["adapter_hidden"] == 4

    assert (
        main(
            [
                "predict",
                str(root / "train.yaml"),
                "--adapter",
                str(run / "adapter"),
                *overrides[1:3],
                f"output_dir={root / 'pred-vit'}",
            ]
        )
        == 0
    )
    predictions = json.loads((root / "pred-vit" / "predictions.json").read_text())
    assert predictions == json.loads((run / "predictions_eval.json").read_text())

    # The adapters matter: the same adapter with its ViT adapters zeroed gives other logits.
    cfg = yaml.safe_load((root / "train.yaml").read_text())
    encoder = load_vision_encoder(cfg["vision_encoder"], {"adapter_hidden": 4, "adapter_dropout": 0.0})
    lm, tok = load_language_model(cfg["language_model"])
    model = load_adapter(lm, run / "adapter", vision_encoder=encoder)
    images = sorted((root / "data" / "images").glob("*.png"))[:2]
    pixels = encoder.preprocess(images)
    ids = torch.tensor([tok("what shape is the red object ? answer:")["input_ids"]] * 2)
    with torch.no_grad():
        trained = model(input_ids=ids, pixel_values=pixels).logits
        for adapter in encoder.adapters:
            adapter.up.weight.zero_()
        zeroed = model(input_ids=ids, pixel_values=pixels).logits
    assert not torch.allclose(trained, zeroed, atol=1e-6)
    # Gradient checkpointing covers the encoder (its layers recomputed in backward): the same training.
    assert (
        main(
            [
                "train",
                str(root / "train.yaml"),
                *overrides[1:],
                f"output_dir={root / 'run-vit-ckpt'}",
                "gradient_checkpointing=true",
                "eval_data=null",
            ]
        )
        == 0
    )
    checkpointed = load_file(str(root / "run-vit-ckpt" / "adapter" / "memvp_model.safetensors"))
    assert checkpointed.keys() == state.keys()
    assert all(torch.allclose(checkpointed[k], state[k], atol=1e-6) for k in state)
    with pytest.raises(ValueError, match="ViT adapters differ"):  # an encoder without them does not fit
        load_adapter(
            load_language_model(cfg["language_model"])[0],
            run / "adapter",
            vision_encoder=load_vision_encoder(cfg["vision_encoder"]),
        )


@pytest.fixture
def cpu_fp16(monkeypatch):
    """Accelerate gives fp16 mixed precision only to GPUs (a CPU run would silently train in fp32, so
    ``memvp train`` refuses it there). This gives the CPU what a GPU gets, fp16 autocast and a
    GradScaler, so that the training loop's fp16 path runs here; returns the scalers made."""
    import accelerate
    from accelerate.state import AcceleratorState

    made, init = [], accelerate.Accelerator.__init__

    def fp16_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.state.mixed_precision == "fp16" and self.device.type == "cpu":
            self.native_amp = True
            self.scaler = torch.amp.GradScaler("cpu", **made_options)
            made.append(self.scaler)

    made_options: dict = {}
    monkeypatch.setattr(accelerate.Accelerator, "__init__", fp16_init)
    monkeypatch.setattr(loop, "check_launch", lambda cfg, state: None)  # its fp16-needs-a-GPU refusal
    AcceleratorState._reset_state()  # Accelerate keeps one mixed precision per process
    yield made, made_options
    AcceleratorState._reset_state()


def test_fp16_trains_with_a_gradient_scaler(tiny, cpu_fp16, capsys):
    """precision=fp16 (the official MemVP recipe: fp16 weights, fp16 autocast, loss scaling): the loss is
    scaled on every backward, unscaled before clipping, and the fp32 master weights learn."""
    scalers, options = cpu_fp16
    run = tiny / "run-fp16"
    args = [
        "train",
        str(tiny / "train.yaml"),
        f"output_dir={run}",
        "precision=fp16",
        "model_dtype=float16",
        "max_steps=4",
        "max_grad_norm=1.0",
        "eval_data=null",
    ]
    assert main(args) == 0
    (scaler,) = scalers
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0  # no overflow: the scale stayed
    losses = [float(line.split(",")[2]) for line in (run / "loss_curve.csv").read_text().splitlines()[1:]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "memvp_model.safetensors"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
    # A scale that overflows fp16 gradients: those steps are skipped (weights kept) and the scale halves.
    options["init_scale"] = 2.0**60
    assert main([*args, f"output_dir={tiny / 'run-fp16-overflow'}", "max_steps=2"]) == 0
    assert scalers[-1].get_scale() < 2.0**60


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in {p.parent for p in folder.rglob("events.out.tfevents.*")}:  # the run's, and its hparams'
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars.update({tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]})
    return scalars


def test_tensorboard_holds_the_loss_the_instruments_and_the_evaluation(tiny, capsys):
    run = tiny / "run-tensorboard"
    assert (
        main(
            [
                "train",
                str(tiny / "train.yaml"),
                f"output_dir={run}",
                "report_to=[tensorboard]",
                "max_steps=4",
                "eval_every=2",
            ]
        )
        == 0
    )
    scalars = _tensorboard_scalars(run / "logs")
    curve = [line.split(",") for line in (run / "loss_curve.csv").read_text().splitlines()[1:]]
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss"]] == pytest.approx([float(r[2]) for r in curve], rel=1e-5)
    assert [s for s, _ in scalars["residual_ratio_max"]] == [1, 4]  # the instruments' steps (first and last)
    metrics = json.loads((run / "metrics.json").read_text())
    assert scalars["eval/overall"][-1] == (4, pytest.approx(metrics["eval"]["overall"]))
    assert scalars["eval/overall"][0][0] == 2 and "lr" in scalars and "samples_per_s" in scalars


def test_the_resolved_config_is_written_first_and_trains_the_same_run(tiny, tmp_path, capsys, monkeypatch):
    """output_dir/config.yaml: every key, data paths absolute; `memvp train` of it from another folder gives
    the same loss curve. -q keeps the info lines off stderr, -v adds nothing that breaks a run."""
    from memvp.training import TrainConfig

    run = tmp_path / "run"
    assert main(["-q", "train", str(tiny / "train.yaml"), f"output_dir={run}", "max_steps=2", "eval_data=null"]) == 0
    assert "effective lr" not in capsys.readouterr().err
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["max_steps"] == 2 and written["output_dir"] == str(run) and written["eval_data"] is None
    assert written["train_data"]["questions_file"] == str(tiny / "data" / "questions_train.json")
    assert "_base_dir" not in written["train_data"]
    monkeypatch.chdir(tmp_path)  # relative paths would break here; the written ones are absolute
    again = tmp_path / "again"
    assert main(["-v", "train", str(run / "config.yaml"), f"output_dir={again}"]) == 0
    assert "effective lr" in capsys.readouterr().err

    def curve(folder):  # step, epoch, loss, lr (samples/s is timing)
        return [line.split(",")[:4] for line in (folder / "loss_curve.csv").read_text().splitlines()]

    assert curve(again) == curve(run)
    assert TrainConfig.from_yaml(run / "config.yaml").max_steps == 2


def test_grounding_is_on_by_default_where_questions_say_where_they_look(tiny, capsys, tmp_path):
    root = tiny
    cfg = str(root / "train.yaml")
    args = ["train", cfg, "eval_data=null", "max_steps=4", "memvp.memory_scale=ffn"]  # the library's default

    def grounding_column(folder):
        header, *rows = [line.split(",") for line in (folder / "loss_curve.csv").read_text().splitlines()]
        column = header.index("grounding_loss")
        return [r[column] for r in rows], [r[2] for r in rows]

    runs = {}
    for name, extra in [
        ("default", []),
        ("weight2", ["grounding_weight=2"]),
        ("off", ["grounding_weight=0"]),
        ("paper", ["memvp.memory_scale=paper"]),  # the paper's exact form (tiny's): no grounding by default
    ]:
        assert main([*args, f"output_dir={tmp_path / name}", *extra]) == 0
        runs[name] = (capsys.readouterr().err, *grounding_column(tmp_path / name))
    err, grounding, losses = runs["default"]
    assert "grounding 5 (the default" in err  # the log says it is on, how much, and for how many questions
    assert len(grounding) == 4 and all(float(g) > 0 for g in grounding)
    assert "grounding 2 (grounding_weight)" in runs["weight2"][0] and all(float(g) > 0 for g in runs["weight2"][1])
    assert runs["weight2"][2][1:] != losses[1:]  # the weight matters
    for name in ("off", "paper"):
        assert "grounding " not in runs[name][0] and not any(runs[name][1])
    assert runs["off"][2][1:] != losses[1:]  # grounding changed the training
    written = yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())
    assert written["grounding_weight"] == 5.0  # config.yaml says what ran


def test_grounding_weight_refuses_what_it_can_not_supervise(tiny, capsys, tmp_path):
    root = tiny
    args = ["train", str(root / "train.yaml"), "eval_data=null", "max_steps=4"]
    # refused before any model loads: no visual memory, no image, checkpointing, data without places
    questions = json.loads((root / "data" / "questions_train.json").read_text())
    for q in questions["questions"]:
        q.pop("asked_box", None)
    unboxed = tmp_path / "unboxed.json"
    unboxed.write_text(json.dumps(questions))
    nowhere = [f"train_data.questions_file={unboxed}", "grounding_place_words=false"]
    for extra, message in [
        (["method=text_only"], "method 'text_only' has no visual memory"),
        (["use_images=false"], "reads no image here"),
        (["gradient_checkpointing=true"], "do not go together"),
        (nowhere, "none of the 36 in train_data does"),
        (["grounding_weight=-1"], "grounding_weight must be a number >= 0"),
    ]:
        weight = [] if extra[0].startswith("grounding_weight") else ["grounding_weight=1"]
        assert main([*args, *weight, *extra, f"output_dir={tmp_path / 'refused'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err, err
        assert not (tmp_path / "refused" / "loss_curve.csv").exists()
    # the default is quietly off where it can not apply
    assert main([*args, *nowhere, "memvp.memory_scale=ffn", f"output_dir={tmp_path / 'quiet'}"]) == 0
    assert "grounding " not in capsys.readouterr().err
