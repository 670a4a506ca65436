"""COCO captions: Karpathy's split file (``dataset_coco.json``) and the Hugging Face parquet files of the
official splits, with every reference caption: one sample per (image, caption) to train on, one per image
to evaluate, as VL-T5 / VL-PET; scored by CIDEr-D once per image (the Java PTB tokenizer of the official
evaluation when ``java`` is on PATH); written as the COCO caption results file, one line per image."""

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


def _coco_sample(
    sid: str, image_id: str, captions: list[str], image: str | None, filename: str, **extra: Any
) -> Sample:
    return Sample(
        id=sid,
        prompt=COCO_CAPTION_PROMPT,
        answers=[c.strip() for c in captions],
        image=image,
        image_id=image_id,
        metadata={**extra, "filename": filename},
    )


_PER_CAPTION_SPLITS = ("train", "restval")
"""The splits read one sample per caption by default (the training splits)."""


def read_coco_captions(
    karpathy_file: str | os.PathLike, image_root: str | os.PathLike, split: str, per_caption: bool | None = None
) -> list[Sample]:
    """Karpathy split file (``dataset_coco.json``): one Sample per (image, caption) or per image.

    ``split`` is ``train`` (= Karpathy ``train`` + ``restval``, the standard
    113k training set), ``restval``, ``val`` or ``test``.  ``per_caption``: one
    sample per reference caption (VL-T5 / VL-PET's training set: ~566k pairs for
    ``train``), or one per image (what evaluation scores); None (the default) is
    True for ``train`` / ``restval`` and False for ``val`` / ``test``.

    Per image: id = image_id = ``str(cocoid)`` (``imgid`` for files without
    ``cocoid``, e.g. Flickr30k); answers = the ``raw`` sentences, stripped.
    Per caption: the image's k-th caption is sample ``f"{cocoid}_{k}"`` with the
    same image_id (features and the feature cache stay per image) and every
    reference caption, rotated so that ``answers[0]`` (the training target) is
    caption k; metadata ``caption_index`` = k; an image without captions gives no
    sample.  Both: image ``image_root/filepath/filename``; prompt =
    :data:`COCO_CAPTION_PROMPT`; metadata: ``split`` (the file's own split),
    ``filename``.
    """
    if split not in _KARPATHY_SPLITS:
        raise ValueError(
            f"unknown split {split!r} for {io.absolute(karpathy_file)}; available: {sorted(_KARPATHY_SPLITS)}"
        )
    if per_caption is None:
        per_caption = split in _PER_CAPTION_SPLITS
    elif not isinstance(per_caption, bool):
        raise ValueError(
            f"data spec key per_caption must be true or false, or left out (true for train / restval, false "
            f"for val / test), got {per_caption!r}"
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
        image = os.path.join(image_root, im.get("filepath", ""), filename)
        if not per_caption:
            samples.append(_coco_sample(cid, cid, captions, image, filename, split=im["split"]))
            continue
        for k in range(len(captions)):
            rotated = captions[k:] + captions[:k]  # caption k is the target; CIDEr still sees every reference
            samples.append(
                _coco_sample(f"{cid}_{k}", cid, rotated, image, filename, split=im["split"], caption_index=k)
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

    Always one sample per image (no ``per_caption``, unlike :func:`read_coco_captions`): these files
    hold the official val / test images, which are evaluated, one caption per image; the training
    recipe's per-caption pairs come from Karpathy's train + restval split, which they do not contain.
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
                _coco_sample(cid, cid, captions, io.parquet_image(row["image"], image_dir, path, filename), filename)
            )
    return io.non_empty(samples, paths[0])


def _one_per_image(samples: Sequence[Sample], predictions: Mapping[str, str]) -> list[Sample]:
    """The first sample of each image (``image_id``) that has a prediction: per-caption samples of one
    image share its image, prompt and references, so the image is captioned, scored and written once."""
    first: dict[str, Sample] = {}
    for s in samples:
        if s.id in predictions:
            first.setdefault(s.image_id if s.image_id is not None else s.id, s)
    return list(first.values())


def score_captions(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """Corpus CIDEr-D (:func:`~memvp.metrics.cider_d`) against every reference caption, once per image (the
    first prediction of an image read per caption; CIDEr-D's idf would count a repeated image's
    references again); ``count`` = images scored; ``tokenizer`` names how captions were tokenized:
    'ptb-java' (pycocoevalcap's, the official evaluation's; ``java`` is on PATH) or 'ptb-python'."""
    tokenizer = caption_tokenizer()
    images = _one_per_image(samples, predictions)
    cider = cider_d({s.id: predictions[s.id] for s in images}, {s.id: s.answers for s in images}, tokenizer)
    return {"CIDEr-D": cider, "count": len(images), "tokenizer": tokenizer}


COCO_RESULTS_FILE = "coco_captions_results.json"


def write_coco_results(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The caption results file of the COCO caption evaluation (pycocotools' ``COCO.loadRes``, the test
    server): ``[{"image_id": int, "caption": str}]``, as LLaVA's ``eval_science_qa.py`` ``convert_caps``
    builds it; one line per image (``image_id``; the evaluation takes one caption per image): the first
    prediction among the image's samples (several when read per caption), "" without one."""
    chosen: dict[str, str] = {}  # image id -> the sample id whose prediction is written
    for s in samples:
        image = s.image_id if s.image_id is not None else s.id
        if image not in chosen or (chosen[image] not in predictions and s.id in predictions):
            chosen[image] = s.id
    return {
        COCO_RESULTS_FILE: json.dumps(
            [{"image_id": number_or_text(i), "caption": predictions.get(sid, "")} for i, sid in chosen.items()]
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
