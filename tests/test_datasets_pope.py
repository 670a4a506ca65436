"""memvp.datasets.pope: POPE's question files and the per-split scores."""

from __future__ import annotations

import pytest
from dataset_files import FIX, FIXTURES, POPE, POPE_FILES

from memvp.datasets import load_samples, read_pope, score


def test_pope_splits_ids_prompts():
    samples = read_pope(POPE_FILES, "/data/coco/val2014")
    assert [s.id for s in samples] == [
        "random_1",
        "random_2",
        "random_3",
        "random_4",
        "popular_1",
        "popular_2",
        "adversarial_1",
        "adversarial_2",
    ]  # ids restart in every file
    s = samples[1]
    assert s.prompt == "Is there a car in the image?\nAnswer the question using a single word or phrase."
    assert s.answers == ["no"] and s.target == "no" and s.question_type == "random"
    assert s.image == "/data/coco/val2014/COCO_val2014_000000310196.jpg"
    assert s.image_id == "COCO_val2014_000000310196.jpg"
    assert s.metadata == {"split": "random", "question_id": 2, "question": "Is there a car in the image?"}
    # one file, the bare question
    (a, b) = read_pope(POPE_FILES[2], "/x", answer_prompt=None)
    assert a.prompt == "Is there a snowboard in the image?" and a.metadata["split"] == "adversarial"
    # a folder of files, relative to a config's folder
    assert (
        len(
            load_samples(
                {
                    "format": "pope",
                    "question_files": ["pope/coco_pope_random.json", "pope/coco_pope_popular.json"],
                    "image_dir": "/x",
                },
                base_dir=FIX,
            )
        )
        == 6
    )
    assert len(read_pope(POPE, "/x")) == 8


def test_pope_errors(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"coco_pope_random\.json and .*coco_pope_random\.json are both split "
        r"'random'",
    ):
        read_pope([POPE_FILES[0], POPE_FILES[0]], "/x")
    bad = tmp_path / "coco_pope_random.json"
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: question 1 has label 'maybe'"):
        read_pope(bad, "/x")
    bad.write_text('{"question_id": 1, "image": "a.jpg", "label": "yes"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: record 1 has no 'text' field"):
        read_pope(bad, "/x")
    bad.write_text('{"question_id": 1,\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: line 1 is not valid JSON"):
        read_pope(bad, "/x")
    with pytest.raises(FileNotFoundError, match=r"POPE question file not found: .*nope\.json"):
        read_pope(tmp_path / "nope.json", "/x")


def test_pope_score_per_split():
    samples = read_pope(FIXTURES / "pope", "/coco")
    labels = {s.id: s.answers[0] for s in samples}
    # perfect answers in the model's own words
    right = {i: "Yes, there is." if label == "yes" else "No, there is not." for i, label in labels.items()}
    result = score("pope", samples, right)
    assert set(result["per_split"]) == {"adversarial", "popular", "random"}
    assert result["accuracy"] == result["f1"] == 100.0 and result["yes_ratio"] == 50.0 and result["count"] == 8
    # all-yes predictions: each split is half yes -> accuracy 50, precision 50, recall 100, F1 200/3
    result = score("pope", samples, {i: "Yes" for i in labels})
    for split in result["per_split"].values():
        assert (split["accuracy"], split["precision"], split["recall"], split["yes_ratio"]) == (
            50.0,
            50.0,
            100.0,
            100.0,
        )
        assert split["f1"] == pytest.approx(200 / 3)
    # only predicted samples are scored: random alone
    result = score("pope", samples, {"random_1": "yes", "random_2": "no"})
    assert list(result["per_split"]) == ["random"] and result["count"] == 2 and result["accuracy"] == 100.0
