"""The embedded demo (the README's main job): a synthetic VQA task that needs the image.

1. ``scenes.generate_dataset`` draws Sort-of-CLEVR scenes and writes them in the VQAv2 layout.
2. The frozen EfficientNet-Lite0 encodes each image once (7 x 7 grid -> 49 visual tokens of its
   block-6 and head features, cached).
3. MemVP is fine-tuned on the frozen SmolLM2-135M-Instruct, and so is the "w/o visual prompts"
   ablation of Table 4 (position embeddings only, same budget), through the same ``train``.
4. Held-out accuracy per question type is printed next to the answer prior.

``compare=True`` (``memvp demo --compare``) also trains the paper's baselines with the same budget
(steps, batch, learning rate, data): input-space prompting with LoRA (LLaVA-LoRA) and text-only LoRA.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .atomic import atomic_write_text
from .scenes import IMAGE_PATTERN, QUESTION_TYPES, generate_dataset
from .train import TrainConfig, train

FULL = {"scenes": {"n_train": 2400, "n_val": 50, "n_test": 200, "questions_per_scene": 6},
        "train": {"max_steps": 400, "batch_size": 16, "lr": 1e-2}}
QUICK = {"scenes": {"n_train": 40, "n_val": 5, "n_test": 10, "questions_per_scene": 6},
         "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-2}}
# The head of EfficientNet-Lite0 keeps little colour information; block6 adds it (vision.py).
VISION = "efficientnet-lite0:block6,head"


def _data_spec(root: Path, split: str) -> dict:
    return {"format": "vqav2", "questions_file": str(root / f"questions_{split}.json"),
            "annotations_file": str(root / f"annotations_{split}.json"), "image_dir": str(root / "images"),
            "image_pattern": IMAGE_PATTERN}


def _scenes(root: Path, params: dict, seed: int) -> dict:
    """Generate the data set, or reuse it when the same parameters made it before."""
    stamp = root / "summary.json"
    wanted = {**params, "seed": seed}
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
        train_data=_data_spec(data_dir, "train"), eval_data=_data_spec(data_dir, "test"),
        vision_encoder=VISION, memvp={"num_entries": 49}, max_length=48, max_new_tokens=3,
        eval_batch_size=50, seed=seed, warmup_ratio=0.05, **setting["train"])
    return dataclasses.replace(base, **overrides)


# Arm -> (column title, TrainConfig overrides).
ARMS = {
    "no_visual_prompts": ("w/o visual prompts", {"method": "memvp", "use_images": False}),
    "text_only": ("text-only LoRA", {"method": "text_only"}),
    "input_space": ("input-space LoRA", {"method": "input_space"}),
    "memvp": ("MemVP", {"method": "memvp"}),
}


def run_demo(output_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0,
             compare: bool = False) -> dict:
    out = Path(output_dir)
    t0 = time.perf_counter()
    summary = _scenes(out / "data", (QUICK if quick else FULL)["scenes"], seed)
    base = demo_train_config(out / "data", quick, seed)
    columns = [a for a in ARMS if compare or a in ("no_visual_prompts", "memvp")]
    runs = {}
    for name in columns:
        print(f"\n== training {name} ==")
        runs[name] = train(dataclasses.replace(base, output_dir=str(out / name), **ARMS[name][1]))

    prior = summary["answer_prior_accuracy"]
    rows = []
    for qtype in (*QUESTION_TYPES, "overall"):
        cells = [100 * prior[qtype]]
        for name in columns:
            ev = runs[name]["eval"]
            cells.append(ev["overall"] if qtype == "overall" else ev["per_type"].get(qtype, float("nan")))
        rows.append((qtype, *cells))
    titles = [ARMS[name][0] for name in columns]
    lines = ["| question type | answer prior | " + " | ".join(titles) + " |", "|---" * (2 + len(columns)) + "|"]
    lines += ["| " + " | ".join([q] + [f"{c:.1f}" for c in cells]) + " |" for q, *cells in rows]
    lines.append("| training time (s) | | " + " | ".join(f"{runs[n]['train_seconds']:.0f}" for n in columns) + " |")
    lines.append("| trainable parameters | | " + " | ".join(f"{runs[n]['trainable_parameters']:,d}" for n in columns) + " |")
    lines.append(f"\ntest questions: {runs['memvp']['eval']['count']}; every arm trained {base.max_steps} steps x "
                 f"{base.batch_size} questions, lr {base.lr}; whole demo {time.perf_counter() - t0:.0f}s")
    table = "\n".join(lines)
    print("\nHeld-out accuracy (%) on synthetic Sort-of-CLEVR VQA, SmolLM2-135M + EfficientNet-Lite0:\n" + table)
    result = {"table": table, "rows": rows, "runs": runs, "answer_prior": prior,
              "seconds": time.perf_counter() - t0}
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, default=str))
    return result
