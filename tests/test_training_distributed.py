"""Multi-process training on CPU (gloo): 2 processes reach what 1 process reaches.

The tiny run of conftest.make_tiny_run (36 train samples, global batch 12, 8 steps, MemVP dropout 0: dropout
masks are drawn per process and per shape, so with dropout the runs would legitimately differ).
The two runs differ by float rounding only: the 2-process gradient is the average of two half-batch
gradients, summed in another order; measured max |difference| of the adapter weights ~6e-7.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memvp.cli import main

# eval_every/save_every exercise evaluation and checkpoints mid-run; 11 eval samples split unevenly.
COMMON = ["max_eval_samples=11", "eval_every=4", "save_every=4"]
WEIGHTS_ATOL = 1e-5  # on weights of magnitude ~0.1-0.3
LOSS_ATOL = 1e-5

# Accelerate turns FSDP on only for GPU launches (it checks the device type). To run its FSDP code
# path (and memvp's FSDP branches: gathering weights and optimizer state, generation) on CPU, this
# launcher reports the CPU launch to Accelerate as a GPU one, with the device kept on the CPU and
# the settings of configs/accelerate/fsdp.yaml (sync_module_states off: that option needs a GPU).
FSDP_ON_CPU = """
import os, sys
import torch.distributed
from accelerate.state import PartialState
from accelerate.utils import DistributedType

PartialState._prepare_backend = lambda self, cpu=False, sagemaker_dp=False, backend=None: (
    "gloo", DistributedType.MULTI_GPU)
torch.distributed.init_process_group("gloo")
os.environ.update({
    "ACCELERATE_USE_FSDP": "true", "ACCELERATE_TORCH_DEVICE": "cpu", "FSDP_VERSION": "1",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_USE_ORIG_PARAMS": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_SYNC_MODULE_STATES": "false", "FSDP_BACKWARD_PREFETCH": "BACKWARD_PRE"})
from memvp.cli import main
sys.exit(main(sys.argv[1:]))
"""


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def curve(run: Path) -> list[list[float]]:
    """step, epoch, loss, lr of every logged step (samples_per_s is timing)."""
    lines = (run / "loss_curve.csv").read_text().splitlines()[1:]
    return [[float(x) for x in line.split(",")[:4]] for line in lines]


def assert_same_training(run: Path, reference: Path) -> None:
    got, want = (
        load_file(str(run / "adapter" / "memvp_model.safetensors")),
        load_file(str(reference / "adapter" / "memvp_model.safetensors")),
    )
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=WEIGHTS_ATOL, msg=name)
    got_curve, want_curve = curve(run), curve(reference)
    assert [r[:2] for r in got_curve] == [r[:2] for r in want_curve]  # steps and epochs: same batches
    assert [r[3] for r in got_curve] == pytest.approx([r[3] for r in want_curve], rel=1e-6)  # lr schedule
    assert [r[2] for r in got_curve] == pytest.approx([r[2] for r in want_curve], abs=LOSS_ATOL)
    # Each of the 11 eval samples predicted once, the same predictions (greedy decoding).
    predictions = json.loads((run / "predictions_eval.json").read_text())
    assert predictions == json.loads((reference / "predictions_eval.json").read_text())
    assert len(predictions) == 11


@pytest.fixture(scope="module")
def reference(tiny):
    """The run in this one process."""
    assert main(["train", str(tiny / "train.yaml"), f"output_dir={tiny / 'one'}", *COMMON]) == 0
    metrics = json.loads((tiny / "one" / "metrics.json").read_text())
    assert metrics["num_processes"] == 1
    losses = [r[2] for r in curve(tiny / "one")]
    assert losses[-1] < losses[0]  # it trains: the comparisons below are not between untrained models
    return tiny / "one"


def test_two_processes_reach_the_weights_of_one(tiny, reference):
    # Plain torchrun, no Accelerate config, no GPU: memvp has Accelerate use the CPU with gloo.
    proc = torchrun(["-m", "memvp.cli", "train", "train.yaml", f"output_dir={tiny / 'two'}", *COMMON], tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tiny / "two"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["samples_seen"] == 8 * 12
    assert metrics["eval"]["count"] == 11 and len(metrics["history"]) == 1  # step 4
    assert_same_training(run, reference)
    # The main process wrote the checkpoint, with the random states of both processes.
    rng = torch.load(run / "checkpoint-4" / "rng_state.bin", weights_only=True)
    assert len(rng["processes"]) == 2
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no temporary leftovers


def test_fsdp_on_cpu_matches_and_resumes_exactly(tiny, reference, tmp_path):
    launcher = tmp_path / "fsdp_on_cpu.py"
    launcher.write_text(FSDP_ON_CPU)
    run = tiny / "fsdp"
    proc = torchrun([str(launcher), "train", "train.yaml", f"output_dir={run}", *COMMON], tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_training(run, reference)
    # The checkpoint's optimizer state, gathered from the shards, is the one-process run's (whose
    # state dict numbers the parameters where FSDP's names them).
    sharded = torch.load(run / "checkpoint-4" / "optimizer.bin", weights_only=True)
    whole = torch.load(reference / "checkpoint-4" / "optimizer.bin", weights_only=True)
    for i, name in enumerate(sharded["param_groups"][0]["params"]):
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                sharded["state"][name][moment].flatten(), whole["state"][i][moment].flatten(), rtol=1e-4, atol=1e-7
            )

    resumed = tiny / "fsdp-resumed"
    proc = torchrun(
        [str(launcher), "train", "train.yaml", f"output_dir={resumed}", *COMMON, f"resume={run / 'checkpoint-4'}"], tiny
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    a = load_file(str(run / "adapter" / "memvp_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "memvp_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert curve(resumed) == curve(run)


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
    ddp = load_config_from_file(str(configs / "ddp.yaml"))
    fsdp = load_config_from_file(str(configs / "fsdp.yaml"))
    assert str(ddp.distributed_type).endswith("MULTI_GPU") and ddp.mixed_precision == "no"
    assert str(fsdp.distributed_type).endswith("FSDP")
    # What memvp requires of FSDP (train._setup_fsdp checks it at run time too).
    assert fsdp.fsdp_config["fsdp_version"] == 1 and fsdp.fsdp_config["fsdp_use_orig_params"] is True
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
