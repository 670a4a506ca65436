"""memvp.datasets.scienceqa: ScienceQA's JSON and parquet readers (one sample builder) and its scorer."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
from dataset_files import FIX, FIXTURES, SQA, SQA_TYPES, image_cell, png, scienceqa_columns, write_parquet

from memvp.datasets import load_samples, read_scienceqa, read_scienceqa_parquet, scienceqa_prompt, score


def test_scienceqa_prompts_answers_and_metadata():
    no_img, with_img = read_scienceqa(SQA, "train")
    assert no_img.id == "5" and with_img.id == "9"
    # hint present (its double space collapsed as in base_prompt.py), no image
    # the official create_training_example (QCM-A): input "...Response:", output "The answer is B." glued on
    assert no_img.prompt == (
        "Question: Which figure of speech is used in this text?\n"
        "Context: The bees buzzed in the garden.\n"
        "Options: (A) hyperbole (B) onomatopoeia\n"
        "Response:"
    )
    assert no_img.answers == ["B"] and no_img.target == "The answer is B."
    assert no_img.answer_separator == "" and no_img.answer_prefix == "The answer is"
    assert no_img.image is None and no_img.image_id is None and not no_img.has_image
    assert no_img.question_type == "language science"
    assert no_img.metadata == {
        "target": "The answer is B.",
        "subject": "language science",
        "grade": "grade8",
        "has_text_context": True,
        "has_image_context": False,
        "num_choices": 2,
        "choices": ["hyperbole", "onomatopoeia"],
    }
    # no hint -> N/A, with image
    assert with_img.prompt == (
        "Question: Which animal's feet are also adapted for digging?\n"
        "Context: N/A\n"
        "Options: (A) aardvark (B) Weddell seal (C) mole\n"
        "Response:"
    )
    assert with_img.answers == ["C"]
    assert with_img.image == os.path.join(SQA, "images", "train", "9", "image.png")
    assert os.path.isabs(with_img.image) and with_img.has_image and with_img.image_id == "9"
    assert with_img.metadata["has_text_context"] is False and with_img.metadata["has_image_context"] is True
    assert with_img.metadata["num_choices"] == 3


def test_scienceqa_captions_join_the_context_as_the_official_eval(tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"captions": {"9": "A drawing of an animal digging.", "5": ""}}))
    no_img, with_img = read_scienceqa(SQA, "train", captions_file=captions)
    assert "Context: A drawing of an animal digging.\n" in with_img.prompt  # N/A gives way to the caption
    assert "Context: The bees buzzed in the garden.\n" in no_img.prompt
    with_both = scienceqa_prompt("Q?", "Hint  here.", ["a", "b"], caption="A  caption.")
    assert with_both == "Question: Q?\nContext: Hint here. A caption.\nOptions: (A) a (B) b\nResponse:"


def test_scienceqa_captions_file_resolves_against_the_config_folder(monkeypatch, tmp_path):
    """The shipped configs give ``captions_file: ../data/scienceqa/captions.json`` beside ``root``: both are
    relative to the config's folder, wherever the command runs."""
    monkeypatch.chdir(tmp_path)
    (s,) = load_samples(
        {"format": "scienceqa", "root": "scienceqa", "split": "test", "captions_file": "scienceqa/captions.json"},
        base_dir=FIX,
    )
    assert "Context: A map.\n" in s.prompt


def test_scienceqa_test_split_and_relative_root(monkeypatch):
    monkeypatch.chdir(FIX)
    (s,) = read_scienceqa("scienceqa", "test")
    assert s.answers == ["A"] and s.metadata["num_choices"] == 4
    assert s.image == os.path.join(SQA, "images", "test", "12", "image.png")


def test_scienceqa_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown split 'dev' in .*pid_splits\.json; available: \['test', 'train', 'val'\]"
    ):
        read_scienceqa(SQA, "dev")
    with pytest.raises(ValueError, match=r"split 'val' of .*pid_splits\.json has no samples"):
        read_scienceqa(SQA, "val")
    with pytest.raises(FileNotFoundError, match=r"ScienceQA problems file not found: .*problems\.json"):
        read_scienceqa(tmp_path, "train")


def test_scienceqa_parquet_samples_and_content_addressed_images(tmp_path):
    red, blue = png("red"), png("blue")
    data = tmp_path / "data"
    write_parquet(
        data / "train-00000-of-00001-1028f23e353fbe3e.parquet",
        scienceqa_columns(
            [
                (
                    image_cell(red),
                    "Which animal's feet are also adapted for digging?",
                    ["aardvark", "Weddell seal", "mole"],
                    2,
                    "",
                    "closed choice",
                    "grade2",
                    "natural science",
                    "biology",
                    "Adaptations",
                    "Animal adaptations: feet",
                    "lecture",
                    "solution",
                ),
                (
                    None,
                    "Which figure of speech is used in this text?",
                    ["hyperbole", "onomatopoeia"],
                    1,
                    "The bees  buzzed in the garden.",
                    "closed choice",
                    "grade8",
                    "language science",
                    "figurative-language",
                    "Literary devices",
                    "Classify the figure of speech",
                    "",
                    "",
                ),
            ]
        ),
        SQA_TYPES,
    )
    write_parquet(
        data / "test-00000-of-00001-f0e719df791966ff.parquet",
        scienceqa_columns(
            [
                (
                    image_cell(red, "other_name.png"),
                    "Which is a mammal?",
                    ["mole", "eagle"],
                    0,
                    "",
                    "closed choice",
                    "grade3",
                    "natural science",
                    "biology",
                    "Classification",
                    "Identify mammals",
                    "",
                    "",
                ),
                (
                    image_cell(blue),
                    "Which color?",
                    ["red", "blue"],
                    1,
                    "",
                    "closed choice",
                    "grade1",
                    "natural science",
                    "physics",
                    "Colors",
                    "colors",
                    "",
                    "",
                ),
            ]
        ),
        SQA_TYPES,
    )
    images = tmp_path / "images"
    samples = read_scienceqa_parquet(data, images)  # a folder: its *.parquet files in name order
    assert [s.id for s in samples] == ["test_0", "test_1", "train_0", "train_1"]
    train0, train1 = samples[2:]
    # the same sample as read_scienceqa builds from problems.json (tests above), plus the split
    assert train0.prompt == (
        "Question: Which animal's feet are also adapted for digging?\nContext: N/A\n"
        "Options: (A) aardvark (B) Weddell seal (C) mole\nResponse:"
    )
    assert train0.answers == ["C"] and train0.question_type == "natural science" and train0.image_id == "train_0"
    assert train1.image is None and train1.image_id is None
    assert train1.prompt.startswith(
        "Question: Which figure of speech is used in this text?\nContext: The bees buzzed in the garden.\n"
    )
    assert train1.metadata == {
        "subject": "language science",
        "grade": "grade8",
        "has_text_context": True,
        "has_image_context": False,
        "num_choices": 2,
        "target": "The answer is B.",
        "choices": ["hyperbole", "onomatopoeia"],
        "split": "train",
    }
    # identical bytes -> one file, named by their sha256; written once, never rewritten
    sha_red = hashlib.sha256(red).hexdigest()
    assert (
        train0.image
        == read_scienceqa_parquet(data / "test-00000-of-00001-f0e719df791966ff.parquet", images)[0].image
        == str(images / f"{sha_red}.png")
    )
    assert sorted(os.listdir(images)) == sorted([f"{sha_red}.png", f"{hashlib.sha256(blue).hexdigest()}.png"])
    with open(train0.image, "rb") as f:
        assert f.read() == red
    before = os.stat(train0.image).st_mtime_ns
    os.chmod(train0.image, 0o444)
    read_scienceqa_parquet(str(data / "*.parquet"), images)  # a glob; the existing file is left alone
    assert os.stat(train0.image).st_mtime_ns == before
    assert not [n for n in os.listdir(images) if n.startswith(".")]  # no temporary file left behind
    # through a data spec: a list of files relative to the config's folder
    spec = {
        "format": "scienceqa_parquet",
        "files": ["data/train-00000-of-00001-1028f23e353fbe3e.parquet"],
        "image_dir": "images",
    }
    assert [s.image for s in load_samples(spec, base_dir=str(tmp_path))] == [train0.image, None]


def test_scienceqa_score_uses_letters_and_columns():
    samples = read_scienceqa(FIXTURES / "scienceqa", "train")
    right = {s.id: f"The answer is {s.answers[0]}." for s in samples}
    result = score("scienceqa", samples, right)
    assert result["Average"] == 100.0 and result["count"] == len(samples)
    wrong = {s.id: "The answer is Z." for s in samples}
    assert score("scienceqa", samples, wrong)["Average"] == 0.0
    assert all(math.isnan(v) or v in (0.0, 100.0) for k, v in result.items() if k not in ("count", "rule"))
    assert result["rule"] == "default"


def test_scienceqa_memvp_rule_reads_the_first_capital_letter_as_the_official_eval():
    samples = read_scienceqa(FIXTURES / "scienceqa", "train")  # answers B (2 options) and C (3 options)
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


def test_scienceqa_strict_is_llavas_rule_on_the_whole_answer():
    samples = read_scienceqa(FIXTURES / "scienceqa", "train")  # answers B (2 options) and C (3 options)
    # The prompt ends with "The answer is": LLaVA's rule reads "The answer is B." (the answers file's text)
    generated = {"5": "B.", "9": "C"}  # "The answer is C" has no character after the letter: not read
    strict = score("scienceqa", samples, generated, "strict")
    assert strict["rule"] == "llava" and strict["Average"] == 50.0 and strict["count"] == 2
    assert score("scienceqa", samples, generated, "llava") == strict
    assert score("scienceqa", samples, generated)["Average"] == 100.0  # 'default' reads both
    # VLMEvalKit's matching reads an option's text too ("mole" is option C of pid 9)
    assert score("scienceqa", samples, {"5": "B.", "9": "the mole"}, "vlmevalkit")["Average"] == 100.0
