"""MME (the MemVP paper's Table 9): the released folders of yes / no questions, scored as perception and
cognition by the official ``eval_tool/calculation.py`` rules, and written as that tool reads them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..metrics import mme_scores
from . import io
from .outputs import OutputFiles, llava_answers, one_line
from .registry import DatasetFormat, register_format
from .schema import LLAVA_SHORT_ANSWER_PROMPT, Sample

_MME_YES_NO = "Please answer yes or no."


def _subtask_folders(root: str, subtask: str) -> tuple[str, str]:
    """(the folder of a subtask's images, the folder of its question files), for either released layout."""
    folder = os.path.join(root, subtask)
    if not os.path.isdir(os.path.join(folder, "images")):
        return folder, folder
    image_folder, qa_folder = os.path.join(folder, "images"), os.path.join(folder, "questions_answers_YN")
    if not os.path.isdir(qa_folder):
        raise FileNotFoundError(f"MME subtask {subtask!r}: {folder} has images/ but no questions_answers_YN/")
    return image_folder, qa_folder


def _question_lines(path: str, by_stem: dict[str, str]) -> list[tuple[str, str, str]]:
    """(image name, question, answer) of each question of an MME ``.txt`` file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"MME question file {path} is not UTF-8 text (byte {e.start})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) == 2:
            stem = os.path.basename(path)[: -len(".txt")]
            image_name, (question, answer) = by_stem.get(stem, f"{stem}.jpg"), fields
        elif len(fields) == 3:
            image_name, question, answer = fields
        else:
            raise ValueError(
                f"{path}: line {n} has {len(fields)} tab-separated fields; expected "
                "'question<TAB>answer' (or 'image<TAB>question<TAB>answer')"
            )
        if answer.strip().lower() not in ("yes", "no"):
            raise ValueError(f"{path}: line {n} has answer {answer!r}; MME answers are Yes or No")
        out.append((image_name, question, answer))
    return out


def read_mme(
    root: str | os.PathLike,
    answer_prompt: str | None = LLAVA_SHORT_ANSWER_PROMPT,
    subtasks: Sequence[str] | None = None,
) -> list[Sample]:
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
    root = io.absolute(root)
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
        image_folder, qa_folder = _subtask_folders(root, subtask)
        by_stem: dict[str, str] = {}
        for name in sorted(os.listdir(image_folder)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in io.IMAGE_EXTENSIONS:
                by_stem.setdefault(stem, name)
        counts: dict[str, int] = {}
        for txt in sorted(n for n in os.listdir(qa_folder) if n.endswith(".txt")):
            for image_name, question, answer in _question_lines(os.path.join(qa_folder, txt), by_stem):
                k = counts.get(image_name, 0)
                counts[image_name] = k + 1
                prompt = question
                if answer_prompt:
                    prompt = question.strip().removesuffix(_MME_YES_NO).rstrip() + "\n" + answer_prompt
                image = os.path.join(image_folder, image_name)
                samples.append(
                    Sample(
                        id=f"{subtask}/{image_name}/{k}",
                        prompt=prompt,
                        answers=[answer.strip()],
                        image=image,
                        image_id=os.path.relpath(image, root).replace(os.sep, "/"),
                        question_type=subtask,
                        metadata={"subtask": subtask, "image_key": f"{subtask}/{image_name}", "question": question},
                    )
                )
    return io.non_empty(samples, root)


def score_mme(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """:func:`~memvp.metrics.mme_scores`: acc, acc+ and score per subtask, perception and cognition totals."""
    return mme_scores(
        [
            {
                "prediction": predictions[s.id],
                "answer": s.answers[0],
                "subtask": s.metadata["subtask"],
                "image": s.metadata["image_key"],
            }
            for s in samples
        ]
    )


MME_FOLDER = "mme"


def write_mme(samples: Sequence[Sample], predictions: Mapping[str, str], model_id: str) -> OutputFiles:
    """The results folder of MME's ``eval_tool/calculation.py`` (``--results_dir mme``), as LLaVA's
    ``convert_answer_to_mme.py`` writes it: ``mme/<subtask>.txt``, one line per question, ``image name<TAB>
    question<TAB>ground truth<TAB>prediction`` (the question and answer as the MME file has them, the
    prediction on one line without tabs), the two questions of an image on consecutive lines as the tool
    pairs them. The tool reads all 14 subtasks' files."""
    lines: dict[str, list[str]] = {}
    for s in samples:
        image = s.metadata["image_key"].split("/", 1)[1]
        fields = (image, s.metadata["question"].strip(), s.answers[0], one_line(predictions.get(s.id, "")))
        lines.setdefault(s.metadata["subtask"], []).append("\t".join(fields) + "\n")
    return {f"{MME_FOLDER}/{subtask}.txt": "".join(rows) for subtask, rows in lines.items()}


# question_id "<subtask>/<image>", as in LLaVA's llava_mme.jsonl: its convert_answer_to_mme.py finds the
# subtask and the question file from it, the ground truth from the prompt.
_WRITERS = {"llava_jsonl": llava_answers(question_id=lambda s: s.metadata["image_key"]), "mme": write_mme}

register_format(
    DatasetFormat(
        "mme",
        read_mme,
        {"root"},
        "root/<subtask>/[images/]<image>, matched to its .txt by file stem",
        score_mme,
        writers=_WRITERS,
    )
)
