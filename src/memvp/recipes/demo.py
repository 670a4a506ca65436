"""The embedded demo (the README's main job): a synthetic VQA task that needs the image.

1. ``scenes.generate_dataset`` draws scenes of one coloured square or circle at a random place and
   asks its shape, left/right and top/bottom, written in the VQAv2 layout. (``task="where"``: six
   objects per scene, the asked one named by its colour; the answers alone do not teach MemVP to
   find it, so that task also trains MemVP with the grounding loss on the asked object's box.)
2. The frozen EfficientNet-Lite0 encodes each image once (7 x 7 grid -> 49 visual tokens of its
   block-6 and head features, cached).
3. MemVP is fine-tuned on the frozen SmolLM2-135M-Instruct, and so is the "w/o visual prompts"
   ablation of Table 4 (position embeddings only, same budget), through the same ``train``. MemVP
   sits in the top half of the layers: the instruments showed the lower layers' memories staying
   nearly silent when all 30 carry one, and backward then stops at layer 15 (0.96 s instead of
   1.27 s per step here).
4. Held-out accuracy per question type is printed next to the answer prior.

``arms`` may add the paper's Table 4 ablations (``TABLE4``). ``compare=True`` (``memvp demo
--compare``) also trains the paper's baselines with the same budget (steps, batch, learning rate,
data): input-space prompting with LoRA (LLaVA-LoRA) and text-only LoRA, evaluates every arm every
``EVAL_EVERY`` steps, draws held-out accuracy against training seconds (``accuracy_vs_seconds.png``)
and measures each arm's peak training-step memory (its second step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

from ..atomic import atomic_write, atomic_write_text
from ..training import TrainConfig, train
from . import DEMO_VISION_ENCODER
from .scenes import IMAGE_PATTERN, ONE_OBJECT_TYPES, generate_dataset

SINGLE_OBJECT = {"num_objects": 1, "question_types": list(ONE_OBJECT_TYPES), "questions_per_scene": 3}
SIX_OBJECTS = {"num_objects": 6, "question_types": list(ONE_OBJECT_TYPES), "questions_per_scene": 3}
GROUNDING_WEIGHT = 2.0
"""The where task's MemVP: weight of the grounding loss (docs/memory_scale.md 6.2: 2 was the steadiest)."""


class Task(NamedTuple):
    scenes: dict  # generate_dataset's num_objects, question_types, questions_per_scene
    about: str  # what the printed table is about
    memvp: dict  # TrainConfig overrides of the "memvp" arm (and of the Table 4 arms); a "memvp" key merges
    memvp_title: str
    arms: tuple[str, ...]  # the default arms (without --compare)
    selectivity_figure: bool = False  # draw selectivity_per_layer.png (the where task's point)
    steps: int | None = None  # every arm's max_steps in the full run (None: FULL's)


TASKS = {
    "one-object": Task(SINGLE_OBJECT, "synthetic single-object VQA", {}, "MemVP", ("no_visual_prompts", "memvp")),
    # Six objects: the asked one must be found by its colour before its shape or place can be read;
    # the answer loss alone did not teach that in this budget, the asked object's box does.
    # Softmax retrieval lets the asked object's few entries take the whole read (phi spread it over
    # every object: docs/memory_scale.md 6.5); it needs the longer run to find them.
    "where": Task(
        SIX_OBJECTS,
        "synthetic six-object VQA (the asked object named by its colour; MemVP with softmax retrieval)",
        {"grounding_weight": GROUNDING_WEIGHT, "memvp": {"retrieval": "softmax"}},
        "MemVP + grounding",
        ("no_visual_prompts", "memvp_answer_loss", "memvp"),
        selectivity_figure=True,
        steps=1000,
    ),
}
FULL = {
    "scenes": {"n_train": 2400, "n_val": 10, "n_test": 200},
    "train": {"max_steps": 400, "batch_size": 16, "lr": 1e-2},
}
QUICK = {
    "scenes": {"n_train": 40, "n_val": 5, "n_test": 20},
    "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-2},
}
MEMVP = {"num_entries": 49, "target_layers": list(range(-15, 0))}
"""The demo's MemVP: one entry per grid cell, in the top 15 layers (the top half of SmolLM2's 30)."""
EVAL_EVERY = {"full": 100, "quick": 2}
"""--compare: evaluate every arm this often, for the accuracy-against-seconds picture."""


def _data_spec(root: Path, split: str) -> dict:
    return {
        "format": "vqav2",
        "questions_file": str(root / f"questions_{split}.json"),
        "annotations_file": str(root / f"annotations_{split}.json"),
        "image_dir": str(root / "images"),
        "image_pattern": IMAGE_PATTERN,
    }


SCENES_VERSION = 2
"""Bumped when the generator's files change (2: questions carry ``asked_box``): an older data set is
made again (the same images, byte for byte), not reused."""


def _scenes(root: Path, params: dict, seed: int) -> dict:
    """Generate the data set, or reuse it when the same parameters and generator made it before."""
    stamp = root / "summary.json"
    wanted = {**params, "seed": seed, "version": SCENES_VERSION}
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("params") == wanted:
            return saved
    summary = {**generate_dataset(root, seed=seed, **params), "params": wanted}
    atomic_write_text(stamp, json.dumps(summary, indent=2))
    return summary


def demo_train_config(data_dir: str | Path, quick: bool = False, seed: int = 0, **overrides) -> TrainConfig:
    """The TrainConfig every arm of the demo starts from (``overrides`` replace its fields)."""
    data_dir = Path(data_dir)
    setting = QUICK if quick else FULL
    base = TrainConfig(
        train_data=_data_spec(data_dir, "train"),
        eval_data=_data_spec(data_dir, "test"),
        vision_encoder=DEMO_VISION_ENCODER,
        memvp=dict(MEMVP),
        max_length=48,
        max_new_tokens=3,
        eval_batch_size=50,
        seed=seed,
        warmup_ratio=0.05,
        grounding_weight=0.0,  # the answer loss alone, unless the task's MemVP recipe grounds
        **setting["train"],
    )
    return dataclasses.replace(base, **overrides)


class Arm(NamedTuple):
    title: str  # the table's column
    overrides: dict  # of the TrainConfig every arm starts from
    task_recipe: bool = False  # also takes the task's MemVP overrides (the where task's grounding)


def _ablation(**memvp) -> dict:
    return {"method": "memvp", "memvp": memvp}  # merged over the task's MemVP options (arm_config)


ARMS = {
    "no_visual_prompts": Arm("w/o visual prompts", {"method": "memvp", "use_images": False}),
    "text_only": Arm("text-only LoRA", {"method": "text_only"}),
    # lr 0.01 diverged for input-space LoRA on this task (docs/benchmarks.md); 2e-3, one value, not a sweep.
    "input_space": Arm("input-space LoRA", {"method": "input_space", "lr": 2e-3}),
    # the task's MemVP without the grounding loss
    "memvp_answer_loss": Arm("MemVP, answer loss only", {"method": "memvp", "grounding_weight": 0.0}, True),
    # Table 4's ablations: MemVP with one part changed, the task's recipe otherwise.
    "keys_only": Arm("keys only", _ablation(insert_into="keys"), True),
    "values_only": Arm("values only", _ablation(insert_into="values"), True),
    "global_token": Arm("global visual token", _ablation(visual_tokens="global"), True),
    "positions_concat": Arm("positions concatenated", _ablation(position_mode="concat"), True),
    "memvp": Arm("MemVP", {"method": "memvp"}, True),
    "adem": Arm("ADEM-VL-style", {"method": "adem"}),  # not in the default arms: --arms adem,memvp
}
TABLE4 = ("keys_only", "values_only", "global_token", "positions_concat", "no_visual_prompts", "memvp")
"""``--arms table4``: the paper's Table 4 ablations next to MemVP."""


def default_output_dir(task: str = "one-object") -> str:
    return "runs/demo" if task == "one-object" else f"runs/demo-{task}"


def plan_arms(task: str = "one-object", arms: list[str] | None = None, compare: bool = False) -> list[str]:
    """The arms to train, in the table's order (ARMS'); ValueError names a bad ``task`` or ``arms``."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {list(TASKS)}, got {task!r}")
    if arms == ["table4"]:
        arms = list(TABLE4)
    unknown = sorted(set(arms or []) - set(ARMS))
    if unknown or (arms is not None and "memvp" not in arms):
        raise ValueError(f"--arms must be a comma-separated subset of {list(ARMS)} that includes memvp, got {arms}")
    default = (*TASKS[task].arms, "text_only", "input_space") if compare else TASKS[task].arms
    return [a for a in ARMS if a in (arms or default)]


def arm_config(base: TrainConfig, task: str, name: str, output_dir: str | Path) -> TrainConfig:
    """Arm ``name``'s TrainConfig: ``base`` with the arm's overrides and, where it takes them, the task's."""
    arm = ARMS[name]
    recipe = TASKS[task].memvp if arm.task_recipe else {}
    overrides = {**recipe, **arm.overrides}
    if "memvp" in overrides:  # the demo's MemVP options, the task's over them, an ablation's change over both
        overrides["memvp"] = {**base.memvp, **recipe.get("memvp", {}), **arm.overrides.get("memvp", {})}
    return dataclasses.replace(base, output_dir=str(output_dir), **overrides)


def run_demo(
    output_dir: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    compare: bool = False,
    arms: list[str] | None = None,
    task: str = "one-object",
) -> dict:
    """``arms`` picks some of ARMS (default: the task's, plus input-space and text-only LoRA with
    ``compare``); ``task`` one of TASKS; ``output_dir`` defaults to ``default_output_dir(task)``."""
    columns = plan_arms(task, arms, compare)
    spec = TASKS[task]
    out = Path(output_dir or default_output_dir(task))
    t0 = time.perf_counter()
    scene_params = {**(QUICK if quick else FULL)["scenes"], **spec.scenes}
    summary = _scenes(out / "data", scene_params, seed)
    base = demo_train_config(
        out / "data", quick, seed, **({"max_steps": spec.steps} if spec.steps and not quick else {})
    )
    if compare:
        base = dataclasses.replace(base, eval_every=EVAL_EVERY["quick" if quick else "full"], measure_memory=True)
    runs = {}
    for name in columns:
        print(f"\n== training {name} ==")
        runs[name] = train(arm_config(base, task, name, out / name))

    prior = summary["answer_prior_accuracy"]
    rows = []
    for qtype in (*scene_params["question_types"], "overall"):
        cells = [100 * prior[qtype]]
        for name in columns:
            ev = runs[name]["eval"]
            cells.append(ev["overall"] if qtype == "overall" else ev["per_type"].get(qtype, float("nan")))
        rows.append((qtype, *cells))
    titles = [spec.memvp_title if name == "memvp" else ARMS[name].title for name in columns]
    lines = ["| question type | answer prior | " + " | ".join(titles) + " |", "|---" * (2 + len(columns)) + "|"]
    lines += ["| " + " | ".join([q] + [f"{c:.1f}" for c in cells]) + " |" for q, *cells in rows]
    lines += selectivity_rows(runs, columns)
    lines += cost_rows(runs, columns)
    if compare:
        lines.append(
            "| peak training-step memory (MiB) | | "
            + " | ".join(_mib(runs[n].get("peak_step_memory_bytes")) for n in columns)
            + " |"
        )
    lines.append(
        f"\ntest questions: {runs['memvp']['eval']['count']}; every arm trained {base.max_steps} steps x "
        f"{base.batch_size} questions, lr {base.lr}"
        + "".join(f" ({ARMS[n].title}: lr {ARMS[n].overrides['lr']})" for n in columns if "lr" in ARMS[n].overrides)
        + f"; whole demo {time.perf_counter() - t0:.0f}s"
    )
    lines += scale_lines(runs["memvp"])
    table = "\n".join(lines)
    print(f"\nHeld-out accuracy (%) on {spec.about}, SmolLM2-135M + EfficientNet-Lite0:\n" + table)
    result = {
        "task": task,
        "table": table,
        "rows": rows,
        "runs": runs,
        "answer_prior": prior,
        "seconds": time.perf_counter() - t0,
    }
    if compare:
        curves = {titles[i]: _curve(runs[n]) for i, n in enumerate(columns) if runs[n]["use_images"]}
        result["curves"] = curves
        plot_curves(curves, 100 * prior["overall"], out / "accuracy_vs_seconds.png")
        print(f"wrote {out / 'accuracy_vs_seconds.png'}")
    layers = {titles[i]: per_layer for i, n in enumerate(columns) if (per_layer := _selectivity(runs[n]))}
    if spec.selectivity_figure and layers:
        plot_selectivity(layers, out / "selectivity_per_layer.png")
        print(f"wrote {out / 'selectivity_per_layer.png'}")
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, default=str))
    return result


def _selectivity(run: dict) -> dict | None:
    """{MemVP layer: retrieval weight on the asked object / uniform} at the last step, when measured."""
    return (run.get("scale") or {}).get("selectivity") or None


def selectivity_rows(runs: dict, names) -> list[str]:
    """Each MemVP arm's retrieval weight on the asked object / uniform (best layer, last step), when
    the data knows where the asked object is; other arms have no retrieval to measure."""
    if not any(_selectivity(runs[n]) for n in names):
        return []
    cells = [f"{runs[n]['scale']['max_selectivity']:.2f}" if _selectivity(runs[n]) else "" for n in names]
    return ["| on the asked object / uniform (best layer) | | " + " | ".join(cells) + " |"]


def cost_rows(runs: dict, names) -> list[str]:
    """The table rows under the accuracies: each arm's training seconds and trainable parameters."""
    return [
        "| training time (s) | | " + " | ".join(f"{runs[n]['train_seconds']:.0f}" for n in names) + " |",
        "| trainable parameters | | " + " | ".join(f"{runs[n]['trainable_parameters']:,d}" for n in names) + " |",
    ]


def scale_lines(run: dict) -> list[str]:
    """The instruments' reading of a MemVP run (last step), when it measured them."""
    scale = run.get("scale")
    if not scale:
        return []
    lines = [
        f"MemVP's residual norm / the frozen LM's, largest over layers (last step): "
        f"{scale['max_residual_ratio']:.3f}; memory / FFN output up to {scale['max_memory_to_ffn']:.3f}"
    ]
    if scale.get("selectivity"):  # the scenes carry the asked object's box
        lines.append(
            "MemVP's retrieval weight on the asked object / uniform, best layer (last step): "
            f"{scale['max_selectivity']:.2f} (1 = reads the average of the image)"
        )
    return lines


def _mib(n_bytes: int | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:.0f}"


def _curve(run: dict) -> list[tuple[float, float]]:
    """(training seconds, held-out overall accuracy) at each evaluation, the start (0 s, no training
    yet, left out) excluded and the final evaluation included."""
    points = [(h["train_seconds"], h["overall"]) for h in run["history"]]
    return points + [(run["train_seconds"], run["eval"]["overall"])]


@contextlib.contextmanager
def _line_plot(path: Path, ylabel: str):
    """A 6 x 4 in line plot (Agg, no display needed): yields the axes, then adds the grid and legend
    and writes the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        yield ax
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def plot_curves(curves: dict[str, list[tuple[float, float]]], prior: float, path: Path) -> None:
    """Held-out accuracy against training seconds, one line per arm, the answer prior dashed."""
    with _line_plot(path, "held-out accuracy (%)") as ax:
        for label, points in curves.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(prior, color="gray", linestyle="--", label="answer prior")
        ax.set_xlabel("training seconds (evaluations excluded)")
        ax.set_ylim(0, 100)


def plot_selectivity(layers: dict[str, dict[str, float]], path: Path) -> None:
    """Retrieval weight on the asked object / uniform per MemVP layer, one line per arm."""
    with _line_plot(path, "retrieval on the asked object / uniform") as ax:
        for label, per_layer in layers.items():
            ax.plot(range(len(per_layer)), list(per_layer.values()), marker="o", label=label)
        names = list(next(iter(layers.values())))
        ax.set_xticks(range(len(names)), [n.rsplit(".", 1)[-1] for n in names], fontsize=7)
        ax.axhline(1.0, color="gray", linestyle="--", label="uniform (reads the average)")
        ax.set_xlabel("MemVP layer (language-model layer index)")
