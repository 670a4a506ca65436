"""VQAv2: the official question + annotation JSON files and the Hugging Face parquet files, read into the
same samples (the question as prompt, the 10 human answers for the VQA score, ``multiple_choice_answer``
as the training target), scored by the official VQA accuracy; written for the EvalAI test server as LLaVA
submits it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import evalai_answer, normalize_vqa_answer, vqa_accuracy
from . import io
from .outputs import OutputFiles, llava_answers, number_or_text
from .registry import DatasetFormat, register_format
from .schema import ASKED_BOX, Sample, asked_box

logger = logging.getLogger(__name__)


def _vqav2_sample(
    qid: Any,
    question: str,
    image: str | None,
    image_id: str | None,
    annotation: tuple[list[str], str, str, str] | None,
    box: tuple[float, float, float, float] | None = None,
) -> Sample:
    """``annotation`` = (the human answers, ``multiple_choice_answer``, answer_type, question_type);
    None for a question without one (test-dev, test): no answers, no target. ``box``: the asked
    object's (``schema.ASKED_BOX``)."""
    extra = {} if box is None else {ASKED_BOX: box}
    if annotation is None:
        return Sample(id=str(qid), prompt=question, answers=[], image=image, image_id=image_id, metadata=extra)
    answers, target, answer_type, question_type = annotation
    return Sample(
        id=str(qid),
        prompt=question,
        answers=answers,
        image=image,
        image_id=image_id,
        question_type=answer_type,
        metadata={"target": target, "answer_type": answer_type, "question_type": question_type, **extra},
    )


def unscorable_targets(samples: Sequence[Sample]) -> list[str]:
    """The training targets that VQA's normalisation changes ("six" is scored as "6", "Yes" as "yes"):
    the official score normalises the prediction only, so a model that learns such a target is never
    right on a question whose answers all agree. VQAv2's own answers are already normalised."""
    return [t for s in samples if (t := s.target) and normalize_vqa_answer(t) != t]


def _warn_unscorable(samples: Sequence[Sample], source: str | os.PathLike) -> None:
    bad = unscorable_targets(samples)
    if len(bad) * 100 > len(samples):  # a stray one in a real file is noise; a whole kind is a broken set
        logger.warning(
            f"{io.absolute(source)}: {len(bad)} of {len(samples)} answers are not in VQA's normalised form "
            f"(e.g. {bad[0]!r}, scored as {normalize_vqa_answer(bad[0])!r}) and can never be matched; write "
            "them normalised (memvp.metrics.normalize_vqa_answer), as VQAv2's are"
        )


def read_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_dir: str | os.PathLike,
    image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg",
) -> list[Sample]:
    """Official VQAv2 question (+ annotation) files.

    prompt = the question; ``answers`` = the 10 human answers in file order (for
    the VQA score); ``metadata["target"]`` = ``multiple_choice_answer`` (the
    training target, returned by :attr:`Sample.target`).  Without an
    annotation file (test-dev / test) ``answers == []`` and there is no target.
    question_type = answer_type (``"yes/no"``, ``"number"``, ``"other"``);
    metadata: ``target``, ``answer_type``, ``question_type`` (the VQA question
    prefix, e.g. ``"what color is the"``).  ``image_pattern`` gets the
    questions file's ``data_subtype`` (``"test-dev2015"`` maps to
    ``"test2015"``, whose images test-dev uses) and the integer ``image_id``.
    A question record may carry ``asked_box`` (not in the official files): the asked object's
    [x0, y0, x1, y1] in fractions of the image's size, kept as ``metadata["asked_box"]`` for the
    retrieval-selectivity instrument (``memvp.instruments``); the scenes recipe writes it.
    """
    qdata = io.expect(
        io.load_json(questions_file, "VQAv2 questions file"), dict, questions_file, "an object with 'questions'"
    )
    questions = io.expect(
        io.field(qdata, "questions", questions_file, "<top level>"), list, questions_file, "'questions' to be a list"
    )
    subtype = qdata.get("data_subtype", "")
    subtype = {"test-dev2015": "test2015"}.get(subtype, subtype)
    annotations = None
    if annotations_file is not None:
        adata = io.expect(
            io.load_json(annotations_file, "VQAv2 annotations file"),
            dict,
            annotations_file,
            "an object with 'annotations'",
        )
        anns = io.field(adata, "annotations", annotations_file, "<top level>")
        annotations = {io.field(a, "question_id", annotations_file, a): a for a in anns}
    image_dir = io.absolute(image_dir)
    samples = []
    for q in questions:
        qid = io.field(q, "question_id", questions_file, q)
        image_id = int(io.field(q, "image_id", questions_file, qid))
        annotation = None
        if annotations is not None:
            if qid not in annotations:
                raise ValueError(f"{io.absolute(annotations_file)}: no annotation for question_id {qid}")
            a = annotations[qid]
            annotation = (
                [str(h["answer"]) for h in io.field(a, "answers", annotations_file, qid)],
                io.field(a, "multiple_choice_answer", annotations_file, qid),
                a.get("answer_type", ""),
                a.get("question_type", ""),
            )
        box = None if ASKED_BOX not in q else asked_box(q[ASKED_BOX], f"{io.absolute(questions_file)}: question {qid}")
        samples.append(
            _vqav2_sample(
                qid,
                io.field(q, "question", questions_file, qid),
                os.path.join(image_dir, image_pattern.format(data_subtype=subtype, image_id=image_id)),
                str(image_id),
                annotation,
                box,
            )
        )
    _warn_unscorable(samples, annotations_file or questions_file)  # no annotations: no targets, no warning
    return io.non_empty(samples, questions_file)


def _parquet_answers(row: dict, path: str, r: int) -> list[str] | None:
    """The human answers of a parquet row (``{answer, ...}`` structs or strings); None when null."""
    cells = io.cell(row, "answers", list, path, r, "a list of {answer, ...} or of strings")
    if cells is None:
        return None
    answers = []
    for a in cells:
        answer = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(answer, str):
            raise ValueError(
                f"{path}: row {r}, column 'answers' holds {a!r:.60}, expected a list of "
                "{answer, ...} or of strings; fix the file"
            )
        answers.append(answer)
    return answers


def read_vqav2_parquet(
    files: str | os.PathLike | Sequence[str | os.PathLike], image_dir: str | os.PathLike
) -> list[Sample]:
    """VQAv2 from the parquet files of the Hugging Face dataset ``lmms-lab/VQAv2``
    (``data/{validation,testdev,test}-*.parquet``; ``HuggingFaceM4/VQAv2``'s parquet export
    has the same columns): ``question_type, multiple_choice_answer, answers`` (list of
    ``{answer, answer_confidence, answer_id}``; a list of strings is taken too), ``image_id,
    answer_type, question_id, question, image``.

    The samples are those of :func:`read_vqav2`: a row with answers is annotated and needs its
    ``multiple_choice_answer`` (the target); answers = the human answers, ``metadata["target"]`` =
    ``multiple_choice_answer``, question_type = answer_type; a row with neither (the test files) has
    ``[]`` and no target.  image_id = the COCO image id.  Images are written to
    ``image_dir/<sha256>.<ext>``.
    """
    paths = io.expand_files(files, "VQAv2 parquet file", ".parquet")
    image_dir = io.check_image_dir(image_dir)
    samples = []
    for path in paths:
        for r, row in enumerate(
            io.parquet_rows(
                path,
                "VQAv2 parquet file",
                ("question_id", "question", "image"),
                ("answers", "multiple_choice_answer", "answer_type", "question_type", "image_id"),
            )
        ):
            qid = io.cell(row, "question_id", io.ID, path, r, "a question id", required=True)
            question = io.cell(row, "question", str, path, r, "the question's text", required=True)
            answers = _parquet_answers(row, path, r)
            annotated = bool(answers) or row.get("multiple_choice_answer") is not None
            target = io.cell(
                row,
                "multiple_choice_answer",
                str,
                path,
                r,
                "the answer's text (the training target of a question with answers)",
                required=annotated,
            )
            annotation = None
            if annotated:
                annotation = (
                    answers or [],
                    target,
                    io.cell(row, "answer_type", str, path, r, "text or null") or "",
                    io.cell(row, "question_type", str, path, r, "text or null") or "",
                )
            image = io.parquet_image(row["image"], image_dir, path, qid)
            image_id = io.cell(row, "image_id", io.ID, path, r, "an image id or null")
            samples.append(
                _vqav2_sample(
                    qid,
                    question,
                    image,
                    str(image_id)
                    if image_id is not None
                    else (os.path.splitext(os.path.basename(image))[0] if image else None),
                    annotation,
                )
            )
    _warn_unscorable(samples, paths[0])
    return io.non_empty(samples, paths[0])


def score_vqav2(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """The official VQA accuracy (:func:`~memvp.metrics.vqa_accuracy`) against the human answers, per answer type."""
    return vqa_accuracy(predictions, {s.id: s.answers for s in samples}, {s.id: s.question_type for s in samples})


VQAV2_EVAL_AI_FILE = "vqav2_eval_ai.json"


def write_vqav2_eval_ai(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The results file of the VQAv2 server on EvalAI as LLaVA's ``scripts/convert_vqav2_for_submission.py``
    writes it: ``[{"question_id": int, "answer": str}]`` for every question of the split, each answer through
    the EvalAI answer processor (:func:`~memvp.metrics.evalai_answer`), "" for a question without one."""
    return {
        VQAV2_EVAL_AI_FILE: json.dumps(
            [{"question_id": number_or_text(s.id), "answer": evalai_answer(predictions.get(s.id, ""))} for s in samples]
        )
    }


# question_id as in the questions file (a number), as LLaVA's llava_vqav2_mscoco_test-dev2015.jsonl has it
_WRITERS = {
    "llava_jsonl": llava_answers(question_id=lambda s: number_or_text(s.id)),
    "vqav2_eval_ai": write_vqav2_eval_ai,
}

register_format(
    DatasetFormat(
        "vqav2",
        read_vqav2,
        {"questions_file", "annotations_file", "image_dir"},
        "image_dir/image_pattern, image_pattern defaulting to 'COCO_{data_subtype}_{image_id:012d}.jpg' "
        "(set image_pattern in the data spec, e.g. '{image_id}.png', if your files are named otherwise)",
        score_vqav2,
        writers=_WRITERS,
    )
)
register_format(
    DatasetFormat(
        "vqav2_parquet", read_vqav2_parquet, {"files", "image_dir"}, io.PARQUET_IMAGES, score_vqav2, writers=_WRITERS
    )
)
