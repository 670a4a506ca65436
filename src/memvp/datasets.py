"""One sample schema and readers for the data files users already have.

Every reader returns ``list[Sample]`` and never opens images (checking that they
exist is the loader's job).  It does check that the JSON files exist and parse,
and raises ``FileNotFoundError`` / ``ValueError`` naming the file and the problem.

Paths: relative path arguments are taken relative to the current directory
(:func:`load_samples` can resolve them against a config's directory instead);
image names stored inside the data files are joined to the given image folder.
Every path in a :class:`Sample` is absolute.

Prompts follow Table 6 of the MemVP paper:

* VQAv2, GQA: ``[Question]`` -> ``[Answer]``
* COCO Captions: ``Provide a one-sentence caption for the provided image.`` -> ``[Caption]``
* ScienceQA: the ``QCM-A`` prompt of MemVP/LaVIN ``util/base_prompt.py``
  (``build_prompt`` + ``"The answer is"`` as in MemVP's ``eval.py``), see
  :func:`scienceqa_prompt`.

The benchmarks of the paper's Table 9 (LLaVA-1.5 evaluation) use LLaVA-1.5's own
prompts (its ``playground/data/eval`` question files and ``model_vqa_mmbench.py``):

* POPE, MME: ``[Question]\nAnswer the question using a single word or phrase.``
  (MME's trailing ``" Please answer yes or no."`` dropped, as in ``llava_mme.jsonl``);
* MMBench: ``[Hint]\n[Question]\nA. ...\nB. ...\nAnswer with the option's letter from
  the given choices directly.``

Video question answering (the paper's Table 8): TVQA (:func:`read_tvqa`, subtitles as the context) and
How2QA (:func:`read_how2qa`) use the ScienceQA ``QCM-A`` prompt; the samples carry ``video`` + ``span``.

Readers of data that holds the images themselves (MMBench's base64 TSV, the parquet
files of Hugging Face datasets) write each distinct image once to ``image_dir`` as
``<sha256 of the bytes>.<ext>`` (atomically; an existing file is left alone), so the
samples still have an image *path* and identical images share one path (and one entry
of the feature cache, which is keyed by path).  Those are the only readers that write
files; they still never decode an image.
"""

from __future__ import annotations

import base64
import binascii
import csv
import glob
import hashlib
import inspect
import json
import math
import os
import re
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .atomic import atomic_write

__all__ = [
    "Sample",
    "COCO_CAPTION_PROMPT",
    "FORMATS",
    "scienceqa_prompt",
    "SCIENCEQA_ANSWER_PREFIX",
    "read_scienceqa",
    "read_vqav2",
    "read_gqa",
    "read_coco_captions",
    "read_llava",
    "LLAVA_SHORT_ANSWER_PROMPT",
    "MMBENCH_ANSWER_PROMPT",
    "read_pope",
    "read_mme",
    "read_mmbench",
    "read_scienceqa_parquet",
    "read_vqav2_parquet",
    "read_gqa_parquet",
    "read_coco_captions_parquet",
    "TVQA_FRAME_FOLDERS",
    "read_tvqa",
    "read_how2qa",
    "how2qa_correct_position",
    "load_samples",
    "IMAGE_PATHS",
    "VIDEO_FORMATS",
    "DEFAULT_FEATURES_PATTERN",
]

COCO_CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
LLAVA_SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MMBENCH_ANSWER_PROMPT = "Answer with the option's letter from the given choices directly."


_VIDEO_NAME = "vid_name"
"""metadata key naming the video of a video-QA sample (also set when it has no ``video`` path)."""


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
        return self.video is not None or _VIDEO_NAME in self.metadata

    @property
    def target(self) -> str | None:
        if "target" in self.metadata:
            return self.metadata["target"]
        return self.answers[0] if self.answers else None


# --------------------------------------------------------------------- helpers
def _abs(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _load_json(path: str | os.PathLike, what: str) -> Any:
    path = _abs(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 (JSON files are)") from None


def _expect(obj: Any, kind: type, path: str, desc: str) -> Any:
    if not isinstance(obj, kind):
        raise ValueError(f"{_abs(path)}: expected {desc}, got {type(obj).__name__}")
    return obj


def _non_empty(samples: list[Sample], path: str, split: str | None = None) -> list[Sample]:
    if not samples:
        where = f"split {split!r} of {_abs(path)}" if split is not None else _abs(path)
        raise ValueError(f"{where} has no samples")
    return samples


def _field(record: dict, key: str, path: str, rid: Any) -> Any:
    try:
        return record[key]
    except (KeyError, TypeError):
        raise ValueError(f"{_abs(path)}: record {rid!r} has no {key!r} field") from None


def _inside(folder: str, name: str, path: str | os.PathLike, where: str, what: str = "image_dir") -> str:
    """``folder/name`` for a file name read from a data file. An absolute name stays as it is (the file
    says where); a relative one that leaves ``folder`` (``../../etc/passwd``) is refused. Containment is
    checked on the normalised path, not the resolved one: a symlink inside ``folder`` (a data set linked
    in from another disk) is the folder owner's choice."""
    joined = os.path.join(folder, name)
    if not os.path.isabs(name) and os.path.commonpath([os.path.normpath(joined), folder]) != folder:
        raise ValueError(f"{_abs(path)}: {where}: the path {name!r} leaves {what} {folder}; give a path inside "
                         f"{what} (or an absolute path)")
    return joined


# ------------------------------------------------------------------- ScienceQA
SCIENCEQA_ANSWER_PREFIX = "The answer is"


def scienceqa_prompt(question: str, hint: str, choices: list[str], caption: str = "") -> str:
    """The ``QCM-A`` input of the official MemVP / LaVIN code (``util/base_prompt.py``
    ``create_training_example``): ``"Question: {q}\nContext: {c}\nOptions: (A) x (B) y\nResponse:"``,
    the context being the hint and the image caption joined by a space (``get_context_text``), ``"N/A"``
    when both are empty, double spaces collapsed once, then stripped. The official training example
    appends ``"The answer is A."`` with no space (:func:`read_scienceqa`'s targets), its ``eval.py``
    appends ``"The answer is"`` and reads the letter that follows."""
    context = " ".join([hint, caption]).strip() or "N/A"
    options = " ".join(f"({string.ascii_uppercase[i]}) {c}" for i, c in enumerate(choices))
    text = f"\nQuestion: {question}\nContext: {context}\nOptions: {options}\nResponse:"
    return text.replace("  ", " ").strip()


def _scienceqa_captions(path: str | os.PathLike | None) -> dict[str, str]:
    if path is None:
        return {}
    data = _expect(_load_json(path, "ScienceQA captions file"), dict, path, 'an object with "captions"')
    captions = _expect(data.get("captions", data), dict, path, "captions as an object of pid -> text")
    return {str(k): str(v) for k, v in captions.items()}


def read_scienceqa(root: str | os.PathLike, split: str, captions_file: str | os.PathLike | None = None) -> list[Sample]:
    """ScienceQA as released: ``root/problems.json``, ``root/pid_splits.json``,
    ``root/images/<split>/<pid>/<image>``.

    prompt = :func:`scienceqa_prompt`; the training target is ``"The answer is X."`` joined to the prompt
    without a space, generation prompts end with ``"The answer is"`` (the official code's strings);
    answers = ``[letter]``; question_type = subject; questions without an image are kept with
    ``image=None``. ``captions_file`` (LaVIN / MemVP's ``captions.json``, ``{"captions": {pid: text}}``)
    adds each image's caption to the context, as the official ``eval.py`` does (its training does not).
    metadata: ``subject``, ``grade``, ``has_text_context`` (hint non-empty), ``has_image_context``,
    ``num_choices``, ``choices``.
    """
    root = _abs(root)
    problems_file = os.path.join(root, "problems.json")
    splits_file = os.path.join(root, "pid_splits.json")
    problems = _expect(_load_json(problems_file, "ScienceQA problems file"), dict, problems_file,
                       "an object of pid -> problem")
    splits = _expect(_load_json(splits_file, "ScienceQA split file"), dict, splits_file,
                     "an object of split -> list of pids")
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {splits_file}; available: {sorted(splits)}")
    captions = _scienceqa_captions(captions_file)
    samples = []
    for pid in splits[split]:
        pid = str(pid)
        if pid not in problems:
            raise ValueError(f"{problems_file}: pid {pid!r} of split {split!r} is not in the file")
        p = problems[pid]
        choices = [str(c) for c in _field(p, "choices", problems_file, pid)]
        answer = int(_field(p, "answer", problems_file, pid))
        if not 0 <= answer < len(choices):
            raise ValueError(f"{problems_file}: problem {pid!r} has answer {answer} "
                             f"but {len(choices)} choices")
        image_name = p.get("image")
        image = os.path.join(root, "images", split, pid, image_name) if image_name else None
        samples.append(_scienceqa_sample(pid, _field(p, "question", problems_file, pid), p.get("hint") or "",
                                         choices, answer, image, p.get("subject", ""), p.get("grade", ""),
                                         caption=captions.get(pid, "")))
    return _non_empty(samples, splits_file, split)


def _scienceqa_sample(sid: str, question: str, hint: str, choices: list[str], answer: int, image: str | None,
                      subject: str, grade: str, caption: str = "", **extra: Any) -> Sample:
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


# ----------------------------------------------------------------------- VQAv2
def read_vqav2(questions_file: str | os.PathLike, annotations_file: str | os.PathLike | None,
               image_dir: str | os.PathLike,
               image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg") -> list[Sample]:
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
    """
    qdata = _expect(_load_json(questions_file, "VQAv2 questions file"), dict, questions_file,
                    "an object with 'questions'")
    questions = _expect(_field(qdata, "questions", questions_file, "<top level>"), list,
                        questions_file, "'questions' to be a list")
    subtype = qdata.get("data_subtype", "")
    subtype = {"test-dev2015": "test2015"}.get(subtype, subtype)
    annotations = None
    if annotations_file is not None:
        adata = _expect(_load_json(annotations_file, "VQAv2 annotations file"), dict, annotations_file,
                        "an object with 'annotations'")
        anns = _field(adata, "annotations", annotations_file, "<top level>")
        annotations = {_field(a, "question_id", annotations_file, a): a for a in anns}
    image_dir = _abs(image_dir)
    samples = []
    for q in questions:
        qid = _field(q, "question_id", questions_file, q)
        image_id = int(_field(q, "image_id", questions_file, qid))
        metadata: dict = {}
        answers: list[str] = []
        answer_type = ""
        if annotations is not None:
            if qid not in annotations:
                raise ValueError(f"{_abs(annotations_file)}: no annotation for question_id {qid}")
            a = annotations[qid]
            answers = [str(h["answer"]) for h in _field(a, "answers", annotations_file, qid)]
            answer_type = a.get("answer_type", "")
            metadata = {"target": _field(a, "multiple_choice_answer", annotations_file, qid),
                        "answer_type": answer_type,
                        "question_type": a.get("question_type", "")}
        samples.append(Sample(
            id=str(qid),
            prompt=_field(q, "question", questions_file, qid),
            answers=answers,
            image=os.path.join(image_dir, image_pattern.format(data_subtype=subtype, image_id=image_id)),
            image_id=str(image_id),
            question_type=answer_type,
            metadata=metadata,
        ))
    return _non_empty(samples, questions_file)


# ------------------------------------------------------------------------- GQA
def read_gqa(questions_file: str | os.PathLike, image_dir: str | os.PathLike) -> list[Sample]:
    """GQA question file (e.g. ``testdev_balanced_questions.json``): qid -> question.

    prompt = the question; answers = ``[answer]`` (``[]`` for files without
    answers, e.g. the submission file); image ``{image_dir}/{imageId}.jpg``;
    question_type = ``types["structural"]``.  metadata: ``full_answer``,
    ``structural``, ``semantic``, ``detailed``.
    """
    data = _expect(_load_json(questions_file, "GQA questions file"), dict, questions_file,
                   "an object of question id -> question")
    image_dir = _abs(image_dir)
    samples = []
    for qid, q in data.items():
        image_id = str(_field(q, "imageId", questions_file, qid))
        types = q.get("types") or {}
        samples.append(Sample(
            id=str(qid),
            prompt=_field(q, "question", questions_file, qid),
            answers=[q["answer"]] if "answer" in q else [],
            image=os.path.join(image_dir, f"{image_id}.jpg"),
            image_id=image_id,
            question_type=types.get("structural", ""),
            metadata={"full_answer": q.get("fullAnswer", ""),
                      "structural": types.get("structural", ""),
                      "semantic": types.get("semantic", ""),
                      "detailed": types.get("detailed", "")},
        ))
    return _non_empty(samples, questions_file)


# ---------------------------------------------------------------- COCO Captions
_KARPATHY_SPLITS = {"train": ("train", "restval"), "restval": ("restval",), "val": ("val",),
                    "test": ("test",)}


def read_coco_captions(karpathy_file: str | os.PathLike, image_root: str | os.PathLike,
                       split: str) -> list[Sample]:
    """Karpathy split file (``dataset_coco.json``), one Sample per image.

    ``split`` is ``train`` (= Karpathy ``train`` + ``restval``, the standard
    113k training set), ``restval``, ``val`` or ``test``.  id = image_id =
    ``str(cocoid)`` (``imgid`` for files without ``cocoid``, e.g. Flickr30k);
    image ``image_root/filepath/filename``; prompt = :data:`COCO_CAPTION_PROMPT`;
    answers = the ``raw`` sentences, stripped.  metadata: ``split`` (the
    file's own split), ``filename``.
    """
    if split not in _KARPATHY_SPLITS:
        raise ValueError(f"unknown split {split!r} for {_abs(karpathy_file)}; "
                         f"available: {sorted(_KARPATHY_SPLITS)}")
    data = _expect(_load_json(karpathy_file, "Karpathy split file"), dict, karpathy_file,
                   "an object with 'images'")
    image_root = _abs(image_root)
    wanted = _KARPATHY_SPLITS[split]
    samples = []
    for im in _field(data, "images", karpathy_file, "<top level>"):
        if _field(im, "split", karpathy_file, im.get("filename")) not in wanted:
            continue
        filename = _field(im, "filename", karpathy_file, im)
        cid = str(im["cocoid"] if "cocoid" in im else _field(im, "imgid", karpathy_file, filename))
        samples.append(Sample(
            id=cid,
            prompt=COCO_CAPTION_PROMPT,
            answers=[s["raw"].strip() for s in _field(im, "sentences", karpathy_file, filename)],
            image=os.path.join(image_root, im.get("filepath", ""), filename),
            image_id=cid,
            metadata={"split": im["split"], "filename": filename},
        ))
    return _non_empty(samples, karpathy_file, split)


# ----------------------------------------------------------------------- LLaVA
def read_llava(json_file: str | os.PathLike, image_dir: str | os.PathLike,
               per_conversation: bool = False, video_dir: str | os.PathLike | None = None, *,
               skipped: dict[str, str] | None = None) -> list[Sample]:
    """LLaVA conversation file (e.g. ``llava_v1_5_mix665k.json``).

    One Sample per human -> gpt turn, id ``f"{id}_{turn}"`` (turn counts from 0).
    prompt = the human text with ``"<image>"`` removed and the result stripped
    (as LLaVA's ``preprocess_multimodal`` does); answers = ``[gpt text]``.
    Earlier turns are *not* put in the prompt: they are kept as
    ``metadata["history"]`` = ``[[human, gpt], ...]`` (cleaned the same way) for
    a collator that wants multi-turn context.  All turns share the
    conversation's image (``image_dir/image``, image_id = the relative name);
    entries without ``"image"`` get ``image=None``.  metadata: ``conversation_id``,
    ``turn``, ``history``.

    ``per_conversation=True`` gives one Sample per conversation instead (for
    multi-turn training with a loss on every assistant turn): id = the
    conversation ``id``; prompt / answers = its *last* human -> gpt turn;
    ``metadata["history"]`` = every earlier ``[human, gpt]`` pair and
    ``metadata["turn"]`` = the last turn's index, exactly as the per-turn Sample
    of that last turn has them.

    Entries with ``"video"`` instead of ``"image"`` (the video instruction files of
    LLaVA-NeXT-Video and Video-LLaVA) hold a video: ``video_dir/video`` (``video_dir``
    defaults to ``image_dir``), a file or a folder of frames; ``"<video>"`` is removed
    from the text like ``"<image>"``; image_id = the video's relative name (also
    ``metadata["vid_name"]``, for pre-extracted per-video feature files).

    An image or video name is read by absolute path when it is one; a relative one must stay inside
    ``image_dir`` / ``video_dir``. A malformed conversation (a message that is not a ``{from, value}``
    object, roles out of order, a path leaving the folder, ...) is a ValueError naming its id; with
    ``skipped`` (a dict; ``--skip-bad``) it is left out instead and recorded there as
    ``{"conversation '<id>'": problem}``.
    """
    data = _expect(_load_json(json_file, "LLaVA conversation file"), list, json_file,
                   "a list of conversations")
    image_dir = _abs(image_dir)
    video_dir = image_dir if video_dir is None else _abs(video_dir)
    samples = []
    for k, entry in enumerate(data):
        try:
            samples += _llava_conversation(entry, json_file, image_dir, video_dir, per_conversation)
        except ValueError as e:
            if skipped is None:
                raise
            cid = entry.get("id") if isinstance(entry, dict) else None
            skipped[f"conversation {cid!r}" if cid is not None else f"entry {k}"] = str(e)
    return _non_empty(samples, json_file)


def _llava_conversation(entry: Any, json_file: str | os.PathLike, image_dir: str, video_dir: str,
                        per_conversation: bool) -> list[Sample]:
    """The samples of one conversation of a LLaVA file; a ValueError naming it when it is malformed."""
    cid = str(_field(entry, "id", json_file, entry))
    convs = _field(entry, "conversations", json_file, cid)
    if not isinstance(convs, list):
        raise ValueError(f"{_abs(json_file)}: conversation {cid!r}: 'conversations' is a {type(convs).__name__}, "
                         "not a list of {from, value} messages")
    for n, message in enumerate(convs):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            got = (f"is {message!r:.40}" if not isinstance(message, dict)
                   else f"has the value {message.get('value')!r:.40}")
            raise ValueError(f"{_abs(json_file)}: conversation {cid!r}: message {n} {got}; each message must be a "
                             "{from, value} object with text: fix it, or skip the conversation with --skip-bad")
    image_name, video_name = entry.get("image"), entry.get("video")
    if image_name and video_name:
        raise ValueError(f"{_abs(json_file)}: conversation {cid!r} has both an image and a video; "
                         f"give one visual input per conversation")
    if not isinstance(image_name or video_name or "", str):
        raise ValueError(f"{_abs(json_file)}: conversation {cid!r}: 'image' / 'video' must be one file name "
                         f"(several images per conversation are not supported)")
    where = f"conversation {cid!r}"
    image = _inside(image_dir, image_name, json_file, where) if image_name else None
    video = _inside(video_dir, video_name, json_file, where, "video_dir") if video_name else None
    extra = {_VIDEO_NAME: video_name} if video else {}
    if len(convs) % 2:
        raise ValueError(f"{_abs(json_file)}: conversation {cid!r} has an odd number of messages")
    samples: list[Sample] = []
    history: list[list[str]] = []
    for turn in range(len(convs) // 2):
        human, gpt = convs[2 * turn], convs[2 * turn + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError(f"{_abs(json_file)}: conversation {cid!r} turn {turn} is not "
                             f"human -> gpt (got {human.get('from')!r} -> {gpt.get('from')!r})")
        question = human["value"].replace("<image>", "").replace("<video>", "").strip()
        answer = gpt["value"]
        last_turn = turn == len(convs) // 2 - 1
        if not per_conversation or last_turn:
            samples.append(Sample(
                id=cid if per_conversation else f"{cid}_{turn}",
                prompt=question,
                answers=[answer],
                image=image,
                image_id=image_name or video_name or None,
                video=video,
                metadata={"conversation_id": cid, "turn": turn, "history": [list(h) for h in history], **extra},
            ))
        history.append([question, answer])
    return samples


# ---------------------------------------------------------- images from bytes
_IMAGE_MAGIC = [(b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
                (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif")]
_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def _image_extension(data: bytes, name_hint: str | None) -> str:
    """The file extension of image bytes, from their magic number (no decoding), else the hint's."""
    for magic, ext in _IMAGE_MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    ext = os.path.splitext(name_hint or "")[1].lower()
    return ext[1:] if ext in _IMAGE_EXTENSIONS else "img"


def _check_image_dir(image_dir: str | os.PathLike) -> str:
    image_dir = _abs(image_dir)
    if os.path.exists(image_dir) and not os.path.isdir(image_dir):
        raise ValueError(f"image_dir {image_dir} is a file; give a folder to write the images to")
    return image_dir


def _store_image(data: bytes, image_dir: str, name_hint: str | None = None) -> str:
    """``image_dir/<sha256>.<ext>``, written once (atomically) and never rewritten."""
    path = os.path.join(image_dir, f"{hashlib.sha256(data).hexdigest()}.{_image_extension(data, name_hint)}")
    if not os.path.exists(path):
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        atomic_write(path, write)
    return path


def _with_answer_prompt(question: str, answer_prompt: str | None) -> str:
    return f"{question}\n{answer_prompt}" if answer_prompt else question


def _files(files: str | os.PathLike | Sequence[str | os.PathLike], what: str, suffix: str) -> list[str]:
    """Absolute paths of ``files``: one path, a glob pattern, a folder (its ``*suffix`` files) or a list of those."""
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if any(c in item for c in "*?["):  # a glob pattern
            matched = sorted(glob.glob(item))
            if not matched:
                raise FileNotFoundError(f"{what}: no file matches {_abs(item)}")
        elif os.path.isdir(item):
            matched = sorted(glob.glob(os.path.join(glob.escape(item), f"*{suffix}")))
            if not matched:
                raise FileNotFoundError(f"{what}: no *{suffix} file in {_abs(item)}")
        elif os.path.isfile(item):
            matched = [item]
        else:
            raise FileNotFoundError(f"{what} not found: {_abs(item)}")
        out += [_abs(m) for m in matched]
    if not out:
        raise ValueError(f"{what}: no files given")
    return out


# ------------------------------------------------------------------------ POPE
def _pope_split(path: str) -> str:
    stem = os.path.basename(path)
    for ext in (".jsonl", ".json"):
        stem = stem.removesuffix(ext)
    return stem.rsplit("_pope_", 1)[1] if "_pope_" in stem else stem


def _json_lines(path: str, what: str) -> Iterator[tuple[int, Any]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{what} {path}: line {n} is not valid JSON ({e}); "
                                         "the file should hold one JSON object per line") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def read_pope(question_files: str | os.PathLike | Sequence[str | os.PathLike], image_dir: str | os.PathLike,
              answer_prompt: str | None = LLAVA_SHORT_ANSWER_PROMPT) -> list[Sample]:
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
    paths = _files(question_files, "POPE question file", ".json")
    image_dir = _abs(image_dir)
    samples, seen = [], {}
    for path in paths:
        split = _pope_split(path)
        if split in seen:
            raise ValueError(f"POPE question files {seen[split]} and {path} are both split {split!r}")
        seen[split] = path
        for n, q in _json_lines(path, "POPE question file"):
            rid = q.get("question_id", f"line {n}") if isinstance(q, dict) else f"line {n}"
            qid = _field(q, "question_id", path, rid)
            label = str(_field(q, "label", path, rid)).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"{path}: question {qid!r} has label {q['label']!r}; expected 'yes' or 'no'")
            text = _field(q, "text", path, qid)
            image_name = _field(q, "image", path, qid)
            samples.append(Sample(
                id=f"{split}_{qid}",
                prompt=_with_answer_prompt(text, answer_prompt),
                answers=[label],
                image=_inside(image_dir, image_name, path, f"question {qid!r}"),
                image_id=image_name,
                question_type=split,
                metadata={"split": split, "question_id": qid, "question": text},
            ))
    return _non_empty(samples, paths[0] if len(paths) == 1 else os.path.dirname(paths[0]))


# ------------------------------------------------------------------------- MME
_MME_YES_NO = "Please answer yes or no."


def read_mme(root: str | os.PathLike, answer_prompt: str | None = LLAVA_SHORT_ANSWER_PROMPT,
             subtasks: Sequence[str] | None = None) -> list[Sample]:
    """MME as released (``MME_Benchmark_release_version``): one folder per subtask, either
    ``<subtask>/images/<image>`` + ``<subtask>/questions_answers_YN/<image stem>.txt`` or the
    images and their ``<image stem>.txt`` side by side in ``<subtask>/`` (the layout LLaVA's
    ``convert_answer_to_mme.py`` reads).  Each ``.txt`` line is ``question<TAB>answer``
    (Yes / No), two questions per image; a line ``image<TAB>question<TAB>answer`` (the
    ``eval_tool`` result-file layout, e.g. one ``<subtask>.txt`` for the whole subtask) names
    its image itself.

    ``subtasks`` limits the folders read (default: every folder of ``root``).  id =
    ``f"{subtask}/{image}/{k}"`` (k-th question of the image); prompt = the question with its
    trailing ``"Please answer yes or no."`` replaced by ``"\\n"`` + ``answer_prompt`` (LLaVA-1.5's
    ``llava_mme.jsonl``; with ``answer_prompt`` ``None`` / ``""`` the question as written);
    answers = ``[answer]`` as written; image_id = the image path relative to ``root``;
    question_type = subtask.  An image is matched to its ``.txt`` by file stem (a missing
    one is expected at ``<stem>.jpg``, where the loader reports it).  metadata: ``subtask``,
    ``image_key`` (``f"{subtask}/{image}"``, the acc+ pair), ``question`` (as written).
    """
    root = _abs(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MME folder not found: {root}")
    available = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if subtasks is not None:
        unknown = [t for t in subtasks if t not in available]
        if unknown:
            raise ValueError(f"MME subtask(s) {unknown} not in {root}; available: {available}")
        available = [t for t in available if t in set(subtasks)]
    samples = []
    for subtask in available:
        folder = os.path.join(root, subtask)
        if os.path.isdir(os.path.join(folder, "images")):
            image_folder, qa_folder = os.path.join(folder, "images"), os.path.join(folder, "questions_answers_YN")
            if not os.path.isdir(qa_folder):
                raise FileNotFoundError(f"MME subtask {subtask!r}: {folder} has images/ but no questions_answers_YN/")
        else:
            image_folder = qa_folder = folder
        by_stem: dict[str, str] = {}
        for name in sorted(os.listdir(image_folder)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in _IMAGE_EXTENSIONS:
                by_stem.setdefault(stem, name)
        counts: dict[str, int] = {}
        for txt in sorted(n for n in os.listdir(qa_folder) if n.endswith(".txt")):
            path = os.path.join(qa_folder, txt)
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except UnicodeDecodeError as e:
                raise ValueError(f"MME question file {path} is not UTF-8 text (byte {e.start})") from None
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) == 2:
                    stem = txt[:-len(".txt")]
                    image_name, (question, answer) = by_stem.get(stem, f"{stem}.jpg"), fields
                elif len(fields) == 3:
                    image_name, question, answer = fields
                else:
                    raise ValueError(f"{path}: line {n} has {len(fields)} tab-separated fields; expected "
                                     "'question<TAB>answer' (or 'image<TAB>question<TAB>answer')")
                if answer.strip().lower() not in ("yes", "no"):
                    raise ValueError(f"{path}: line {n} has answer {answer!r}; MME answers are Yes or No")
                k = counts.get(image_name, 0)
                counts[image_name] = k + 1
                prompt = question
                if answer_prompt:
                    prompt = question.strip().removesuffix(_MME_YES_NO).rstrip() + "\n" + answer_prompt
                image = os.path.join(image_folder, image_name)
                samples.append(Sample(
                    id=f"{subtask}/{image_name}/{k}",
                    prompt=prompt,
                    answers=[answer.strip()],
                    image=image,
                    image_id=os.path.relpath(image, root).replace(os.sep, "/"),
                    question_type=subtask,
                    metadata={"subtask": subtask, "image_key": f"{subtask}/{image_name}", "question": question},
                ))
    return _non_empty(samples, root)


# --------------------------------------------------------------------- MMBench
# pandas' default NA strings (MMBench's TSVs are read with pandas.read_table by every official
# tool, so these cells are "missing" there) plus LLaVA's is_none() ('nan' / 'none', any case).
_NA_STRINGS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
               "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
_CIRCULAR_STRIDE = 1_000_000


def _is_na(value: str | None) -> bool:
    return value is None or value in _NA_STRINGS or value.lower() in ("nan", "none")


def read_mmbench(tsv_file: str | os.PathLike, image_dir: str | os.PathLike, circular: bool = True,
                 answer_prompt: str | None = MMBENCH_ANSWER_PROMPT) -> list[Sample]:
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
    ``category``, ``l2_category``.
    """
    path = _abs(tsv_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MMBench TSV file not found: {path}")
    image_dir = _check_image_dir(image_dir)
    old_limit = csv.field_size_limit(2**31 - 1)  # base64 images are far over csv's 128 KiB default
    rows: list[dict] = []
    line_of: dict[int, int] = {}  # index -> its line: a repeated index would merge two questions' predictions
    image_of: dict[int, str] = {}  # index -> image path
    decoded: dict[bytes, str] = {}  # sha1 of a base64 cell -> image path (copies repeat the cell)
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
                    raise ValueError(f"{path}: line {n} repeats index {row['index']} of line {line_of[row['index']]}; "
                                     "every question needs its own index (its predictions and score are keyed by it)")
                line_of[row["index"]] = n
                cell = row.pop("image")
                if len(cell) <= 64 and not _is_na(cell) and cell.strip().isdigit():
                    row["image_ref"] = int(cell)  # resolved below: the row may come later
                elif _is_na(cell):
                    raise ValueError(f"{path}: question {row['index']} has no image")
                else:
                    key = hashlib.sha1(cell.encode()).digest()
                    if key not in decoded:
                        try:
                            data = base64.b64decode(cell)
                        except (binascii.Error, ValueError) as e:
                            raise ValueError(f"{path}: question {row['index']}: image is not base64 ({e})") from None
                        decoded[key] = _store_image(data, image_dir)
                    image_of[row["index"]] = decoded[key]
                rows.append(row)
    except UnicodeDecodeError as e:
        raise ValueError(f"MMBench TSV file {path} is not UTF-8 text (byte {e.start})") from None
    finally:
        csv.field_size_limit(old_limit)

    has_copies = any(r["index"] >= _CIRCULAR_STRIDE for r in rows)
    samples = []
    for row in rows:
        index = row["index"]
        if "image_ref" in row:
            if row["image_ref"] not in image_of:
                raise ValueError(f"{path}: question {index} refers to the image of question {row['image_ref']}, "
                                 "which is not in the file")
            image_of[index] = image_of[row["image_ref"]]
        if has_copies and not circular and index >= _CIRCULAR_STRIDE:
            continue
        options = []
        for letter in string.ascii_uppercase:
            if letter not in row or _is_na(row[letter]):
                break
            options.append(row[letter])
        if not options:
            raise ValueError(f"{path}: question {index} has no options (column A is empty)")
        answer = row.get("answer")
        answer_at = None
        if not _is_na(answer):
            answer = answer.strip()
            if answer not in string.ascii_uppercase[:len(options)]:
                raise ValueError(f"{path}: question {index} has answer {answer!r} but options "
                                 f"{list(string.ascii_uppercase[:len(options)])}")
            answer_at = string.ascii_uppercase.index(answer)
        hint = row.get("hint")
        question = row["question"] if _is_na(hint) else f"{hint}\n{row['question']}"
        rotations = [0] if has_copies or not circular else range(len(options))
        for r in rotations:
            shown = options[r:] + options[:r]
            prompt = question + "".join(f"\n{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(shown))
            image = image_of[index]
            samples.append(Sample(
                id=str(index + r * _CIRCULAR_STRIDE),
                prompt=_with_answer_prompt(prompt, answer_prompt),
                answers=[] if answer_at is None else [string.ascii_uppercase[(answer_at - r) % len(options)]],
                image=image,
                image_id=os.path.splitext(os.path.basename(image))[0],
                question_type=row.get("category", ""),
                metadata={"circular_group": str(index % _CIRCULAR_STRIDE),
                          "rotation": index // _CIRCULAR_STRIDE if has_copies else r,
                          "index": index, "num_choices": len(options), "choices": shown,
                          "category": row.get("category", ""), "l2_category": row.get("l2-category", "")},
            ))
    return _non_empty(samples, path)


# --------------------------------------------------------------------- parquet
def _split_of(path: str) -> str:
    """``train-00000-of-00001-1028f23e.parquet`` (the Hugging Face naming) -> ``train``."""
    stem = os.path.basename(path).removesuffix(".parquet")
    match = re.match(r"^(.*?)-\d{5}-of-\d{5}", stem)
    return match.group(1) if match else stem


def _parquet_rows(path: str, what: str, required: Sequence[str], optional: Sequence[str] = ()) -> Iterator[dict]:
    """The rows of one parquet file as dicts of ``required`` + the ``optional`` columns it has, read in
    small batches (image columns are large)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet files needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{what} {path} is not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: {what} has no column(s) {missing}; its columns: {names}")
    try:
        for batch in pf.iter_batches(batch_size=64, columns=[*required, *(c for c in optional if c in names)]):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{what} {path} could not be read: {e}") from None


def _cell(row: dict, column: str, kinds: type | tuple[type, ...], path: str, n: int, expected: str,
          required: bool = False) -> Any:
    """``row[column]`` when it is of ``kinds`` (None when null and not ``required``); otherwise an error
    naming the file, the row (counted from 0 in the file) and the column. pyarrow hands back whatever the
    file holds: a string where a list belongs would be read as a list of its characters."""
    value = row.get(column)
    if value is None and not required:
        return None
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        got = "null" if value is None else f"{value!r:.40} of type {type(value).__name__}"
        raise ValueError(f"{path}: row {n}, column {column!r} holds {got}, expected {expected}; fix the file")
    return value


def _strings(row: dict, column: str, path: str, n: int, required: bool = False) -> list[str] | None:
    """A list-of-strings cell (choices, captions), checked as ``_cell`` does, items included."""
    values = _cell(row, column, list, path, n, "a list of strings", required)
    for value in values or []:
        if not isinstance(value, str):
            raise ValueError(f"{path}: row {n}, column {column!r} holds a list with {value!r:.40} of type "
                             f"{type(value).__name__}, expected a list of strings; fix the file")
    return values


_ID = (int, str)


def _parquet_image(cell: Any, image_dir: str, path: str, rid: Any) -> str | None:
    """The image of a parquet cell (the ``datasets`` Image feature: a struct ``{bytes, path}``, or plain
    bytes) written to ``image_dir``; None for an empty cell."""
    if cell is None:
        return None
    name = None
    if isinstance(cell, dict):
        data, name = cell.get("bytes"), cell.get("path")
        if data is None:
            if name is None:
                return None
            if os.path.isabs(name):
                return name  # an image stored by reference to a local file
            raise ValueError(f"{path}: row {rid!r} has an image without bytes, only the relative path {name!r}; "
                             "save the dataset with its images embedded")
    elif isinstance(cell, (bytes, bytearray)):
        data = bytes(cell)
    else:
        raise ValueError(f"{path}: row {rid!r}: the image column holds {type(cell).__name__}, expected the "
                         "datasets Image struct {bytes, path} or bytes")
    return _store_image(data, image_dir, name)


def read_scienceqa_parquet(files: str | os.PathLike | Sequence[str | os.PathLike],
                           image_dir: str | os.PathLike) -> list[Sample]:
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
    paths = _files(files, "ScienceQA parquet file", ".parquet")
    image_dir = _check_image_dir(image_dir)
    samples, rows_seen = [], {}
    for path in paths:
        split = _split_of(path)
        rows = _parquet_rows(path, "ScienceQA parquet file", ("image", "question", "choices", "answer"),
                             ("hint", "subject", "grade"))
        for r, row in enumerate(rows):
            n = rows_seen[split] = rows_seen.get(split, -1) + 1
            sid = f"{split}_{n}"
            question = _cell(row, "question", str, path, r, "the question's text", required=True)
            choices = _strings(row, "choices", path, r) or []
            if row["answer"] is None:
                raise ValueError(f"{path}: row {n} has no answer")
            answer = _cell(row, "answer", int, path, r, "the index of the right choice")
            if not 0 <= answer < len(choices):
                raise ValueError(f"{path}: row {n} has answer {answer} but {len(choices)} choices")
            hint, subject, grade = (_cell(row, c, str, path, r, "text or null") for c in ("hint", "subject", "grade"))
            samples.append(_scienceqa_sample(sid, question, hint or "", choices, answer,
                                             _parquet_image(row["image"], image_dir, path, n),
                                             subject or "", grade or "", split=split))
    return _non_empty(samples, paths[0])


def read_vqav2_parquet(files: str | os.PathLike | Sequence[str | os.PathLike],
                       image_dir: str | os.PathLike) -> list[Sample]:
    """VQAv2 from the parquet files of the Hugging Face dataset ``lmms-lab/VQAv2``
    (``data/{validation,testdev,test}-*.parquet``; ``HuggingFaceM4/VQAv2``'s parquet export
    has the same columns): ``question_type, multiple_choice_answer, answers`` (list of
    ``{answer, answer_confidence, answer_id}``; a list of strings is taken too), ``image_id,
    answer_type, question_id, question, image``.

    The samples are those of :func:`read_vqav2`: answers = the human answers (``[]`` and no
    target where the test files have none), ``metadata["target"]`` =
    ``multiple_choice_answer``, question_type = answer_type; image_id = the COCO image id.
    Images are written to ``image_dir/<sha256>.<ext>``.
    """
    paths = _files(files, "VQAv2 parquet file", ".parquet")
    image_dir = _check_image_dir(image_dir)
    samples = []
    for path in paths:
        for r, row in enumerate(_parquet_rows(path, "VQAv2 parquet file", ("question_id", "question", "image"),
                                              ("answers", "multiple_choice_answer", "answer_type", "question_type",
                                               "image_id"))):
            qid = _cell(row, "question_id", _ID, path, r, "a question id", required=True)
            question = _cell(row, "question", str, path, r, "the question's text", required=True)
            answers = []
            for a in _cell(row, "answers", list, path, r, "a list of {answer, ...} or of strings") or []:
                answer = a.get("answer") if isinstance(a, dict) else a
                if not isinstance(answer, str):
                    raise ValueError(f"{path}: row {r}, column 'answers' holds {a!r:.60}, expected a list of "
                                     "{answer, ...} or of strings; fix the file")
                answers.append(answer)
            target = _cell(row, "multiple_choice_answer", str, path, r, "the answer's text or null")
            answer_type = _cell(row, "answer_type", str, path, r, "text or null") or ""
            metadata = {}
            if answers or target is not None:
                metadata = {"answer_type": answer_type,
                            "question_type": _cell(row, "question_type", str, path, r, "text or null") or ""}
                if target is not None:
                    metadata = {"target": target, **metadata}
            image = _parquet_image(row["image"], image_dir, path, qid)
            image_id = _cell(row, "image_id", _ID, path, r, "an image id or null")
            samples.append(Sample(
                id=str(qid),
                prompt=question,
                answers=answers,
                image=image,
                image_id=str(image_id) if image_id is not None else
                (os.path.splitext(os.path.basename(image))[0] if image else None),
                question_type=answer_type,
                metadata=metadata,
            ))
    return _non_empty(samples, paths[0])


def read_gqa_parquet(files: str | os.PathLike | Sequence[str | os.PathLike],
                     image_files: str | os.PathLike | Sequence[str | os.PathLike],
                     image_dir: str | os.PathLike) -> list[Sample]:
    """GQA from the parquet files of the Hugging Face dataset ``lmms-lab/GQA``, which keeps
    questions and images apart: ``files`` = an ``*_instructions`` config (e.g.
    ``testdev_balanced_instructions/testdev-*.parquet``: ``id, imageId, question, answer,
    fullAnswer, types, ...``), ``image_files`` = the matching ``*_images`` config (``id,
    image``), joined on ``imageId`` = ``id``.

    The samples are those of :func:`read_gqa` (answers ``[]`` where the file has no answer,
    question_type = ``types.structural``); image_id = ``imageId``.  Only the images the
    questions use are written to ``image_dir/<sha256>.<ext>``.
    """
    paths = _files(files, "GQA instructions parquet file", ".parquet")
    image_paths = _files(image_files, "GQA images parquet file", ".parquet")
    image_dir = _check_image_dir(image_dir)
    questions = []
    for path in paths:
        for r, row in enumerate(_parquet_rows(path, "GQA instructions parquet file", ("id", "imageId", "question"),
                                              ("answer", "fullAnswer", "types"))):
            _cell(row, "id", _ID, path, r, "a question id", required=True)
            _cell(row, "imageId", _ID, path, r, "an image id", required=True)
            _cell(row, "question", str, path, r, "the question's text", required=True)
            for column in ("answer", "fullAnswer"):
                _cell(row, column, str, path, r, "text or null")
            _cell(row, "types", dict, path, r, "a {structural, semantic, detailed} struct or null")
            questions.append((path, row))
    wanted = {str(row["imageId"]) for _, row in questions}
    image_of: dict[str, str] = {}
    for path in image_paths:
        for r, row in enumerate(_parquet_rows(path, "GQA images parquet file", ("id", "image"))):
            iid = str(_cell(row, "id", _ID, path, r, "an image id", required=True))
            if iid in wanted and iid not in image_of:
                image = _parquet_image(row["image"], image_dir, path, iid)
                if image is not None:
                    image_of[iid] = image
    missing = sorted(wanted - image_of.keys())
    if missing:
        raise ValueError(f"{len(missing)} image(s) of the GQA questions are in none of the image files "
                         f"{image_paths}, e.g. imageId {missing[:5]}")
    samples = []
    for path, q in questions:
        image_id = str(q["imageId"])
        types = q.get("types") or {}
        samples.append(Sample(
            id=str(q["id"]),
            prompt=q["question"],
            answers=[q["answer"]] if q.get("answer") is not None else [],
            image=image_of[image_id],
            image_id=image_id,
            question_type=types.get("structural") or "",
            metadata={"full_answer": q.get("fullAnswer") or "",
                      "structural": types.get("structural") or "",
                      "semantic": types.get("semantic") or "",
                      "detailed": types.get("detailed") or ""},
        ))
    return _non_empty(samples, paths[0])


def read_coco_captions_parquet(files: str | os.PathLike | Sequence[str | os.PathLike],
                               image_dir: str | os.PathLike) -> list[Sample]:
    """COCO captions from the parquet files of the Hugging Face datasets ``lmms-lab/COCO-Caption``
    (val2014) / ``lmms-lab/COCO-Caption2017``: columns ``question_id`` (the image file name,
    e.g. ``COCO_val2014_000000391895.jpg``), ``image``, ``question``, ``answer`` (the
    captions), ``id``.  These are the official COCO splits, not Karpathy's.

    One Sample per row, as :func:`read_coco_captions`: id = image_id = the COCO image id
    (the number in the file name, as lmms-eval reads it); prompt =
    :data:`COCO_CAPTION_PROMPT`; answers = the captions, stripped (``[]`` where the test
    files have none).  metadata: ``filename``.  Images are written to
    ``image_dir/<sha256>.<ext>``.
    """
    paths = _files(files, "COCO caption parquet file", ".parquet")
    image_dir = _check_image_dir(image_dir)
    samples = []
    for path in paths:
        for r, row in enumerate(_parquet_rows(path, "COCO caption parquet file", ("question_id", "image"),
                                              ("answer",))):
            filename = str(_cell(row, "question_id", _ID, path, r, "the image's file name", required=True))
            captions = _strings(row, "answer", path, r) or []
            digits = filename.rsplit("_", 1)[-1].split(".")[0]
            cid = str(int(digits)) if digits.isdigit() else filename
            samples.append(Sample(
                id=cid,
                prompt=COCO_CAPTION_PROMPT,
                answers=[c.strip() for c in captions],
                image=_parquet_image(row["image"], image_dir, path, filename),
                image_id=cid,
                metadata={"filename": filename},
            ))
    return _non_empty(samples, paths[0])


# ------------------------------------------------------------------ video QA
_VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")

TVQA_FRAME_FOLDERS = {"The Big Bang Theory": "bbt", "Friends": "friends", "How I Met You Mother": "met",
                      "Grey's Anatomy": "grey", "House M.D.": "house", "Castle": "castle"}
"""TVQA ``show_name`` -> the ``{show}`` of its frame folder ``frames_hq/{show}_frames/{vid_name}``."""


def _video_finder(video_dir: str | os.PathLike | None, pattern: str, keys: str) -> Callable[..., str | None]:
    """``fields -> video_dir/pattern.format(**fields)``: that path when it exists (a file or a folder of
    frames), else the first of it + .mp4 / .mkv / .webm / .avi / .mov that is a file, else the path as
    given (the loader's error names it); None without ``video_dir``.  One look-up per distinct name."""
    if video_dir is None:
        return lambda **fields: None
    if not isinstance(pattern, str):
        raise ValueError(f"video_pattern must be a string (a path pattern), got {pattern!r}")
    root, cache = _abs(video_dir), {}

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


def _tvqa_subtitles(path: str | os.PathLike) -> dict[str, list[tuple[float, float, str]]]:
    """``tvqa_preprocessed_subtitles.jsonl`` (released with TVR, jayleicn/TVRetrieval ``data/``): one
    ``{"vid_name", "sub": [{"start", "end", "text"}, ...]}`` per line -> vid_name -> lines."""
    path = _abs(path)
    out: dict[str, list[tuple[float, float, str]]] = {}
    for n, rec in _json_lines(path, "TVQA subtitles file"):
        rid = rec.get("vid_name", f"line {n}") if isinstance(rec, dict) else f"line {n}"
        lines = _field(rec, "sub", path, rid)
        if not isinstance(lines, list):
            raise ValueError(f"{path}: line {n} ({rid!r}): 'sub' should be a list of {{start, end, text}}")
        parsed = []
        for line in lines:
            text = _field(line, "text", path, rid)
            try:
                parsed.append((float(_field(line, "start", path, rid)), float(_field(line, "end", path, rid)),
                               str(text).strip()))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {n} ({rid!r}) has a subtitle with start / end that are not "
                                 f"numbers: {line!r}") from None
        out[str(_field(rec, "vid_name", path, f"line {n}"))] = parsed
    if not out:
        raise ValueError(f"{path} has no subtitles")
    return out


def _tvqa_show(show_name: str, vid_name: str) -> str:
    if show_name in TVQA_FRAME_FOLDERS:
        return TVQA_FRAME_FOLDERS[show_name]
    prefix = vid_name.split("_", 1)[0]
    return prefix if prefix in TVQA_FRAME_FOLDERS.values() else "bbt"  # bbt's vid_names have no prefix


def read_tvqa(questions_file: str | os.PathLike, video_dir: str | os.PathLike | None = None,
              video_pattern: str = "{vid_name}", subtitles_file: str | os.PathLike | None = None,
              clip_to_span: bool = True, fps: float | None = 3.0) -> list[Sample]:
    """TVQA question files as released (``tvqa_qa_release/tvqa_{train,val,test_public}.jsonl``): one
    ``{"qid", "q", "a0".."a4", "answer_idx", "vid_name", "ts", "show_name"}`` per line (no
    ``answer_idx`` in test_public).  The options are ``a0``, ``a1``, ... as many as the record has, so
    HERO's TVQA-shaped How2QA jsonl reads too.

    id = ``str(qid)``; prompt = :func:`scienceqa_prompt` (question, context, options) where the
    context is the clip's subtitles (``subtitles_file`` = TVR's ``tvqa_preprocessed_subtitles.jsonl``;
    with ``clip_to_span`` only the lines overlapping the span; the texts joined by a space, speaker
    tags kept) or empty (``"N/A"``) without a subtitles file; answers = ``[letter of answer_idx]``
    (``[]`` without one); question_type = show_name.

    video = ``video_dir/video_pattern`` formatted with ``vid_name``, ``show_name`` and ``show`` (the
    frame-folder prefix, :data:`TVQA_FRAME_FOLDERS`: the official frames are
    ``frames_hq/{show}_frames/{vid_name}/00001.jpg`` at 3 fps, so ``video_dir: frames_hq,
    video_pattern: "{show}_frames/{vid_name}"``), resolved as a file or folder, else with a video
    extension added (see :data:`IMAGE_PATHS`); None without ``video_dir`` (then only feature files,
    ``features_dir``, give the visual input).  image_id = vid_name.  span = ``ts`` in seconds when
    ``clip_to_span`` and ``ts`` is usable ("NaN-NaN", one side only -> None).  metadata:
    ``num_choices``, ``choices``, ``vid_name``, ``show_name``, ``ts`` (as written), ``fps`` (frame rate
    of the frame folders / feature rows; omitted when ``fps`` is None).
    """
    path = _abs(questions_file)
    fps = _check_fps(fps)
    subs = _tvqa_subtitles(subtitles_file) if subtitles_file is not None else None
    find = _video_finder(video_dir, video_pattern, "{vid_name}, {show_name} and {show}")
    samples = []
    for n, q in _json_lines(path, "TVQA questions file"):
        if not isinstance(q, dict):
            raise ValueError(f"{path}: line {n} is a {type(q).__name__}, expected a JSON object (a question)")
        qid = _field(q, "qid", path, f"line {n}")
        question = str(_field(q, "q", path, qid))
        vid_name = str(_field(q, "vid_name", path, qid))
        choices = []
        while f"a{len(choices)}" in q:
            choices.append(str(q[f"a{len(choices)}"]).strip())
        if len(choices) < 2:
            raise ValueError(f"{path}: question {qid!r} (line {n}) has {len(choices)} options a0, a1, ...; "
                             "a multiple-choice question needs at least 2")
        answers = []
        if q.get("answer_idx") is not None:
            try:
                answer = int(q["answer_idx"])
            except (TypeError, ValueError):
                answer = -1
            if not 0 <= answer < len(choices) or isinstance(q["answer_idx"], bool):
                raise ValueError(f"{path}: question {qid!r} (line {n}) has answer_idx {q['answer_idx']!r} but "
                                 f"{len(choices)} options (a0..a{len(choices) - 1})")
            answers = [string.ascii_uppercase[answer]]
        show_name = str(q.get("show_name") or "")
        span = _tvqa_span(q.get("ts")) if clip_to_span else None
        context = ""
        if subs is not None:
            if vid_name not in subs:
                raise ValueError(f"{path}: question {qid!r} (line {n}) is about clip {vid_name!r}, which has no "
                                 f"subtitles in {_abs(subtitles_file)}; give the full subtitles file or none")
            context = " ".join(t for s, e, t in subs[vid_name]
                               if t and (span is None or (s <= span[1] and e >= span[0])))
        metadata = {"num_choices": len(choices), "choices": choices, _VIDEO_NAME: vid_name,
                    "show_name": show_name, "ts": q.get("ts")}
        if fps is not None:
            metadata["fps"] = fps
        samples.append(Sample(
            id=str(qid),
            prompt=scienceqa_prompt(question, context, choices) + SCIENCEQA_ANSWER_PREFIX,
            answers=answers,
            video=find(vid_name=vid_name, show_name=show_name, show=_tvqa_show(show_name, vid_name)),
            image_id=vid_name,
            span=span,
            question_type=show_name,
            metadata=metadata,
        ))
    return _non_empty(samples, path)


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


def read_how2qa(questions_file: str | os.PathLike, video_dir: str | os.PathLike | None = None,
                video_pattern: str = "{video_id}", clip_to_span: bool = True,
                fps: float | None = None) -> list[Sample]:
    """How2QA CSV as released (``how2QA_{train,val,test_public}_release.csv``, see the comment above: no
    header; ``video_id, [start:end], wrong1, wrong2, wrong3, question, correct``).  A first row whose
    second cell is not ``[start:end]`` is taken as a header and skipped.

    The file lists the correct answer apart from the wrong ones, so the reader fixes the option
    order: the correct answer goes to position :func:`how2qa_correct_position` (a hash of video id,
    segment and question: deterministic, no random state, and spread evenly over A-D), the wrong
    answers fill the other positions in file order.  id = ``f"{split}_{row}"`` (split from the file
    name, ``how2QA_val_release.csv`` -> ``val``; row counts the questions from 0; the files have no
    question id); prompt = :func:`scienceqa_prompt` with an empty context; answers = ``[letter]``;
    question_type = ``""`` (the files have no category).

    video = ``video_dir/video_pattern`` formatted with ``video_id`` (also as ``vid_name``), resolved as
    for :func:`read_tvqa` (a file or folder, else with .mp4 / .mkv / .webm / .avi / .mov added); None
    without ``video_dir``.  image_id = video_id; span = (start, end) in seconds of the whole video when
    ``clip_to_span`` (None when not a finite start <= end).  metadata: ``num_choices``, ``choices``,
    ``vid_name`` (= video_id), ``split``, ``row``, ``question``; ``fps`` only when given (the frame
    rate of frame folders / feature rows).
    """
    path = _abs(questions_file)
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
                    raise ValueError(f"{path}: line {n} has {len(cells)} comma-separated fields; a How2QA CSV has "
                                     f"{_HOW2QA_COLUMNS}: video_id, [start:end], wrong1, wrong2, wrong3, question, "
                                     "correct answer")
                video_id, times, *wrong, question, correct = (c.strip() for c in cells)
                match = _HOW2QA_SPAN.match(times)
                if match is None:
                    if not samples and n == 1:
                        continue  # a header row
                    raise ValueError(f"{path}: line {n} has segment {times!r}; expected [start:end] in seconds, "
                                     "e.g. [7.2:18.0]")
                if not video_id or not question:
                    raise ValueError(f"{path}: line {n} has an empty video id or question")
                row = len(samples)
                at = how2qa_correct_position(f"{video_id}|{times}|{question}", 1 + len(wrong))
                choices = wrong[:at] + [correct] + wrong[at:]
                metadata = {"num_choices": len(choices), "choices": choices, _VIDEO_NAME: video_id,
                            "split": split, "row": row, "question": question}
                if fps is not None:
                    metadata["fps"] = fps
                samples.append(Sample(
                    id=f"{split}_{row}",
                    prompt=scienceqa_prompt(question, "", choices) + SCIENCEQA_ANSWER_PREFIX,
                    answers=[string.ascii_uppercase[at]],
                    video=find(video_id=video_id, vid_name=video_id),
                    image_id=video_id,
                    span=_span(*match.groups()) if clip_to_span else None,
                    metadata=metadata,
                ))
    except UnicodeDecodeError as e:
        raise ValueError(f"How2QA CSV file {path} is not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"How2QA CSV file {path} could not be parsed: {e}") from None
    return _non_empty(samples, path)


# -------------------------------------------------------------------- dispatch
FORMATS: dict[str, Callable[..., list[Sample]]] = {
    "scienceqa": read_scienceqa,
    "vqav2": read_vqav2,
    "gqa": read_gqa,
    "coco_captions": read_coco_captions,
    "llava": read_llava,
    "pope": read_pope,
    "mme": read_mme,
    "mmbench": read_mmbench,
    "scienceqa_parquet": read_scienceqa_parquet,
    "vqav2_parquet": read_vqav2_parquet,
    "gqa_parquet": read_gqa_parquet,
    "coco_captions_parquet": read_coco_captions_parquet,
    "tvqa": read_tvqa,
    "how2qa": read_how2qa,
}

VIDEO_FORMATS = frozenset({"tvqa", "how2qa"})
"""Formats whose samples are videos (a run samples ``num_frames`` frames of each)."""

_PATH_KEYS = {"root", "questions_file", "annotations_file", "image_dir", "karpathy_file",
              "image_root", "json_file", "features_dir", "question_files", "tsv_file", "files", "image_files",
              "video_dir", "subtitles_file"}

IMAGE_PATHS = {
    "scienceqa": "root/images/<split>/<pid>/<image>",
    "vqav2": "image_dir/image_pattern, image_pattern defaulting to 'COCO_{data_subtype}_{image_id:012d}.jpg' "
             "(set image_pattern in the data spec, e.g. '{image_id}.png', if your files are named otherwise)",
    "gqa": "image_dir/<imageId>.jpg",
    "coco_captions": "image_root/<filepath>/<filename> of the Karpathy file",
    "llava": "image_dir/<image> (video_dir/<video>, video_dir defaulting to image_dir) of each conversation",
    "pope": "image_dir/<image> of each question (COCO val2014)",
    "mme": "root/<subtask>/[images/]<image>, matched to its .txt by file stem",
    "mmbench": "image_dir/<sha256>.<ext>, decoded from the TSV's base64 by the reader",
    "scienceqa_parquet": "image_dir/<sha256>.<ext>, written from the parquet's image bytes by the reader",
    "vqav2_parquet": "image_dir/<sha256>.<ext>, written from the parquet's image bytes by the reader",
    "gqa_parquet": "image_dir/<sha256>.<ext>, written from the image files' bytes by the reader",
    "coco_captions_parquet": "image_dir/<sha256>.<ext>, written from the parquet's image bytes by the reader",
    "tvqa": "video_dir/video_pattern (default '{vid_name}'; may use {vid_name}, {show_name}, {show}: for the "
            "official 3 fps frames give video_dir 'frames_hq' and video_pattern '{show}_frames/{vid_name}'), a video "
            "file or a folder of frames, else that path + .mp4/.mkv/.webm/.avi/.mov",
    "how2qa": "video_dir/video_pattern (default '{video_id}', the YouTube id), a video file or a folder of frames, "
              "else that path + .mp4/.mkv/.webm/.avi/.mov",
}
"""How each format finds a sample's image (what an "image not found" error should point at)."""

DEFAULT_FEATURES_PATTERN = "{image_id}.safetensors"


def _use_feature_files(samples: list[Sample], features_dir: str, pattern: str) -> list[Sample]:
    """Point every sample with an image or a video at its pre-extracted feature file instead
    (``features_dir/pattern``, the pattern formatted with ``image_id`` and the sample ``id``; for a
    video that is the video's name).  A video sample keeps its ``span`` and ``metadata["fps"]`` (the
    rate of the feature rows); one read without ``video_dir`` (no ``video``, but
    ``metadata["vid_name"]``) is pointed at its features too."""
    for s in samples:
        if s.image is None and s.video is None and not (s.image_id is not None and _VIDEO_NAME in s.metadata):
            continue
        try:
            name = pattern.format(image_id=s.image_id, id=s.id)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"features_pattern {pattern!r}: {e!r}; it may use {{image_id}} and {{id}}") from None
        s.features, s.image, s.video = os.path.join(_abs(features_dir), name), None, None
    return samples


def load_samples(spec: dict, base_dir: str | os.PathLike | None = None,
                 skipped: dict[str, str] | None = None) -> list[Sample]:
    """Read samples from ``spec = {"format": <name>, **reader_kwargs}``.

    e.g. ``{"format": "scienceqa", "root": "data/sqa", "split": "test"}``.
    With ``base_dir`` (say, a config file's folder) relative paths in the spec
    resolve against it instead of the current directory.

    Every format also takes ``features_dir`` (and ``features_pattern``, default
    ``"{image_id}.safetensors"``; ``{id}`` is the sample id): the samples then read
    pre-extracted features (.safetensors, .npy or .pt, [n_visual, dim]) from there
    instead of encoding their images.  Video samples (tvqa, how2qa: image_id = the video's
    name) read one feature file per video instead, keeping their ``span`` and ``metadata["fps"]``.

    ``skipped`` (a dict): readers that can leave out a malformed record (``read_llava``) do so and
    record it there instead of raising (``--skip-bad``).
    """
    if "format" not in spec:
        raise ValueError(f"dataset spec has no 'format' key; formats: {sorted(FORMATS)}")
    kwargs = {k: v for k, v in spec.items() if k != "format"}
    features_pattern = kwargs.pop("features_pattern", DEFAULT_FEATURES_PATTERN)
    fmt = spec["format"]
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; formats: {sorted(FORMATS)}")
    if base_dir is not None:
        for k in _PATH_KEYS & kwargs.keys():
            if isinstance(kwargs[k], (list, tuple)):  # several files (POPE splits, parquet shards)
                kwargs[k] = [os.path.join(base_dir, v) for v in kwargs[k]]
            elif kwargs[k] is not None:
                kwargs[k] = os.path.join(base_dir, kwargs[k])  # absolute values stay as they are
    features_dir = kwargs.pop("features_dir", None)
    if not isinstance(features_pattern, str) or (features_dir is not None and not isinstance(features_dir, str)):
        raise ValueError("features_dir and features_pattern must be strings (a folder, a file name pattern)")
    if features_dir is not None and not os.path.isdir(features_dir):
        raise FileNotFoundError(f"features_dir not found: {_abs(features_dir)}")
    reader = FORMATS[fmt]
    try:
        if "skipped" in kwargs:  # the caller's argument, not a data-spec key
            raise TypeError("got an unexpected keyword argument 'skipped'")
        inspect.signature(reader).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for dataset format {fmt!r}: {e}") from None
    if skipped is not None and "skipped" in inspect.signature(reader).parameters:
        kwargs["skipped"] = skipped
    samples = reader(**kwargs)
    return _use_feature_files(samples, features_dir, features_pattern) if features_dir is not None else samples
