"""Files the field's evaluation tools read, written from a split's predictions (``memvp predict
--output-format NAME``).

Every dataset format writes LLaVA's answers file (``llava_jsonl``: the JSON lines its
``llava/eval/model_vqa*.py`` write and its eval scripts read); a family registers its own writers next to
its scorer (``DatasetFormat.writers``): VQAv2's EvalAI JSON, GQA's predictions for its ``eval.py``, COCO's
caption results, MMBench's submission table, and POPE's and MME's files as their official scripts read
them.  A writer only builds the files' contents, ``{relative path: text or bytes}``;
:func:`memvp.datasets.write_outputs` writes them atomically.  Every sample of the split gets a line, ""
where it has no prediction (a sample skipped for a missing image), as LLaVA's converters fill a missing
answer: the test servers and the POPE script expect every question.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .schema import Sample

OutputFiles = dict[str, str | bytes]
Writer = Callable[[Sequence[Sample], Mapping[str, str], str], OutputFiles]
"""``(samples, predictions, model_id) -> {relative path: content}``: ``samples`` is the whole split,
``predictions`` maps a sample id to the model's answer (raw generated text)."""

LLAVA_ANSWERS_FILE = "llava_answers.jsonl"

# shortuuid's alphabet and length: LLaVA's answer_id is shortuuid.uuid().
_SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_SHORTUUID_LENGTH = 22


def answer_id(*parts: Any) -> str:
    """An ``answer_id`` in shortuuid's form (22 characters of its alphabet, a UUID in base 57), derived from
    ``parts`` instead of drawn at random as LLaVA's is, so a rerun writes the same file."""
    number = uuid.uuid5(uuid.NAMESPACE_URL, "\x1f".join(str(p) for p in parts)).int
    digits = []
    while number:
        number, digit = divmod(number, len(_SHORTUUID_ALPHABET))
        digits.append(_SHORTUUID_ALPHABET[digit])
    digits += _SHORTUUID_ALPHABET[0] * (_SHORTUUID_LENGTH - len(digits))
    return "".join(reversed(digits))


def model_id_of(adapter: str | os.PathLike) -> str:
    """The ``model_id`` of LLaVA's answers for an adapter directory: its name, as LLaVA's
    ``get_model_name_from_path`` (``run/checkpoint-200`` -> ``run_checkpoint-200``); the run's folder for
    memvp's ``run/adapter``."""
    parts = [p for p in os.path.abspath(os.fspath(adapter)).split(os.sep) if p]
    if len(parts) > 1 and (parts[-1].startswith("checkpoint-") or parts[-1] == "adapter"):
        return parts[-2] if parts[-1] == "adapter" else f"{parts[-2]}_{parts[-1]}"
    return parts[-1] if parts else "memvp"


def number_or_text(sample_id: str) -> int | str:
    """A sample id as the data file had it: a number for ids that are digits (VQAv2's, COCO's, MMBench's)."""
    return int(sample_id) if sample_id.isdigit() else sample_id


def one_line(text: str) -> str:
    """``text`` without tabs or line breaks, for a cell of a tab-separated line."""
    return " ".join(text.replace("\t", " ").splitlines())


def json_lines(records: Iterable[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def llava_answer(question_id: Any, prompt: str, text: str, model_id: str) -> dict:
    """One line of LLaVA's answers file, as ``llava/eval/model_vqa_loader.py`` writes it."""
    return {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": answer_id(model_id, question_id, text),
        "model_id": model_id,
        "metadata": {},
    }


def llava_answers(
    question_id: Callable[[Sample], Any] = lambda s: s.id,
    prompt: Callable[[Sample], str] = lambda s: s.prompt,
    path: str = LLAVA_ANSWERS_FILE,
) -> Writer:
    """The writer of LLaVA's answers file: one ``{question_id, prompt, text, answer_id, model_id, metadata}``
    line per sample (``llava/eval/model_vqa.py``, ``model_vqa_loader.py``, ``model_vqa_science.py``); ``text``
    is the model's whole answer (:meth:`Sample.response`: ScienceQA's "The answer is" and what followed), so
    LLaVA's scripts read what memvp's 'llava' rule reads. A family passes how its questions are named in
    LLaVA's question files (``question_id``) and, where LLaVA's scripts read it, the prompt."""

    def write(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
        return {
            path: json_lines(
                llava_answer(question_id(s), prompt(s), s.response(predictions.get(s.id, "")), model_id)
                for s in samples
            )
        }

    return write


__all__ = [
    "OutputFiles",
    "Writer",
    "LLAVA_ANSWERS_FILE",
    "answer_id",
    "model_id_of",
    "number_or_text",
    "one_line",
    "json_lines",
    "llava_answer",
    "llava_answers",
]
