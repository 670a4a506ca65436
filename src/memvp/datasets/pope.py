"""POPE (object hallucination, the MemVP paper's Table 9): the released question files, one split per
file, scored per split as LLaVA's ``eval_pope.py``, and written as that script reads them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..metrics import pope_metrics
from . import io
from .outputs import OutputFiles, json_lines, llava_answer
from .registry import DatasetFormat, register_format
from .schema import LLAVA_SHORT_ANSWER_PROMPT, Sample, with_answer_prompt


def _pope_split(path: str) -> str:
    stem = os.path.basename(path)
    for ext in (".jsonl", ".json"):
        stem = stem.removesuffix(ext)
    return stem.rsplit("_pope_", 1)[1] if "_pope_" in stem else stem


def read_pope(
    question_files: str | os.PathLike | Sequence[str | os.PathLike],
    image_dir: str | os.PathLike,
    answer_prompt: str | None = LLAVA_SHORT_ANSWER_PROMPT,
) -> list[Sample]:
    """POPE question files as released (``coco_pope_random.json``, ``coco_pope_popular.json``,
    ``coco_pope_adversarial.json``: JSON lines ``{"question_id", "image", "text", "label"}``,
    label ``"yes"`` / ``"no"``), one file or several.

    Each file is a split named after the file (``coco_pope_random.json`` -> ``"random"``,
    the part after ``_pope_``; the whole stem otherwise); question ids restart in every
    file, so id = ``f"{split}_{question_id}"``.  prompt = text + ``"\\n"`` + ``answer_prompt``
    (LLaVA-1.5's ``llava_pope_test.jsonl``; ``None`` / ``""`` for the bare question);
    answers = ``[label]``; image ``image_dir/image`` (COCO val2014), image_id = the file
    name; question_type = split.  metadata: ``split``, ``question_id``, ``question``.
    """
    paths = io.expand_files(question_files, "POPE question file", ".json")
    image_dir = io.absolute(image_dir)
    samples, seen = [], {}
    for path in paths:
        split = _pope_split(path)
        if split in seen:
            raise ValueError(f"POPE question files {seen[split]} and {path} are both split {split!r}")
        seen[split] = path
        for n, q in io.json_lines(path, "POPE question file"):
            rid = q.get("question_id", f"line {n}") if isinstance(q, dict) else f"line {n}"
            qid = io.field(q, "question_id", path, rid)
            label = str(io.field(q, "label", path, rid)).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"{path}: question {qid!r} has label {q['label']!r}; expected 'yes' or 'no'")
            text = io.field(q, "text", path, qid)
            image_name = io.field(q, "image", path, qid)
            samples.append(
                Sample(
                    id=f"{split}_{qid}",
                    prompt=with_answer_prompt(text, answer_prompt),
                    answers=[label],
                    image=io.inside(image_dir, image_name, path, f"question {qid!r}"),
                    image_id=image_name,
                    question_type=split,
                    metadata={"split": split, "question_id": qid, "question": text},
                )
            )
    return io.non_empty(samples, paths[0] if len(paths) == 1 else os.path.dirname(paths[0]))


def score_pope(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """:func:`~memvp.metrics.pope_metrics`: accuracy, precision, recall, F1 and yes-ratio per split and their means."""
    return pope_metrics(
        [{"prediction": predictions[s.id], "label": s.answers[0], "split": s.metadata["split"]} for s in samples]
    )


POPE_FOLDER = "pope"


def write_pope(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The three inputs of LLaVA's ``llava/eval/eval_pope.py`` (``--annotation-dir pope/coco --question-file
    pope/llava_pope_test.jsonl --result-file pope/answers.jsonl``), in ``pope/``:

    * ``answers.jsonl``: LLaVA's answers file (``question_id`` = the sample id, ``<split>_<question_id>``,
      unique over the splits);
    * ``llava_pope_test.jsonl``: the questions as in LLaVA's file of that name, ``{question_id, image, text,
      category}``, category = the split (the script takes each answer's split from it);
    * ``coco/coco_pope_<split>.json``: each split's questions as POPE releases them, ``{question_id, image,
      text, label}``, in the order of the answers (the script pairs a split's answers with these labels
      line by line, and reads every file of the folder).
    """
    files: OutputFiles = {
        f"{POPE_FOLDER}/answers.jsonl": json_lines(
            llava_answer(s.id, s.prompt, predictions.get(s.id, ""), model_id) for s in samples
        ),
        f"{POPE_FOLDER}/llava_pope_test.jsonl": json_lines(
            {"question_id": s.id, "image": s.image_id, "text": s.prompt, "category": s.metadata["split"]}
            for s in samples
        ),
    }
    for split in dict.fromkeys(s.metadata["split"] for s in samples):
        files[f"{POPE_FOLDER}/coco/coco_pope_{split}.json"] = json_lines(
            {
                "question_id": s.metadata["question_id"],
                "image": s.image_id,
                "text": s.metadata["question"],
                "label": s.answers[0],
            }
            for s in samples
            if s.metadata["split"] == split
        )
    return files


register_format(
    DatasetFormat(
        "pope",
        read_pope,
        {"question_files", "image_dir"},
        "image_dir/<image> of each question (COCO val2014)",
        score_pope,
        writers={"pope": write_pope},
    )
)
