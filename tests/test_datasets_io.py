"""memvp.datasets.io: the checks every reader makes (files, records, paths inside their folder, parquet cells)."""

from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pytest
from dataset_files import FIX, IMAGE_TYPE, SQA_TYPES, VQA, image_cell, png, scienceqa_columns, write_parquet

from memvp.datasets import (
    read_coco_captions_parquet,
    read_gqa,
    read_gqa_parquet,
    read_llava,
    read_pope,
    read_scienceqa_parquet,
    read_vqav2,
    read_vqav2_parquet,
)


def test_image_paths_may_not_leave_image_dir(tmp_path):
    """Issue 24: '../../etc/passwd' was opened, then reported as an unreadable image. Absolute paths are
    read where they are; a relative path must stay inside image_dir (symlinks inside it are followed)."""
    conversation = lambda cid, image: {
        "id": cid,
        "image": image,
        "conversations": [  # noqa: E731
            {"from": "human", "value": "Q?"},
            {"from": "gpt", "value": "A"},
        ],
    }
    f = tmp_path / "llava.json"
    f.write_text(
        json.dumps(
            [
                conversation("in", "sub/../a.jpg"),
                conversation("abs", "/data/b.jpg"),
                conversation("out", "../../etc/passwd"),
            ]
        )
    )
    images = tmp_path / "images"
    with pytest.raises(
        ValueError,
        match=r"conversation 'out': the path '\.\./\.\./etc/passwd' leaves image_dir "
        rf"{re.escape(str(images))}; give a path inside image_dir",
    ):
        read_llava(f, images)
    skipped = {}
    inside, absolute = read_llava(f, images, skipped=skipped)
    assert inside.image == str(images / "sub/../a.jpg") and absolute.image == "/data/b.jpg"
    assert list(skipped) == ["conversation 'out'"]
    video = tmp_path / "video.json"
    video.write_text(
        json.dumps(
            [
                {
                    "id": "v",
                    "video": "../clip.mp4",
                    "conversations": [{"from": "human", "value": "<video>Q?"}, {"from": "gpt", "value": "A"}],
                }
            ]
        )
    )
    with pytest.raises(ValueError, match=r"conversation 'v': the path '\.\./clip\.mp4' leaves video_dir"):
        read_llava(video, images)
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text(json.dumps({"question_id": 1, "image": "../x.jpg", "text": "Is there a cat?", "label": "yes"}))
    with pytest.raises(ValueError, match=r"question 1: the path '\.\./x\.jpg' leaves image_dir"):
        read_pope(pope, images)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GQA questions file not found: .*nope\.json"):
        read_gqa(tmp_path / "nope.json", "/x")
    with pytest.raises(FileNotFoundError, match=r"VQAv2 annotations file not found: .*nope\.json"):
        read_vqav2(os.path.join(VQA, "questions.json"), tmp_path / "nope.json", "/x")
    with pytest.raises(ValueError, match=r"VQAv2 questions file .*malformed\.json is not valid JSON"):
        read_vqav2(os.path.join(FIX, "malformed.json"), None, "/x")
    with pytest.raises(ValueError, match=r"LLaVA conversation file .*malformed\.json is not valid JSON"):
        read_llava(os.path.join(FIX, "malformed.json"), "/x")
    with pytest.raises(ValueError, match=r"expected a list of conversations, got dict"):
        read_llava(os.path.join(FIX, "gqa", "testdev_balanced_questions.json"), "/x")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match=r"empty\.json has no samples"):
        read_gqa(empty, "/x")


def test_parquet_errors(tmp_path):
    f = write_parquet(tmp_path / "train-00000-of-00001.parquet", {"question": ["q"]}, {})
    with pytest.raises(
        ValueError,
        match=r"train-00000-of-00001\.parquet: ScienceQA parquet file has no column\(s\) "
        r"\['image', 'choices', 'answer'\]; its columns: \['question'\]",
    ):
        read_scienceqa_parquet(f, tmp_path / "img")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"VQAv2 parquet file .*fake\.parquet is not a readable parquet file"):
        read_vqav2_parquet(tmp_path / "fake.parquet", tmp_path / "img")
    with pytest.raises(FileNotFoundError, match=r"VQAv2 parquet file: no file matches .*nope-\*\.parquet"):
        read_vqav2_parquet(str(tmp_path / "nope-*.parquet"), tmp_path / "img")
    with pytest.raises(FileNotFoundError, match=r"COCO caption parquet file: no \*\.parquet file in .*empty"):
        (tmp_path / "empty").mkdir()
        read_coco_captions_parquet(tmp_path / "empty", tmp_path / "img")
    f = write_parquet(
        tmp_path / "x.parquet",
        {"question_id": ["a.jpg"], "image": [{"bytes": None, "path": "a.jpg"}]},
        {"image": IMAGE_TYPE},
    )
    with pytest.raises(
        ValueError,
        match=r"x\.parquet: row 'a\.jpg' has an image without bytes, only the relative "
        r"path 'a\.jpg'",
    ):
        read_coco_captions_parquet(f, tmp_path / "img")


def test_parquet_values_of_the_wrong_type_name_the_row_and_column(tmp_path):
    """Issue 24.9: `answers` stored as a string became a list of its characters, a null question was asked
    as "None"; now each is an error naming the file, the row and the column."""
    cell = image_cell(png("red"))
    vqa = {
        "question_id": [1, 2],
        "question": ["Is it red?", None],
        "image": [cell, cell],
        "answers": [["yes"] * 10, ["no"] * 10],
        "multiple_choice_answer": ["yes", "no"],
    }
    cases = [
        (
            "vqa-null-question",
            read_vqav2_parquet,
            vqa,
            {"image": IMAGE_TYPE},
            r"row 1, column 'question' holds null, expected the question's text",
        ),
        (
            "vqa-answers-string",
            read_vqav2_parquet,
            {**vqa, "question": ["a?", "b?"], "answers": ["yes", "no"]},
            {"image": IMAGE_TYPE},
            r"row 0, column 'answers' holds 'yes' of type str, expected a list",
        ),
        (
            "vqa-target-number",
            read_vqav2_parquet,
            {**vqa, "question": ["a?", "b?"], "multiple_choice_answer": [1, 2]},
            {"image": IMAGE_TYPE},
            r"row 0, column 'multiple_choice_answer' holds 1 of type int",
        ),
        (
            "coco-captions-string",
            read_coco_captions_parquet,
            {"question_id": ["COCO_val2014_000000000001.jpg"], "image": [cell], "answer": ["A red square."]},
            {"image": IMAGE_TYPE},
            r"row 0, column 'answer' holds 'A red square\.' of type str, expected a list",
        ),
        (
            "sqa-null-question",
            read_scienceqa_parquet,
            scienceqa_columns(
                [
                    (cell, "Which?", ["a", "b"], 0, "", "", "g1", "s", "", "", "", "", ""),
                    (cell, None, ["a", "b"], 0, "", "", "g1", "s", "", "", "", "", ""),
                ]
            ),
            {**SQA_TYPES, "question": pa.string()},
            r"row 1, column 'question' holds null",
        ),
        (
            "sqa-choices-string",
            read_scienceqa_parquet,
            scienceqa_columns([(cell, "Which?", "ab", 0, "", "", "g1", "s", "", "", "", "", "")]),
            {**SQA_TYPES, "choices": pa.string()},
            r"row 0, column 'choices' holds 'ab' of type str, expected a list",
        ),
    ]
    for name, reader, columns, types, message in cases:
        f = write_parquet(tmp_path / f"{name}.parquet", columns, types)
        with pytest.raises(ValueError, match=rf"{name}\.parquet: {message}"):
            reader(f, tmp_path / "img")
    q = write_parquet(
        tmp_path / "gqa-null-question.parquet",
        {"id": ["1"], "imageId": ["n1"], "question": [None]},
        {"question": pa.string()},
    )
    with pytest.raises(ValueError, match=r"gqa-null-question\.parquet: row 0, column 'question' holds null"):
        read_gqa_parquet(q, q, tmp_path / "img")
