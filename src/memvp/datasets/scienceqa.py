"""ScienceQA: the released JSON (``problems.json`` + ``pid_splits.json`` + images) and the Hugging Face
parquet files, read into the same samples (the ``QCM-A`` prompt and targets of the official MemVP code),
scored by ScienceQA's accuracy columns; ``choice_rule: strict`` reads letters as LLaVA's
``eval_science_qa.py``, which reads the LLaVA answers file written for it."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from typing import Any

from ..metrics import FULL_RESPONSE_RULES, scienceqa_accuracy
from . import io
from .outputs import llava_answers
from .registry import DatasetFormat, register_format
from .schema import SCIENCEQA_ANSWER_PREFIX, Sample, scienceqa_prompt


def _scienceqa_sample(
    sid: str,
    question: str,
    hint: str,
    choices: list[str],
    answer: int,
    image: str | None,
    subject: str,
    grade: str,
    caption: str = "",
    **extra: Any,
) -> Sample:
    letter = string.ascii_uppercase[answer]
    return Sample(
        id=sid,
        prompt=scienceqa_prompt(question, hint, choices, caption),
        answers=[letter],
        image=image,
        image_id=sid if image else None,
        question_type=subject,
        answer_separator="",
        answer_prefix=SCIENCEQA_ANSWER_PREFIX,
        metadata={
            "target": f"{SCIENCEQA_ANSWER_PREFIX} {letter}.",
            "subject": subject,
            "grade": grade,
            "has_text_context": bool(hint.strip()),
            "has_image_context": image is not None,
            "num_choices": len(choices),
            "choices": choices,
            **extra,
        },
    )


def _scienceqa_captions(path: str | os.PathLike | None) -> dict[str, str]:
    if path is None:
        return {}
    data = io.expect(io.load_json(path, "ScienceQA captions file"), dict, path, 'an object with "captions"')
    captions = io.expect(data.get("captions", data), dict, path, "captions as an object of pid -> text")
    return {str(k): str(v) for k, v in captions.items()}


def read_scienceqa(root: str | os.PathLike, split: str, captions_file: str | os.PathLike | None = None) -> list[Sample]:
    """ScienceQA as released: ``root/problems.json``, ``root/pid_splits.json``,
    ``root/images/<split>/<pid>/<image>``.

    prompt = :func:`~memvp.datasets.scienceqa_prompt`; the training target is ``"The answer is X."`` joined
    to the prompt without a space, generation prompts end with ``"The answer is"`` (the official code's
    strings); answers = ``[letter]``; question_type = subject; questions without an image are kept with
    ``image=None``. ``captions_file`` (LaVIN / MemVP's ``captions.json``, ``{"captions": {pid: text}}``)
    adds each image's caption to the context, as the official ``eval.py`` does (its training does not).
    metadata: ``subject``, ``grade``, ``has_text_context`` (hint non-empty), ``has_image_context``,
    ``num_choices``, ``choices``.
    """
    root = io.absolute(root)
    problems_file = os.path.join(root, "problems.json")
    splits_file = os.path.join(root, "pid_splits.json")
    problems = io.expect(
        io.load_json(problems_file, "ScienceQA problems file"), dict, problems_file, "an object of pid -> problem"
    )
    splits = io.expect(
        io.load_json(splits_file, "ScienceQA split file"), dict, splits_file, "an object of split -> list of pids"
    )
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {splits_file}; available: {sorted(splits)}")
    captions = _scienceqa_captions(captions_file)
    samples = []
    for pid in splits[split]:
        pid = str(pid)
        if pid not in problems:
            raise ValueError(f"{problems_file}: pid {pid!r} of split {split!r} is not in the file")
        p = problems[pid]
        choices = [str(c) for c in io.field(p, "choices", problems_file, pid)]
        answer = int(io.field(p, "answer", problems_file, pid))
        if not 0 <= answer < len(choices):
            raise ValueError(f"{problems_file}: problem {pid!r} has answer {answer} but {len(choices)} choices")
        image_name = p.get("image")
        image = os.path.join(root, "images", split, pid, image_name) if image_name else None
        samples.append(
            _scienceqa_sample(
                pid,
                io.field(p, "question", problems_file, pid),
                p.get("hint") or "",
                choices,
                answer,
                image,
                p.get("subject", ""),
                p.get("grade", ""),
                caption=captions.get(pid, ""),
            )
        )
    return io.non_empty(samples, splits_file, split)


def read_scienceqa_parquet(
    files: str | os.PathLike | Sequence[str | os.PathLike], image_dir: str | os.PathLike
) -> list[Sample]:
    """ScienceQA from the parquet files of the Hugging Face dataset ``derek-thomas/ScienceQA``
    (``data/{train,validation,test}-*.parquet``; also ``lmms-lab/ScienceQA``'s
    ``ScienceQA-FULL`` / ``ScienceQA-IMG``): columns ``image`` (Image feature, null without
    an image), ``question, choices, answer`` (option index), ``hint, task, grade, subject,
    topic, category, skill, lecture, solution``.

    ``files``: a file, a glob pattern (``data/test-*.parquet``), a folder or a list.  The
    samples are those of :func:`read_scienceqa` (same prompt, answers, question_type and
    metadata) plus ``metadata["split"]``; these files have no problem id, so id =
    ``f"{split}_{row}"`` (split from the file name, row counted over the split's files in
    name order).  Images are written to ``image_dir/<sha256>.<ext>``.
    """
    paths = io.expand_files(files, "ScienceQA parquet file", ".parquet")
    image_dir = io.check_image_dir(image_dir)
    samples, rows_seen = [], {}
    for path in paths:
        split = io.split_of(path)
        rows = io.parquet_rows(
            path, "ScienceQA parquet file", ("image", "question", "choices", "answer"), ("hint", "subject", "grade")
        )
        for r, row in enumerate(rows):
            n = rows_seen[split] = rows_seen.get(split, -1) + 1
            sid = f"{split}_{n}"
            question = io.cell(row, "question", str, path, r, "the question's text", required=True)
            choices = io.strings(row, "choices", path, r) or []
            if row["answer"] is None:
                raise ValueError(f"{path}: row {n} has no answer")
            answer = io.cell(row, "answer", int, path, r, "the index of the right choice")
            if not 0 <= answer < len(choices):
                raise ValueError(f"{path}: row {n} has answer {answer} but {len(choices)} choices")
            hint, subject, grade = (io.cell(row, c, str, path, r, "text or null") for c in ("hint", "subject", "grade"))
            samples.append(
                _scienceqa_sample(
                    sid,
                    question,
                    hint or "",
                    choices,
                    answer,
                    io.parquet_image(row["image"], image_dir, path, n),
                    subject or "",
                    grade or "",
                    split=split,
                )
            )
    return io.non_empty(samples, paths[0])


def score_scienceqa(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """:func:`~memvp.metrics.scienceqa_accuracy`: overall and the NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12
    columns; ``rule`` reads the option letter, the rules of other tools ('llava', 'vlmevalkit') in the
    whole answer ("The answer is" and what the model generated after it, as LLaVA's answers file holds)."""
    whole = rule in FULL_RESPONSE_RULES
    return scienceqa_accuracy(
        [
            {
                "prediction": s.response(predictions[s.id]) if whole else predictions[s.id],
                "answer": s.answers[0],
                "num_choices": s.metadata["num_choices"],
                "choices": s.metadata["choices"],
                "subject": s.metadata["subject"],
                "grade": s.metadata["grade"],
                "has_text_context": s.metadata["has_text_context"],
                "has_image_context": s.metadata["has_image_context"],
            }
            for s in samples
        ],
        rule,
    )


def _llava_prompt(sample: Sample) -> str:
    """The prompt as LLaVA's ``model_vqa_science.py`` writes it: ``<image>`` on a line of its own before the
    question when there is an image (``eval_science_qa.py`` counts those questions as multimodal)."""
    return f"<image>\n{sample.prompt}" if sample.metadata["has_image_context"] else sample.prompt


# LLaVA's answers file, read by LLaVA's llava/eval/eval_science_qa.py (question_id = the problem id).
_WRITERS = {"llava_jsonl": llava_answers(prompt=_llava_prompt)}

register_format(
    DatasetFormat(
        "scienceqa",
        read_scienceqa,
        {"root", "captions_file"},
        "root/images/<split>/<pid>/<image>",
        score_scienceqa,
        writers=_WRITERS,
        strict_rule="llava",
    )
)
register_format(
    DatasetFormat(
        "scienceqa_parquet",
        read_scienceqa_parquet,
        {"files", "image_dir"},
        io.PARQUET_IMAGES,
        score_scienceqa,
        writers=_WRITERS,
        strict_rule="llava",
    )
)
