"""The one sample schema every reader returns, and the prompt pieces several dataset families share."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field

VIDEO_NAME = "vid_name"
"""metadata key naming the video of a video-QA sample (also set when it has no ``video`` path)."""

LLAVA_SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
"""LLaVA-1.5's line after a short-answer question (POPE, MME)."""

SCIENCEQA_ANSWER_PREFIX = "The answer is"

ASKED_BOX = "asked_box"
"""metadata key (and VQAv2 question-record field) of the asked object's box: (x0, y0, x1, y1) in
fractions of the image's width and height, as LLaVA's normalised boxes. Only the instruments read it
(retrieval selectivity: ``vision.box_entries`` turns it into the encoder's grid cells)."""


def asked_box(value, where: str) -> tuple[float, float, float, float]:
    """``value`` as a valid normalised box, or ValueError naming ``where`` (a file and question)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if ok:
        x0, y0, x1, y1 = (float(v) for v in value)
        if 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0:
            return x0, y0, x1, y1
    raise ValueError(
        f"{where}: asked_box is {value!r:.80}; expected [x0, y0, x1, y1] in fractions of the image's "
        "width and height, 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (or leave it out)"
    )


@dataclass
class Sample:
    """One training / evaluation example.

    ``answers`` holds every reference answer (what metrics compare against).
    The training target is ``metadata["target"]`` when a reader sets it (VQAv2,
    where the target is ``multiple_choice_answer`` and ``answers`` are the 10
    human answers), otherwise ``answers[0]``; ``None`` when there is no reference
    (e.g. VQAv2 test-dev).
    """

    id: str
    prompt: str
    answers: list[str]
    image: str | None = None
    image_id: str | None = None
    features: str | None = None
    question_type: str = ""
    metadata: dict = field(default_factory=dict)
    video: str | None = None
    """A video file or a folder of its frames (absolute path): the visual input is frames sampled
    from it (``memvp.vision.read_frames``). ``image_id`` then names the video (feature files)."""
    span: tuple[float, float] | None = None
    """The part of ``video`` the question is about, in seconds (TVQA's ``ts``); None: all of it.
    ``metadata["fps"]`` gives the frame rate of a frame folder / of pre-extracted feature rows."""
    answer_separator: str = " "
    """What joins the prompt and the training target ("" in the official ScienceQA format, whose
    example is ``"...Response:The answer is A."``)."""
    answer_prefix: str = ""
    """The start every answer shares (ScienceQA's ``"The answer is"``): a generation prompt ends with it
    (after ``answer_separator``), so the model writes only what follows, as the official ``eval.py``."""

    @property
    def has_image(self) -> bool:
        """Has a visual input: an image, a video or a feature file."""
        return self.image is not None or self.video is not None or self.features is not None

    @property
    def is_video(self) -> bool:
        """A video sample: a video, or the feature file that stands for one (``metadata["vid_name"]``)."""
        return self.video is not None or VIDEO_NAME in self.metadata

    def response(self, generated: str) -> str:
        """The model's whole answer: ``answer_prefix`` (which a generation prompt ends with) and what it
        generated after it, as a tool that reads answer text expects ("The answer is" + "B." -> "The answer
        is B."); ``generated`` as it is without a prefix, and "" for no answer."""
        return f"{self.answer_prefix} {generated}" if self.answer_prefix and generated else generated

    @property
    def target(self) -> str | None:
        if "target" in self.metadata:
            return self.metadata["target"]
        return self.answers[0] if self.answers else None


def scienceqa_prompt(question: str, hint: str, choices: list[str], caption: str = "") -> str:
    """The ``QCM-A`` input of the official MemVP / LaVIN code (``util/base_prompt.py``
    ``create_training_example``): ``"Question: {q}\\nContext: {c}\\nOptions: (A) x (B) y\\nResponse:"``,
    the context being the hint and the image caption joined by a space (``get_context_text``), ``"N/A"``
    when both are empty, double spaces collapsed once, then stripped. The official training example
    appends ``"The answer is A."`` with no space (``read_scienceqa``'s targets), its ``eval.py``
    appends ``"The answer is"`` and reads the letter that follows. The video QA readers (TVQA, How2QA)
    use it too."""
    context = " ".join([hint, caption]).strip() or "N/A"
    options = " ".join(f"({string.ascii_uppercase[i]}) {c}" for i, c in enumerate(choices))
    text = f"\nQuestion: {question}\nContext: {context}\nOptions: {options}\nResponse:"
    return text.replace("  ", " ").strip()


def with_answer_prompt(question: str, answer_prompt: str | None) -> str:
    """``question``, then ``answer_prompt`` on a line of its own (nothing added when it is None / "")."""
    return f"{question}\n{answer_prompt}" if answer_prompt else question


def require_answers(samples: Sequence[Sample], name: str) -> None:
    """Refuse to score a split without reference answers (a test file: its answers are not released)."""
    unanswered = [s.id for s in samples if not s.answers]
    if unanswered:
        raise ValueError(
            f"{len(unanswered)} {name} question(s) have no answer (a test file? its answers are not "
            f"released), e.g. {unanswered[:5]}"
        )


__all__ = [
    "Sample",
    "VIDEO_NAME",
    "LLAVA_SHORT_ANSWER_PROMPT",
    "SCIENCEQA_ANSWER_PREFIX",
    "ASKED_BOX",
    "asked_box",
    "scienceqa_prompt",
    "with_answer_prompt",
    "require_answers",
]
