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
from memvp.training.checkpoint import list_checkpoints, write_directory_atomically
from memvp.cli import main

ARGS = ["memvp.dropout=0.1", "batch_size=6", "grad_accum=2", "save_every=2", "save_total_limit=2",
        "eval_every=3", "max_eval_samples=6"]

# The same run in a child process that SIGKILLs itself half-way through writing checkpoint-6: the
# first torch.save into its temporary directory leaves half a file, then the process dies (no
# exception handler, no cleanup runs: as a kill -9 or a node failure).
KILLED_WHILE_SAVING = '''
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
'''


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
    proc = subprocess.run([sys.executable, str(script), "train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # The half-written checkpoint stayed under its temporary name; the previous ones are complete.
    assert (run / ".checkpoint-6.tmp" / "optimizer.bin").is_file() and not (run / "checkpoint-6").exists()
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert not (run / "adapter").exists()

    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, "resume=latest"]) == 0
    assert f"resumed from {run / 'checkpoint-4'} at step 4" in capsys.readouterr().out
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
    assert "no checkpoint in" in capsys.readouterr().out
    assert main(["train", cfg, f"output_dir={run}", f"resume={run / 'adapter'}"]) == 2
    assert "is not a training checkpoint" in capsys.readouterr().err
    # The data position means nothing with another batch size.
    assert main(["train", cfg, f"output_dir={tiny / 'x'}", *ARGS, "batch_size=4",
                 f"resume={tiny / 'uninterrupted' / 'checkpoint-4'}"]) == 2
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
    optimizer.write_bytes(torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(0),
                                        dtype=torch.uint8).numpy().tobytes())
    found, notes = checkpoint.resolve_resume("latest", run)
    assert found == run / "checkpoint-4"
    assert notes == [f"{run / 'checkpoint-6'} is damaged: optimizer.bin is damaged (its sha256 differs from the one "
                     "recorded when it was written); passed over"]
    with pytest.raises(ValueError, match="optimizer.bin is damaged .* resume from .*checkpoint-4 instead"):
        checkpoint.resolve_resume(str(run / "checkpoint-6"), run)
    capsys.readouterr()
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={run}", *ARGS, "--resume"]) == 0
    out = capsys.readouterr().out
    assert notes[0] in out and f"resumed from {run / 'checkpoint-4'} at step 4" in out
    assert_identical(run, uninterrupted)


def test_checkpoint_without_checksums_that_does_not_load_is_damaged(tmp_path):
    """Checkpoints written before the checksums: a file that does not load counts as damaged."""
    for step in (2, 4):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        torch.save({"step": step}, d / checkpoint.OPTIMIZER)
        (d / checkpoint.TRAINER_STATE).write_text(json.dumps(
            {"files": {checkpoint.OPTIMIZER: (d / checkpoint.OPTIMIZER).stat().st_size}}))
    damaged = tmp_path / "checkpoint-4" / checkpoint.OPTIMIZER
    damaged.write_bytes(bytes(damaged.stat().st_size))
    found, notes = checkpoint.resolve_resume("latest", tmp_path)
    assert found == tmp_path / "checkpoint-2" and "optimizer.bin can not be loaded" in notes[0]


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
    args = ["precision=bf16", "model_dtype=bfloat16", "gradient_checkpointing=true", "memvp.train_layernorms=true",
            "save_every=4", "eval_data=null"]
    AcceleratorState._reset_state()  # Accelerate keeps one mixed precision per process
    try:
        assert main(["train", cfg, f"output_dir={tiny / 'bf16'}", *args]) == 0
        assert main(["train", cfg, f"output_dir={tiny / 'bf16-resumed'}", *args,
                     f"resume={tiny / 'bf16' / 'checkpoint-4'}"]) == 0
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
