"""Paths of the dataset fixtures and writers of small files in the released formats, shared by the
tests of the dataset families (tests/test_datasets_*.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "datasets")
FIXTURES = Path(FIX)
SQA = os.path.join(FIX, "scienceqa")
VQA = os.path.join(FIX, "vqav2")
POPE = os.path.join(FIX, "pope")
POPE_FILES = [os.path.join(POPE, f"coco_pope_{s}.json") for s in ("random", "popular", "adversarial")]
MME = os.path.join(FIX, "mme")
MMB = os.path.join(FIX, "mmbench")

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the datasets Image feature
SQA_TYPES = {"image": IMAGE_TYPE, "choices": pa.list_(pa.string()), "answer": pa.int8()}


def png(color, size=(2, 2)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def image_cell(data: bytes | None, name: str = "image.png"):
    return None if data is None else {"bytes": data, "path": name}


def write_parquet(path, columns: dict, types: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()}), path)
    return path


def scienceqa_columns(rows):
    keys = [
        "image",
        "question",
        "choices",
        "answer",
        "hint",
        "task",
        "grade",
        "subject",
        "topic",
        "category",
        "skill",
        "lecture",
        "solution",
    ]
    return {k: [r[i] for r in rows] for i, k in enumerate(keys)}
