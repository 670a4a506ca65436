"""memvp.datasets.vqav2: VQAv2's JSON and parquet readers (one sample builder) and the VQA score."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pytest
from dataset_files import FIXTURES, IMAGE_TYPE, VQA, image_cell, png, write_parquet

from memvp.datasets import read_vqav2, read_vqav2_parquet, score
from memvp.datasets.vqav2 import unscorable_targets


def test_vqav2_answers_target_and_paths():
    samples = read_vqav2(
        os.path.join(VQA, "questions.json"), os.path.join(VQA, "annotations.json"), "/data/coco/val2014"
    )
    assert [s.id for s in samples] == ["42000", "42001", "73000"]
    s = samples[0]
    assert s.prompt == "What color is the umbrella?"
    assert s.answers == ["red", "red", "dark red", "red", "maroon", "red", "red", "red", "red", "pink"]
    assert s.target == "red"
    assert s.image == "/data/coco/val2014/COCO_val2014_000000000042.jpg"
    assert s.image_id == "42" and samples[1].image_id == "42"
    assert s.question_type == "other"
    assert s.metadata == {"target": "red", "answer_type": "other", "question_type": "what color is the"}
    assert samples[1].question_type == "yes/no" and samples[2].question_type == "number"
    # the target need not be answers[0] and all 10 humans stay in answers
    assert samples[2].target == "2" and len(samples[2].answers) == 10


def test_vqav2_test_dev_without_annotations():
    (s,) = read_vqav2(os.path.join(VQA, "test-dev_questions.json"), None, "/data/coco/test2015")
    assert s.answers == [] and s.target is None and s.question_type == ""
    assert s.image == "/data/coco/test2015/COCO_test2015_000000262144.jpg"


def test_vqav2_custom_pattern_and_missing_annotation(tmp_path):
    (s, *_) = read_vqav2(os.path.join(VQA, "questions.json"), None, "/feats", image_pattern="{image_id}.png")
    assert s.image == "/feats/42.png"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"ann\.json: no annotation for question_id 42000"):
        read_vqav2(os.path.join(VQA, "questions.json"), ann, "/x")


@pytest.mark.parametrize("annotated", [True, False])
def test_vqav2_asked_box_is_kept_for_the_instruments_and_a_bad_one_named(tmp_path, annotated):
    data = json.loads(Path(VQA, "questions.json").read_text())
    data["questions"][0]["asked_box"] = [0.25, 0, 0.75, 0.5]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(data))
    annotations = os.path.join(VQA, "annotations.json") if annotated else None
    first, second, _ = read_vqav2(questions, annotations, "/x")
    assert first.metadata["asked_box"] == (0.25, 0.0, 0.75, 0.5) and "asked_box" not in second.metadata
    assert first.target == ("red" if annotated else None)
    for bad in ([0.5, 0, 0.25, 1], [0, 0, 1.5, 1], [0, 0, 1], "top left", [0, 0, True, 1]):
        data["questions"][1]["asked_box"] = bad
        questions.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"questions\.json: question 42001: asked_box is .*fractions"):
            read_vqav2(questions, annotations, "/x")


def test_vqav2_parquet_lmms_lab_layout(tmp_path):
    img = png("green")
    answers_type = pa.list_(
        pa.struct([("answer", pa.string()), ("answer_confidence", pa.string()), ("answer_id", pa.int64())])
    )
    humans = [
        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
        for i, a in enumerate(["red", "red", "dark red", "red", "maroon", "red", "red", "red", "red", "pink"])
    ]
    f = write_parquet(
        tmp_path / "data" / "validation-00000-of-00068.parquet",
        {
            "question_type": ["what color is the", "is the"],
            "multiple_choice_answer": ["red", "yes"],
            "answers": [humans, [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}] * 10],
            "image_id": [42, 42],
            "answer_type": ["other", "yes/no"],
            "question_id": [42000, 42001],
            "question": ["What color is the umbrella?", "Is it raining?"],
            "image": [image_cell(img, "COCO_val2014_000000000042.jpg")] * 2,
        },
        {"answers": answers_type, "image": IMAGE_TYPE},
    )
    a, b = read_vqav2_parquet(f, tmp_path / "img")
    assert (a.id, a.prompt, a.question_type) == ("42000", "What color is the umbrella?", "other")
    assert a.answers == [h["answer"] for h in humans] and a.target == "red"
    assert a.metadata == {"target": "red", "answer_type": "other", "question_type": "what color is the"}
    assert a.image_id == b.image_id == "42"
    assert a.image == b.image == str(tmp_path / "img" / f"{hashlib.sha256(img).hexdigest()}.png")
    # test-dev: no answers
    f = write_parquet(
        tmp_path / "data" / "testdev-00000-of-00001.parquet",
        {
            "question_type": [None],
            "multiple_choice_answer": [None],
            "answers": [None],
            "image_id": [262144],
            "answer_type": [None],
            "question_id": [262144000],
            "question": ["Is the ball flying?"],
            "image": [image_cell(img)],
        },
        {
            "answers": answers_type,
            "image": IMAGE_TYPE,
            "question_type": pa.string(),
            "multiple_choice_answer": pa.string(),
            "answer_type": pa.string(),
        },
    )
    (t,) = read_vqav2_parquet(f, tmp_path / "img")
    assert t.answers == [] and t.target is None and t.question_type == "" and t.metadata == {}


def test_vqav2_score_is_the_official_vqa_accuracy():
    vqa = read_vqav2(FIXTURES / "vqav2" / "questions.json", FIXTURES / "vqav2" / "annotations.json", FIXTURES / "vqav2")
    ids = [s.id for s in vqa]
    assert ids == ["42000", "42001", "73000"]  # answer types other, yes/no, number
    # Each target (multiple_choice_answer) is given by 7 of the 10 humans: min(#matches / 3, 1) = 1
    # on every leave-one-out subset, so the targets score exactly 100 overall and per type.
    assert score("vqav2", vqa, {s.id: s.target for s in vqa}) == {
        "overall": 100.0,
        "count": 3,
        "per_type": {"number": 100.0, "other": 100.0, "yes/no": 100.0},
    }
    # One human of 10 gave the answer: 9 subsets count 1/3, the one without that human 0 -> 0.3.
    # Predictions are normalised first: "Pink" -> "pink", "No!" -> "no", "Two." -> "2", "three" -> "3".
    result = score("vqav2", vqa, dict(zip(ids, ["Pink", "No!", "Two."])))
    assert result["count"] == 3 and result["overall"] == pytest.approx(100 * (0.3 + 0.3 + 1.0) / 3)
    assert result["per_type"] == pytest.approx({"number": 100.0, "other": 30.0, "yes/no": 30.0})
    result = score("vqav2", vqa, dict(zip(ids, ["dark red", "maybe", "three"])))
    assert result["overall"] == pytest.approx(100 * (0.3 + 0.0 + 0.3) / 3)
    assert result["per_type"] == pytest.approx({"number": 30.0, "other": 30.0, "yes/no": 0.0})
    # Only the predicted samples are scored.
    result = score("vqav2", vqa, {"42000": "maroon"})
    assert result["count"] == 1 and result["overall"] == pytest.approx(30.0)
    assert result["per_type"] == pytest.approx({"other": 30.0})


def test_vqav2_json_and_parquet_give_the_same_samples_and_targets(tmp_path):
    """One sample builder: the parquet export of the JSON files reads into the same samples (but for the image
    path, content-addressed), and an annotated row needs its multiple_choice_answer as an annotation does."""
    from_json = read_vqav2(os.path.join(VQA, "questions.json"), os.path.join(VQA, "annotations.json"), "/images")
    questions = json.loads((FIXTURES / "vqav2" / "questions.json").read_text())["questions"]
    annotations = {
        a["question_id"]: a for a in json.loads((FIXTURES / "vqav2" / "annotations.json").read_text())["annotations"]
    }
    annotated = [annotations[q["question_id"]] for q in questions]
    columns = {
        **{k: [q[k] for q in questions] for k in ("question_id", "question", "image_id")},
        "image": [image_cell(png("red"))] * len(questions),
        "answers": [[h["answer"] for h in a["answers"]] for a in annotated],
        **{k: [a[k] for a in annotated] for k in ("multiple_choice_answer", "answer_type", "question_type")},
    }
    f = write_parquet(tmp_path / "validation-00000-of-00001.parquet", columns, {"image": IMAGE_TYPE})
    from_parquet = read_vqav2_parquet(f, tmp_path / "img")
    fields = lambda s: (s.id, s.prompt, s.answers, s.target, s.image_id, s.question_type, s.metadata)  # noqa: E731
    assert [fields(s) for s in from_parquet] == [fields(s) for s in from_json]
    assert from_parquet[0].metadata["target"] == "red"
    no_target = write_parquet(
        tmp_path / "no_target.parquet",
        {**columns, "multiple_choice_answer": ["red", None, "2"]},
        {"image": IMAGE_TYPE, "multiple_choice_answer": pa.string()},
    )
    with pytest.raises(
        ValueError,
        match=r"no_target\.parquet: row 1, column 'multiple_choice_answer' holds null, "
        r"expected the answer's text \(the training target of a question with "
        r"answers\)",
    ):
        read_vqav2_parquet(no_target, tmp_path / "img")


def test_vqav2_answers_the_score_can_never_match_are_named(tmp_path):
    # a home-made set that writes "six" where VQAv2 writes "6": predictions are normalised, answers not
    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    questions = [{"question_id": i, "image_id": 1, "question": "What is in the top left?"} for i in range(4)]
    answers = ["six", "6", "red", "Yes"]
    annotations = [
        {"question_id": i, "multiple_choice_answer": a, "answers": [{"answer": a}] * 10} for i, a in enumerate(answers)
    ]
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    handler, log = Lines(), logging.getLogger("memvp.datasets.vqav2")
    log.addHandler(handler)
    try:
        samples = read_vqav2(tmp_path / "q.json", tmp_path / "a.json", "/x")
        read_vqav2(os.path.join(VQA, "questions.json"), os.path.join(VQA, "annotations.json"), "/x")
    finally:
        log.removeHandler(handler)
    assert unscorable_targets(samples) == ["six", "Yes"]
    assert score("vqav2", samples, {s.id: s.target for s in samples})["overall"] == 50.0  # why it matters
    (line,) = handler.lines  # the real VQAv2 fixture says nothing
    assert str(tmp_path / "a.json") in line and "2 of 4" in line and "'six', scored as '6'" in line
