"""Video question answering (the MemVP paper's Table 8): TVQA and How2QA as released, multiple-choice
questions about clips in ScienceQA's ``QCM-A`` prompt (TVQA's subtitles as the context), the samples
carrying ``video`` + ``span``; scored by multiple-choice accuracy per question type."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..metrics import FULL_RESPONSE_RULES, multiple_choice_accuracy
from . import io
from .registry import DatasetFormat, register_format
from .schema import SCIENCEQA_ANSWER_PREFIX, VIDEO_NAME, Sample, require_answers, scienceqa_prompt

_VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")

TVQA_FRAME_FOLDERS = {
    "The Big Bang Theory": "bbt",
    "Friends": "friends",
    "How I Met You Mother": "met",
    "Grey's Anatomy": "grey",
    "House M.D.": "house",
    "Castle": "castle",
}
"""TVQA ``show_name`` -> the ``{show}`` of its frame folder ``frames_hq/{show}_frames/{vid_name}``."""


def _video_finder(video_dir: str | os.PathLike | None, pattern: str, keys: str) -> Callable[..., str | None]:
    """``fields -> video_dir/pattern.format(**fields)``: that path when it exists (a file or a folder of
    frames), else the first of it + .mp4 / .mkv / .webm / .avi / .mov that is a file, else the path as
    given (the loader's error names it); None without ``video_dir``.  One look-up per distinct name."""
    if video_dir is None:
        return lambda **fields: None
    if not isinstance(pattern, str):
        raise ValueError(f"video_pattern must be a string (a path pattern), got {pattern!r}")
    root, cache = io.absolute(video_dir), {}

    def find(**fields: Any) -> str:
        try:
            name = pattern.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"video_pattern {pattern!r}: {e!r}; it may use {keys}") from None
        if name not in cache:
            path = os.path.join(root, name)
            if not os.path.exists(path):
                path = next((path + ext for ext in _VIDEO_EXTENSIONS if os.path.isfile(path + ext)), path)
            cache[name] = path
        return cache[name]

    return find


def _span(start: Any, end: Any) -> tuple[float, float] | None:
    """(start, end) in seconds, or None when either is missing / not a finite number or end < start."""
    try:
        a, b = float(start), float(end)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < a:
        return None
    return (a, b)


def _tvqa_span(ts: Any) -> tuple[float, float] | None:
    """TVQA's ``ts`` ("60.69-74.88"; also "NaN-NaN", "-74.88", absent) -> span or None."""
    if isinstance(ts, (list, tuple)) and len(ts) == 2:
        return _span(*ts)
    if not isinstance(ts, str) or ts.count("-") != 1:
        return None
    return _span(*(p.strip() for p in ts.split("-")))


def _check_fps(fps: Any) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    return float(fps)


def _video_question(
    sid: str,
    text: str,
    context: str,
    choices: list[str],
    answers: list[str],
    video: str | None,
    vid_name: str,
    span: tuple[float, float] | None,
    fps: float | None,
    question_type: str = "",
    **extra: Any,
) -> Sample:
    """A multiple-choice question (``text``) about a video, in the ScienceQA ``QCM-A`` prompt ending with
    ``"The answer is"``; image_id = the video's name (its feature file); ``metadata["fps"]`` only when given."""
    metadata = {"num_choices": len(choices), "choices": choices, VIDEO_NAME: vid_name, **extra}
    if fps is not None:
        metadata["fps"] = fps
    return Sample(
        id=sid,
        prompt=scienceqa_prompt(text, context, choices) + SCIENCEQA_ANSWER_PREFIX,
        answers=answers,
        video=video,
        image_id=vid_name,
        span=span,
        question_type=question_type,
        metadata=metadata,
    )


def _tvqa_subtitles(path: str | os.PathLike) -> dict[str, list[tuple[float, float, str]]]:
    """``tvqa_preprocessed_subtitles.jsonl`` (released with TVR, jayleicn/TVRetrieval ``data/``): one
    ``{"vid_name", "sub": [{"start", "end", "text"}, ...]}`` per line -> vid_name -> lines."""
    path = io.absolute(path)
    out: dict[str, list[tuple[float, float, str]]] = {}
    for n, rec in io.json_lines(path, "TVQA subtitles file"):
        rid = rec.get("vid_name", f"line {n}") if isinstance(rec, dict) else f"line {n}"
        lines = io.field(rec, "sub", path, rid)
        if not isinstance(lines, list):
            raise ValueError(f"{path}: line {n} ({rid!r}): 'sub' should be a list of {{start, end, text}}")
        parsed = []
        for line in lines:
            text = io.field(line, "text", path, rid)
            try:
                parsed.append(
                    (
                        float(io.field(line, "start", path, rid)),
                        float(io.field(line, "end", path, rid)),
                        str(text).strip(),
                    )
                )
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}: line {n} ({rid!r}) has a subtitle with start / end that are not numbers: {line!r}"
                ) from None
        out[str(io.field(rec, "vid_name", path, f"line {n}"))] = parsed
    if not out:
        raise ValueError(f"{path} has no subtitles")
    return out


def _tvqa_show(show_name: str, vid_name: str) -> str:
    if show_name in TVQA_FRAME_FOLDERS:
        return TVQA_FRAME_FOLDERS[show_name]
    prefix = vid_name.split("_", 1)[0]
    return prefix if prefix in TVQA_FRAME_FOLDERS.values() else "bbt"  # bbt's vid_names have no prefix


def read_tvqa(
    questions_file: str | os.PathLike,
    video_dir: str | os.PathLike | None = None,
    video_pattern: str = "{vid_name}",
    subtitles_file: str | os.PathLike | None = None,
    clip_to_span: bool = True,
    fps: float | None = 3.0,
) -> list[Sample]:
    """TVQA question files as released (``tvqa_qa_release/tvqa_{train,val,test_public}.jsonl``): one
    ``{"qid", "q", "a0".."a4", "answer_idx", "vid_name", "ts", "show_name"}`` per line (no
    ``answer_idx`` in test_public).  The options are ``a0``, ``a1``, ... as many as the record has, so
    HERO's TVQA-shaped How2QA jsonl reads too.

    id = ``str(qid)``; prompt = :func:`~memvp.datasets.scienceqa_prompt` (question, context, options) where the
    context is the clip's subtitles (``subtitles_file`` = TVR's ``tvqa_preprocessed_subtitles.jsonl``;
    with ``clip_to_span`` only the lines overlapping the span; the texts joined by a space, speaker
    tags kept) or empty (``"N/A"``) without a subtitles file; answers = ``[letter of answer_idx]``
    (``[]`` without one); question_type = show_name.

    video = ``video_dir/video_pattern`` formatted with ``vid_name``, ``show_name`` and ``show`` (the
    frame-folder prefix, :data:`TVQA_FRAME_FOLDERS`: the official frames are
    ``frames_hq/{show}_frames/{vid_name}/00001.jpg`` at 3 fps, so ``video_dir: frames_hq,
    video_pattern: "{show}_frames/{vid_name}"``), resolved as a file or folder, else with a video
    extension added (see ``get_format('tvqa').image_paths``); None without ``video_dir`` (then only feature files,
    ``features_dir``, give the visual input).  image_id = vid_name.  span = ``ts`` in seconds when
    ``clip_to_span`` and ``ts`` is usable ("NaN-NaN", one side only -> None).  metadata:
    ``num_choices``, ``choices``, ``vid_name``, ``show_name``, ``ts`` (as written), ``fps`` (frame rate
    of the frame folders / feature rows; omitted when ``fps`` is None).
    """
    path = io.absolute(questions_file)
    fps = _check_fps(fps)
    subs = _tvqa_subtitles(subtitles_file) if subtitles_file is not None else None
    find = _video_finder(video_dir, video_pattern, "{vid_name}, {show_name} and {show}")
    samples = []
    for n, q in io.json_lines(path, "TVQA questions file"):
        if not isinstance(q, dict):
            raise ValueError(f"{path}: line {n} is a {type(q).__name__}, expected a JSON object (a question)")
        qid = io.field(q, "qid", path, f"line {n}")
        question = str(io.field(q, "q", path, qid))
        vid_name = str(io.field(q, "vid_name", path, qid))
        choices = []
        while f"a{len(choices)}" in q:
            choices.append(str(q[f"a{len(choices)}"]).strip())
        if len(choices) < 2:
            raise ValueError(
                f"{path}: question {qid!r} (line {n}) has {len(choices)} options a0, a1, ...; "
                "a multiple-choice question needs at least 2"
            )
        answers = []
        if q.get("answer_idx") is not None:
            try:
                answer = int(q["answer_idx"])
            except (TypeError, ValueError):
                answer = -1
            if not 0 <= answer < len(choices) or isinstance(q["answer_idx"], bool):
                raise ValueError(
                    f"{path}: question {qid!r} (line {n}) has answer_idx {q['answer_idx']!r} but "
                    f"{len(choices)} options (a0..a{len(choices) - 1})"
                )
            answers = [string.ascii_uppercase[answer]]
        show_name = str(q.get("show_name") or "")
        span = _tvqa_span(q.get("ts")) if clip_to_span else None
        context = ""
        if subs is not None:
            if vid_name not in subs:
                raise ValueError(
                    f"{path}: question {qid!r} (line {n}) is about clip {vid_name!r}, which has no "
                    f"subtitles in {io.absolute(subtitles_file)}; give the full subtitles file or none"
                )
            context = " ".join(
                t for s, e, t in subs[vid_name] if t and (span is None or (s <= span[1] and e >= span[0]))
            )
        samples.append(
            _video_question(
                str(qid),
                question,
                context,
                choices,
                answers,
                find(vid_name=vid_name, show_name=show_name, show=_tvqa_show(show_name, vid_name)),
                vid_name,
                span,
                fps,
                question_type=show_name,
                show_name=show_name,
                ts=q.get("ts"),
            )
        )
    return io.non_empty(samples, path)


# How2QA as released by its authors (github.com/ych133/How2R-and-How2QA, how2QA/how2QA_{train,val,
# test_public}_release.csv; VALUE's download/download_how2_annotations.sh fetches the same files): CSV
# without a header row, 7 columns per question:
#     video_id, [start:end], wrong1, wrong2, wrong3, question, correct answer
# e.g. ``NOuQuofjk44,[7.2:18.0],10,12,16,how many knife is there?,1``; video_id is the YouTube id and
# start / end are seconds in the whole YouTube video.  The column order was read from the released files
# themselves and matches FrozenBiLM's preproc/preproc_how2qa.py (``["vid_id", "timesteps", "a2", "a3",
# "a4", "question", "a1"]``, a1 the answer).  HERO's TVQA-shaped jsonl (``qid, q, a0..a3, answer_idx,
# vid_name, ts``; vid_name a HERO clip id) is read by :func:`read_tvqa`, not here.
_HOW2QA_COLUMNS = 7
_HOW2QA_SPAN = re.compile(r"^\[\s*([^:\]]*?)\s*:\s*([^:\]]*?)\s*\]$")


def _how2qa_split(path: str) -> str:
    """``how2QA_val_release.csv`` -> ``val`` (the file stem otherwise)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    match = re.match(r"^how2qa_(.+?)(?:_release)?$", stem, re.IGNORECASE)
    return match.group(1) if match else stem


def how2qa_correct_position(key: str, num_choices: int = 4) -> int:
    """Where :func:`read_how2qa` shows a question's correct answer: the first 8 bytes of
    ``sha256(key)`` (big-endian) modulo ``num_choices``; key = ``f"{video_id}|{[start:end]}|{question}"``
    as written in the file."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % num_choices


def read_how2qa(
    questions_file: str | os.PathLike,
    video_dir: str | os.PathLike | None = None,
    video_pattern: str = "{video_id}",
    clip_to_span: bool = True,
    fps: float | None = None,
) -> list[Sample]:
    """How2QA CSV as released (``how2QA_{train,val,test_public}_release.csv``, see the comment above: no
    header; ``video_id, [start:end], wrong1, wrong2, wrong3, question, correct``).  A first row whose
    second cell is not ``[start:end]`` is taken as a header and skipped.

    The file lists the correct answer apart from the wrong ones, so the reader fixes the option
    order: the correct answer goes to position :func:`how2qa_correct_position` (a hash of video id,
    segment and question: deterministic, no random state, and spread evenly over A-D), the wrong
    answers fill the other positions in file order.  id = ``f"{split}_{row}"`` (split from the file
    name, ``how2QA_val_release.csv`` -> ``val``; row counts the questions from 0; the files have no
    question id); prompt = :func:`~memvp.datasets.scienceqa_prompt` with an empty context; answers = ``[letter]``;
    question_type = ``""`` (the files have no category).

    video = ``video_dir/video_pattern`` formatted with ``video_id`` (also as ``vid_name``), resolved as
    for :func:`read_tvqa` (a file or folder, else with .mp4 / .mkv / .webm / .avi / .mov added); None
    without ``video_dir``.  image_id = video_id; span = (start, end) in seconds of the whole video when
    ``clip_to_span`` (None when not a finite start <= end).  metadata: ``num_choices``, ``choices``,
    ``vid_name`` (= video_id), ``split``, ``row``, ``question``; ``fps`` only when given (the frame
    rate of frame folders / feature rows).
    """
    path = io.absolute(questions_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"How2QA CSV file not found: {path}")
    fps = _check_fps(fps)
    find = _video_finder(video_dir, video_pattern, "{video_id} (or {vid_name})")
    split = _how2qa_split(path)
    samples = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for n, cells in enumerate(csv.reader(f), 1):
                if not cells or not "".join(cells).strip():
                    continue
                if len(cells) != _HOW2QA_COLUMNS:
                    raise ValueError(
                        f"{path}: line {n} has {len(cells)} comma-separated fields; a How2QA CSV has "
                        f"{_HOW2QA_COLUMNS}: video_id, [start:end], wrong1, wrong2, wrong3, question, "
                        "correct answer"
                    )
                video_id, times, *wrong, question, correct = (c.strip() for c in cells)
                match = _HOW2QA_SPAN.match(times)
                if match is None:
                    if not samples and n == 1:
                        continue  # a header row
                    raise ValueError(
                        f"{path}: line {n} has segment {times!r}; expected [start:end] in seconds, e.g. [7.2:18.0]"
                    )
                if not video_id or not question:
                    raise ValueError(f"{path}: line {n} has an empty video id or question")
                row = len(samples)
                at = how2qa_correct_position(f"{video_id}|{times}|{question}", 1 + len(wrong))
                choices = wrong[:at] + [correct] + wrong[at:]
                samples.append(
                    _video_question(
                        f"{split}_{row}",
                        question,
                        "",
                        choices,
                        [string.ascii_uppercase[at]],
                        find(video_id=video_id, vid_name=video_id),
                        video_id,
                        _span(*match.groups()) if clip_to_span else None,
                        fps,
                        split=split,
                        row=row,
                        question=question,
                    )
                )
    except UnicodeDecodeError as e:
        raise ValueError(f"How2QA CSV file {path} is not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"How2QA CSV file {path} could not be parsed: {e}") from None
    return io.non_empty(samples, path)


def _multiple_choice_scorer(name: str):
    def score(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
        """:func:`~memvp.metrics.multiple_choice_accuracy` per question type (TVQA's show, How2QA's ``""``),
        the letter read by ``rule``; the rules of other tools ('llava', 'vlmevalkit') read the whole answer
        (:meth:`Sample.response`), and 'vlmevalkit' matches the options' texts (``metadata["choices"]``)."""
        require_answers(samples, name)
        whole = rule in FULL_RESPONSE_RULES
        return multiple_choice_accuracy(
            [
                {
                    "prediction": s.response(predictions[s.id]) if whole else predictions[s.id],
                    "answer": s.answers[0],
                    "num_choices": s.metadata["num_choices"],
                    "choices": _choices(s, name, rule),
                    "question_type": s.question_type,
                }
                for s in samples
            ],
            rule,
        )

    return score


def _choices(sample: Sample, name: str, rule: str) -> list[str] | None:
    """The options' texts of a video question (its readers keep them in ``metadata["choices"]``); a sample
    built elsewhere without them can not be read by 'vlmevalkit', which matches option text."""
    choices = sample.metadata.get("choices")
    if choices is None and rule == "vlmevalkit":
        raise ValueError(
            f"{name} question {sample.id!r} has no options' texts (metadata['choices']), which choice_rule "
            "'vlmevalkit' matches; read it with the tvqa / how2qa reader or choose another choice_rule"
        )
    return choices


register_format(
    DatasetFormat(
        "tvqa",
        read_tvqa,
        {"questions_file", "video_dir", "subtitles_file"},
        "video_dir/video_pattern (default '{vid_name}'; may use {vid_name}, {show_name}, {show}: for the "
        "official 3 fps frames give video_dir 'frames_hq' and video_pattern '{show}_frames/{vid_name}'), a video "
        "file or a folder of frames, else that path + .mp4/.mkv/.webm/.avi/.mov",
        _multiple_choice_scorer("tvqa"),
        is_video=True,
    )
)
register_format(
    DatasetFormat(
        "how2qa",
        read_how2qa,
        {"questions_file", "video_dir"},
        "video_dir/video_pattern (default '{video_id}', the YouTube id), a video file or a folder of frames, "
        "else that path + .mp4/.mkv/.webm/.avi/.mov",
        _multiple_choice_scorer("how2qa"),
        is_video=True,
    )
)
