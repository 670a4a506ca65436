"""Grids of real images as a multi-object VQA set, written in the VQAv2 JSON layout.

A scene is a ``rows`` x ``cols`` grid of cells on a ``size`` px canvas; every cell holds one real image
(a handwritten digit of scikit-learn's digits set, or an augmented crop of one of scikit-image's
bundled photos) of a distinct class, ``fill`` of the cell wide, centred, on a white background. Four
question kinds, one of each per scene (the held-out set of issue 26 has the same four)::

    count   How many <group> are there?      0 .. rows * cols      (a group: e.g. "even numbers")
    what    What is in the <cell>?           a class name          (cell: "top left", ...)
    where   Where is the <item>?             a cell name
    exists  Is there a <item>?               yes / no (balanced)

Each question's box (the asked object's image; none for count and for "no" answers) is in its
question record as ``asked_box`` (fractions of the image, which ``memvp train`` and ``memvp explain``
read for the retrieval-selectivity instrument) and, in pixels, with the scene in
``layout_{split}.json``. Needs numpy, PIL and memvp (the VQAv2 records, the answer prior, atomic writes);
scikit-learn / scikit-image are read only for their bundled images (``digits_path`` reads
scikit-learn's ``digits.csv.gz`` without scikit-learn).

The multi-object sets of the retrieval-selectivity experiments (docs/memory_scale.md, "Reading *where*"):
    python scripts/multi_object_grids.py data/digits2x2 digits
    python scripts/multi_object_grids.py data/photos2x2 photos
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from memvp.atomic import atomic_write, atomic_write_text
from memvp.recipes.scenes import answer_prior_accuracy, vqa_records

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_GROUPS = {
    "even numbers": {0, 2, 4, 6, 8},
    "odd numbers": {1, 3, 5, 7, 9},
    "numbers below five": {0, 1, 2, 3, 4},
    "numbers above four": {5, 6, 7, 8, 9},
}
PHOTO_CLASSES = ("astronaut", "cat", "coffee", "rocket", "horse", "clock", "coins", "moon", "camera", "page")
"""scikit-image's bundled photos used as item classes (cat = chelsea, camera = the cameraman)."""
PHOTO_SOURCES = {
    "astronaut": "astronaut",
    "cat": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "horse": "horse",
    "clock": "clock",
    "coins": "coins",
    "moon": "moon",
    "camera": "camera",
    "page": "page",
}
PHOTO_GROUPS = {
    "animals": {"cat", "horse"},
    "things in space": {"astronaut", "rocket", "moon"},
    "round things": {"coins", "clock", "moon", "coffee"},
    "things with text": {"page", "clock"},
}
KINDS = ("count", "what", "where", "exists")
IMAGE_PATTERN = "COCO_{data_subtype}_{image_id:012d}.png"


def cell_names(rows: int, cols: int) -> list[str]:
    """Row-major names: 2x2 'top left' ...; 3x3 adds 'middle' / 'center'."""
    vert = {2: ["top", "bottom"], 3: ["top", "middle", "bottom"]}[rows]
    horiz = {2: ["left", "right"], 3: ["left", "center", "right"]}[cols]
    names = []
    for v in vert:
        for h in horiz:
            names.append("center" if (v, h) == ("middle", "center") else f"{v} {h}")
    return names


def load_digits(digits_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 8, 8] in 0..16, labels [N]) of scikit-learn's digits."""
    if digits_path is None:
        try:
            from sklearn.datasets import load_digits as _load

            d = _load()
            return d.images.astype(np.float32), d.target.astype(int)
        except ImportError:
            digits_path = Path(__file__).with_name("digits.csv.gz")
            if not digits_path.is_file():
                raise SystemExit(
                    "the digits need scikit-learn (pip install scikit-learn), or its sklearn/datasets/data/"
                    f"digits.csv.gz copied to {digits_path}"
                ) from None
    with gzip.open(digits_path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


class DigitSource:
    """Handwritten digits; train and test scenes draw from disjoint halves of the 1,797 images."""

    names, groups = DIGIT_NAMES, DIGIT_GROUPS

    def __init__(self, digits_path=None, seed: int = 0):
        images, labels = load_digits(digits_path)
        order = np.random.default_rng(seed).permutation(len(labels))
        half = len(order) * 3 // 4
        self.split_index = {"train": order[:half], "test": order[half:]}
        self.images, self.labels = images, labels

    def draw(self, cls: int, split: str, rng: np.random.Generator, px: int) -> Image.Image:
        pool = [i for i in self.split_index[split] if self.labels[i] == cls]
        img = self.images[pool[int(rng.integers(len(pool)))]]
        gray = (255 - img / 16.0 * 255).clip(0, 255).astype(np.uint8)  # dark ink on white
        return Image.fromarray(gray).resize((px, px), Image.BICUBIC).convert("RGB")

    def group_members(self, group: str) -> set[int]:
        return self.groups[group]


class PhotoSource:
    """scikit-image's bundled photos, one per class, randomly cropped / flipped / re-lit per draw
    (train and test scenes draw from the same photos: it is the position that is tested)."""

    names, groups = PHOTO_CLASSES, PHOTO_GROUPS

    def __init__(self, digits_path=None, seed: int = 0):
        import skimage.data as sd

        self.photos = []
        for name in PHOTO_CLASSES:
            a = getattr(sd, PHOTO_SOURCES[name])()
            if a.ndim == 2:
                a = np.stack([a] * 3, -1)
            if a.dtype != np.uint8:
                a = (a * 255).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
            self.photos.append(Image.fromarray(a[..., :3]))

    def draw(self, cls: int, split: str, rng: np.random.Generator, px: int) -> Image.Image:
        img = self.photos[cls]
        w, h = img.size
        frac = float(rng.uniform(0.6, 1.0))
        cw, ch = int(w * frac), int(h * frac)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((px, px), Image.BICUBIC)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.75, 1.25)))

    def group_members(self, group: str) -> set[int]:
        return {PHOTO_CLASSES.index(n) for n in self.groups[group]}


SOURCES = {"digits": DigitSource, "photos": PhotoSource}


def generate_grid_dataset(
    out_dir,
    source: str = "digits",
    n_train: int = 3000,
    n_test: int = 75,
    rows: int = 2,
    cols: int = 2,
    size: int = 224,
    fill: float = 80 / 112,
    seed: int = 0,
    kinds=KINDS,
    digits_path=None,
) -> dict:
    """Write the set under ``out_dir`` (questions_/annotations_/layout_{train,test}.json, images/).
    One question of each kind per scene. Returns a summary with the answer prior per kind."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    src = SOURCES[source](digits_path, seed)
    names = cell_names(rows, cols)
    cw, ch = size // cols, size // rows
    px = int(round(min(cw, ch) * fill))
    groups = list(src.groups)
    summary = {"source": source, "rows": rows, "cols": cols, "size": size, "object_px": px, "splits": {}}
    answers: dict[str, dict[str, list[str]]] = {}
    image_id = 0
    for split, n in (("train", n_train), ("test", n_test)):
        questions, annotations, layout = [], [], {}
        by_kind = {k: [] for k in kinds}
        for _ in range(n):
            image_id += 1
            rng = np.random.default_rng([seed, image_id])
            classes = [int(c) for c in rng.permutation(len(src.names))[: rows * cols]]
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            boxes = []
            for k, cls in enumerate(classes):
                r, c = divmod(k, cols)
                x0, y0 = c * cw + (cw - px) // 2, r * ch + (ch - px) // 2
                canvas.paste(src.draw(cls, split, rng, px), (x0, y0))
                boxes.append([x0, y0, x0 + px, y0 + px])
            image_path = out / "images" / IMAGE_PATTERN.format(data_subtype=split, image_id=image_id)
            atomic_write(image_path, lambda tmp, canvas=canvas: canvas.save(tmp, format="PNG"))
            qs = []
            for kind in kinds:
                if kind == "count":
                    g = groups[int(rng.integers(len(groups)))]
                    members = src.group_members(g)
                    qs.append((f"How many {g} are there?", str(sum(c in members for c in classes)), kind, None))
                elif kind == "what":
                    k = int(rng.integers(len(classes)))
                    qs.append((f"What is in the {names[k]}?", src.names[classes[k]], kind, boxes[k]))
                elif kind == "where":
                    k = int(rng.integers(len(classes)))
                    qs.append((f"Where is the {src.names[classes[k]]}?", names[k], kind, boxes[k]))
                elif kind == "exists":
                    if rng.random() < 0.5:
                        k = int(rng.integers(len(classes)))
                        qs.append((f"Is there a {src.names[classes[k]]}?", "yes", kind, boxes[k]))
                    else:
                        absent = [c for c in range(len(src.names)) if c not in classes]
                        c = absent[int(rng.integers(len(absent)))]
                        qs.append((f"Is there a {src.names[c]}?", "no", kind, None))
            layout[str(image_id)] = {"classes": [src.names[c] for c in classes], "boxes": boxes, "questions": {}}
            for j, (q, a, kind, box) in enumerate(qs):
                qid = image_id * 1000 + j
                asked = None if box is None else [box[0] / size, box[1] / size, box[2] / size, box[3] / size]
                q_entry, annotation = vqa_records(image_id, qid, q, a, kind, asked)
                questions.append(q_entry)
                annotations.append(annotation)
                layout[str(image_id)]["questions"][str(qid)] = box
                by_kind[kind].append(annotation["multiple_choice_answer"])
        info = {"description": f"grids of real images ({source}), {rows}x{cols}", "seed": seed}
        atomic_write_text(
            out / f"questions_{split}.json",
            json.dumps({"info": info, "task_type": "Open-Ended", "data_subtype": split, "questions": questions}),
        )
        atomic_write_text(
            out / f"annotations_{split}.json",
            json.dumps({"info": info, "data_subtype": split, "annotations": annotations}),
        )
        atomic_write_text(out / f"layout_{split}.json", json.dumps({"width": size, "height": size, "scenes": layout}))
        answers[split] = by_kind
        summary["splits"][split] = {"scenes": n, "questions": len(questions)}
    prior = answer_prior_accuracy(answers["train"], answers["test"])
    summary["answer_prior_accuracy"] = {kind: 100 * acc for kind, acc in prior.items()}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    import sys

    print(
        json.dumps(generate_grid_dataset(sys.argv[1], source=sys.argv[2] if len(sys.argv) > 2 else "digits"), indent=1)
    )
