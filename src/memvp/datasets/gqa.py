"""GQA: the released question JSON files and the Hugging Face parquet files (questions and images in two
configs), read into the same samples, scored by exact match; written for GQA's own ``eval.py`` as LLaVA
converts its answers."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import gqa_accuracy
from . import io
from .outputs import OutputFiles
from .registry import DatasetFormat, register_format
from .schema import Sample


def _gqa_sample(qid: Any, question: dict, image: str, image_id: str) -> Sample:
    """``question``: a GQA question record (``question``, ``answer``, ``fullAnswer``, ``types``), its text
    already checked by the reader."""
    types = question.get("types") or {}
    answer = question.get("answer")
    return Sample(
        id=str(qid),
        prompt=question["question"],
        answers=[answer] if answer is not None else [],
        image=image,
        image_id=image_id,
        question_type=types.get("structural") or "",
        metadata={
            "full_answer": question.get("fullAnswer") or "",
            "structural": types.get("structural") or "",
            "semantic": types.get("semantic") or "",
            "detailed": types.get("detailed") or "",
        },
    )


def read_gqa(questions_file: str | os.PathLike, image_dir: str | os.PathLike) -> list[Sample]:
    """GQA question file (e.g. ``testdev_balanced_questions.json``): qid -> question.

    prompt = the question; answers = ``[answer]`` (``[]`` for files without
    answers, e.g. the submission file); image ``{image_dir}/{imageId}.jpg``;
    question_type = ``types["structural"]``.  metadata: ``full_answer``,
    ``structural``, ``semantic``, ``detailed``.
    """
    data = io.expect(
        io.load_json(questions_file, "GQA questions file"), dict, questions_file, "an object of question id -> question"
    )
    image_dir = io.absolute(image_dir)
    samples = []
    for qid, q in data.items():
        image_id = str(io.field(q, "imageId", questions_file, qid))
        io.field(q, "question", questions_file, qid)
        samples.append(_gqa_sample(qid, q, os.path.join(image_dir, f"{image_id}.jpg"), image_id))
    return io.non_empty(samples, questions_file)


def read_gqa_parquet(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    image_files: str | os.PathLike | Sequence[str | os.PathLike],
    image_dir: str | os.PathLike,
) -> list[Sample]:
    """GQA from the parquet files of the Hugging Face dataset ``lmms-lab/GQA``, which keeps
    questions and images apart: ``files`` = an ``*_instructions`` config (e.g.
    ``testdev_balanced_instructions/testdev-*.parquet``: ``id, imageId, question, answer,
    fullAnswer, types, ...``), ``image_files`` = the matching ``*_images`` config (``id,
    image``), joined on ``imageId`` = ``id``.

    The samples are those of :func:`read_gqa` (answers ``[]`` where the file has no answer,
    question_type = ``types.structural``); image_id = ``imageId``.  Only the images the
    questions use are written to ``image_dir/<sha256>.<ext>``.
    """
    paths = io.expand_files(files, "GQA instructions parquet file", ".parquet")
    image_paths = io.expand_files(image_files, "GQA images parquet file", ".parquet")
    image_dir = io.check_image_dir(image_dir)
    questions = []
    for path in paths:
        for r, row in enumerate(
            io.parquet_rows(
                path, "GQA instructions parquet file", ("id", "imageId", "question"), ("answer", "fullAnswer", "types")
            )
        ):
            io.cell(row, "id", io.ID, path, r, "a question id", required=True)
            io.cell(row, "imageId", io.ID, path, r, "an image id", required=True)
            io.cell(row, "question", str, path, r, "the question's text", required=True)
            for column in ("answer", "fullAnswer"):
                io.cell(row, column, str, path, r, "text or null")
            io.cell(row, "types", dict, path, r, "a {structural, semantic, detailed} struct or null")
            questions.append(row)
    wanted = {str(row["imageId"]) for row in questions}
    image_of: dict[str, str] = {}
    for path in image_paths:
        for r, row in enumerate(io.parquet_rows(path, "GQA images parquet file", ("id", "image"))):
            iid = str(io.cell(row, "id", io.ID, path, r, "an image id", required=True))
            if iid in wanted and iid not in image_of:
                image = io.parquet_image(row["image"], image_dir, path, iid)
                if image is not None:
                    image_of[iid] = image
    missing = sorted(wanted - image_of.keys())
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the GQA questions are in none of the image files "
            f"{image_paths}, e.g. imageId {missing[:5]}"
        )
    samples = [_gqa_sample(q["id"], q, image_of[str(q["imageId"])], str(q["imageId"])) for q in questions]
    return io.non_empty(samples, paths[0])


def score_exact_match(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """:func:`~memvp.metrics.gqa_accuracy`: exact match with the first answer after lower-casing and dropping a
    trailing period, per question type."""
    return gqa_accuracy(predictions, {s.id: s.answers[0] for s in samples}, {s.id: s.question_type for s in samples})


GQA_PREDICTIONS_FILE = "gqa_predictions.json"


def write_gqa_predictions(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The predictions file of GQA's ``eval.py`` (``--predictions``) as LLaVA's ``scripts/convert_gqa_for_eval.py``
    writes it: ``[{"questionId": str, "prediction": str}]``, each answer with its trailing periods dropped and
    lower-cased."""
    return {
        GQA_PREDICTIONS_FILE: json.dumps(
            [{"questionId": s.id, "prediction": predictions.get(s.id, "").rstrip(".").lower()} for s in samples]
        )
    }


register_format(
    DatasetFormat(
        "gqa",
        read_gqa,
        {"questions_file", "image_dir"},
        "image_dir/<imageId>.jpg",
        score_exact_match,
        writers={"gqa_eval": write_gqa_predictions},
    )
)
register_format(
    DatasetFormat(
        "gqa_parquet",
        read_gqa_parquet,
        {"files", "image_files", "image_dir"},
        "image_dir/<sha256>.<ext>, written from the image files' bytes by the reader",
        score_exact_match,
        writers={"gqa_eval": write_gqa_predictions},
    )
)
