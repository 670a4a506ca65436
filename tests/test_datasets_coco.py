"""memvp.datasets.coco: COCO captions from Karpathy's file and from parquet files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from dataset_files import FIX, IMAGE_TYPE, image_cell, png, write_parquet

from memvp.datasets import COCO_CAPTION_PROMPT, read_coco_captions, read_coco_captions_parquet


def test_coco_captions_splits():
    f = os.path.join(FIX, "coco", "dataset_coco.json")
    train = read_coco_captions(f, "/data/coco", "train")  # train + restval
    assert sorted(s.id for s in train) == ["522418", "57870"]
    s = next(s for s in train if s.id == "57870")
    assert s.prompt == COCO_CAPTION_PROMPT == "Provide a one-sentence caption for the provided image."
    assert s.answers == ["A restaurant with tables.", "Chairs in a room."]
    assert s.image == "/data/coco/train2014/COCO_train2014_000000057870.jpg" and s.image_id == "57870"
    assert s.metadata == {"split": "train", "filename": "COCO_train2014_000000057870.jpg"}
    assert [s.id for s in read_coco_captions(f, "/data/coco", "restval")] == ["522418"]
    assert [s.id for s in read_coco_captions(f, "/data/coco", "val")] == ["184613"]
    (t,) = read_coco_captions(f, "/data/coco", "test")
    assert t.answers == ["A man riding a bike.", "A person on a bicycle."]
    with pytest.raises(ValueError, match=r"unknown split 'dev' .*available: \['restval', 'test', 'train', 'val'\]"):
        read_coco_captions(f, "/data/coco", "dev")


def test_coco_empty_split(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(
        json.dumps(
            {
                "images": [
                    {"filepath": "a", "filename": "b.jpg", "split": "train", "cocoid": 1, "sentences": [{"raw": "x"}]}
                ]
            }
        )
    )
    with pytest.raises(ValueError, match=r"split 'test' of .*dataset_coco\.json has no samples"):
        read_coco_captions(f, tmp_path, "test")


def test_coco_captions_parquet_lmms_lab_layout(tmp_path):
    img = png("yellow")
    f = write_parquet(
        tmp_path / "val-00000-of-00002.parquet",
        {
            "question_id": ["COCO_val2014_000000391895.jpg"],
            "image": [image_cell(img)],
            "question": [COCO_CAPTION_PROMPT],
            "answer": [["A man riding a bike. ", "A person on a bicycle."]],
            "id": [0],
        },
        {"image": IMAGE_TYPE},
    )
    (s,) = read_coco_captions_parquet(f, tmp_path / "img")
    assert (s.id, s.image_id, s.prompt) == ("391895", "391895", COCO_CAPTION_PROMPT)
    assert s.answers == ["A man riding a bike.", "A person on a bicycle."]
    assert s.metadata == {"filename": "COCO_val2014_000000391895.jpg"}
    assert s.image == str(tmp_path / "img" / f"{hashlib.sha256(img).hexdigest()}.png")
