"""Place words: the part of the image a question is about, read from its words (a box-free ``asked_box``).

"What is in the top left?" is about the top-left quarter of the image; "Where is the cat?" answered
"bottom right" about the bottom-right quarter; "What is on the left?" the left half; "... in the
middle?" the central half. Only image-frame uses count: relational ones ("left of the car", "on top
of the table") name no part of the image, and a question naming both sides ("on the left or the
right?") leaves it to the answer. Retrieval grounding (``TrainConfig.grounding_weight``) uses these
regions where a question carries no ``asked_box``: measured in docs/memory_scale.md section 6.4."""

from __future__ import annotations

import re

from .schema import ASKED_BOX, Sample

_VERTICAL = {"top": (0.0, 0.5), "upper": (0.0, 0.5), "bottom": (0.5, 1.0), "lower": (0.5, 1.0)}
_HORIZONTAL = {"left": (0.0, 0.5), "right": (0.5, 1.0)}
_MIDDLE = (0.25, 0.75)
_WORDS = "left|right|top|bottom|upper|lower|middle|center|centre"
_WORD = f"({_WORDS})"
_PLACE = r"(?:(top|upper|bottom|lower|middle|center|centre)[\s-]+)?" + _WORD
_TAIL = (
    r"(?:\s+(?:side|corner|half|part|edge|hand side|hand corner|row|column|cell|square|quadrant|quarter|tile|"
    r"panel|position|area|region|section|spot|one|image|picture|photo))?"
)
# the phrase ends the clause, or names the picture itself: "... on the left of the image"
_END = r"(?=\s*$|\s*[?.,!;:]|\s+(?:or|and)\b|\s+of\s+the\s+(?:image|picture|photo|frame|grid|scene)\b)"
# "in the top left", or without the article after a preposition: "what is at top left?"
_START = rf"\b(?:the|(?:in|on|at)(?=\s+(?:{_WORDS})\b))\s+"
_IN_QUESTION = re.compile(_START + _PLACE + _TAIL + _END)
_AS_ANSWER = re.compile(r"^\s*(?:(?:in|on|at|to)\s+)?(?:the\s+)?" + _PLACE + _TAIL + r"\s*[.!]?\s*$")


def _region(first: str | None, second: str) -> tuple[float, float, float, float] | None:
    words = [w for w in (first, second) if w is not None]
    vertical = horizontal = None
    for w in words:
        if w in _VERTICAL and vertical is None:
            vertical = _VERTICAL[w]
        elif w in _HORIZONTAL and horizontal is None:
            horizontal = _HORIZONTAL[w]
        elif w in _VERTICAL or w in _HORIZONTAL:
            return None  # "top bottom", "left right": no place
        elif len(words) == 1:  # "the middle": the central half both ways
            vertical = horizontal = _MIDDLE
        elif vertical is None:  # "middle left": the middle rows
            vertical = _MIDDLE
        else:  # "top center"
            horizontal = _MIDDLE
    (y0, y1), (x0, x1) = vertical or (0.0, 1.0), horizontal or (0.0, 1.0)
    return x0, y0, x1, y1


def _names_both_sides(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text))
    return {"left", "right"} <= words or bool({"top", "upper"} & words and {"bottom", "lower"} & words)


def place_box(question: str, answer: str | None = None) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in fractions of the image: the place the question names ("what is in the top
    left?"), else the place the answer is ("where is the cat?" -> "bottom right"); None when neither
    names one."""
    q = question.lower()
    found = [m.groups() for m in _IN_QUESTION.finditer(q)]
    if len(found) == 1 and not _names_both_sides(q):
        return _region(*found[0])
    match = _AS_ANSWER.match(answer.lower()) if answer else None
    return _region(*match.groups()) if match else None


def asked_region(sample: Sample, place_words: bool = True) -> tuple[float, float, float, float] | None:
    """Where ``sample``'s question is about: its ``asked_box`` when it carries one, else (with
    ``place_words``, a single-turn question) the place its question or training target names; None
    when neither says."""
    box = sample.metadata.get(ASKED_BOX)
    if box is not None:
        return tuple(box)
    if not place_words or sample.metadata.get("history"):  # a conversation's turns look at different places
        return None
    return place_box(sample.prompt, sample.target)
