"""MMBench (the MemVP paper's Table 9): the released TSV with base64 images, each question asked once
per rotation of its options (circular evaluation), scored as right when every rotation is
(``choice_rule: strict``: answers matched as VLMEvalKit does, option letters and option text), and written
as the submission table of the MMBench server (LLaVA's ``convert_mmbench_for_submission.py``)."""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io as bytes_io
import os
import string
from collections.abc import Mapping, Sequence

from ..metrics import FULL_RESPONSE_RULES, mmbench_accuracy
from . import io
from .outputs import OutputFiles, llava_answers
from .registry import DatasetFormat, register_format
from .schema import Sample, require_answers, with_answer_prompt

MMBENCH_ANSWER_PROMPT = "Answer with the option's letter from the given choices directly."

# pandas' default NA strings (MMBench's TSVs are read with pandas.read_table by every official
# tool, so these cells are "missing" there) plus LLaVA's is_none() ('nan' / 'none', any case).
_NA_STRINGS = {
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
}
_CIRCULAR_STRIDE = 1_000_000


def _is_na(value: str | None) -> bool:
    return value is None or value in _NA_STRINGS or value.lower() in ("nan", "none")


class _Images:
    """The images of an MMBench TSV: each distinct base64 cell decoded once and written to ``image_dir``
    (copies of a question repeat the cell); a row whose cell names another row's index shares its image."""

    def __init__(self, path: str, image_dir: str):
        self.path, self.image_dir = path, image_dir
        self.of: dict[int, str] = {}  # index -> image path
        self.decoded: dict[bytes, str] = {}  # sha1 of a base64 cell -> image path
        self.refs: dict[int, int] = {}  # index -> the index whose image it shows

    def add(self, index: int, value: str) -> None:
        if len(value) <= 64 and not _is_na(value) and value.strip().isdigit():
            self.refs[index] = int(value)  # resolved later: the row may come after this one
            return
        if _is_na(value):
            raise ValueError(f"{self.path}: question {index} has no image")
        key = hashlib.sha1(value.encode()).digest()
        if key not in self.decoded:
            try:
                data = base64.b64decode(value)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"{self.path}: question {index}: image is not base64 ({e})") from None
            self.decoded[key] = io.store_image(data, self.image_dir)
        self.of[index] = self.decoded[key]

    def image(self, index: int) -> str:
        if index in self.refs:
            if self.refs[index] not in self.of:
                raise ValueError(
                    f"{self.path}: question {index} refers to the image of question {self.refs[index]}, "
                    "which is not in the file"
                )
            self.of[index] = self.of[self.refs[index]]
        return self.of[index]


def _read_rows(path: str, images: _Images) -> list[dict]:
    """The TSV's rows as {column: text} with an integer ``index``; their images go to ``images``."""
    old_limit = csv.field_size_limit(2**31 - 1)  # base64 images are far over csv's 128 KiB default
    rows: list[dict] = []
    line_of: dict[int, int] = {}  # index -> its line: a repeated index would merge two questions' predictions
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty")
            missing = [c for c in ("index", "question", "A", "image") if c not in header]
            if missing:
                raise ValueError(f"{path}: MMBench TSV has no column(s) {missing}; its columns: {header}")
            for n, cells in enumerate(reader, 2):
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise ValueError(f"{path}: line {n} has {len(cells)} fields, the header {len(header)}")
                row = dict(zip(header, cells))
                try:
                    row["index"] = int(row["index"])
                except ValueError:
                    raise ValueError(f"{path}: line {n} has index {row['index']!r}, not an integer") from None
                if row["index"] in line_of:
                    raise ValueError(
                        f"{path}: line {n} repeats index {row['index']} of line {line_of[row['index']]}; "
                        "every question needs its own index (its predictions and score are keyed by it)"
                    )
                line_of[row["index"]] = n
                images.add(row["index"], row.pop("image"))
                rows.append(row)
    except UnicodeDecodeError as e:
        raise ValueError(f"MMBench TSV file {path} is not UTF-8 text (byte {e.start})") from None
    finally:
        csv.field_size_limit(old_limit)
    return rows


def _options(row: dict, path: str) -> list[str]:
    """The A, B, C, ... cells up to the first empty one (LLaVA's ``get_options``)."""
    options = []
    for letter in string.ascii_uppercase:
        if letter not in row or _is_na(row[letter]):
            break
        options.append(row[letter])
    if not options:
        raise ValueError(f"{path}: question {row['index']} has no options (column A is empty)")
    return options


def _answer_position(row: dict, options: list[str], path: str) -> int | None:
    """Where the right option is among ``options``; None without an answer (the test files)."""
    answer = row.get("answer")
    if _is_na(answer):
        return None
    answer = answer.strip()
    if answer not in string.ascii_uppercase[: len(options)]:
        raise ValueError(
            f"{path}: question {row['index']} has answer {answer!r} but options "
            f"{list(string.ascii_uppercase[: len(options)])}"
        )
    return string.ascii_uppercase.index(answer)


def _rotation(
    row: dict,
    options: list[str],
    answer_at: int | None,
    r: int,
    image: str,
    has_copies: bool,
    answer_prompt: str | None,
) -> Sample:
    """The question with its options rotated by ``r`` (``options[r:] + options[:r]`` under A, B, ...)."""
    index, hint = row["index"], row.get("hint")
    question = row["question"] if _is_na(hint) else f"{hint}\n{row['question']}"
    shown = options[r:] + options[:r]
    prompt = question + "".join(f"\n{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(shown))
    return Sample(
        id=str(index + r * _CIRCULAR_STRIDE),
        prompt=with_answer_prompt(prompt, answer_prompt),
        answers=[] if answer_at is None else [string.ascii_uppercase[(answer_at - r) % len(options)]],
        image=image,
        image_id=os.path.splitext(os.path.basename(image))[0],
        question_type=row.get("category", ""),
        metadata={
            "circular_group": str(index % _CIRCULAR_STRIDE),
            "rotation": index // _CIRCULAR_STRIDE if has_copies else r,
            "index": index,
            "num_choices": len(options),
            "choices": shown,
            "category": row.get("category", ""),
            "l2_category": row.get("l2-category", ""),
            "row": row,
        },
    )


def read_mmbench(
    tsv_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    circular: bool = True,
    answer_prompt: str | None = MMBENCH_ANSWER_PROMPT,
) -> list[Sample]:
    """MMBench TSV as released (e.g. ``mmbench_dev_20230712.tsv``: ``index, question, hint, A, B,
    C, D, answer, category, l2-category, image`` with the image as base64; ``answer`` absent
    or empty in the test files).

    Options are the A, B, C, ... columns up to the first empty one (LLaVA's ``get_options``;
    empty = pandas' NA strings, as ``pandas.read_table`` reads the file).  Circular
    evaluation: a question with k options is asked k times, rotation r showing options
    ``[r:] + [:r]`` under the letters A.. (LLaVA's ``--all-rounds``; the answer letter moves
    with its option); rotation r has id ``str(index + r * 1_000_000)``, MMBench's own
    numbering.  A file that already holds such copies (an ``index`` >= 1e6) is taken as it
    is, row by row.  All rotations share ``metadata["circular_group"]`` (``str(index %
    1e6)``); ``circular=False`` keeps rotation 0 only (single-pass evaluation).

    prompt = ``hint\\n`` (when given) + question + ``\\nA. option`` per option + ``\\n`` +
    ``answer_prompt`` (LLaVA-1.5's ``model_vqa_mmbench.py --single-pred-prompt``); answers =
    ``[letter]`` (``[]`` without an answer); question_type = category.  Each distinct image is
    decoded from base64 once and written to ``image_dir/<sha256>.<ext>`` (atomically, kept
    when present); image_id = that sha256.  A short ``image`` cell naming another row's
    ``index`` (the way VLMEvalKit's TSVs share an image) uses that row's image.  metadata:
    ``circular_group``, ``rotation``, ``index``, ``num_choices``, ``choices`` (as shown),
    ``category``, ``l2_category``, ``row`` (the TSV row's cells but the image, for the submission table;
    shared by a question's rotations).
    """
    path = io.absolute(tsv_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMBench TSV file not found: {path}")
    images = _Images(path, io.check_image_dir(image_dir))
    rows = _read_rows(path, images)
    has_copies = any(r["index"] >= _CIRCULAR_STRIDE for r in rows)
    samples = []
    for row in rows:
        image = images.image(row["index"])
        if has_copies and not circular and row["index"] >= _CIRCULAR_STRIDE:
            continue
        options = _options(row, path)
        answer_at = _answer_position(row, options, path)
        rotations = [0] if has_copies or not circular else range(len(options))
        samples += [_rotation(row, options, answer_at, r, image, has_copies, answer_prompt) for r in rotations]
    return io.non_empty(samples, path)


def score_mmbench(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """:func:`~memvp.metrics.mmbench_accuracy`: a question is right when all its scored rotations are; ``rule``
    reads the option letter ('vlmevalkit' also the option text, of the options as this rotation shows them)."""
    require_answers(samples, "MMBench")
    whole = rule in FULL_RESPONSE_RULES
    return mmbench_accuracy(
        [
            {
                "prediction": s.response(predictions[s.id]) if whole else predictions[s.id],
                "answer": s.answers[0],
                "num_choices": s.metadata["num_choices"],
                "choices": s.metadata["choices"],
                "group": s.metadata["circular_group"],
                "rotation": s.metadata["rotation"],
                "category": s.metadata["category"],
                "l2_category": s.metadata["l2_category"],
            }
            for s in samples
        ],
        rule,
    )


# LLaVA's scripts/convert_mmbench_for_submission.py: the TSV's columns without these, "prediction" inserted
# as the seventh column (after index, question, A-D), one row per question of the TSV.
_SUBMISSION_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")
_SUBMISSION_PREDICTION_AT = 6
MMBENCH_SUBMISSION = "mmbench_submission"


def submission_table(samples: Sequence[Sample], predictions: Mapping[str, str]) -> tuple[list[str], list[list]]:
    """(columns, rows) of the MMBench submission table: a row per sample, the cells of its TSV row but
    ``index`` (the sample's: MMBench's own numbering of the rotations, index + r x 1e6, as the released
    files with circular copies have them), the options (as this rotation shows them) and ``answer`` (this
    rotation's letter, when the file has answers); "prediction" the model's answer. An empty cell (pandas'
    NA) is None."""
    header = [c for c in samples[0].metadata["row"] if c not in _SUBMISSION_DROPPED] if samples else ["index"]
    columns = [*header]
    columns.insert(min(_SUBMISSION_PREDICTION_AT, len(columns)), "prediction")
    rows = []
    for s in samples:
        cells = {k: None if _is_na(v) else v for k, v in s.metadata["row"].items() if k != "index"}
        cells["index"] = int(s.id)
        for letter, option in zip(string.ascii_uppercase, s.metadata["choices"]):
            cells[letter] = option
        if s.answers:
            cells["answer"] = s.answers[0]
        cells["prediction"] = predictions.get(s.id, "")
        rows.append([cells.get(c) for c in columns])
    return columns, rows


def write_mmbench_submission(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The submission table of the MMBench server (and of VLMEvalKit's evaluation) as LLaVA's
    ``convert_mmbench_for_submission.py`` writes it (:func:`submission_table`): ``mmbench_submission.xlsx``
    (openpyxl, as there), or, without openpyxl, the same table as ``mmbench_submission.tsv``."""
    columns, rows = submission_table(samples, predictions)
    try:
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError:
        text = bytes_io.StringIO()
        writer = csv.writer(text, delimiter="\t", lineterminator="\n")
        writer.writerows([columns, *[["" if c is None else c for c in row] for row in rows]])
        return {f"{MMBENCH_SUBMISSION}.tsv": text.getvalue()}
    book = Workbook()
    sheet = book.active
    for row in [columns, *rows]:  # control characters (a stray one in an answer) can not be stored in xlsx
        sheet.append([ILLEGAL_CHARACTERS_RE.sub("", c) if isinstance(c, str) else c for c in row])
    data = bytes_io.BytesIO()
    book.save(data)
    return {f"{MMBENCH_SUBMISSION}.xlsx": data.getvalue()}


# question_id = the row's index (a number), as LLaVA's model_vqa_mmbench.py writes it and its converter
# matches it against the TSV's index column.
_WRITERS = {
    "llava_jsonl": llava_answers(question_id=lambda s: int(s.id)),
    "mmbench_submission": write_mmbench_submission,
}

register_format(
    DatasetFormat(
        "mmbench",
        read_mmbench,
        {"tsv_file", "image_dir"},
        "image_dir/<sha256>.<ext>, decoded from the TSV's base64 by the reader",
        score_mmbench,
        writers=_WRITERS,
        strict_rule="vlmevalkit",
    )
)
