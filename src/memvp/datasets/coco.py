"""COCO captions: Karpathy's split file (``dataset_coco.json``) and the Hugging Face parquet files of the
official splits, one sample per image with every reference caption, scored by CIDEr-D (the Java PTB
tokenizer of the official evaluation when ``java`` is on PATH); written as the COCO caption results file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import caption_tokenizer, cider_d
from . import io
from .outputs import OutputFiles, llava_answers, number_or_text
from .registry import DatasetFormat, register_format
from .schema import Sample

COCO_CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."

_KARPATHY_SPLITS = {"train": ("train", "restval"), "restval": ("restval",), "val": ("val",), "test": ("test",)}


def _coco_sample(cid: str, captions: list[str], image: str | None, filename: str, **extra: Any) -> Sample:
    return Sample(
        id=cid,
        prompt=COCO_CAPTION_PROMPT,
        answers=[c.strip() for c in captions],
        image=image,
        image_id=cid,
        metadata={**extra, "filename": filename},
    )


def read_coco_captions(karpathy_file: str | os.PathLike, image_root: str | os.PathLike, split: str) -> list[Sample]:
    """Karpathy split file (``dataset_coco.json``), one Sample per image.

    ``split`` is ``train`` (= Karpathy ``train`` + ``restval``, the standard
    113k training set), ``restval``, ``val`` or ``test``.  id = image_id =
    ``str(cocoid)`` (``imgid`` for files without ``cocoid``, e.g. Flickr30k);
    image ``image_root/filepath/filename``; prompt = :data:`COCO_CAPTION_PROMPT`;
    answers = the ``raw`` sentences, stripped.  metadata: ``split`` (the
    file's own split), ``filename``.
    """
    if split not in _KARPATHY_SPLITS:
        raise ValueError(
            f"unknown split {split!r} for {io.absolute(karpathy_file)}; available: {sorted(_KARPATHY_SPLITS)}"
        )
    data = io.expect(io.load_json(karpathy_file, "Karpathy split file"), dict, karpathy_file, "an object with 'images'")
    image_root = io.absolute(image_root)
    wanted = _KARPATHY_SPLITS[split]
    samples = []
    for im in io.field(data, "images", karpathy_file, "<top level>"):
        if io.field(im, "split", karpathy_file, im.get("filename")) not in wanted:
            continue
        filename = io.field(im, "filename", karpathy_file, im)
        cid = str(im["cocoid"] if "cocoid" in im else io.field(im, "imgid", karpathy_file, filename))
        captions = [s["raw"] for s in io.field(im, "sentences", karpathy_file, filename)]
        samples.append(
            _coco_sample(
                cid, captions, os.path.join(image_root, im.get("filepath", ""), filename), filename, split=im["split"]
            )
        )
    return io.non_empty(samples, karpathy_file, split)


def read_coco_captions_parquet(
    files: str | os.PathLike | Sequence[str | os.PathLike], image_dir: str | os.PathLike
) -> list[Sample]:
    """COCO captions from the parquet files of the Hugging Face datasets ``lmms-lab/COCO-Caption``
    (val2014) / ``lmms-lab/COCO-Caption2017``: columns ``question_id`` (the image file name,
    e.g. ``COCO_val2014_000000391895.jpg``), ``image``, ``question``, ``answer`` (the
    captions), ``id``.  These are the official COCO splits, not Karpathy's.

    One Sample per row, as :func:`read_coco_captions`: id = image_id = the COCO image id
    (the number in the file name, as lmms-eval reads it); prompt =
    :data:`COCO_CAPTION_PROMPT`; answers = the captions, stripped (``[]`` where the test
    files have none).  metadata: ``filename``.  Images are written to
    ``image_dir/<sha256>.<ext>``.
    """
    paths = io.expand_files(files, "COCO caption parquet file", ".parquet")
    image_dir = io.check_image_dir(image_dir)
    samples = []
    for path in paths:
        for r, row in enumerate(
            io.parquet_rows(path, "COCO caption parquet file", ("question_id", "image"), ("answer",))
        ):
            filename = str(io.cell(row, "question_id", io.ID, path, r, "the image's file name", required=True))
            captions = io.strings(row, "answer", path, r) or []
            digits = filename.rsplit("_", 1)[-1].split(".")[0]
            cid = str(int(digits)) if digits.isdigit() else filename
            samples.append(
                _coco_sample(cid, captions, io.parquet_image(row["image"], image_dir, path, filename), filename)
            )
    return io.non_empty(samples, paths[0])


def score_captions(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """Corpus CIDEr-D (:func:`~memvp.metrics.cider_d`) against every reference caption; ``tokenizer`` names
    how captions were tokenized: 'ptb-java' (pycocoevalcap's, the official evaluation's; ``java`` is on
    PATH) or 'ptb-python'."""
    tokenizer = caption_tokenizer()
    cider = cider_d(predictions, {s.id: s.answers for s in samples}, tokenizer)
    return {"CIDEr-D": cider, "count": len(predictions), "tokenizer": tokenizer}


COCO_RESULTS_FILE = "coco_captions_results.json"


def write_coco_results(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The caption results file of the COCO caption evaluation (pycocotools' ``COCO.loadRes``, the test
    server): ``[{"image_id": int, "caption": str}]``, as LLaVA's ``eval_science_qa.py`` ``convert_caps``
    builds it."""
    return {
        COCO_RESULTS_FILE: json.dumps(
            [{"image_id": number_or_text(s.id), "caption": predictions.get(s.id, "")} for s in samples]
        )
    }


_WRITERS = {
    "llava_jsonl": llava_answers(question_id=lambda s: number_or_text(s.id)),
    "coco_results": write_coco_results,
}

register_format(
    DatasetFormat(
        "coco_captions",
        read_coco_captions,
        {"karpathy_file", "image_root"},
        "image_root/<filepath>/<filename> of the Karpathy file",
        score_captions,
        writers=_WRITERS,
    )
)
register_format(
    DatasetFormat(
        "coco_captions_parquet",
        read_coco_captions_parquet,
        {"files", "image_dir"},
        io.PARQUET_IMAGES,
        score_captions,
        writers=_WRITERS,
    )
)
