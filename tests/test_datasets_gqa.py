"""memvp.datasets.gqa: GQA's JSON and parquet readers (one sample builder) and exact-match scoring."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest
from dataset_files import FIX, FIXTURES, IMAGE_TYPE, image_cell, png, write_parquet

from memvp.datasets import read_gqa, read_gqa_parquet, score


def test_gqa():
    a, b = read_gqa(os.path.join(FIX, "gqa", "testdev_balanced_questions.json"), "/data/gqa/images")
    assert (a.id, a.prompt, a.answers) == ("20968379", "Is the sky blue or white?", ["white"])
    assert a.image == "/data/gqa/images/n288870.jpg" and a.image_id == "n288870"
    assert a.question_type == "choose" and b.question_type == "verify"
    assert a.metadata == {
        "full_answer": "The sky is white.",
        "structural": "choose",
        "semantic": "attr",
        "detailed": "chooseAttr",
    }


def test_gqa_parquet_joins_instructions_and_images(tmp_path):
    types = pa.struct([("structural", pa.string()), ("semantic", pa.string()), ("detailed", pa.string())])
    q = write_parquet(
        tmp_path / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet",
        {
            "id": ["20968379", "201307251"],
            "imageId": ["n288870", "n288870"],
            "question": ["Is the sky blue or white?", "Is there a fence?"],
            "answer": ["white", "no"],
            "fullAnswer": ["The sky is white.", "No, there is no fence."],
            "isBalanced": [True, True],
            "types": [
                {"structural": "choose", "semantic": "attr", "detailed": "chooseAttr"},
                {"structural": "verify", "semantic": "obj", "detailed": "existC"},
            ],
        },
        {"types": types},
    )
    sky, unused = png("white"), png("black")
    imgs = write_parquet(
        tmp_path / "testdev_balanced_images" / "testdev-00000-of-00001.parquet",
        {"id": ["n161313", "n288870"], "image": [image_cell(unused), image_cell(sky)]},
        {"image": IMAGE_TYPE},
    )
    a, b = read_gqa_parquet(q.parent, imgs.parent, tmp_path / "img")
    assert (a.id, a.prompt, a.answers, a.image_id) == ("20968379", "Is the sky blue or white?", ["white"], "n288870")
    assert a.question_type == "choose" and b.question_type == "verify"
    assert a.metadata == {
        "full_answer": "The sky is white.",
        "structural": "choose",
        "semantic": "attr",
        "detailed": "chooseAttr",
    }
    assert a.image == b.image == str(tmp_path / "img" / f"{hashlib.sha256(sky).hexdigest()}.png")
    assert os.listdir(tmp_path / "img") == [os.path.basename(a.image)]  # only the images in use
    other = write_parquet(
        tmp_path / "other_images.parquet", {"id": ["n1"], "image": [image_cell(sky)]}, {"image": IMAGE_TYPE}
    )
    with pytest.raises(
        ValueError,
        match=r"1 image\(s\) of the GQA questions are in none of the image files "
        r".*other_images\.parquet.*, e\.g\. imageId \['n288870'\]",
    ):
        read_gqa_parquet(q, other, tmp_path / "img")


def test_gqa_score_is_exact_match():
    gqa = read_gqa(FIXTURES / "gqa" / "testdev_balanced_questions.json", FIXTURES / "gqa")
    assert [(s.answers, s.question_type) for s in gqa] == [(["white"], "choose"), (["no"], "verify")]
    # Exact match after lower-casing and dropping a trailing period.
    assert score("gqa", gqa, {s.id: s.answers[0].upper() + "." for s in gqa}) == {
        "overall": 100.0,
        "count": 2,
        "per_type": {"choose": 100.0, "verify": 100.0},
    }
    assert score("gqa", gqa, {gqa[0].id: "Blue.", gqa[1].id: " no "}) == {
        "overall": 50.0,
        "count": 2,
        "per_type": {"choose": 0.0, "verify": 100.0},
    }
    assert score("gqa", gqa, {gqa[0].id: "off-white", gqa[1].id: "no way"})["overall"] == 0.0
