"""memvp instruct-demo's data and scoring (recipes/instruct.py): LLaVA-layout files from the demo's
scenes, read back by the LLaVA reader, and the word-level scoring of held-out answers."""

from __future__ import annotations

import json

from memvp.datasets import read_llava
from memvp.recipes.instruct import CAPTION_PROMPT, QUESTIONS, caption, score_answer, write_llava_files
from memvp.recipes.scenes import generate_dataset, load_scenes


def test_llava_files_hold_captions_conversations_and_held_out_questions(tmp_path):
    generate_dataset(
        tmp_path,
        n_train=4,
        n_val=1,
        n_test=2,
        questions_per_scene=1,
        num_objects=1,
        question_types=["shape"],
        progress=False,
    )
    files = write_llava_files(tmp_path, seed=0)
    train = load_scenes(tmp_path / "scenes_train.json")
    captions = read_llava(files["captions"], tmp_path / "images")
    assert [s.prompt for s in captions] == [CAPTION_PROMPT] * 4  # "<image>\n" removed, as LLaVA does
    assert [s.target for s in captions] == [caption(train[i]) for i in sorted(train)]
    chats = read_llava(files["conversations"], tmp_path / "images", per_conversation=True)
    assert len(chats) == 4 and all(len(s.metadata["history"]) == 2 for s in chats)  # three turns each
    raw = json.loads(files["conversations"].read_text())
    assert all(
        c["conversations"][0]["value"].startswith("<image>\n")
        and not c["conversations"][2]["value"].startswith("<image>")
        for c in raw
    )
    held_out = read_llava(files["held_out"], tmp_path / "images")
    assert len(held_out) == 2 * (1 + len(QUESTIONS)) and all(s.image for s in held_out)
    test = load_scenes(tmp_path / "scenes_test.json")
    for s in held_out:  # the reference answers score as right
        assert score_answer(s.target, s.id, test), (s.id, s.target)


def test_scoring_needs_the_right_word_and_no_wrong_one(tmp_path):
    generate_dataset(
        tmp_path,
        n_train=1,
        n_val=1,
        n_test=1,
        questions_per_scene=1,
        num_objects=1,
        question_types=["shape"],
        progress=False,
    )
    ((image_id, scene),) = load_scenes(tmp_path / "scenes_test.json").items()
    scenes = {image_id: scene}
    obj = scene.objects[0]
    other = "circle" if obj.shape == "square" else "square"
    assert score_answer(f"It is a {obj.shape}.", f"{image_id}-shape_0", scenes)
    assert not score_answer(f"A {obj.shape} or a {other}.", f"{image_id}-shape_0", scenes)
    assert not score_answer("I do not know.", f"{image_id}-shape_0", scenes)
    side = "left" if obj.x < scene.width / 2 else "right"
    half = "top" if obj.y < scene.height / 2 else "bottom"
    assert score_answer(f"A {obj.color} {obj.shape} at the {half} {side}.", f"{image_id}-caption_0", scenes)
    assert not score_answer(f"A {obj.color} {obj.shape} at the {half}.", f"{image_id}-caption_0", scenes)
