"""Sort-of-CLEVR-style synthetic VQA scenes (Santoro et al., 2017), written in the VQAv2 JSON layout.

A scene is a 224x224 canvas with K objects (default 6), each of a distinct colour, a square or a circle,
``size`` px wide, placed so that no two objects touch.  Every question names one object by its colour, so
no question can be answered without the image.  Geometry uses continuous pixel coordinates: pixel ``i``
covers ``[i, i + 1)``, an object centred at integer ``(x, y)`` covers pixels ``x - size // 2`` to
``x - size // 2 + size - 1`` (exactly ``size`` pixels), and the mean of its pixels' centres is ``(x, y)``.

Question types and templates (X is a colour name)::

    shape       What shape is the X object?                              square / circle
    horizontal  Is the X object on the left or right?                    left / right   (x < width / 2)
    vertical    Is the X object at the top or bottom?                    top / bottom   (y < height / 2)
    count       How many objects have the same shape as the X object?    1 .. K (itself included)
    nearest     What color is the object nearest to the X object?        a colour name
    farthest    What shape is the object farthest from the X object?     square / circle

Ambiguity is kept out: no object centre lies within ``AMBIGUITY_PX`` of the half lines, and a
nearest/farthest question is skipped when the two best distances differ by less than ``AMBIGUITY_PX``.
The questions answered from the named object alone (shape, horizontal, vertical) carry its box as
``asked_box`` in their question records, for the retrieval-selectivity instrument.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..metrics import normalize_vqa_answer

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 160, 50),
    "blue": (30, 70, 220),
    "orange": (255, 140, 0),
    "gray": (128, 128, 128),
    "yellow": (240, 210, 0),
}
SHAPES = ("square", "circle")
QUESTION_TYPES = ("shape", "horizontal", "vertical", "count", "nearest", "farthest")
TEMPLATES = {
    "shape": "What shape is the {} object?",
    "horizontal": "Is the {} object on the left or right?",
    "vertical": "Is the {} object at the top or bottom?",
    "count": "How many objects have the same shape as the {} object?",
    "nearest": "What color is the object nearest to the {} object?",
    "farthest": "What shape is the object farthest from the {} object?",
}
ONE_OBJECT_TYPES = ("shape", "horizontal", "vertical")
"""Question types answered from the named object alone: their records carry its ``asked_box``."""
SPLITS = ("train", "val", "test")
IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.png"

WIDTH = HEIGHT = 224
OBJECT_SIZE = 28  # 7x7 feature grid of a 224 px input: 32 px cells, 4 px spare
BACKGROUND = (255, 255, 255)
EDGE_MARGIN = 4  # min gap between an object and the canvas edge
MIN_GAP = 4  # min gap between the bounding boxes of two objects
AMBIGUITY_PX = 4  # min distance from the half lines / between the top-2 distances


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    x: int  # centre, pixels
    y: int
    size: int = OBJECT_SIZE


@dataclass(frozen=True)
class Scene:
    objects: list[SceneObject] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT

    def find(self, color: str) -> SceneObject:
        for obj in self.objects:
            if obj.color == color:
                return obj
        raise KeyError(f"no {color} object in the scene")


def random_scene(
    rng: np.random.Generator, num_objects: int = 6, size: int = OBJECT_SIZE, width: int = WIDTH, height: int = HEIGHT
) -> Scene:
    """K objects of distinct random colours and random shapes at random non-touching positions."""
    if not 1 <= num_objects <= len(COLORS):
        raise ValueError(f"num_objects must be in 1..{len(COLORS)}")
    names = list(COLORS)
    colors = [names[i] for i in rng.permutation(len(names))[:num_objects]]
    lo, hi_x, hi_y = EDGE_MARGIN + size // 2, width - EDGE_MARGIN - size // 2, height - EDGE_MARGIN - size // 2
    while True:  # restart on the (rare) dead end
        placed: list[tuple[int, int]] = []
        for _ in range(1000):
            x, y = int(rng.integers(lo, hi_x + 1)), int(rng.integers(lo, hi_y + 1))
            if abs(x - width / 2) < AMBIGUITY_PX or abs(y - height / 2) < AMBIGUITY_PX:
                continue
            if all(max(abs(x - px), abs(y - py)) >= size + MIN_GAP for px, py in placed):
                placed.append((x, y))
                if len(placed) == num_objects:
                    shapes = [SHAPES[int(i)] for i in rng.integers(0, len(SHAPES), num_objects)]
                    objects = [SceneObject(c, s, x, y, size) for c, s, (x, y) in zip(colors, shapes, placed)]
                    return Scene(objects, width, height)


def draw_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0 = obj.x - obj.size // 2, obj.y - obj.size // 2
        box = (x0, y0, x0 + obj.size - 1, y0 + obj.size - 1)  # inclusive corners
        (draw.rectangle if obj.shape == "square" else draw.ellipse)(box, fill=COLORS[obj.color])
    return image


def _ranked_others(scene: Scene, ref: SceneObject) -> list[tuple[float, SceneObject]]:
    """The other objects with their distance to ``ref``, nearest first."""
    others = [(float(np.hypot(o.x - ref.x, o.y - ref.y)), o) for o in scene.objects if o is not ref]
    return sorted(others, key=lambda t: t[0])


def is_unambiguous(scene: Scene, question_type: str, color: str) -> bool:
    ref = scene.find(color)
    if question_type == "horizontal":
        return abs(ref.x - scene.width / 2) >= AMBIGUITY_PX
    if question_type == "vertical":
        return abs(ref.y - scene.height / 2) >= AMBIGUITY_PX
    if question_type in ("nearest", "farthest"):
        dists = [d for d, _ in _ranked_others(scene, ref)]
        if len(dists) < 2:
            return len(dists) == 1
        return (dists[1] - dists[0] if question_type == "nearest" else dists[-1] - dists[-2]) >= AMBIGUITY_PX
    return True


def answer_question(scene: Scene, question_type: str, color: str) -> str:
    """Ground truth for the question of ``question_type`` about the ``color`` object."""
    ref = scene.find(color)
    if question_type == "shape":
        return ref.shape
    if question_type == "horizontal":
        return "left" if ref.x < scene.width / 2 else "right"
    if question_type == "vertical":
        return "top" if ref.y < scene.height / 2 else "bottom"
    if question_type == "count":
        return str(sum(o.shape == ref.shape for o in scene.objects))
    if question_type == "nearest":
        return _ranked_others(scene, ref)[0][1].color
    if question_type == "farthest":
        return _ranked_others(scene, ref)[-1][1].shape
    raise ValueError(f"unknown question type {question_type!r}")


def questions_for_scene(
    scene: Scene, rng: np.random.Generator, per_scene: int = 6, question_types: tuple[str, ...] = QUESTION_TYPES
) -> list[tuple[str, str, str, str]]:
    """``per_scene`` (question, answer, question_type, colour asked about), types cycling through a
    random order.

    Each question is about a random colour for which it is unambiguous, no (type, colour) pair twice;
    a question with no such colour left is skipped (rare: nearest/farthest near-ties only).
    """
    order = [question_types[int(i)] for i in rng.permutation(len(question_types))]
    used: set[tuple[str, str]] = set()
    out = []
    for k in range(per_scene):
        qtype = order[k % len(order)]
        colors = [
            o.color for o in scene.objects if (qtype, o.color) not in used and is_unambiguous(scene, qtype, o.color)
        ]
        if not colors:
            continue
        color = colors[int(rng.integers(len(colors)))]
        used.add((qtype, color))
        out.append((TEMPLATES[qtype].format(color), answer_question(scene, qtype, color), qtype, color))
    return out


def object_box(obj: SceneObject, width: int = WIDTH, height: int = HEIGHT) -> list[float]:
    """The object's box as fractions of the image, [x0, y0, x1, y1] (``asked_box``)."""
    x0, y0 = obj.x - obj.size // 2, obj.y - obj.size // 2
    return [x0 / width, y0 / height, (x0 + obj.size) / width, (y0 + obj.size) / height]


def vqa_records(
    image_id: int,
    question_id: int,
    question: str,
    answer: str,
    question_type: str,
    asked_box: list[float] | None = None,
) -> tuple[dict, dict]:
    """One question in the official VQAv2 JSON layout: (its ``questions`` entry, its ``annotations``
    entry with the answer given by all ten annotators). ``asked_box``: the asked object's box in
    fractions of the image (not an official field: the instruments read it for selectivity).
    The answer is written in VQA's normalised form ("six" -> "6"), as VQAv2's are: the official score
    normalises the prediction only, so an answer it would change could never be matched."""
    answer = normalize_vqa_answer(answer)
    annotation = {
        "question_id": question_id,
        "image_id": image_id,
        "question_type": question_type,
        "answer_type": question_type,
        "multiple_choice_answer": answer,
        "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
    }
    entry = {"image_id": image_id, "question": question, "question_id": question_id}
    if asked_box is not None:
        entry["asked_box"] = [round(float(v), 6) for v in asked_box]
    return entry, annotation


def most_frequent(answers: list[str]) -> tuple[str, float]:
    """The most frequent answer (ties: alphabetically first) and its share."""
    counts = Counter(answers)
    best = min(counts, key=lambda a: (-counts[a], a))
    return best, counts[best] / len(answers)


def answer_prior_accuracy(
    train_answers_by_type: dict[str, list[str]], test_answers_by_type: dict[str, list[str]]
) -> dict[str, float]:
    """Test accuracy of always answering the train split's most frequent answer of each question type.

    Returns one entry per test question type plus ``"overall"`` (over all test questions).
    """
    acc, hits, total = {}, 0, 0
    for qtype, answers in test_answers_by_type.items():
        train = train_answers_by_type.get(qtype)
        guess = most_frequent(train)[0] if train else None
        n_hit = sum(a == guess for a in answers)
        acc[qtype] = n_hit / len(answers) if answers else 0.0
        hits, total = hits + n_hit, total + len(answers)
    acc["overall"] = hits / total if total else 0.0
    return acc


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=None, separators=(",", ":"), sort_keys=False))


def _write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def load_scenes(path: str | os.PathLike) -> dict[int, Scene]:
    """Read ``scenes_{split}.json`` back: image_id -> Scene."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    w, h = data["width"], data["height"]
    return {int(i): Scene([SceneObject(**o) for o in objs], w, h) for i, objs in data["scenes"].items()}


def generate_dataset(
    out_dir: str | os.PathLike,
    n_train: int = 2400,
    n_val: int = 300,
    n_test: int = 300,
    questions_per_scene: int = 6,
    seed: int = 0,
    num_objects: int = 6,
    question_types: tuple[str, ...] | list[str] = QUESTION_TYPES,
    progress: bool = True,
) -> dict:
    """Write a Sort-of-CLEVR-style VQA set in the VQAv2 layout under ``out_dir``.

    Per split: ``questions_{split}.json``, ``annotations_{split}.json``, ``scenes_{split}.json`` and
    ``images/COCO_{split}_{image_id:012d}.png``.  Image ids run 1.. across all splits, question ids are
    ``image_id * 1000 + k``.  Scene ``image_id`` is drawn from ``np.random.default_rng([seed, image_id])``, so
    the output is byte-identical for a given seed and arguments.  ``question_types`` picks the kinds of
    question asked (relations need two objects or more).  Returns a summary dict.
    """
    question_types = tuple(question_types)
    unknown = sorted(set(question_types) - set(QUESTION_TYPES))
    if unknown or not question_types:
        raise ValueError(
            f"question_types must be a non-empty subset of {list(QUESTION_TYPES)}, got {list(question_types)}"
        )
    relational = sorted(set(question_types) & {"nearest", "farthest"})
    if relational and num_objects < 2:
        raise ValueError(f"question types {relational} need num_objects >= 2, got {num_objects}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    info = {
        "description": "Sort-of-CLEVR-style synthetic VQA (memvp.recipes.scenes)",
        "version": "1.0",
        "seed": seed,
        "num_objects": num_objects,
        "object_size": OBJECT_SIZE,
        "width": WIDTH,
        "height": HEIGHT,
        "question_types": list(question_types),
    }
    bar = tqdm(total=sum(sizes.values()), desc="scenes", unit="scene", disable=not progress)
    summary: dict = {"out_dir": str(out), "image_pattern": IMAGE_PATTERN, "splits": {}}
    answers: dict[str, dict[str, list[str]]] = {}
    image_id = 0
    for split in SPLITS:
        questions, annotations, scenes = [], [], {}
        by_type = {t: [] for t in question_types}
        for _ in range(sizes[split]):
            image_id += 1
            rng = np.random.default_rng([seed, image_id])
            scene = random_scene(rng, num_objects)
            _write_png(out / "images" / IMAGE_PATTERN.format(data_subtype=split, image_id=image_id), draw_scene(scene))
            scenes[str(image_id)] = [asdict(o) for o in scene.objects]
            for k, (question, answer, qtype, color) in enumerate(
                questions_for_scene(scene, rng, questions_per_scene, question_types)
            ):
                box = object_box(scene.find(color), scene.width, scene.height) if qtype in ONE_OBJECT_TYPES else None
                q_entry, annotation = vqa_records(image_id, image_id * 1000 + k, question, answer, qtype, box)
                questions.append(q_entry)
                annotations.append(annotation)
                by_type[qtype].append(answer)
            bar.update(1)
        _write_json(
            out / f"questions_{split}.json",
            {
                "info": info,
                "task_type": "Open-Ended",
                "data_type": "sortofclevr",
                "data_subtype": split,
                "questions": questions,
            },
        )
        _write_json(
            out / f"annotations_{split}.json",
            {"info": info, "data_type": "sortofclevr", "data_subtype": split, "annotations": annotations},
        )
        _write_json(
            out / f"scenes_{split}.json",
            {"info": info, "data_subtype": split, "width": WIDTH, "height": HEIGHT, "scenes": scenes},
        )
        answers[split] = by_type
        summary["splits"][split] = {
            "scenes": sizes[split],
            "questions": len(questions),
            "by_type": {t: len(a) for t, a in by_type.items()},
        }
    bar.close()
    train = {t: a for t, a in answers["train"].items() if a}
    summary["answer_prior"] = {t: most_frequent(a)[1] for t, a in train.items()}
    summary["answer_prior_answer"] = {t: most_frequent(a)[0] for t, a in train.items()}
    summary["answer_prior_accuracy"] = answer_prior_accuracy(
        answers["train"], {t: a for t, a in answers["test"].items() if a}
    )
    return summary
