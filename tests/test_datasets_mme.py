"""memvp.datasets.mme: MME's folders and the perception / cognition scores."""

from __future__ import annotations

import os

import pytest
from dataset_files import FIXTURES, MME

from memvp.datasets import read_mme, score


def test_mme_both_layouts_prompts_and_pairs():
    samples = read_mme(MME)
    assert [s.id for s in samples] == [
        "artwork/10002.jpg/0",
        "artwork/10002.jpg/1",
        "code_reasoning/0020.png/0",
        "code_reasoning/0020.png/1",
        "existence/000000006040.jpg/0",
        "existence/000000006040.jpg/1",
        "existence/000000018150.jpg/0",
        "existence/000000018150.jpg/1",
    ]
    art = samples[0]  # images/ + questions_answers_YN/
    assert art.image == os.path.join(MME, "artwork", "images", "10002.jpg") and os.path.isfile(art.image)
    assert art.image_id == "artwork/images/10002.jpg" and art.question_type == "artwork"
    # LLaVA-1.5's llava_mme.jsonl: "Please answer yes or no." replaced by the short-answer line
    assert art.prompt == (
        "Does this artwork exist in the form of painting?\nAnswer the question using a single word or phrase."
    )
    assert art.answers == ["Yes"] and samples[1].answers == ["No"]
    assert art.metadata == {
        "subtask": "artwork",
        "image_key": "artwork/10002.jpg",
        "question": "Does this artwork exist in the form of painting? Please answer yes or no.",
    }
    code = samples[2]  # images and .txt side by side; the image found by stem (.png)
    assert code.image == os.path.join(MME, "code_reasoning", "0020.png") and os.path.isfile(code.image)
    assert samples[4].metadata["image_key"] == samples[5].metadata["image_key"] != samples[6].metadata["image_key"]
    (q, _) = read_mme(MME, answer_prompt="", subtasks=["code_reasoning"])
    assert q.prompt == "Is a python code shown in the picture? Please answer yes or no."


def test_mme_result_file_layout_and_errors(tmp_path):
    (tmp_path / "count").mkdir()
    (tmp_path / "count" / "count.txt").write_text(
        "000000.jpg\tAre there two dogs? Please answer yes or no.\tYes\n"
        "000000.jpg\tAre there three dogs? Please answer yes or no.\tNo\n"
    )
    a, b = read_mme(tmp_path)
    assert a.image == str(tmp_path / "count" / "000000.jpg") and (a.id, b.id) == (
        "count/000000.jpg/0",
        "count/000000.jpg/1",
    )
    (tmp_path / "count" / "count.txt").write_text("Are there two dogs?\n")
    with pytest.raises(ValueError, match=r"count\.txt: line 1 has 1 tab-separated fields"):
        read_mme(tmp_path)
    (tmp_path / "count" / "count.txt").write_text("Are there two dogs?\tMaybe\n")
    with pytest.raises(ValueError, match=r"count\.txt: line 1 has answer 'Maybe'; MME answers are Yes or No"):
        read_mme(tmp_path)
    with pytest.raises(ValueError, match=r"MME subtask\(s\) \['OCR'\] not in .*; available: \['count'\]"):
        read_mme(tmp_path, subtasks=["OCR"])
    (tmp_path / "scene" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"'scene': .*scene has images/ but no questions_answers_YN/"):
        read_mme(tmp_path, subtasks=["scene"])
    with pytest.raises(FileNotFoundError, match=r"MME folder not found: .*nope"):
        read_mme(tmp_path / "nope")


def test_mme_score_perception_and_cognition():
    samples = read_mme(FIXTURES / "mme")
    right = {s.id: s.answers[0] for s in samples}
    result = score("mme", samples, right)
    # artwork + existence (perception) 200 each, code_reasoning (cognition) 200
    assert result["perception"] == 400.0 and result["cognition"] == 200.0 and result["count"] == 8
    # one wrong answer on one existence image: acc 3/4 -> 75, acc+ 1/2 -> 50
    wrong = {**right, "existence/000000018150.jpg/1": "Yes"}
    result = score("mme", samples, wrong)
    assert result["per_subtask"]["existence"]["score"] == 125.0 and result["perception"] == 325.0
