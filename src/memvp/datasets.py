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
"""

from __future__ import annotations

import inspect
import json
import os
import string
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "Sample",
    "COCO_CAPTION_PROMPT",
    "FORMATS",
    "scienceqa_prompt",
    "read_scienceqa",
    "read_vqav2",
    "read_gqa",
    "read_coco_captions",
    "read_llava",
    "load_samples",
    "IMAGE_PATHS",
    "DEFAULT_FEATURES_PATTERN",
]

COCO_CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."


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

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.features is not None

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


# ------------------------------------------------------------------- ScienceQA
def scienceqa_prompt(question: str, hint: str, choices: list[str]) -> str:
    """The ``QCM-A`` prompt of MemVP / LaVIN (``util/base_prompt.py``).

    ``build_prompt`` gives ``"Question: {q}\\nContext: {c}\\nOptions: (A) x (B) y\\nResponse:"``
    (context = hint, ``"N/A"`` when empty; double spaces collapsed once, then
    stripped) and MemVP's ``eval.py`` appends ``"The answer is"`` with no space;
    the answer is then the option letter.  MemVP appends an optional image
    caption to the context (``use_caption``); no captions are used here.
    """
    context = hint.strip() or "N/A"
    options = " ".join(f"({string.ascii_uppercase[i]}) {c}" for i, c in enumerate(choices))
    text = f"\nQuestion: {question}\nContext: {context}\nOptions: {options}\nResponse:"
    return text.replace("  ", " ").strip() + "The answer is"


def read_scienceqa(root: str | os.PathLike, split: str) -> list[Sample]:
    """ScienceQA as released: ``root/problems.json``, ``root/pid_splits.json``,
    ``root/images/<split>/<pid>/<image>``.

    answers = ``[letter]``; question_type = subject; questions without an image
    are kept with ``image=None``.  metadata: ``subject``, ``grade``,
    ``has_text_context`` (hint non-empty), ``has_image_context``,
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
        hint = p.get("hint") or ""
        image_name = p.get("image")
        image = os.path.join(root, "images", split, pid, image_name) if image_name else None
        subject = p.get("subject", "")
        samples.append(Sample(
            id=pid,
            prompt=scienceqa_prompt(_field(p, "question", problems_file, pid), hint, choices),
            answers=[string.ascii_uppercase[answer]],
            image=image,
            image_id=pid if image else None,
            question_type=subject,
            metadata={
                "subject": subject,
                "grade": p.get("grade", ""),
                "has_text_context": bool(hint.strip()),
                "has_image_context": image is not None,
                "num_choices": len(choices),
                "choices": choices,
            },
        ))
    return _non_empty(samples, splits_file, split)


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
def read_llava(json_file: str | os.PathLike, image_dir: str | os.PathLike) -> list[Sample]:
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
    """
    data = _expect(_load_json(json_file, "LLaVA conversation file"), list, json_file,
                   "a list of conversations")
    image_dir = _abs(image_dir)
    samples = []
    for entry in data:
        cid = str(_field(entry, "id", json_file, entry))
        convs = _field(entry, "conversations", json_file, cid)
        image_name = entry.get("image")
        image = os.path.join(image_dir, image_name) if image_name else None
        if len(convs) % 2:
            raise ValueError(f"{_abs(json_file)}: conversation {cid!r} has an odd number of messages")
        history: list[list[str]] = []
        for turn in range(len(convs) // 2):
            human, gpt = convs[2 * turn], convs[2 * turn + 1]
            if human.get("from") != "human" or gpt.get("from") != "gpt":
                raise ValueError(f"{_abs(json_file)}: conversation {cid!r} turn {turn} is not "
                                 f"human -> gpt (got {human.get('from')!r} -> {gpt.get('from')!r})")
            question = _field(human, "value", json_file, cid).replace("<image>", "").strip()
            answer = _field(gpt, "value", json_file, cid)
            samples.append(Sample(
                id=f"{cid}_{turn}",
                prompt=question,
                answers=[answer],
                image=image,
                image_id=image_name if image else None,
                metadata={"conversation_id": cid, "turn": turn, "history": [list(h) for h in history]},
            ))
            history.append([question, answer])
    return _non_empty(samples, json_file)


# -------------------------------------------------------------------- dispatch
FORMATS: dict[str, Callable[..., list[Sample]]] = {
    "scienceqa": read_scienceqa,
    "vqav2": read_vqav2,
    "gqa": read_gqa,
    "coco_captions": read_coco_captions,
    "llava": read_llava,
}

_PATH_KEYS = {"root", "questions_file", "annotations_file", "image_dir", "karpathy_file",
              "image_root", "json_file", "features_dir"}

IMAGE_PATHS = {
    "scienceqa": "root/images/<split>/<pid>/<image>",
    "vqav2": "image_dir/image_pattern, image_pattern defaulting to 'COCO_{data_subtype}_{image_id:012d}.jpg' "
             "(set image_pattern in the data spec, e.g. '{image_id}.png', if your files are named otherwise)",
    "gqa": "image_dir/<imageId>.jpg",
    "coco_captions": "image_root/<filepath>/<filename> of the Karpathy file",
    "llava": "image_dir/<image> of each conversation",
}
"""How each format finds a sample's image (what an "image not found" error should point at)."""

DEFAULT_FEATURES_PATTERN = "{image_id}.safetensors"


def _use_feature_files(samples: list[Sample], features_dir: str, pattern: str) -> list[Sample]:
    """Point every sample with an image at its pre-extracted feature file instead
    (``features_dir/pattern``, the pattern formatted with ``image_id`` and the sample ``id``)."""
    for s in samples:
        if s.image is None:
            continue
        try:
            name = pattern.format(image_id=s.image_id, id=s.id)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"features_pattern {pattern!r}: {e!r}; it may use {{image_id}} and {{id}}") from None
        s.features, s.image = os.path.join(_abs(features_dir), name), None
    return samples


def load_samples(spec: dict, base_dir: str | os.PathLike | None = None) -> list[Sample]:
    """Read samples from ``spec = {"format": <name>, **reader_kwargs}``.

    e.g. ``{"format": "scienceqa", "root": "data/sqa", "split": "test"}``.
    With ``base_dir`` (say, a config file's folder) relative paths in the spec
    resolve against it instead of the current directory.

    Every format also takes ``features_dir`` (and ``features_pattern``, default
    ``"{image_id}.safetensors"``; ``{id}`` is the sample id): the samples then read
    pre-extracted features (.safetensors, .npy or .pt, [n_visual, dim]) from there
    instead of encoding their images.
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
            if kwargs[k] is not None:
                kwargs[k] = os.path.join(base_dir, kwargs[k])  # absolute values stay as they are
    features_dir = kwargs.pop("features_dir", None)
    if not isinstance(features_pattern, str) or (features_dir is not None and not isinstance(features_dir, str)):
        raise ValueError("features_dir and features_pattern must be strings (a folder, a file name pattern)")
    if features_dir is not None and not os.path.isdir(features_dir):
        raise FileNotFoundError(f"features_dir not found: {_abs(features_dir)}")
    reader = FORMATS[fmt]
    try:
        inspect.signature(reader).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for dataset format {fmt!r}: {e}") from None
    samples = reader(**kwargs)
    return _use_feature_files(samples, features_dir, features_pattern) if features_dir is not None else samples
