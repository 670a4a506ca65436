"""Video QA in miniature (``memvp video-demo``): synthetic clips written as real video files, read
through the frame sampler, MemVP on frame features against the ablation without visual prompts.

Each clip is ``CLIP_FRAMES`` frames at ``FPS`` frames/s (112 x 112 px, MPEG-4 in .mp4, written with
PyAV) that tells one of three stories:

    grow   a red square at a fixed place grows or shrinks     "Does the red square grow or shrink?"
    last   a square, a circle and a triangle appear in turn   "Which shape appears last?"
    count  a blue circle shows up 1-3 times, gone in between  "How many times does the circle appear?"

Every question needs the frames *and their order*: the sizes' trend, the last shape, the number of
separate appearances; the text alone reaches 1/2, 1/3 and 1/3 (the answer prior, printed next to the
results). The questions are written twice: as video conversations in the LLaVA layout
(``llava_{train,val}.json``, LLaVA-NeXT-Video's ``"video"`` key, one-word answers), which the demo
trains on, and in TVQA's layout (``tvqa_{train,val}.jsonl``, five lettered options with never-right
distractors) for ``format: tvqa``. Letters were not learned here: with options A-E both arms stayed
at letter chance for 150 steps (docs/video.md), as mapping a letter to its option is one more step
for a 135M LM to learn.

MemVP centres the frame features on their training mean (``center_features``): 94% of these
features' energy is one direction shared by every frame (the white background), and without
centring retrieval spread evenly over the 6 frames and the memory read like their average (measured,
docs/video.md). Motion direction ("which way does it move?") is left out on purpose: a frame's token
is its *global* feature (EfficientNet's grid mean, as a CLIP [CLS] for the paper), which hardly
changes when an object only moves.

Stories are laid out in units of ``CLIP_FRAMES // NUM_FRAMES`` identical frames, and the sampler
takes one frame per unit (the frame on screen at the middle of each of ``NUM_FRAMES`` equal parts of
the clip), so no appearance falls between samples.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..metrics import gqa_accuracy
from ..training import TrainConfig, train
from . import DEMO_VISION_ENCODER
from .demo import cost_rows, scale_lines

CLIP_FRAMES, FPS, NUM_FRAMES, SIZE = 12, 6, 6, 112
STORIES = ("grow", "last", "count")
QUESTIONS = {
    "grow": "Does the red square grow or shrink?",
    "last": "Which shape appears last?",
    "count": "How many times does the circle appear?",
}
ANSWERS = {"grow": ["grow", "shrink"], "last": ["square", "circle", "triangle"], "count": ["one", "two", "three"]}
DISTRACTORS = {
    "grow": ["stay the same size", "spin", "change colour"],
    "last": ["star", "heart"],
    "count": ["zero", "four"],
}
COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (40, 160, 50), "orange": (255, 140, 0)}
FULL = {"n_train": 600, "n_test": 150, "train": {"max_steps": 150, "batch_size": 16, "lr": 1e-2}}
QUICK = {"n_train": 12, "n_test": 6, "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2}}
MEMVP = {"num_entries": NUM_FRAMES, "target_layers": list(range(-15, 0)), "center_features": True}
"""One entry per sampled frame, in the top half of SmolLM2's layers (as the image demo), the frame
features centred on their training mean."""


def _draw(canvas: Image.Image, shape: str, centre: tuple[int, int], size: int, colour: tuple[int, int, int]) -> None:
    x, y, h = centre[0], centre[1], size // 2
    draw = ImageDraw.Draw(canvas)
    if shape == "square":
        draw.rectangle([x - h, y - h, x + h, y + h], fill=colour)
    elif shape == "circle":
        draw.ellipse([x - h, y - h, x + h, y + h], fill=colour)
    else:
        draw.polygon([(x, y - h), (x - h, y + h), (x + h, y + h)], fill=colour)


def story_frames(story: str, answer: str, rng: np.random.Generator) -> list[Image.Image]:
    """The CLIP_FRAMES frames of one clip whose answer to ``QUESTIONS[story]`` is ``answer``."""
    units = NUM_FRAMES
    per_unit = CLIP_FRAMES // units
    blank = lambda: Image.new("RGB", (SIZE, SIZE), (255, 255, 255))  # noqa: E731
    frames_per_unit = []
    centre = tuple(int(v) for v in rng.integers(36, SIZE - 36, size=2))
    if story == "grow":
        sizes = np.linspace(16, 64, units).round().astype(int)
        for size in sizes if answer == "grow" else sizes[::-1]:
            frame = blank()
            _draw(frame, "square", centre, int(size), COLOURS["red"])
            frames_per_unit.append(frame)
    elif story == "last":
        order = [s for s in rng.permutation(ANSWERS["last"]) if s != answer] + [answer]
        colours = rng.permutation(list(COLOURS))
        for u in range(units):  # three shapes, each shown for a third of the clip
            frame = blank()
            k = u * 3 // units
            _draw(frame, order[k], centre, 40, COLOURS[colours[k]])
            frames_per_unit.append(frame)
    else:  # count: `times` separate runs of units with the circle, a blank unit between runs
        times = ANSWERS["count"].index(answer) + 1
        while True:
            on = rng.random(units) < 0.5
            runs = int(on[0]) + int(np.sum(on[1:] & ~on[:-1]))
            if runs == times:
                break
        for visible in on:
            frame = blank()
            if visible:
                _draw(frame, "circle", centre, 40, COLOURS["blue"])
            frames_per_unit.append(frame)
    return [f for f in frames_per_unit for _ in range(per_unit)]


def write_video(path: Path, frames: list[Image.Image], fps: int = FPS) -> None:
    """An MPEG-4 .mp4 file of the frames (PyAV), written atomically."""
    import av

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
            stream.bit_rate = 2_000_000  # sharp shapes: no visible compression artefacts at this size
            # Every frame a key frame: predicted frames carry motion-compensation artefacts that differ
            # between a growing and a shrinking square, so single frames told the direction (a linear
            # probe on the frames' order-free mean: 100% on held-out clips), not only their order.
            stream.codec_context.gop_size = 1
            for image in frames:
                container.mux(stream.encode(av.VideoFrame.from_image(image)))
            container.mux(stream.encode())  # flush

    atomic_write(path, write)


def generate_videos(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0, progress: bool = True) -> dict:
    """Clips under ``out_dir/videos`` and their questions as LLaVA video conversations
    (``llava_train.json`` / ``llava_val.json``, one-word answers; the extra ``story`` key names the
    question type) and in TVQA's layout (``tvqa_train.jsonl`` / ``tvqa_val.jsonl``); returns the
    answer prior (the most frequent training answer per story, scored on the held-out split: what
    the text alone can reach)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    clip_seconds = CLIP_FRAMES / FPS
    splits = {"train": n_train, "val": n_test}
    records: dict[str, list[dict]] = {}
    with tqdm(total=n_train + n_test, desc="writing videos", disable=not progress) as bar:
        index = 0
        for split, count in splits.items():
            records[split] = []
            for i in range(count):
                story = STORIES[i % len(STORIES)]
                answer = ANSWERS[story][int(rng.integers(len(ANSWERS[story])))]
                name = f"{split}_{index:05d}"
                write_video(out / "videos" / f"{name}.mp4", story_frames(story, answer, rng))
                options = list(rng.permutation(ANSWERS[story] + DISTRACTORS[story]))
                records[split].append(
                    {
                        "qid": index,
                        "q": QUESTIONS[story],
                        **{f"a{k}": str(o) for k, o in enumerate(options)},
                        "answer_idx": options.index(answer),
                        "vid_name": name,
                        "ts": f"0.00-{clip_seconds:.2f}",
                        "show_name": story,
                    }
                )
                index += 1
                bar.update(1)
    answer_of = lambda r: r[f"a{r['answer_idx']}"]  # noqa: E731
    for split, rows in records.items():
        atomic_write_text(out / f"tvqa_{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        conversations = [
            {
                "id": r["vid_name"],
                "video": f"{r['vid_name']}.mp4",
                "story": r["show_name"],
                "conversations": [
                    {"from": "human", "value": f"<video>\n{r['q']}"},
                    {"from": "gpt", "value": answer_of(r)},
                ],
            }
            for r in rows
        ]
        atomic_write_text(out / f"llava_{split}.json", json.dumps(conversations, indent=1))
    by_story: dict[str, Counter] = defaultdict(Counter)
    for r in records["train"]:
        by_story[r["show_name"]][answer_of(r)] += 1
    prior_right = defaultdict(list)
    for r in records["val"]:
        prior_right[r["show_name"]].append(answer_of(r) == by_story[r["show_name"]].most_common(1)[0][0])
    prior = {s: float(np.mean(v)) for s, v in prior_right.items()}
    prior["overall"] = float(np.mean([x for v in prior_right.values() for x in v]))
    return {"answer_prior_accuracy": prior, "n_train": n_train, "n_test": n_test}


def video_train_config(data_dir: str | Path, quick: bool = False, seed: int = 0, **overrides) -> TrainConfig:
    data_dir = Path(data_dir)
    spec = lambda split: {
        "format": "llava",
        "json_file": str(data_dir / f"llava_{split}.json"),  # noqa: E731
        "image_dir": str(data_dir / "videos"),
    }
    setting = QUICK if quick else FULL
    base = TrainConfig(
        train_data=spec("train"),
        eval_data=spec("val"),
        vision_encoder=DEMO_VISION_ENCODER,
        num_frames=NUM_FRAMES,
        memvp=dict(MEMVP),
        max_length=48,
        max_new_tokens=3,
        eval_batch_size=50,
        seed=seed,
        warmup_ratio=0.05,
        **setting["train"],
    )
    return dataclasses.replace(base, **overrides)


def story_accuracy(conversations_file: str | Path, predictions_file: str | Path) -> dict:
    """Exact-match accuracy of a run's predictions (the llava task's metric) per story; a question
    without a prediction counts as wrong, as in the run's own score."""
    conversations = json.loads(Path(conversations_file).read_text())
    predictions = json.loads(Path(predictions_file).read_text())
    ids = [f"{c['id']}_0" for c in conversations]  # read_llava's sample id: conversation id, turn 0
    references = {i: c["conversations"][1]["value"] for i, c in zip(ids, conversations)}
    return gqa_accuracy(
        {i: predictions.get(i, "") for i in ids}, references, {i: c["story"] for i, c in zip(ids, conversations)}
    )


ARMS = {"no_visual_prompts": ("w/o visual prompts", {"use_images": False}), "memvp": ("MemVP", {})}


def run_video_demo(output_dir: str | Path = "runs/video", quick: bool = False, seed: int = 0) -> dict:
    """Write the clips (once per setting), train both arms, print held-out accuracy per story."""
    out = Path(output_dir)
    t0 = time.perf_counter()
    setting = QUICK if quick else FULL
    stamp, wanted = (
        out / "data" / "summary.json",
        {
            "n_train": setting["n_train"],
            "n_test": setting["n_test"],
            "seed": seed,
            "clip_frames": CLIP_FRAMES,
            "fps": FPS,
            "answers": ANSWERS,
            "layouts": ["llava", "tvqa"],
            "key_frames_only": True,
        },
    )
    summary = json.loads(stamp.read_text()) if stamp.is_file() else None
    if summary is None or summary.get("params") != wanted:
        summary = {**generate_videos(out / "data", setting["n_train"], setting["n_test"], seed), "params": wanted}
        atomic_write_text(stamp, json.dumps(summary, indent=2))
    base = video_train_config(out / "data", quick, seed)
    runs = {}
    for name, (_, overrides) in ARMS.items():
        print(f"\n== training {name} ==")
        runs[name] = train(dataclasses.replace(base, output_dir=str(out / name), **overrides))
    prior = summary["answer_prior_accuracy"]
    per_story = {
        name: story_accuracy(out / "data" / "llava_val.json", out / name / "predictions_eval.json") for name in ARMS
    }
    lines = [
        "| question | answer prior | " + " | ".join(title for title, _ in ARMS.values()) + " |",
        "|---" * (2 + len(ARMS)) + "|",
    ]
    for story in (*STORIES, "overall"):
        cells = [100 * prior.get(story, float("nan"))]
        for name in ARMS:
            ev = per_story[name]
            cells.append(ev["overall"] if story == "overall" else ev["per_type"].get(story, float("nan")))
        label = QUESTIONS.get(story, "overall")
        lines.append(f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    lines += cost_rows(runs, ARMS)
    lines.append(
        f"\nheld-out questions: {runs['memvp']['eval']['count']}; {NUM_FRAMES} of {CLIP_FRAMES} frames per clip; "
        f"each arm {base.max_steps} steps x {base.batch_size}, lr {base.lr}; "
        f"whole run {time.perf_counter() - t0:.0f}s"
    )
    lines += scale_lines(runs["memvp"])
    table = "\n".join(lines)
    print("\nHeld-out accuracy (%) on synthetic video QA, SmolLM2-135M + EfficientNet-Lite0 frame features:\n" + table)
    result = {
        "table": table,
        "runs": runs,
        "per_story": per_story,
        "answer_prior": prior,
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, default=str))
    return result


__all__ = ["generate_videos", "story_frames", "write_video", "video_train_config", "story_accuracy", "run_video_demo"]
