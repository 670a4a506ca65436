"""Does the demo model look at the object it is asked about? The localization study of
``docs/explain.md``: the knowledge-locating maps of ``memvp.explain`` scored against the demo's
scene geometry, and answers with the hottest entries blocked against randomly blocked ones."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets import Sample
from ..explain import WORD, generate_answer, hottest_cells, load_explainer, similarity_maps, top_entries
from ..inputs import DEFAULT_PROMPT_TEMPLATE
from . import DEMO_VISION_ENCODER


def object_cells(scene, obj, side: int) -> np.ndarray:
    """[side, side] bool: grid cells holding at least one pixel of ``obj``, drawn as the demo draws it."""
    from .scenes import BACKGROUND, Scene, draw_scene

    pixels = np.asarray(draw_scene(Scene([obj], scene.width, scene.height)))
    mask = (pixels != np.asarray(BACKGROUND, dtype=pixels.dtype)).any(axis=-1)
    rows = np.linspace(0, scene.height, side + 1)
    cols = np.linspace(0, scene.width, side + 1)
    cells = np.zeros((side, side), dtype=bool)
    for r in range(side):
        for c in range(side):
            block = mask[math.floor(rows[r]) : math.ceil(rows[r + 1]), math.floor(cols[c]) : math.ceil(cols[c + 1])]
            cells[r, c] = bool(block.any())
    return cells


def named_color(question: str, colors: Sequence[str]) -> str | None:
    """The one colour word of a demo question ("What shape is the red object?" -> "red")."""
    found = [w for w in WORD.findall(question.lower()) if w in colors]
    return found[0] if len(found) == 1 else None


MODES = ("phi", "abs")  # maps of phi (the paper's) and of |phi| (SimilarityMaps.magnitude)


def evaluate_localization(
    model,
    tokenizer,
    encode: Callable[[list[str]], torch.Tensor],
    samples: list[Sample],
    scenes: dict,
    k: int = 2,
    seed: int = 0,
    max_new_tokens: int = 3,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    max_length: int = 48,
    progress: bool = True,
) -> dict[str, Any]:
    """Does the hottest cell lie on the object the question names, and does blocking matter?

    For each demo question naming one object by colour, and for maps of phi and of |phi|:
    (a) whether the hottest cell of the colour word's map, and of the mean map of all the
    question's words, is a cell the object covers, against chance (the fraction of cells the
    object covers); (b) for the questions answered correctly, whether blocking the top-``k``
    entries (ranked by the mean map of all words, as ``explain`` does) changes the answer, against
    blocking ``k`` entries drawn uniformly at random (seeded, one draw per question).
    ``encode(image_paths)`` gives [n, n_visual, dim] features; ``scenes`` maps image id -> Scene.
    """
    from tqdm.auto import tqdm

    from ..metrics import normalize_vqa_answer
    from .scenes import COLORS

    if k < 1:
        raise ValueError(f"k must be >= 1 to measure blocking, got {k}")
    rng = np.random.default_rng(seed)
    features: dict[str, torch.Tensor] = {}
    paths = sorted({s.image for s in samples})
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            chunk = paths[i : i + 32]
            for p, f in zip(chunk, encode(chunk)):
                features[p] = f.unsqueeze(0)
    records = []
    for s in tqdm(samples, desc="explaining", disable=not progress):
        scene = scenes[int(s.image_id)]
        color = named_color(s.prompt, list(COLORS))
        if color is None:
            raise ValueError(f"question {s.id} ({s.prompt!r}) does not name exactly one object by colour")
        feats = features[s.image]
        phi = similarity_maps(model, tokenizer, feats, s.prompt, None, template, max_length - max_new_tokens)
        ids = phi.encoded.input_ids
        answer = generate_answer(model, tokenizer, ids, feats, None, max_new_tokens)
        side = phi.grid_side
        on = object_cells(scene, scene.find(color), side)
        correct = normalize_vqa_answer(answer) == normalize_vqa_answer(s.target or "")
        random_entries = [int(e) for e in rng.choice(side * side, size=k, replace=False)]
        record = {
            "id": s.id,
            "question": s.prompt,
            "type": s.metadata.get("question_type", s.question_type),
            "target": s.target,
            "answer": answer,
            "correct": correct,
            "object_cells": int(on.sum()),
            "chance": float(on.mean()),
            "random_blocked": random_entries,
        }
        if correct:
            record["answer_random_blocked"] = generate_answer(
                model, tokenizer, ids, feats, random_entries, max_new_tokens
            )
        color_index = [w.text.lower() for w in phi.words].index(color)
        for mode, maps in zip(MODES, (phi, phi.magnitude())):
            (cr, cc), (mr, mc) = hottest_cells(maps.word_maps[color_index]), hottest_cells(maps.mean_map)
            top = top_entries(maps.mean_map, k)
            record.update(
                {
                    f"{mode}_color_hit": bool(on[cr, cc]),
                    f"{mode}_mean_hit": bool(on[mr, mc]),
                    f"{mode}_top_blocked": top,
                    f"{mode}_top_on_object": int(sum(on.flat[e] for e in top)),
                }
            )
            if correct:
                record[f"{mode}_answer_top_blocked"] = generate_answer(
                    model, tokenizer, ids, feats, top, max_new_tokens
                )
        records.append(record)
    return {**summarize_localization(records, k), "records": records}


def summarize_localization(records: list[dict], k: int) -> dict[str, Any]:
    """Rates (and counts) over the records of ``evaluate_localization``, overall and per question type."""

    def rate(count: int, total: int) -> float:
        return count / total if total else float("nan")

    def rates(rs: list[dict]) -> dict[str, Any]:
        n = len(rs)
        correct = [r for r in rs if r["correct"]]
        random_changed = sum(r["answer_random_blocked"] != r["answer"] for r in correct)
        out = {
            "questions": n,
            "accuracy": rate(len(correct), n),
            "chance_rate": rate(sum(r["chance"] for r in rs), n),
            "correct_answers": len(correct),
            f"changed_by_random{k}": random_changed,
            f"changed_by_random{k}_rate": rate(random_changed, len(correct)),
        }
        for mode in MODES:
            changed = sum(r[f"{mode}_answer_top_blocked"] != r["answer"] for r in correct)
            out[mode] = {
                "color_word_hit_rate": rate(sum(r[f"{mode}_color_hit"] for r in rs), n),
                "mean_map_hit_rate": rate(sum(r[f"{mode}_mean_hit"] for r in rs), n),
                f"top{k}_cells_on_object": rate(sum(r[f"{mode}_top_on_object"] for r in rs), k * n),
                f"changed_by_top{k}": changed,
                f"changed_by_top{k}_rate": rate(changed, len(correct)),
            }
        return out

    types = sorted({r["type"] for r in records})
    return {
        "k": k,
        "overall": rates(records),
        "per_type": {t: rates([r for r in records if r["type"] == t]) for t in types},
    }


def evaluate_demo(
    data_dir: str | Path,
    adapter: str | Path,
    max_questions: int = 300,
    question_types: Sequence[str] = ("shape", "horizontal", "vertical"),
    k: int = 2,
    seed: int = 0,
    language_model: str = "smollm2",
    vision_encoder: str = DEMO_VISION_ENCODER,
    progress: bool = True,
) -> dict[str, Any]:
    """``evaluate_localization`` on a seeded subset of the demo's held-out questions of ``question_types``.

    These types ask about the named object alone (its shape, side, or half), so it is the object
    the answer needs. The demo's settings are used: max_length 48, 3 answer tokens, greedy.
    """
    import random

    from ..datasets import read_vqav2
    from .scenes import IMAGE_PATTERN, load_scenes

    data_dir = Path(data_dir)
    samples = read_vqav2(
        data_dir / "questions_test.json", data_dir / "annotations_test.json", data_dir / "images", IMAGE_PATTERN
    )
    samples = [s for s in samples if s.metadata.get("question_type") in set(question_types)]
    if max_questions and len(samples) > max_questions:
        samples = sorted(random.Random(seed).sample(samples, max_questions), key=lambda s: int(s.id))
    model, tokenizer, encoder = load_explainer(adapter, vision_encoder, language_model)
    result = evaluate_localization(
        model,
        tokenizer,
        encoder.encode,
        samples,
        load_scenes(data_dir / "scenes_test.json"),
        k=k,
        seed=seed,
        progress=progress,
    )
    return {
        "data_dir": str(data_dir),
        "adapter": str(adapter),
        "question_types": list(question_types),
        "seed": seed,
        **result,
    }


__all__ = ["object_cells", "named_color", "MODES", "evaluate_localization", "summarize_localization", "evaluate_demo"]
