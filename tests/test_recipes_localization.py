"""The localization study of the demo (memvp.recipes.localization): do the knowledge-locating maps
point at the object a question names, and does blocking the hottest entries matter?"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from test_explain import char_tokenizer, memvp_model

from memvp.datasets import read_vqav2
from memvp.explain import encode_prompt, generate_answer, similarity_maps
from memvp.metrics import normalize_vqa_answer
from memvp.recipes.localization import evaluate_localization, named_color, object_cells
from memvp.recipes.scenes import COLORS, IMAGE_PATTERN, Scene, SceneObject, generate_dataset, load_scenes


def test_object_cells_and_named_color():
    scene = Scene([SceneObject("red", "square", 48, 48), SceneObject("blue", "circle", 30, 100)])
    red = object_cells(scene, scene.objects[0], 7)  # pixels 34..61: inside cell (1, 1) only
    assert red.sum() == 1 and red[1, 1]
    blue = object_cells(scene, scene.objects[1], 7)  # pixels x 16..43, y 86..113: 2 x 2 cells
    assert sorted(zip(*np.nonzero(blue))) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert named_color("Is the gray object at the top or bottom?", list(COLORS)) == "gray"
    assert named_color("What color is it?", list(COLORS)) is None


class GridColours(torch.nn.Module):
    """A stand-in vision encoder: mean colour of each cell of a 3 x 3 grid (and its square)."""

    num_tokens, feature_dim = 9, 8

    def encode(self, paths):
        out = []
        for p in paths:
            rgb = (
                torch.tensor(
                    np.asarray(Image.open(p).convert("RGB").resize((3, 3), Image.BOX)), dtype=torch.float32
                ).reshape(9, 3)
                / 255.0
            )
            out.append(torch.cat([rgb, rgb**2, torch.ones(9, 2)], dim=1))
        return torch.stack(out)


def test_evaluate_localization(tmp_path):
    generate_dataset(tmp_path, n_train=1, n_val=1, n_test=3, questions_per_scene=6, progress=False)
    samples = read_vqav2(
        tmp_path / "questions_test.json", tmp_path / "annotations_test.json", tmp_path / "images", IMAGE_PATTERN
    )
    samples = [s for s in samples if s.metadata["question_type"] in ("shape", "horizontal", "vertical")]
    scenes = load_scenes(tmp_path / "scenes_test.json")
    model, tok, encoder = memvp_model(n_entries=9), char_tokenizer(), GridColours()
    # Make every other question "correct" (target = the model's own answer) so that blocking is measured.
    for i, s in enumerate(samples):
        if i % 2 == 0:
            feats = encoder.encode([s.image])
            answer = generate_answer(
                model, tok, encode_prompt(tok, s.prompt, max_length=77).input_ids, feats, max_new_tokens=3
            )
            samples[i] = dataclasses.replace(s, metadata={**s.metadata, "target": answer})
    result = evaluate_localization(
        model, tok, encoder.encode, samples, scenes, k=2, seed=0, max_length=80, progress=False
    )
    overall, records = result["overall"], result["records"]
    assert overall["questions"] == len(records) == len(samples) == 9
    assert overall["correct_answers"] == sum(r["correct"] for r in records) >= 5
    chance = np.mean(
        [
            object_cells(
                scenes[int(s.image_id)], scenes[int(s.image_id)].find(named_color(s.prompt, list(COLORS))), 3
            ).mean()
            for s in samples
        ]
    )
    assert overall["chance_rate"] == pytest.approx(chance)
    # Each record, recomputed: the object's cells, the answer, the hits of the colour word's map and
    # of the mean map (phi, and |phi|), the top-2 entries of the mean map and how many lie on the object.
    rng = np.random.default_rng(0)  # one draw per question, in order
    for r, s in zip(records, samples):
        scene, color = scenes[int(s.image_id)], named_color(s.prompt, list(COLORS))
        on = object_cells(scene, scene.find(color), 3)
        ids = encode_prompt(tok, s.prompt, max_length=77).input_ids
        feats = encoder.encode([s.image])
        answer = generate_answer(model, tok, ids, feats, max_new_tokens=3)
        assert (r["id"], r["target"], r["answer"]) == (s.id, s.target, answer)
        assert r["correct"] == (normalize_vqa_answer(answer) == normalize_vqa_answer(s.target))
        assert (r["object_cells"], r["chance"]) == (int(on.sum()), pytest.approx(on.mean()))
        assert r["random_blocked"] == rng.choice(9, size=2, replace=False).tolist()
        phi = similarity_maps(model, tok, feats, s.prompt, max_length=77)
        color_tokens = list(next(w for w in phi.words if w.text.lower() == color).tokens)
        for mode, maps in (("phi", phi), ("abs", phi.magnitude())):
            per_layer = phi.per_layer if mode == "phi" else np.abs(phi.per_layer)
            color_map = per_layer.mean(axis=0)[color_tokens].mean(axis=0)  # layers, then the word's tokens
            assert r[f"{mode}_color_hit"] == bool(on.flat[color_map.argmax()])
            assert r[f"{mode}_mean_hit"] == bool(on.flat[maps.mean_map.argmax()])
            flat = maps.mean_map.reshape(-1)  # largest first; equal cells (equal image cells) by index
            top = sorted(range(9), key=lambda i: (-flat[i], i))[:2]
            assert r[f"{mode}_top_blocked"] == top
            assert r[f"{mode}_top_on_object"] == int(on.flat[top].sum())
        if r["correct"]:  # the recorded answers are those of blocked generation
            assert r["phi_answer_top_blocked"] == generate_answer(model, tok, ids, feats, r["phi_top_blocked"], 3)
            assert r["abs_answer_top_blocked"] == generate_answer(model, tok, ids, feats, r["abs_top_blocked"], 3)
            assert r["answer_random_blocked"] == generate_answer(model, tok, ids, feats, r["random_blocked"], 3)
        else:
            assert "answer_random_blocked" not in r and "phi_answer_top_blocked" not in r

    # The summary: every rate is its count over the records (overall and per question type).
    def expected_rates(rs):
        correct = [r for r in rs if r["correct"]]
        out = {
            "questions": len(rs),
            "accuracy": len(correct) / len(rs),
            "correct_answers": len(correct),
            "chance_rate": pytest.approx(np.mean([r["chance"] for r in rs])),
            "changed_by_random2": sum(r["answer_random_blocked"] != r["answer"] for r in correct),
        }
        out["changed_by_random2_rate"] = (
            out["changed_by_random2"] / len(correct) if correct else pytest.approx(float("nan"), nan_ok=True)
        )
        for mode in ("phi", "abs"):
            changed = sum(r[f"{mode}_answer_top_blocked"] != r["answer"] for r in correct)
            out[mode] = {
                "color_word_hit_rate": np.mean([r[f"{mode}_color_hit"] for r in rs]),
                "mean_map_hit_rate": np.mean([r[f"{mode}_mean_hit"] for r in rs]),
                "top2_cells_on_object": sum(r[f"{mode}_top_on_object"] for r in rs) / (2 * len(rs)),
                "changed_by_top2": changed,
                "changed_by_top2_rate": (
                    changed / len(correct) if correct else pytest.approx(float("nan"), nan_ok=True)
                ),
            }
        return out

    assert result["k"] == 2 and overall == expected_rates(records)
    by_type = result["per_type"]
    assert sorted(by_type) == sorted({s.metadata["question_type"] for s in samples})
    for t, rates in by_type.items():
        assert rates == expected_rates([r for r in records if r["type"] == t])
    again = evaluate_localization(
        model, tok, encoder.encode, samples, scenes, k=2, seed=0, max_length=80, progress=False
    )
    assert again["records"] == records  # seeded, deterministic


def test_evaluate_demo_reads_the_demo_layout_and_loads_the_adapter(tiny):
    """The documented route to docs/explain.md's numbers: a demo-layout data folder and a trained adapter."""
    from memvp.cli import main
    from memvp.recipes.localization import evaluate_demo

    assert (
        main(
            [
                "train",
                str(tiny / "train.yaml"),
                "max_steps=1",
                "eval_data=null",
                f"output_dir={tiny / 'run-localization'}",
            ]
        )
        == 0
    )
    result = evaluate_demo(
        tiny / "data",
        tiny / "run-localization" / "adapter",
        max_questions=4,
        seed=0,
        language_model=str(tiny / "lm"),
        vision_encoder=str(tiny / "vit"),
        progress=False,
    )
    assert result["overall"]["questions"] == len(result["records"]) == 4
    assert {r["type"] for r in result["records"]} <= {"shape", "horizontal", "vertical"}
    assert result["question_types"] == ["shape", "horizontal", "vertical"] and result["seed"] == 0
