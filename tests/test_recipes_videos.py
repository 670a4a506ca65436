"""The synthetic video set (its clips tell what their answers say) and ``memvp video-demo``'s wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from memvp.cli import main
from memvp.datasets import load_samples
from memvp.recipes.videos import (
    ANSWERS,
    CLIP_FRAMES,
    NUM_FRAMES,
    QUESTIONS,
    SIZE,
    _draw,
    generate_videos,
    story_accuracy,
    story_frames,
)
from memvp.vision import VideoClip, read_frames

PER_UNIT = CLIP_FRAMES // NUM_FRAMES


def _ink(frame: Image.Image) -> np.ndarray:
    return np.asarray(frame.convert("L")) < 200  # the shape's pixels on the white background


def _units(frames):
    return frames[::PER_UNIT]


@pytest.mark.parametrize("answer", ANSWERS["grow"])
def test_grow_clips_grow_or_shrink(answer):
    areas = [int(_ink(f).sum()) for f in _units(story_frames("grow", answer, np.random.default_rng(1)))]
    assert areas == sorted(areas, reverse=answer == "shrink") and len(set(areas)) == NUM_FRAMES


@pytest.mark.parametrize("answer", ANSWERS["count"])
def test_count_clips_show_the_circle_that_many_separate_times(answer):
    for seed in range(5):
        visible = [bool(_ink(f).any()) for f in _units(story_frames("count", answer, np.random.default_rng(seed)))]
        runs = sum(v and (i == 0 or not visible[i - 1]) for i, v in enumerate(visible))
        assert runs == ANSWERS["count"].index(answer) + 1


@pytest.mark.parametrize("answer", ANSWERS["last"])
def test_last_clips_end_with_the_answer_shape(answer):
    frames = _units(story_frames("last", answer, np.random.default_rng(2)))
    mask = _ink(frames[-1])
    ys, xs = np.nonzero(mask)
    centre = (int(round((xs.min() + xs.max()) / 2)), int(round((ys.min() + ys.max()) / 2)))

    def overlap(shape):
        canvas = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
        _draw(canvas, shape, centre, 40, (0, 0, 0))
        drawn = _ink(canvas)
        return (drawn & mask).sum() / (drawn | mask).sum()

    assert max(ANSWERS["last"], key=overlap) == answer
    assert len({int(_ink(f).sum()) for f in frames[::2]}) == 3  # three different shapes in turn


def test_generated_set_reads_as_llava_video_conversations_and_scores_per_story(tmp_path):
    generate_videos(tmp_path, n_train=6, n_test=3, seed=0, progress=False)
    samples = load_samples(
        {"format": "llava", "json_file": str(tmp_path / "llava_val.json"), "image_dir": str(tmp_path / "videos")}
    )
    tvqa = load_samples(
        {"format": "tvqa", "questions_file": str(tmp_path / "tvqa_val.jsonl"), "video_dir": str(tmp_path / "videos")}
    )
    conversations = json.loads((tmp_path / "llava_val.json").read_text())
    stories = [c["story"] for c in conversations]
    assert stories == [s.question_type for s in tvqa] == ["grow", "last", "count"]
    for s, t, story in zip(samples, tvqa, stories):  # the same clip and answer in both layouts
        assert s.is_video and s.video == t.video and s.span is None and s.prompt == QUESTIONS[story]
        assert s.answers[0] == t.metadata["choices"]["ABCDE".index(t.answers[0])] and s.answers[0] in ANSWERS[story]
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({samples[0].id: samples[0].answers[0].upper() + ".", samples[1].id: "star"}))
    got = story_accuracy(tmp_path / "llava_val.json", predictions)  # the third has no prediction: wrong
    assert got == {"overall": 100 / 3, "count": 3, "per_type": {"count": 0.0, "grow": 100.0, "last": 0.0}}


def test_generated_set_reads_as_tvqa_and_decodes_to_its_frames(tmp_path):
    summary = generate_videos(tmp_path, n_train=6, n_test=3, seed=0, progress=False)
    samples = load_samples(
        {"format": "tvqa", "questions_file": str(tmp_path / "tvqa_train.jsonl"), "video_dir": str(tmp_path / "videos")}
    )
    assert len(samples) == 6 and summary["n_test"] == 3
    for s in samples:
        right = s.metadata["choices"]["ABCDE".index(s.answers[0])]
        assert right in ANSWERS[s.question_type] and s.metadata["num_choices"] == 5
        assert s.video.endswith(".mp4") and s.span == (0.0, CLIP_FRAMES / 6)
    frames = read_frames(VideoClip(samples[0].video, samples[0].span), NUM_FRAMES)
    assert len(frames) == NUM_FRAMES and frames[0].size == (SIZE, SIZE)
    letters = {s.answers[0] for s in samples}
    assert len(letters) > 1  # options shuffled: the letter alone gives nothing away


@pytest.mark.slow  # the real SmolLM2 and EfficientNet-Lite0
def test_quick_video_demo_trains_both_arms_and_writes_the_table(tmp_path, capsys):
    assert main(["video-demo", "--quick", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| question | answer prior | w/o visual prompts | MemVP |" in printed
    result = json.loads((tmp_path / "results.json").read_text())
    runs = result["runs"]
    assert [runs[a]["use_images"] for a in ("no_visual_prompts", "memvp")] == [False, True]
    assert all(runs[a]["eval"]["count"] == 6 for a in runs)
    assert (tmp_path / "memvp" / "adapter" / "memvp_model.safetensors").is_file()
    assert set(result["per_story"]["memvp"]["per_type"]) == {"grow", "last", "count"}
    for arm in runs:  # the ablation's adapter carries the mean too (it could be given images later)
        saved = json.loads((tmp_path / arm / "adapter" / "memvp_config.json").read_text())["config"]
        assert saved["center_features"] and len(saved["feature_mean"]) == saved["visual_dim"]
    assert 0 < runs["memvp"]["visual_feature_common_share"] < 1
    assert len(list((tmp_path / "data" / "videos").glob("*.mp4"))) == 18
