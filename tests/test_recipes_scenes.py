"""Sort-of-CLEVR scenes: answers re-derived from the pixels, VQAv2 layout, determinism, balance, prior."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memvp.recipes.scenes import (
    COLORS,
    IMAGE_PATTERN,
    MIN_GAP,
    ONE_OBJECT_TYPES,
    QUESTION_TYPES,
    SPLITS,
    Scene,
    SceneObject,
    answer_prior_accuracy,
    draw_scene,
    generate_dataset,
    load_scenes,
    vqa_records,
)

SIZES = {"n_train": 24, "n_val": 6, "n_test": 6}
PATTERNS = {
    "shape": r"What shape is the (\w+) object\?",
    "horizontal": r"Is the (\w+) object on the left or right\?",
    "vertical": r"Is the (\w+) object at the top or bottom\?",
    "count": r"How many objects have the same shape as the (\w+) object\?",
    "nearest": r"What color is the object nearest to the (\w+) object\?",
    "farthest": r"What shape is the object farthest from the (\w+) object\?",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("soc")
    summary = generate_dataset(out, seed=0, progress=False, **SIZES)
    return out, summary


def _load(out: Path, kind: str, split: str) -> dict:
    return json.loads((out / f"{kind}_{split}.json").read_text())


def detect(image: Image.Image) -> dict[str, tuple[float, float, str]]:
    """colour -> (centre x, centre y, shape), from the pixels alone."""
    pixels = np.asarray(image.convert("RGB"))
    found = {}
    for name, rgb in COLORS.items():
        ys, xs = np.nonzero((pixels == rgb).all(axis=-1))
        if len(xs) == 0:
            continue
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fill = len(xs) / box  # square 1.0, circle ~pi/4
        found[name] = (xs.mean() + 0.5, ys.mean() + 0.5, "square" if fill > (1 + math.pi / 4) / 2 else "circle")
    return found


def answer_from_pixels(objs: dict, qtype: str, color: str, width: int, height: int) -> str:
    x, y, shape = objs[color]
    others = sorted(((math.hypot(ox - x, oy - y), c, s) for c, (ox, oy, s) in objs.items() if c != color))
    return {
        "shape": lambda: shape,
        "horizontal": lambda: "left" if x < width / 2 else "right",
        "vertical": lambda: "top" if y < height / 2 else "bottom",
        "count": lambda: str(sum(s == shape for _, _, s in objs.values())),
        "nearest": lambda: others[0][1],
        "farthest": lambda: others[-1][2],
    }[qtype]()


def test_answers_match_the_drawn_pixels(dataset):
    out, _ = dataset
    checked = 0
    for split in SPLITS:
        questions = {q["question_id"]: q for q in _load(out, "questions", split)["questions"]}
        detections = {}
        for ann in _load(out, "annotations", split)["annotations"]:
            q = questions[ann["question_id"]]
            qtype = ann["question_type"]
            color = re.fullmatch(PATTERNS[qtype], q["question"]).group(1)
            if q["image_id"] not in detections:
                path = out / "images" / IMAGE_PATTERN.format(data_subtype=split, image_id=q["image_id"])
                image = Image.open(path)
                detections[q["image_id"]] = (detect(image), image.size)
            objs, (w, h) = detections[q["image_id"]]
            assert len(objs) == 6
            assert answer_from_pixels(objs, qtype, color, w, h) == ann["multiple_choice_answer"], q
            checked += 1
    assert checked == 6 * sum(SIZES.values())


def test_asked_box_is_the_named_objects_pixels(dataset):
    out, _ = dataset
    checked = 0
    for split in SPLITS:
        for q in _load(out, "questions", split)["questions"]:
            if "asked_box" not in q:
                continue
            color = next(c for c in COLORS if f" {c} " in q["question"])
            path = out / "images" / IMAGE_PATTERN.format(data_subtype=split, image_id=q["image_id"])
            pixels = np.asarray(Image.open(path).convert("RGB"))
            ys, xs = np.nonzero((pixels == COLORS[color]).all(axis=-1))
            h, w = pixels.shape[:2]
            box = [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]
            assert q["asked_box"] == pytest.approx(box, abs=1e-6), q
            checked += 1
    assert checked >= sum(SIZES.values())  # about half of the six question types name one object


def test_scene_files_match_pixels(dataset):
    out, _ = dataset
    for split in SPLITS:
        for image_id, scene in load_scenes(out / f"scenes_{split}.json").items():
            image = Image.open(out / "images" / IMAGE_PATTERN.format(data_subtype=split, image_id=image_id))
            objs = detect(image)
            assert {o.color: (o.x, o.y, o.shape) for o in scene.objects} == objs


def test_vqav2_layout(dataset):
    out, summary = dataset
    image_ids, question_ids = set(), set()
    for split in SPLITS:
        qs, anns = _load(out, "questions", split), _load(out, "annotations", split)
        assert {"info", "task_type", "data_type", "data_subtype", "questions"} <= qs.keys()
        assert qs["task_type"] == "Open-Ended" and qs["data_subtype"] == split == anns["data_subtype"]
        assert {"info", "data_subtype", "annotations"} <= anns.keys()
        assert len(qs["questions"]) == len(anns["annotations"]) == summary["splits"][split]["questions"]
        for q, a in zip(qs["questions"], anns["annotations"]):
            boxed = {"asked_box"} if a["question_type"] in ONE_OBJECT_TYPES else set()
            assert set(q) == {"image_id", "question", "question_id"} | boxed
            assert (a["question_id"], a["image_id"]) == (q["question_id"], q["image_id"])
            assert a["question_type"] == a["answer_type"] in QUESTION_TYPES
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(
                x["answer"] == a["multiple_choice_answer"] and x["answer_confidence"] == "yes" for x in a["answers"]
            )
        split_images = {q["image_id"] for q in qs["questions"]}
        split_questions = {q["question_id"] for q in qs["questions"]}
        assert len(split_questions) == len(qs["questions"])
        assert not split_images & image_ids and not split_questions & question_ids
        image_ids |= split_images
        question_ids |= split_questions
        for image_id in split_images:
            assert (out / "images" / IMAGE_PATTERN.format(data_subtype=split, image_id=image_id)).is_file()
        assert set(map(int, _load(out, "scenes", split)["scenes"])) == split_images
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_vqa_records_write_the_answer_as_the_vqa_score_reads_it():
    # the score normalises predictions only ("Six" -> "6"): an answer written as "six" could never match
    entry, annotation = vqa_records(7, 7001, "What is in the top left?", "Six", "what", [0, 0, 0.5, 0.5])
    assert annotation["multiple_choice_answer"] == "6"
    assert {a["answer"] for a in annotation["answers"]} == {"6"}
    assert vqa_records(7, 7002, "Where is it?", "top left", "where")[1]["multiple_choice_answer"] == "top left"
    assert entry == {
        "image_id": 7,
        "question": "What is in the top left?",
        "question_id": 7001,
        "asked_box": [0, 0, 0.5, 0.5],
    }


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_deterministic(dataset, tmp_path):
    out, _ = dataset
    generate_dataset(tmp_path / "again", seed=0, progress=False, **SIZES)
    generate_dataset(tmp_path / "other", seed=1, progress=False, **SIZES)
    first, again, other = _snapshot(out), _snapshot(tmp_path / "again"), _snapshot(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first if k.endswith(".png") or "questions" in k or "scenes" in k)


def test_balanced_and_non_overlapping(tmp_path):
    summary = generate_dataset(tmp_path, n_train=60, n_val=0, n_test=0, questions_per_scene=4, seed=3, progress=False)
    by_type = summary["splits"]["train"]["by_type"]
    total = sum(by_type.values())
    assert total >= 0.99 * 240
    assert all(abs(n / total - 1 / 6) < 0.05 for n in by_type.values()), by_type
    for scene in load_scenes(tmp_path / "scenes_train.json").values():
        pixels = np.asarray(draw_scene(scene))
        for i, a in enumerate(scene.objects):
            assert (pixels == COLORS[a.color]).all(-1).sum() > 0.75 * a.size**2  # nothing painted over it
            for b in scene.objects[i + 1 :]:
                assert max(abs(a.x - b.x), abs(a.y - b.y)) >= a.size + MIN_GAP


def test_draw_scene_geometry():
    scene = Scene([SceneObject("red", "square", 50, 60, 28), SceneObject("blue", "circle", 150, 170, 28)])
    objs = detect(draw_scene(scene))
    assert objs == {"red": (50.0, 60.0, "square"), "blue": (150.0, 170.0, "circle")}
    assert (np.asarray(draw_scene(scene)) == COLORS["red"]).all(-1).sum() == 28 * 28


def test_answer_prior_accuracy():
    train = {"shape": ["square", "square", "circle"], "count": ["2", "3", "3", "2"]}  # tie -> "2"
    test = {"shape": ["square", "circle"], "count": ["2", "2", "3"], "nearest": ["red"]}
    acc = answer_prior_accuracy(train, test)
    assert acc == {"shape": 0.5, "count": 2 / 3, "nearest": 0.0, "overall": 3 / 6}
