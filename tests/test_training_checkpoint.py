"""Checkpoints survive crashes, and resuming reaches exactly what an uninterrupted run reaches.

The tiny run of conftest.make_tiny_run, with MemVP's retrieval dropout on (0.1, so that the random states
matter), gradient accumulation (2 micro-batches of 6) and checkpoints every 2 of the 8 steps
(3 steps per epoch: checkpoint-4 is mid-epoch). On CPU a resumed run is bit-identical: same
batches, same dropout masks, same optimizer state, same deterministic kernels.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import memvp.training.checkpoint as checkpoint
import memvp.training.loop as loop_module
from memvp.cli import main
from memvp.training.checkpoint import list_checkpoints, write_directory_atomically

ARGS = [
    "memvp.dropout=0.1",
    "batch_size=6",
    "grad_accum=2",
    "save_every=2",
    "save_total_limit=2",
    "eval_every=3",
    "max_eval_samples=6",
]

# The same run in a child process that SIGKILLs itself half-way through writing checkpoint-6: the
# first torch.save into its temporary directory leaves half a file, then the process dies (no
# exception handler, no cleanup runs: as a kill -9 or a node failure).
KILLED_WHILE_SAVING = """
import os, signal, sys
import torch
from memvp.cli import main

real_save = torch.save

def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if ".checkpoint-6.tmp" in str(f):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "memvp_model.safetensors"))


def curve(run: Path) -> list[str]:
    """step, epoch, loss, lr of every step, as written (samples_per_s is timing)."""
    return [",".join(line.split(",")[:4]) for line in (run / "loss_curve.csv").read_text().splitlines()]


def assert_identical(run: Path, reference: Path) -> None:
    got, want = adapter(run), adapter(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert curve(run) == curve(reference)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    untimed = lambda history: [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]  # noqa: E731
    assert untimed(a["history"]) == untimed(b["history"])
    assert a["eval"] == b["eval"] and a["samples_seen"] == b["samples_seen"]
    assert (run / "predictions_eval.json").read_text() == (reference / "predictions_eval.json").read_text()


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    run = tiny / "uninterrupted"
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-4", "checkpoint-6"]  # save_total_limit=2
    return run


def test_run_killed_while_saving_resumes_to_the_same_result(tiny, uninterrupted, tmp_path, capsys):
    run = tiny / "killed"
    script = tmp_path / "killed_while_saving.py"
    script.write_text(KILLED_WHILE_SAVING)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(script), "train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # The half-written checkpoint stayed under its temporary name; the previous ones are complete.
    assert (run / ".checkpoint-6.tmp" / "optimizer.bin").is_file() and not (run / "checkpoint-6").exists()
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert not (run / "adapter").exists()

    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, "resume=latest"]) == 0
    assert f"resumed from {run / 'checkpoint-4'} at step 4" in capsys.readouterr().err
    assert_identical(run, uninterrupted)
    # The leftover is gone, the newest two checkpoints kept.
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-4", "checkpoint-6"]


def test_resume_restores_the_random_states(tiny, uninterrupted, monkeypatch):
    start = uninterrupted / "checkpoint-4"
    run = tiny / "from-4"
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, f"resume={start}"]) == 0
    assert_identical(run, uninterrupted)
    # Control: without the random states (dropout masks) the same resume ends elsewhere.
    monkeypatch.setattr(checkpoint, "set_rng_state", lambda state: None)
    run = tiny / "from-4-without-rng"
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, f"resume={start}"]) == 0
    got, want = adapter(run), adapter(uninterrupted)
    assert not all(torch.equal(got[k], want[k]) for k in want)


def test_resume_latest_without_checkpoint_starts_fresh_and_bad_paths_fail(tiny, capsys):
    cfg = str(tiny / "train.yaml")
    run = tiny / "fresh"
    assert main(["train", cfg, f"output_dir={run}", "max_steps=1", "resume=latest", "eval_data=null"]) == 0
    assert "no checkpoint in" in capsys.readouterr().err
    assert main(["train", cfg, f"output_dir={run}", f"resume={run / 'adapter'}"]) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err
    # The data position means nothing with another batch size.
    assert (
        main(
            [
                "train",
                cfg,
                f"output_dir={tiny / 'x'}",
                *ARGS,
                "batch_size=4",
                f"resume={tiny / 'uninterrupted' / 'checkpoint-4'}",
            ]
        )
        == 2
    )
    assert "batch_size=6" in capsys.readouterr().err


def test_damaged_checkpoint_of_the_right_size_is_passed_over(tiny, uninterrupted, capsys):
    """Issue 24.3: random bytes in optimizer.bin (size unchanged) crashed --resume with UnpicklingError;
    the checksums in trainer_state.json find them before anything loads."""
    run = tiny / "damaged-in-place"
    shutil.copytree(uninterrupted, run)
    for name in ("adapter", "metrics.json", "loss_curve.csv", "predictions_eval.json"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    optimizer = run / "checkpoint-6" / checkpoint.OPTIMIZER
    size = optimizer.stat().st_size
    optimizer.write_bytes(
        torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()
    )
    found, notes = checkpoint.resolve_resume("latest", run)
    assert found == run / "checkpoint-4"
    assert notes == [
        f"{run / 'checkpoint-6'} is damaged: optimizer.bin is damaged (its sha256 differs from the one "
        "recorded when it was written); passed over"
    ]
    with pytest.raises(ValueError, match="optimizer.bin is damaged .* resume from .*checkpoint-4 instead"):
        checkpoint.resolve_resume(str(run / "checkpoint-6"), run)
    capsys.readouterr()
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, "--resume"]) == 0
    out = capsys.readouterr().err
    assert notes[0] in out and f"resumed from {run / 'checkpoint-4'} at step 4" in out
    assert_identical(run, uninterrupted)


def test_checkpoint_with_other_optimizer_groups_is_refused_naming_it(tiny, uninterrupted, capsys):
    """A checkpoint of the one-group optimizer (before biases and 1-d tensors lost weight decay) stopped
    --resume with torch's "different number of parameter groups", naming neither checkpoint nor cause."""
    run = tiny / "old-groups"
    shutil.copytree(uninterrupted / "checkpoint-6", run / "checkpoint-6")
    path = run / "checkpoint-6" / checkpoint.OPTIMIZER
    state = torch.load(path, weights_only=True)
    assert len(state["param_groups"]) > 1
    merged = {**state["param_groups"][0], "params": sorted(i for g in state["param_groups"] for i in g["params"])}
    torch.save({**state, "param_groups": [merged]}, path)
    trainer_state = json.loads((run / "checkpoint-6" / checkpoint.TRAINER_STATE).read_text())
    trainer_state["files"][path.name] = path.stat().st_size
    trainer_state["sha256"][path.name] = checkpoint._sha256(path)
    (run / "checkpoint-6" / checkpoint.TRAINER_STATE).write_text(json.dumps(trainer_state))
    capsys.readouterr()
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot resume from {run / 'checkpoint-6'}: its optimizer has 1 parameter group(s)" in err
    assert "start afresh" in err


def test_checkpoint_without_checksums_that_does_not_load_is_damaged(tmp_path):
    """Checkpoints written before the checksums: a file that does not load counts as damaged."""
    for step in (2, 4):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        torch.save({"step": step}, d / checkpoint.OPTIMIZER)
        (d / checkpoint.TRAINER_STATE).write_text(
            json.dumps({"files": {checkpoint.OPTIMIZER: (d / checkpoint.OPTIMIZER).stat().st_size}})
        )
    damaged = tmp_path / "checkpoint-4" / checkpoint.OPTIMIZER
    damaged.write_bytes(bytes(damaged.stat().st_size))
    found, notes = checkpoint.resolve_resume("latest", tmp_path)
    assert found == tmp_path / "checkpoint-2" and "optimizer.bin can not be loaded" in notes[0]


@pytest.fixture
def no_model_load(monkeypatch):
    import memvp.training.build as build_module

    def refuse(*args, **kwargs):
        raise AssertionError("the language model was loaded before the changed config was refused")

    monkeypatch.setattr(build_module, "load_language_model", refuse)


@pytest.mark.parametrize(
    "override, named",
    [
        ("seed=1", "seed=0 (this config: 1)"),
        ("memvp.num_entries=8", "memvp.num_entries=16 (this config: 8)"),
        ("method=adem", "method='memvp' (this config: 'adem')"),
        ("weight_decay=0.1", "weight_decay=0.02 (this config: 0.1)"),
        ("max_train_samples=10", "max_train_samples=0 (this config: 10)"),
        (
            "train_data.questions_file=data/questions_test.json train_data.annotations_file=data/annotations_test.json",
            "train_data.questions_file='data/questions_train.json' (this config: 'data/questions_test.json')",
        ),
    ],
)
def test_resume_refuses_settings_that_can_not_change_naming_them(
    tiny, uninterrupted, capsys, no_model_load, override, named
):
    """Issue 24.4: a resumed run ignored changed settings silently."""
    assert (
        main(
            [
                "train",
                str(tiny / "train.yaml"),
                f"output_dir={tiny / 'changed'}",
                *ARGS,
                *override.split(),
                f"resume={uninterrupted / 'checkpoint-4'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings that can not change mid-run differ from the checkpoint's" in err[0]
    assert named in err[0] and "start afresh" in err[0]
    assert not (tiny / "changed" / "config.yaml").exists()  # a refused run leaves no config of itself


def test_resume_refuses_another_train_file_of_the_same_size(tiny, uninterrupted, tmp_path, capsys, no_model_load):
    """Issue 24.4: the same spec, a file of the same size with other answers: caught by the train set's
    fingerprint recorded in the checkpoint."""
    shutil.copy(tiny / "train.yaml", tmp_path / "train.yaml")
    shutil.copytree(tiny / "data", tmp_path / "data", ignore=shutil.ignore_patterns("images"))
    annotations = tmp_path / "data" / "annotations_train.json"
    data = json.loads(annotations.read_text())
    first, second = (a["multiple_choice_answer"] for a in data["annotations"][:2])
    assert first != second
    data["annotations"][0]["multiple_choice_answer"], data["annotations"][1]["multiple_choice_answer"] = second, first
    before = annotations.stat().st_size
    annotations.write_text(json.dumps(data, separators=(",", ":")))  # as the data set was written
    assert annotations.stat().st_size == before  # the same questions and answers, two of them swapped
    assert (
        main(
            [
                "train",
                str(tmp_path / "train.yaml"),
                f"output_dir={tmp_path / 'run'}",
                *ARGS,
                f"resume={uninterrupted / 'checkpoint-4'}",
            ]
        )
        == 2
    )
    assert "the train set differs from the one it was trained on" in capsys.readouterr().err


def test_resume_honours_a_new_lr_and_max_steps(tiny, uninterrupted, capsys):
    """Issue 24.4: lr=0.5 gave the curve of the old lr (the optimizer and scheduler states brought it back).
    Now the schedule continues from its step, scaled to the new lr; a new max_steps rebuilds it."""
    start = uninterrupted / "checkpoint-4"
    rows = lambda run: [line.split(",") for line in curve(run)[1:]]  # noqa: E731  step, epoch, loss, lr
    old = rows(uninterrupted)
    assert (
        main(["train", str(tiny / "train.yaml"), f"output_dir={tiny / 'new-lr'}", *ARGS, "lr=0.5", f"resume={start}"])
        == 0
    )
    assert "resuming with changed settings: lr=0.01 (this config: 0.5)" in capsys.readouterr().err
    new = rows(tiny / "new-lr")
    assert new[:4] == old[:4] and len(new) == 8  # the first 4 steps come from the checkpoint
    for a, b in zip(old[4:], new[4:]):
        assert float(b[3]) == pytest.approx(50 * float(a[3]), rel=1e-5)  # 0.5 / 0.01 (6 digits written)
    assert new[4][2] == old[4][2] and all(a[2] != b[2] for a, b in zip(old[5:], new[5:]))  # losses after step 5
    got, want = adapter(tiny / "new-lr"), adapter(uninterrupted)
    assert not any(torch.equal(got[k], want[k]) for k in want if "position" in k)

    import math

    assert (
        main(
            [
                "train",
                str(tiny / "train.yaml"),
                f"output_dir={tiny / 'longer'}",
                *ARGS,
                "max_steps=12",
                f"resume={start}",
            ]
        )
        == 0
    )
    longer = rows(tiny / "longer")
    assert [int(r[0]) for r in longer] == list(range(1, 13))
    for r in longer[4:]:  # the lr each step used: cosine over 12 steps from step 5 on (warmup 0)
        assert float(r[3]) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (int(r[0]) - 1) / 12)), rel=1e-5)


def test_resume_rule_refuses_any_other_key_by_default():
    """The rule: keys listed in RESUME_HONOURED may change; every other key, one added later included, is
    refused when it differs (a key a checkpoint does not record is compared with its default)."""
    saved = {"lr": 0.01, "seed": 0, "memvp": {"num_entries": 16}, "projector_lr": None}
    current = {"lr": 0.02, "seed": 0, "memvp": {"num_entries": 16}, "projector_lr": 0.1, "a_key_added_later": 3}
    refused, honoured = checkpoint.resume_changes(saved, current, {"a_key_added_later": 1})
    assert honoured == ["lr=0.01 (this config: 0.02)"]
    assert refused == ["a_key_added_later=1 (this config: 3)", "projector_lr=None (this config: 0.1)"]
    assert checkpoint.resume_changes(saved, {**saved, "a_key_added_later": 1}, {"a_key_added_later": 1}) == ([], [])


def test_failed_write_leaves_the_previous_checkpoint(tmp_path):
    def complete(name: str, content: str):
        def write(tmp: Path) -> None:
            (tmp / "weights").write_text(content)
            (tmp / checkpoint.TRAINER_STATE).write_text("{}")

        write_directory_atomically(tmp_path / name, write)

    def crash_midway(tmp: Path) -> None:
        (tmp / "weights").write_text("half")
        raise OSError("disk full")

    complete("checkpoint-2", "two")
    complete("checkpoint-4", "four")
    for name in ("checkpoint-6", "checkpoint-4"):  # a new checkpoint, and the same step again
        with pytest.raises(OSError, match="disk full"):
            write_directory_atomically(tmp_path / name, crash_midway)
    assert (tmp_path / "checkpoint-4" / "weights").read_text() == "four"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # Directories that are not complete checkpoints are never taken for one.
    (tmp_path / ".checkpoint-8.tmp").mkdir()
    (tmp_path / "checkpoint-9").mkdir()  # no trainer_state.json
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint.resolve_resume("latest", tmp_path) == (tmp_path / "checkpoint-4", [])
    checkpoint.prune_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-9"]


def test_pruning_after_resuming_an_earlier_checkpoint_keeps_what_this_run_wrote(tmp_path):
    """Review of issue 24: resumed at step 2 past a damaged checkpoint-6, with save_total_limit=1, every
    new checkpoint below 6 was pruned as soon as it was written (the highest steps were kept)."""
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoint.TRAINER_STATE).write_text("{}")
    checkpoint.prune_checkpoints(tmp_path, keep=2, step=4)  # checkpoint-4 just written
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    checkpoint.prune_checkpoints(tmp_path, keep=1, step=4)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4"]


def test_the_resume_hint_repeats_an_override_that_followed_resume(tiny):
    """Review of issue 24: `--resume max_steps=20` ran with max_steps=20, but the hint printed on Ctrl-C
    left it out, so following it went back to the file's max_steps."""
    from memvp.cli import _config, _interrupted, build_parser
    from memvp.training import TrainingInterrupted

    args = build_parser().parse_args(["train", str(tiny / "train.yaml"), "--resume", "max_steps=20"])
    assert _config(args).max_steps == 20
    hint = _interrupted(args, TrainingInterrupted("SIGTERM", 9, 20, "x/checkpoint-9"))
    assert hint.endswith(f"resume with: memvp train {tiny / 'train.yaml'} max_steps=20 --resume")


def test_non_finite_loss_stops_keeping_the_last_good_checkpoint(tiny, monkeypatch, capsys):
    real_build = loop_module.build

    def build_nan_from_step_5(cfg, samples=()):  # batch 12, no accumulation: one forward pass per step
        model, tokenizer, visual = real_build(cfg, samples)
        forward, calls = model.forward, [0]

        def nan_forward(*args, **kwargs):
            out = forward(*args, **kwargs)
            calls[0] += 1
            if calls[0] >= 5:
                out.loss = out.loss * float("nan")
            return out

        model.forward = nan_forward
        return model, tokenizer, visual

    run = tiny / "nan"
    cfg = str(tiny / "train.yaml")
    with monkeypatch.context() as m:
        m.setattr(loop_module, "build", build_nan_from_step_5)
        assert main(["train", cfg, f"output_dir={run}", "save_every=2", "eval_data=null"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss nan at step 5" in err and f"last good checkpoint is {run / 'checkpoint-4'}" in err
    assert not (run / "adapter").exists() and not (run / "metrics.json").exists()
    weights = load_file(str(run / "checkpoint-4" / checkpoint.TRAINABLE))
    assert all(torch.isfinite(t).all() for t in weights.values())
    # The kept checkpoint resumes (with a sane model) to the end.
    assert main(["train", cfg, f"output_dir={run}", "save_every=2", "eval_data=null", "resume=latest"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 8


def test_bf16_autocast_bf16_weights_and_gradient_checkpointing_train_and_resume(tiny):
    """Mixed precision end to end on CPU (fp16 needs a GPU: a clear error)."""
    from accelerate.state import AcceleratorState

    cfg = str(tiny / "train.yaml")
    args = [
        "precision=bf16",
        "model_dtype=bfloat16",
        "gradient_checkpointing=true",
        "memvp.train_layernorms=true",
        "save_every=4",
        "eval_data=null",
    ]
    AcceleratorState._reset_state()  # Accelerate keeps one mixed precision per process
    try:
        assert main(["train", cfg, f"output_dir={tiny / 'bf16'}", *args]) == 0
        assert (
            main(
                ["train", cfg, f"output_dir={tiny / 'bf16-resumed'}", *args, f"resume={tiny / 'bf16' / 'checkpoint-4'}"]
            )
            == 0
        )
    finally:
        AcceleratorState._reset_state()
    weights = adapter(tiny / "bf16")
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights, norms included
    assert any("layernorm" in k for k in weights)
    losses = [float(line.split(",")[2]) for line in curve(tiny / "bf16")[1:]]
    assert losses[-1] < losses[0]
    resumed = adapter(tiny / "bf16-resumed")
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is supported on GPUs")
def test_fp16_on_cpu_is_a_clear_error(tiny, capsys):
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={tiny / 'fp16'}", "precision=fp16"]) == 2
    assert "precision=fp16 needs a GPU" in capsys.readouterr().err
