"""Task metrics wired to the readers' samples (evaluate.score)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from memvp.datasets import (
    Sample,
    read_gqa,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
    read_vqav2,
)
from memvp.evaluate import TASKS, score

FIX = Path(__file__).parent / "fixtures" / "datasets"


def test_scienceqa_score_uses_letters_and_columns():
    samples = read_scienceqa(FIX / "scienceqa", "train")
    right = {s.id: f"The answer is {s.answers[0]}." for s in samples}
    result = score("scienceqa", samples, right)
    assert result["Average"] == 100.0 and result["count"] == len(samples)
    wrong = {s.id: "The answer is Z." for s in samples}
    assert score("scienceqa", samples, wrong)["Average"] == 0.0
    assert all(math.isnan(v) or v in (0.0, 100.0) for k, v in result.items() if k not in ("count", "rule"))
    assert result["rule"] == "default"


def test_scienceqa_memvp_rule_reads_the_first_capital_letter_as_the_official_eval():
    samples = read_scienceqa(FIX / "scienceqa", "train")  # answers B (2 options) and C (3 options)
    # generated after "...Response:The answer is": one token, e.g. " C" or " C."
    one_token = {s.id: f" {s.answers[0]}" for s in samples}
    assert score("scienceqa", samples, one_token, "memvp")["Average"] == 100.0
    # the first capital letter counts, wherever it is: "(C)" is C, "Cat" is C, "the C" too
    for text, right in [("(C)", True), ("Cat", True), ("x C", True), ("B", False), ("c", False), ("D.", False)]:
        with_img = [s for s in samples if s.answers == ["C"]]
        got = score("scienceqa", with_img, {with_img[0].id: text}, "memvp")
        assert got["Average"] == (100.0 if right else 0.0), text
        assert got["rule"] == "memvp"
    # the default rule does not read an article or a word start as a letter
    assert score("scienceqa", with_img, {with_img[0].id: "Cat"})["Average"] == 0.0


def test_vqa_and_gqa_scores_and_unknown_task():
    vqa = read_vqav2(FIX / "vqav2" / "questions.json", FIX / "vqav2" / "annotations.json", FIX / "vqav2")
    ids = [s.id for s in vqa]
    assert ids == ["42000", "42001", "73000"]  # answer types other, yes/no, number
    # Each target (multiple_choice_answer) is given by 7 of the 10 humans: min(#matches / 3, 1) = 1
    # on every leave-one-out subset, so the targets score exactly 100 overall and per type.
    assert score("vqav2", vqa, {s.id: s.target for s in vqa}) == {
        "overall": 100.0, "count": 3, "per_type": {"number": 100.0, "other": 100.0, "yes/no": 100.0}}
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

    gqa = read_gqa(FIX / "gqa" / "testdev_balanced_questions.json", FIX / "gqa")
    assert [(s.answers, s.question_type) for s in gqa] == [(["white"], "choose"), (["no"], "verify")]
    # Exact match after lower-casing and dropping a trailing period.
    assert score("gqa", gqa, {s.id: s.answers[0].upper() + "." for s in gqa}) == {
        "overall": 100.0, "count": 2, "per_type": {"choose": 100.0, "verify": 100.0}}
    assert score("gqa", gqa, {gqa[0].id: "Blue.", gqa[1].id: " no "}) == {
        "overall": 50.0, "count": 2, "per_type": {"choose": 0.0, "verify": 100.0}}
    assert score("gqa", gqa, {gqa[0].id: "off-white", gqa[1].id: "no way"})["overall"] == 0.0
    with pytest.raises(ValueError, match="no metric for task"):
        score("imagenet", gqa, {})


def test_pope_score_per_split():
    samples = read_pope(FIX / "pope", "/coco")
    labels = {s.id: s.answers[0] for s in samples}
    # perfect answers in the model's own words
    right = {i: "Yes, there is." if label == "yes" else "No, there is not." for i, label in labels.items()}
    result = score("pope", samples, right)
    assert set(result["per_split"]) == {"adversarial", "popular", "random"}
    assert result["accuracy"] == result["f1"] == 100.0 and result["yes_ratio"] == 50.0 and result["count"] == 8
    # all-yes predictions: each split is half yes -> accuracy 50, precision 50, recall 100, F1 200/3
    result = score("pope", samples, {i: "Yes" for i in labels})
    for split in result["per_split"].values():
        assert (split["accuracy"], split["precision"], split["recall"], split["yes_ratio"]) == (50.0, 50.0, 100.0,
                                                                                                100.0)
        assert split["f1"] == pytest.approx(200 / 3)
    # only predicted samples are scored: random alone
    result = score("pope", samples, {"random_1": "yes", "random_2": "no"})
    assert list(result["per_split"]) == ["random"] and result["count"] == 2 and result["accuracy"] == 100.0


def test_mme_score_perception_and_cognition():
    samples = read_mme(FIX / "mme")
    right = {s.id: s.answers[0] for s in samples}
    result = score("mme", samples, right)
    # artwork + existence (perception) 200 each, code_reasoning (cognition) 200
    assert result["perception"] == 400.0 and result["cognition"] == 200.0 and result["count"] == 8
    # one wrong answer on one existence image: acc 3/4 -> 75, acc+ 1/2 -> 50
    wrong = {**right, "existence/000000018150.jpg/1": "Yes"}
    result = score("mme", samples, wrong)
    assert result["per_subtask"]["existence"]["score"] == 125.0 and result["perception"] == 325.0


def test_mmbench_score_circular(tmp_path):
    samples = read_mmbench(FIX / "mmbench" / "originals.tsv", tmp_path)
    right = {s.id: s.answers[0] for s in samples}
    result = score("mmbench", samples, right)
    assert result["overall"] == 100.0 and result["count"] == 3 and result["rotations"] == 9
    # a failed rotation of question 1 (2 options) makes the whole question wrong
    result = score("mmbench", samples, {**right, "1000001": "A"})
    assert result["overall"] == pytest.approx(200 / 3) and result["vanilla"] == 100.0
    assert result["per_category"] == {"attribute_recognition": 100.0, "physical_property_reasoning": 0.0}
    assert result["per_l2_category"] == {"attribute_reasoning": 0.0, "finegrained_perception (instance-level)": 100.0}
    unanswered = [Sample(id="9", prompt="q", answers=[], metadata={"circular_group": "9", "rotation": 0})]
    with pytest.raises(ValueError, match=r"1 MMBench question\(s\) have no answer"):
        score("mmbench", unanswered, {"9": "A"})


def test_parquet_formats_use_the_metric_they_are_named_after():
    gqa = read_gqa(FIX / "gqa" / "testdev_balanced_questions.json", FIX / "gqa")
    assert score("gqa_parquet", gqa, {s.id: s.answers[0] for s in gqa}) == score("gqa", gqa, {s.id: s.answers[0]
                                                                                               for s in gqa})
    sqa = read_scienceqa(FIX / "scienceqa", "train")
    assert score("scienceqa_parquet", sqa, {s.id: s.answers[0] for s in sqa})["Average"] == 100.0
    assert {"pope", "mme", "mmbench", "vqav2_parquet", "coco_captions_parquet"} <= set(TASKS)
