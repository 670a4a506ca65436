"""The embedded demo's wiring, in its quick setting (real SmolLM2 + EfficientNet-Lite0, seconds)."""

from __future__ import annotations

import json

import pytest

from memvp.cli import main
from memvp.recipes.demo import SINGLE_OBJECT


@pytest.mark.slow  # the real SmolLM2 and EfficientNet-Lite0
def test_quick_demo_trains_every_arm_and_writes_the_table(tmp_path, capsys):
    assert main(["demo", "--quick", "--compare", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert (
        "| question type | answer prior | w/o visual prompts | text-only LoRA | input-space LoRA | MemVP |" in printed
    )
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r[0] for r in result["rows"]] == [*SINGLE_OBJECT["question_types"], "overall"]
    runs = result["runs"]
    overall = result["rows"][-1]
    arms = ["no_visual_prompts", "text_only", "input_space", "memvp"]
    assert overall[2:] == [runs[a]["eval"]["overall"] for a in arms]  # columns as labelled
    assert overall[1] == 100 * result["answer_prior"]["overall"]
    assert [runs[a]["method"] for a in arms] == ["memvp", "text_only", "input_space", "memvp"]
    assert [runs[a]["use_images"] for a in arms] == [False, False, True, True]
    assert all(runs[a]["eval"]["count"] == 60 for a in arms)
    assert (tmp_path / "memvp" / "adapter" / "memvp_model.safetensors").is_file()
    # --compare: every arm evaluated along the way; accuracy against training seconds drawn.
    assert set(result["curves"]) == {"input-space LoRA", "MemVP"}
    for points in result["curves"].values():
        seconds = [p[0] for p in points]
        assert len(points) == 2 and seconds == sorted(seconds) and seconds[0] > 0
    assert result["curves"]["MemVP"][-1][1] == runs["memvp"]["eval"]["overall"]
    assert (tmp_path / "accuracy_vs_seconds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MemVP's residual norm / the frozen LM's" in printed
    # --compare measures each arm's peak training-step memory (the second step) and prints it.
    import torch

    from memvp.peak_memory import PeakMemory

    readable = PeakMemory(torch.device("cpu"), tune_glibc=False).available  # Linux: a real reading per arm
    assert all(
        isinstance(runs[a]["peak_step_memory_bytes"], int) if readable else runs[a]["peak_step_memory_bytes"] is None
        for a in arms
    )
    assert "| peak training-step memory (MiB) | |" in printed
    assert (tmp_path / "input_space" / "adapter" / "baseline_model.safetensors").is_file()
    # A second run (the default arms) reuses the generated data set instead of drawing it again.
    stamp = (tmp_path / "data" / "questions_train.json").stat().st_mtime_ns
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    assert "| question type | answer prior | w/o visual prompts | MemVP |" in capsys.readouterr().out
    assert (tmp_path / "data" / "questions_train.json").stat().st_mtime_ns == stamp
    assert "retrieval weight on the asked object / uniform, best layer" in printed
    # Data made by an older generator (no version in its stamp, no asked_box) is made again.
    summary = json.loads((tmp_path / "data" / "summary.json").read_text())
    del summary["params"]["version"]
    (tmp_path / "data" / "summary.json").write_text(json.dumps(summary))
    image = (tmp_path / "data" / "images").glob("*.png").__next__()
    pixels = image.read_bytes()
    assert main(["demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (tmp_path / "data" / "questions_train.json").stat().st_mtime_ns != stamp
    assert image.read_bytes() == pixels  # the same scenes
    assert "version" in json.loads((tmp_path / "data" / "summary.json").read_text())["params"]


@pytest.mark.slow  # the real SmolLM2 and EfficientNet-Lite0
def test_quick_where_task_trains_memvp_with_and_without_grounding(tmp_path, capsys):
    assert main(["demo", "--quick", "--task", "where", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "six-object VQA" in printed
    columns = "| w/o visual prompts | MemVP, answer loss only | MemVP + grounding |"
    assert "| question type | answer prior " + columns in printed
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["task"] == "where"
    assert json.loads((tmp_path / "data" / "summary.json").read_text())["params"]["num_objects"] == 6
    runs = result["runs"]
    assert [runs[a]["use_images"] for a in ("no_visual_prompts", "memvp_answer_loss", "memvp")] == [False, True, True]
    # Only the MemVP + grounding arm trains on the asked boxes: its loss curve has a grounding term.
    curve = (tmp_path / "memvp" / "loss_curve.csv").read_text().splitlines()
    plain = (tmp_path / "memvp_answer_loss" / "loss_curve.csv").read_text().splitlines()
    column = curve[0].split(",").index("grounding_loss")
    assert all(float(line.split(",")[column]) > 0 for line in curve[1:])
    plain_column = plain[0].split(",").index("grounding_loss")
    assert all(line.split(",")[plain_column] in ("", "nan") for line in plain[1:])
    # Both MemVP arms report their selectivity in the table; the ablation has no retrieval.
    row = next(line for line in printed.splitlines() if line.startswith("| on the asked object / uniform"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "" and float(cells[3]) > 0 and float(cells[4]) > 0
    assert cells[3] == f"{runs['memvp_answer_loss']['scale']['max_selectivity']:.2f}"
    assert (tmp_path / "selectivity_per_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table4_arms_change_one_part_each_and_keep_the_tasks_recipe(tmp_path):
    from memvp.recipes.demo import arm_config, demo_train_config, plan_arms

    assert plan_arms("where", ["table4"]) == [
        "no_visual_prompts", "keys_only", "values_only", "global_token", "positions_concat", "memvp"
    ]  # fmt: skip
    assert plan_arms("where", compare=True) == [
        "no_visual_prompts", "text_only", "input_space", "memvp_answer_loss", "memvp"
    ]  # fmt: skip
    assert plan_arms("one-object") == ["no_visual_prompts", "memvp"]
    base = demo_train_config(tmp_path)
    where = {name: arm_config(base, "where", name, tmp_path / name) for name in plan_arms("where", ["table4"])}
    changed = {name: {k: v for k, v in cfg.memvp.items() if base.memvp.get(k) != v} for name, cfg in where.items()}
    softmax = {"retrieval": "softmax"}  # the where task's MemVP recipe, under each ablation's one change
    assert changed == {
        "no_visual_prompts": {},
        "keys_only": {**softmax, "insert_into": "keys"},
        "values_only": {**softmax, "insert_into": "values"},
        "global_token": {**softmax, "visual_tokens": "global"},
        "positions_concat": {**softmax, "position_mode": "concat"},
        "memvp": softmax,
    }
    # The where task grounds every arm that reads the image through MemVP's memory, and no other.
    assert {n: c.grounding_weight for n, c in where.items()} == {**dict.fromkeys(where, 2.0), "no_visual_prompts": 0.0}
    answer_loss = arm_config(base, "where", "memvp_answer_loss", tmp_path)
    assert answer_loss.grounding_weight == 0.0 and answer_loss.memvp == where["memvp"].memvp
    assert arm_config(base, "one-object", "memvp", tmp_path).memvp == base.memvp  # the quick run's recipe stays
    assert arm_config(base, "one-object", "keys_only", tmp_path).memvp == {**base.memvp, "insert_into": "keys"}
    assert arm_config(base, "one-object", "keys_only", tmp_path).grounding_weight == 0.0
    assert where["keys_only"].output_dir == str(tmp_path / "keys_only")


def test_cli_rejects_unknown_command_and_stray_arguments(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train-everything"])
    with pytest.raises(SystemExit):
        main(["demo", "extra"])
    assert "unrecognized arguments: extra" in capsys.readouterr().err
    assert main(["demo", "--arms", "input_space,bogus"]) == 2  # before any data is drawn
    assert main(["demo", "--arms", "input_space"]) == 2  # MemVP is the point of the demo
    assert "--arms must be a comma-separated subset" in capsys.readouterr().err
    assert main(["demo", "--task", "everywhere"]) == 2
    assert "--task must be one of ['one-object', 'where']" in capsys.readouterr().err
