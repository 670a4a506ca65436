"""The embedded demo (the README's main job): a synthetic VQA task that needs the image.

1. ``scenes.generate_dataset`` draws scenes of one coloured square or circle at a random place and
   asks its shape, left/right and top/bottom, written in the VQAv2 layout. (Six objects per scene,
   where the named colour must first be found among the others, were not learned by any method in
   a CPU budget: docs/memory_scale.md. ``generate_dataset(num_objects=6)`` still makes that set.)
2. The frozen EfficientNet-Lite0 encodes each image once (7 x 7 grid -> 49 visual tokens of its
   block-6 and head features, cached).
3. MemVP is fine-tuned on the frozen SmolLM2-135M-Instruct, and so is the "w/o visual prompts"
   ablation of Table 4 (position embeddings only, same budget), through the same ``train``. MemVP
   sits in the top half of the layers: the instruments showed the lower layers' memories staying
   nearly silent when all 30 carry one, and backward then stops at layer 15 (0.96 s instead of
   1.27 s per step here).
4. Held-out accuracy per question type is printed next to the answer prior.

``compare=True`` (``memvp demo --compare``) also trains the paper's baselines with the same budget
(steps, batch, learning rate, data): input-space prompting with LoRA (LLaVA-LoRA) and text-only LoRA,
evaluates every arm every ``EVAL_EVERY`` steps, draws held-out accuracy against training seconds
(``accuracy_vs_seconds.png``) and measures each arm's peak training-step memory (its second step).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..atomic import atomic_write, atomic_write_text
from ..training import TrainConfig, train
from . import DEMO_VISION_ENCODER
from .scenes import IMAGE_PATTERN, generate_dataset

SINGLE_OBJECT = {"num_objects": 1, "question_types": ["shape", "horizontal", "vertical"], "questions_per_scene": 3}
FULL = {
    "scenes": {"n_train": 2400, "n_val": 10, "n_test": 200, **SINGLE_OBJECT},
    "train": {"max_steps": 400, "batch_size": 16, "lr": 1e-2},
}
QUICK = {
    "scenes": {"n_train": 40, "n_val": 5, "n_test": 20, **SINGLE_OBJECT},
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
        **setting["train"],
    )
    return dataclasses.replace(base, **overrides)


# Arm -> (column title, TrainConfig overrides).
ARMS = {
    "no_visual_prompts": ("w/o visual prompts", {"method": "memvp", "use_images": False}),
    "text_only": ("text-only LoRA", {"method": "text_only"}),
    # lr 0.01 diverged for input-space LoRA on this task (docs/benchmarks.md); 2e-3, one value, not a sweep.
    "input_space": ("input-space LoRA", {"method": "input_space", "lr": 2e-3}),
    "memvp": ("MemVP", {"method": "memvp"}),
    "adem": ("ADEM-VL-style", {"method": "adem"}),  # not in the default arms: --arms adem,memvp
}


def run_demo(
    output_dir: str | Path = "runs/demo",
    quick: bool = False,
    seed: int = 0,
    compare: bool = False,
    arms: list[str] | None = None,
) -> dict:
    """``arms`` picks some of ARMS (default: all four with ``compare``, else the ablation and MemVP)."""
    unknown = sorted(set(arms or []) - set(ARMS))
    if unknown or (arms is not None and "memvp" not in arms):
        raise ValueError(f"--arms must be a comma-separated subset of {list(ARMS)} that includes memvp, got {arms}")
    out = Path(output_dir)
    t0 = time.perf_counter()
    scene_params = (QUICK if quick else FULL)["scenes"]
    summary = _scenes(out / "data", scene_params, seed)
    base = demo_train_config(out / "data", quick, seed)
    if compare:
        base = dataclasses.replace(base, eval_every=EVAL_EVERY["quick" if quick else "full"], measure_memory=True)
    default = ("no_visual_prompts", "text_only", "input_space", "memvp") if compare else ("no_visual_prompts", "memvp")
    columns = [a for a in ARMS if a in (arms or default)]
    runs = {}
    for name in columns:
        print(f"\n== training {name} ==")
        runs[name] = train(dataclasses.replace(base, output_dir=str(out / name), **ARMS[name][1]))

    prior = summary["answer_prior_accuracy"]
    rows = []
    for qtype in (*scene_params["question_types"], "overall"):
        cells = [100 * prior[qtype]]
        for name in columns:
            ev = runs[name]["eval"]
            cells.append(ev["overall"] if qtype == "overall" else ev["per_type"].get(qtype, float("nan")))
        rows.append((qtype, *cells))
    titles = [ARMS[name][0] for name in columns]
    lines = ["| question type | answer prior | " + " | ".join(titles) + " |", "|---" * (2 + len(columns)) + "|"]
    lines += ["| " + " | ".join([q] + [f"{c:.1f}" for c in cells]) + " |" for q, *cells in rows]
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
        + "".join(f" ({ARMS[n][0]}: lr {ARMS[n][1]['lr']})" for n in columns if "lr" in ARMS[n][1])
        + f"; whole demo {time.perf_counter() - t0:.0f}s"
    )
    lines += scale_lines(runs["memvp"])
    table = "\n".join(lines)
    print("\nHeld-out accuracy (%) on synthetic single-object VQA, SmolLM2-135M + EfficientNet-Lite0:\n" + table)
    result = {"table": table, "rows": rows, "runs": runs, "answer_prior": prior, "seconds": time.perf_counter() - t0}
    if compare:
        curves = {ARMS[n][0]: _curve(runs[n]) for n in columns if runs[n]["use_images"]}
        result["curves"] = curves
        plot_curves(curves, 100 * prior["overall"], out / "accuracy_vs_seconds.png")
        print(f"wrote {out / 'accuracy_vs_seconds.png'}")
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, default=str))
    return result


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


def plot_curves(curves: dict[str, list[tuple[float, float]]], prior: float, path: Path) -> None:
    """Held-out accuracy against training seconds, one line per arm, the answer prior dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    ax.axhline(prior, color="gray", linestyle="--", label="answer prior")
    ax.set_xlabel("training seconds (evaluations excluded)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
