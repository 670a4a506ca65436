"""Task metrics wired to the readers' samples (evaluate.score)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from memvp.datasets import read_gqa, read_scienceqa, read_vqav2
from memvp.evaluate import score

FIX = Path(__file__).parent / "fixtures" / "datasets"


def test_scienceqa_score_uses_letters_and_columns():
    samples = read_scienceqa(FIX / "scienceqa", "train")
    right = {s.id: f"The answer is {s.answers[0]}." for s in samples}
    result = score("scienceqa", samples, right)
    assert result["Average"] == 100.0 and result["count"] == len(samples)
    wrong = {s.id: "The answer is Z." for s in samples}
    assert score("scienceqa", samples, wrong)["Average"] == 0.0
    assert all(math.isnan(v) or v in (0.0, 100.0) for k, v in result.items() if k != "count")


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
