"""memvp.datasets.coco: COCO captions from Karpathy's file and from parquet files."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
from dataset_files import FIX, IMAGE_TYPE, image_cell, png, write_parquet

from memvp import metrics as metrics_module
from memvp.datasets import (
    COCO_CAPTION_PROMPT,
    load_samples,
    read_coco_captions,
    read_coco_captions_parquet,
    score,
    write_outputs,
)


def test_coco_captions_splits():
    f = os.path.join(FIX, "coco", "dataset_coco.json")
    train = read_coco_captions(f, "/data/coco", "train", per_caption=False)  # train + restval, one per image
    assert sorted(s.id for s in train) == ["522418", "57870"]
    s = next(s for s in train if s.id == "57870")
    assert s.prompt == COCO_CAPTION_PROMPT == "Provide a one-sentence caption for the provided image."
    assert s.answers == ["A restaurant with tables.", "Chairs in a room."]
    assert s.image == "/data/coco/train2014/COCO_train2014_000000057870.jpg" and s.image_id == "57870"
    assert s.metadata == {"split": "train", "filename": "COCO_train2014_000000057870.jpg"}
    assert [s.id for s in read_coco_captions(f, "/data/coco", "restval", per_caption=False)] == ["522418"]
    assert [s.id for s in read_coco_captions(f, "/data/coco", "val")] == ["184613"]
    (t,) = read_coco_captions(f, "/data/coco", "test")
    assert t.answers == ["A man riding a bike.", "A person on a bicycle."]
    with pytest.raises(ValueError, match=r"unknown split 'dev' .*available: \['restval', 'test', 'train', 'val'\]"):
        read_coco_captions(f, "/data/coco", "dev")


def test_coco_train_is_one_sample_per_caption_as_vl_t5():
    """VL-T5 / VL-PET train on every (image, caption) pair and evaluate once per image: the training split
    has a sample per caption, each caption the target (answers[0]) once, every reference kept."""
    f = os.path.join(FIX, "coco", "dataset_coco.json")
    train = read_coco_captions(f, "/data/coco", "train")
    assert [(s.id, s.image_id) for s in train] == [("522418_0", "522418"), ("57870_0", "57870"), ("57870_1", "57870")]
    first, second = train[1:]
    assert [first.target, second.target] == ["A restaurant with tables.", "Chairs in a room."]
    assert second.answers == ["Chairs in a room.", "A restaurant with tables."]  # rotated, none dropped
    assert first.image == second.image == "/data/coco/train2014/COCO_train2014_000000057870.jpg"
    assert second.metadata == {"split": "train", "caption_index": 1, "filename": "COCO_train2014_000000057870.jpg"}
    assert [s.id for s in read_coco_captions(f, "/data/coco", "restval")] == ["522418_0"]
    # evaluation splits stay per image unless asked
    assert [s.id for s in read_coco_captions(f, "/data/coco", "test", per_caption=True)] == ["391895_0", "391895_1"]
    with pytest.raises(ValueError, match=r"per_caption must be true or false.*got 'yes'"):
        read_coco_captions(f, "/data/coco", "train", per_caption="yes")


def test_coco_per_caption_data_spec_shares_the_image_features(tmp_path):
    """per_caption is a data-spec key; the feature files stay one per image (features_pattern's {image_id})."""
    spec = {
        "format": "coco_captions",
        "karpathy_file": os.path.join(FIX, "coco", "dataset_coco.json"),
        "image_root": str(tmp_path),
        "split": "train",
        "features_dir": str(tmp_path),
        "features_pattern": "{image_id}.npy",
    }
    samples = load_samples(spec)
    assert [s.features for s in samples] == [str(tmp_path / f"{i}.npy") for i in ("522418", "57870", "57870")]
    assert [s.id for s in load_samples({**spec, "per_caption": False})] == ["522418", "57870"]
    with pytest.raises(ValueError, match="per_caption"):
        load_samples({**spec, "per_caption": 1})


def test_coco_per_caption_predictions_score_and_write_once_per_image(tmp_path, monkeypatch):
    """Predictions of per-caption samples give the per-image CIDEr-D (each image scored once, not once per
    caption) and a results file with one line per image, keyed by the COCO image id."""
    monkeypatch.setattr(metrics_module.shutil, "which", lambda name: None)  # the Python tokenizer: no java
    rng = random.Random(0)
    words = ["a", "man", "dog", "red", "bike", "on", "the", "street", "cat", "sits"]
    images = {str(100 + i): [" ".join(rng.choices(words, k=5)) for _ in range(i + 2)] for i in range(3)}
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(
        json.dumps(
            {
                "images": [
                    {
                        "filepath": "val2014",
                        "filename": f"COCO_val2014_{int(cid):012d}.jpg",
                        "split": "test",
                        "cocoid": int(cid),
                        "sentences": [{"raw": c} for c in captions],
                    }
                    for cid, captions in images.items()
                ]
            }
        )
    )
    per_image = read_coco_captions(karpathy, tmp_path, "test")
    per_caption = read_coco_captions(karpathy, tmp_path, "test", per_caption=True)
    assert len(per_caption) == 2 + 3 + 4
    guess = {cid: " ".join(rng.choices(words, k=4)) for cid in images}
    want = score("coco_captions", per_image, {s.id: guess[s.image_id] for s in per_image})
    got = score("coco_captions", per_caption, {s.id: guess[s.image_id] for s in per_caption})
    assert got == want and got["count"] == 3
    predictions = {s.id: guess[s.image_id] for s in per_caption if s.id != "100_0"}  # 100's first is missing
    write_outputs("coco_captions", ["coco_results"], per_caption, predictions, tmp_path, "m")
    assert json.loads((tmp_path / "coco_captions_results.json").read_text()) == [
        {"image_id": int(cid), "caption": guess[cid]} for cid in images
    ]


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
