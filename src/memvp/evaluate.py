"""Score predictions with the metric of each task (by the dataset format of the samples)."""

from __future__ import annotations

from collections.abc import Sequence

from .datasets import Sample
from .metrics import (
    cider_d,
    gqa_accuracy,
    mmbench_accuracy,
    mme_scores,
    multiple_choice_accuracy,
    pope_metrics,
    scienceqa_accuracy,
    vqa_accuracy,
)

# The parquet readers give the samples of the format they are named after.
_SAME_METRIC = {"scienceqa_parquet": "scienceqa", "vqav2_parquet": "vqav2", "gqa_parquet": "gqa",
                "coco_captions_parquet": "coco_captions"}
TASKS = ("scienceqa", "vqav2", "gqa", "coco_captions", "llava", "pope", "mme", "mmbench", "tvqa", "how2qa",
         *_SAME_METRIC)


def _require_answers(samples: Sequence[Sample], name: str) -> None:
    """Refuse to score a split without reference answers (a test file: its answers are not released)."""
    unanswered = [s.id for s in samples if not s.answers]
    if unanswered:
        raise ValueError(f"{len(unanswered)} {name} question(s) have no answer (a test file? its answers are not "
                         f"released), e.g. {unanswered[:5]}")


def score(task: str, samples: Sequence[Sample], predictions: dict[str, str], rule: str = "default") -> dict:
    """Metrics for ``task`` (a dataset format, see ``TASKS``) of the samples that have a prediction.

    scienceqa: :func:`~memvp.metrics.scienceqa_accuracy`; vqav2: ``vqa_accuracy``; gqa and llava:
    ``gqa_accuracy`` (exact match); coco_captions: CIDEr-D; pope: ``pope_metrics`` (per split and
    mean); mme: ``mme_scores`` (perception / cognition); mmbench: ``mmbench_accuracy`` (circular:
    a question is right when all its scored rotations are); tvqa, how2qa: ``multiple_choice_accuracy``
    (per question_type: TVQA's show, How2QA's ``""``).  The ``*_parquet`` formats are scored as the
    format they are named after. ``rule``: how ScienceQA's option letter is read
    (``metrics.extract_choice_letter``: 'default' or the official MemVP code's 'memvp').
    """
    task = _SAME_METRIC.get(task, task)
    samples = [s for s in samples if s.id in predictions]
    preds = {s.id: predictions[s.id] for s in samples}
    if task == "scienceqa":
        return scienceqa_accuracy([{
            "prediction": preds[s.id], "answer": s.answers[0], "num_choices": s.metadata["num_choices"],
            "subject": s.metadata["subject"], "grade": s.metadata["grade"],
            "has_text_context": s.metadata["has_text_context"],
            "has_image_context": s.metadata["has_image_context"]} for s in samples], rule)
    if task == "pope":
        return pope_metrics([{"prediction": preds[s.id], "label": s.answers[0], "split": s.metadata["split"]}
                             for s in samples])
    if task == "mme":
        return mme_scores([{"prediction": preds[s.id], "answer": s.answers[0], "subtask": s.metadata["subtask"],
                            "image": s.metadata["image_key"]} for s in samples])
    if task == "mmbench":
        _require_answers(samples, "MMBench")
        return mmbench_accuracy([{
            "prediction": preds[s.id], "answer": s.answers[0], "num_choices": s.metadata["num_choices"],
            "group": s.metadata["circular_group"], "rotation": s.metadata["rotation"],
            "category": s.metadata["category"], "l2_category": s.metadata["l2_category"]} for s in samples])
    if task in ("tvqa", "how2qa"):
        _require_answers(samples, task)
        return multiple_choice_accuracy([{
            "prediction": preds[s.id], "answer": s.answers[0], "num_choices": s.metadata["num_choices"],
            "question_type": s.question_type} for s in samples])
    refs = {s.id: s.answers for s in samples}
    types = {s.id: s.question_type for s in samples}
    if task == "vqav2":
        return vqa_accuracy(preds, refs, types)
    if task in ("gqa", "llava"):  # exact match (LLaVA conversations have no standard metric)
        return gqa_accuracy(preds, {i: r[0] for i, r in refs.items()}, types)
    if task == "coco_captions":
        return {"CIDEr-D": cider_d(preds, refs), "count": len(preds)}
    raise ValueError(f"no metric for task {task!r}; tasks: {', '.join(TASKS)}")
