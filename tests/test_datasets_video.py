"""TVQA and How2QA readers (video QA, the MemVP paper's Table 8) and their multiple-choice scoring;
video conversations in the LLaVA layout (LLaVA-NeXT-Video, Video-LLaVA).

Fixtures are written here in the released formats: TVQA's ``tvqa_*.jsonl`` (every official field) and
TVR's ``tvqa_preprocessed_subtitles.jsonl``; How2QA's header-less ``how2QA_*_release.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections import Counter

import pytest

from memvp.datasets import (
    FORMATS,
    how2qa_correct_position,
    load_samples,
    read_how2qa,
    read_llava,
    read_tvqa,
    score,
)
from memvp.metrics import multiple_choice_accuracy

TVQA_QUESTIONS = [
    {
        "a0": "A pen",
        "a1": "A cup",
        "a2": "A book",
        "a3": "A phone",
        "a4": "A laptop",
        "answer_idx": 1,
        "q": "What is Sheldon holding when he talks to Leonard?",
        "qid": 7,
        "show_name": "The Big Bang Theory",
        "ts": "60.69-74.88",
        "vid_name": "s01e02_seg02_clip_03",
    },
    {
        "a0": "Monica",
        "a1": "Rachel",
        "a2": "Phoebe",
        "a3": "Ross",
        "a4": "Joey",
        "answer_idx": 4,
        "q": "Who opens the door?",
        "qid": 8,
        "show_name": "Friends",
        "ts": "NaN-NaN",
        "vid_name": "friends_s01e02_seg02_clip_03",
    },
    {
        "a0": "Yes",
        "a1": "No",
        "a2": "Maybe",
        "a3": "Later",
        "a4": "Never",
        "answer_idx": 0,
        "q": "Does House leave?",
        "qid": 9,
        "show_name": "House M.D.",
        "ts": "12.5-",
        "vid_name": "house_s02e05_seg02_clip_11",
    },
]
SUBTITLES = [
    {
        "vid_name": "s01e02_seg02_clip_03",
        "sub": [
            {"text": "(Sheldon:) Before the span.", "start": 10.0, "end": 12.0},
            {"text": "(Leonard:) Starts before, ends inside.", "start": 59.0, "end": 61.0},
            {"text": "(Sheldon:) Inside.", "start": 65.0, "end": 67.5},
            {"text": "(Penny:) After the span.", "start": 75.0, "end": 78.0},
        ],
    },
    {
        "vid_name": "friends_s01e02_seg02_clip_03",
        "sub": [
            {"text": "(Monica:) Hi.", "start": 1.0, "end": 2.0},
            {"text": "(Joey:) How you doin'?", "start": 3.0, "end": 4.0},
        ],
    },
    {"vid_name": "house_s02e05_seg02_clip_11", "sub": [{"text": "(House:) No.", "start": 0.5, "end": 1.5}]},
]
HOW2QA_ROWS = [  # video_id, [start:end], wrong1, wrong2, wrong3, question, correct (the released columns)
    ["NOuQuofjk44", "[7.2:18.0]", "10", "12", "16", "how many knife is there?", "1"],
    ["piYcgGdO8_w", "[134.15:181.52]", "White", "Grey", "Red", "What is the color of the sheet?", "Brown"],
    ["DQ6wpOD-h7g", "[43.5:60.0]", "Powerpoint", "Word", "Access", "What program is used in this clip?", "Excel"],
    [
        "DUEyiEnMVj4",
        "[12.6:13.2]",
        'his channel is "graphix"',
        "digitaldezignz",
        "graphics co.",
        "What is the name of this speaker's video channel?",
        'his channel is "whatsdev"',
    ],
    ["dnUFgR92F8M", "[121.56:121.56]", "Pink", "Yellow", "White", "What is the color of the petals?", "Red"],
    ["AhVO0dkTl78", "[NaN:98.17]", "a sedum", "a maple", "a daisy", "what is the spiky plant called", "a cactus"],
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _how2qa_csv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def tvqa(tmp_path):
    q = _jsonl(tmp_path / "tvqa_val.jsonl", TVQA_QUESTIONS)
    subs = _jsonl(tmp_path / "tvqa_preprocessed_subtitles.jsonl", SUBTITLES)
    return q, subs


def _options(choices):
    return " ".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(choices))


# ------------------------------------------------------------------------------------------ TVQA
def test_tvqa_prompts_answers_spans_and_subtitles_inside_the_span(tvqa):
    q, subs = tvqa
    samples = read_tvqa(q, subtitles_file=subs)
    assert [s.id for s in samples] == ["7", "8", "9"]
    bbt, friends, house = samples
    assert bbt.prompt == (
        "Question: What is Sheldon holding when he talks to Leonard?\n"
        "Context: (Leonard:) Starts before, ends inside. (Sheldon:) Inside.\n"
        "Options: (A) A pen (B) A cup (C) A book (D) A phone (E) A laptop\n"
        "Response:The answer is"
    )
    assert [s.answers for s in samples] == [["B"], ["E"], ["A"]]
    assert [s.target for s in samples] == ["B", "E", "A"]
    assert bbt.span == (60.69, 74.88)
    assert friends.span is None and house.span is None  # "NaN-NaN", "12.5-": no usable span
    # no span: the whole clip's subtitles
    assert friends.prompt == (
        "Question: Who opens the door?\nContext: (Monica:) Hi. (Joey:) How you doin'?\n"
        "Options: (A) Monica (B) Rachel (C) Phoebe (D) Ross (E) Joey\nResponse:The answer is"
    )
    assert [s.question_type for s in samples] == ["The Big Bang Theory", "Friends", "House M.D."]
    assert bbt.metadata == {
        "num_choices": 5,
        "choices": ["A pen", "A cup", "A book", "A phone", "A laptop"],
        "vid_name": "s01e02_seg02_clip_03",
        "show_name": "The Big Bang Theory",
        "ts": "60.69-74.88",
        "fps": 3.0,
    }
    assert all(s.image is None and s.video is None and s.features is None for s in samples)  # no video_dir
    assert [s.image_id for s in samples] == [r["vid_name"] for r in TVQA_QUESTIONS]


def test_tvqa_without_subtitles_or_clipping(tvqa):
    q, subs = tvqa
    bbt = read_tvqa(q)[0]
    assert bbt.prompt == (
        "Question: What is Sheldon holding when he talks to Leonard?\nContext: N/A\n"
        f"Options: {_options(TVQA_QUESTIONS[0][f'a{i}'] for i in range(5))}\n"
        "Response:The answer is"
    )
    whole = read_tvqa(q, subtitles_file=subs, clip_to_span=False, fps=None)[0]
    assert whole.span is None and "fps" not in whole.metadata
    assert (
        "Context: (Sheldon:) Before the span. (Leonard:) Starts before, ends inside. (Sheldon:) Inside. "
        "(Penny:) After the span.\n" in whole.prompt
    )


def test_tvqa_video_paths_folder_extension_or_as_given(tmp_path, tvqa):
    q, _ = tvqa
    frames = tmp_path / "frames_hq"
    (frames / "bbt_frames" / "s01e02_seg02_clip_03").mkdir(parents=True)
    (frames / "bbt_frames" / "s01e02_seg02_clip_03" / "00001.jpg").write_bytes(b"")
    (frames / "friends_frames").mkdir()
    (frames / "friends_frames" / "friends_s01e02_seg02_clip_03.mkv").write_bytes(b"")
    (frames / "friends_frames" / "friends_s01e02_seg02_clip_03.mp4").mkdir()  # a folder, not a video file
    bbt, friends, house = read_tvqa(q, video_dir=frames, video_pattern="{show}_frames/{vid_name}")
    assert bbt.video == str(frames / "bbt_frames" / "s01e02_seg02_clip_03")  # a folder of frames
    assert friends.video == str(frames / "friends_frames" / "friends_s01e02_seg02_clip_03.mkv")
    assert house.video == str(frames / "house_frames" / "house_s02e05_seg02_clip_11")  # missing: as given
    assert all(os.path.isabs(s.video) for s in (bbt, friends, house))
    assert bbt.image is None and bbt.has_image
    with pytest.raises(ValueError, match=r"video_pattern '\{clip\}'.*\{vid_name\}, \{show_name\} and \{show\}"):
        read_tvqa(q, video_dir=frames, video_pattern="{clip}")


def test_tvqa_test_split_has_no_answers(tmp_path):
    test = [{k: v for k, v in r.items() if k != "answer_idx"} for r in TVQA_QUESTIONS]
    samples = read_tvqa(_jsonl(tmp_path / "tvqa_test_public.jsonl", test))
    assert [s.answers for s in samples] == [[], [], []] and samples[0].target is None
    with pytest.raises(ValueError, match="3 tvqa question.*no answer"):
        score("tvqa", samples, {s.id: "A" for s in samples})


def test_tvqa_load_samples_relative_paths_and_feature_files(tmp_path, tvqa):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "s01e02_seg02_clip_03.mp4").write_bytes(b"")
    (tmp_path / "feats").mkdir()
    spec = {
        "format": "tvqa",
        "questions_file": "tvqa_val.jsonl",
        "video_dir": "videos",
        "subtitles_file": "tvqa_preprocessed_subtitles.jsonl",
    }
    samples = load_samples(spec, base_dir=tmp_path)
    assert samples[0].video == str(tmp_path / "videos" / "s01e02_seg02_clip_03.mp4")
    assert "Context: (Leonard:)" in samples[0].prompt
    feats = load_samples({**spec, "features_dir": "feats", "features_pattern": "{image_id}.npy"}, base_dir=tmp_path)
    assert [s.features for s in feats] == [str(tmp_path / "feats" / f"{r['vid_name']}.npy") for r in TVQA_QUESTIONS]
    assert all(s.video is None and s.image is None for s in feats)
    assert feats[0].span == (60.69, 74.88) and feats[0].metadata["fps"] == 3.0
    # without video_dir the samples still name their video, so feature files work too
    no_dir = {k: v for k, v in spec.items() if k != "video_dir"}
    feats = load_samples({**no_dir, "features_dir": "feats", "features_pattern": "{image_id}.npy"}, base_dir=tmp_path)
    assert feats[1].features == str(tmp_path / "feats" / "friends_s01e02_seg02_clip_03.npy")


def test_tvqa_bad_input_names_file_and_record(tmp_path, tvqa):
    q, subs = tvqa
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="TVQA questions file not found: .*nope.jsonl"):
        read_tvqa(missing)
    with pytest.raises(FileNotFoundError, match="TVQA subtitles file not found"):
        read_tvqa(q, subtitles_file=missing)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TVQA_QUESTIONS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not valid JSON"):
        read_tvqa(bad)
    no_q = {k: v for k, v in TVQA_QUESTIONS[0].items() if k != "q"}
    with pytest.raises(ValueError, match=r"no_q.jsonl: record 7 has no 'q' field"):
        read_tvqa(_jsonl(tmp_path / "no_q.jsonl", [no_q]))
    with pytest.raises(ValueError, match=r"range.jsonl: question 7 \(line 1\) has answer_idx 5 but 5 options"):
        read_tvqa(_jsonl(tmp_path / "range.jsonl", [{**TVQA_QUESTIONS[0], "answer_idx": 5}]))
    with pytest.raises(ValueError, match="clip 'friends_s01e02_seg02_clip_03', which has no subtitles in"):
        read_tvqa(q, subtitles_file=_jsonl(tmp_path / "subs.jsonl", SUBTITLES[:1]))
    with pytest.raises(ValueError, match="empty.jsonl has no samples"):
        read_tvqa(_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(ValueError, match="fps must be a positive number"):
        read_tvqa(q, fps=0)
    with pytest.raises(ValueError, match="bad arguments for dataset format 'tvqa'"):
        load_samples({"format": "tvqa", "questions_file": str(q), "image_dir": "x"})


# ------------------------------------------------------------------------- LLaVA-style videos
LLAVA_VIDEO = [  # LLaVA-NeXT-Video's layout: "video" instead of "image", the token in the human turn
    {
        "id": "v1",
        "video": "clips/v1.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nWhich shape appears last?"},
            {"from": "gpt", "value": "circle"},
            {"from": "human", "value": "And first?"},
            {"from": "gpt", "value": "square"},
        ],
    },
    {
        "id": "i1",
        "image": "coco/1.jpg",
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a cat"}],
    },
    {"id": "t1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]


def test_llava_video_conversations_read_as_videos(tmp_path):
    from memvp.training import TrainConfig
    from memvp.training.build import reads_videos

    f = tmp_path / "video_chat.json"
    f.write_text(json.dumps(LLAVA_VIDEO))
    v0, v1, image, text = read_llava(f, tmp_path / "images", video_dir=tmp_path / "videos")
    assert v0.prompt == "Which shape appears last?" and v0.answers == ["circle"] and v1.prompt == "And first?"
    assert v0.video == v1.video == str(tmp_path / "videos" / "clips" / "v1.mp4") and v0.image is None
    assert (
        v0.image_id == "clips/v1.mp4"
        and v0.is_video
        and v0.has_image
        and v1.metadata["history"] == [["Which shape appears last?", "circle"]]
    )
    assert image.image == str(tmp_path / "images" / "coco" / "1.jpg") and image.video is None and not image.is_video
    assert not text.has_image and not text.is_video
    # video_dir defaults to image_dir, as LLaVA-NeXT's video_folder sits beside image_folder
    assert read_llava(f, tmp_path / "media")[0].video == str(tmp_path / "media" / "clips" / "v1.mp4")
    # pre-extracted per-video features: the samples stay video samples, so a run samples num_frames rows
    (tmp_path / "feats").mkdir()
    feats = load_samples(
        {
            "format": "llava",
            "json_file": str(f),
            "image_dir": "images",
            "features_dir": "feats",
            "features_pattern": "{image_id}.npy",
        },
        base_dir=tmp_path,
    )
    assert feats[0].features == str(tmp_path / "feats" / "clips" / "v1.mp4.npy") and feats[0].video is None
    cfg = TrainConfig(train_data={"format": "llava"})
    assert reads_videos(cfg, feats[:2]) and not reads_videos(cfg, feats[2:])
    both = [{**LLAVA_VIDEO[0], "image": "x.jpg"}]
    (tmp_path / "both.json").write_text(json.dumps(both))
    with pytest.raises(ValueError, match=r"both.json: conversation 'v1' has both an image and a video"):
        read_llava(tmp_path / "both.json", tmp_path)
    (tmp_path / "many.json").write_text(json.dumps([{**LLAVA_VIDEO[0], "video": ["a.mp4", "b.mp4"]}]))
    with pytest.raises(ValueError, match=r"many.json: conversation 'v1': 'image' / 'video' must be one file name"):
        read_llava(tmp_path / "many.json", tmp_path)


# ---------------------------------------------------------------------------------------- How2QA
def test_how2qa_prompts_order_spans_and_videos(tmp_path):
    path = _how2qa_csv(tmp_path / "how2QA_val_release.csv", HOW2QA_ROWS)
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "NOuQuofjk44.webm").write_bytes(b"")
    (tmp_path / "videos" / "piYcgGdO8_w").mkdir()  # a folder of frames
    samples = read_how2qa(path, video_dir=tmp_path / "videos")
    assert [s.id for s in samples] == [f"val_{i}" for i in range(6)]
    for s, (vid, times, w1, w2, w3, question, correct) in zip(samples, HOW2QA_ROWS):
        at = how2qa_correct_position(f"{vid}|{times}|{question}")
        choices = [w1, w2, w3]
        choices.insert(at, correct)
        assert s.answers == ["ABCD"[at]] and s.metadata["choices"] == choices
        assert s.metadata["choices"]["ABCD".index(s.answers[0])] == correct
        assert s.prompt == (f"Question: {question}\nContext: N/A\nOptions: {_options(choices)}\nResponse:The answer is")
        assert s.image_id == vid and s.metadata["vid_name"] == vid and s.question_type == ""
        assert s.metadata["num_choices"] == 4 and "fps" not in s.metadata
    # the correct answer is not always first (the file lists it last, apart from the wrong ones)
    assert len({s.answers[0] for s in samples}) > 1
    assert samples[0].prompt.endswith("Response:The answer is")
    assert samples[3].metadata["choices"].count('his channel is "whatsdev"') == 1  # CSV quoting undone
    assert [s.span for s in samples] == [
        (7.2, 18.0),
        (134.15, 181.52),
        (43.5, 60.0),
        (12.6, 13.2),
        (121.56, 121.56),
        None,
    ]
    assert samples[0].video == str(tmp_path / "videos" / "NOuQuofjk44.webm")
    assert samples[1].video == str(tmp_path / "videos" / "piYcgGdO8_w")
    assert samples[2].video == str(tmp_path / "videos" / "DQ6wpOD-h7g")
    assert samples[0].image is None and samples[0].features is None


def test_how2qa_option_order_is_fixed_and_spread():
    # documented: sha256 of "video_id|[start:end]|question", first 8 bytes big-endian, mod 4
    assert (
        how2qa_correct_position("NOuQuofjk44|[7.2:18.0]|how many knife is there?")
        == int.from_bytes(
            __import__("hashlib").sha256(b"NOuQuofjk44|[7.2:18.0]|how many knife is there?").digest()[:8], "big"
        )
        % 4
    )
    counts = Counter(how2qa_correct_position(f"vid{i}|[0.0:1.0]|q{i}") for i in range(400))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 60


def test_how2qa_load_samples_header_row_features_and_split_names(tmp_path):
    header = ["vid_id", "timesteps", "a2", "a3", "a4", "question", "a1"]  # as pandas would save it
    _how2qa_csv(tmp_path / "how2QA_test_public_release.csv", [header, *HOW2QA_ROWS[:2]])
    (tmp_path / "f").mkdir()
    samples = load_samples(
        {
            "format": "how2qa",
            "questions_file": "how2QA_test_public_release.csv",
            "video_dir": "v",
            "features_dir": "f",
            "features_pattern": "{image_id}.npy",
            "fps": 1,
        },
        base_dir=tmp_path,
    )
    assert [s.id for s in samples] == ["test_public_0", "test_public_1"]
    assert samples[0].features == str(tmp_path / "f" / "NOuQuofjk44.npy") and samples[0].video is None
    assert samples[0].span == (7.2, 18.0) and samples[0].metadata["fps"] == 1.0


def test_how2qa_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="How2QA CSV file not found: .*missing.csv"):
        read_how2qa(tmp_path / "missing.csv")
    short = _how2qa_csv(tmp_path / "short.csv", [HOW2QA_ROWS[0], HOW2QA_ROWS[1][:6]])
    with pytest.raises(ValueError, match=r"short.csv: line 2 has 6 comma-separated fields"):
        read_how2qa(short)
    bad_span = _how2qa_csv(tmp_path / "span.csv", [HOW2QA_ROWS[0], ["x", "7.2-18.0", *HOW2QA_ROWS[0][2:]]])
    with pytest.raises(ValueError, match=r"span.csv: line 2 has segment '7.2-18.0'; expected \[start:end\]"):
        read_how2qa(bad_span)
    (tmp_path / "latin1.csv").write_bytes("v,[1:2],a,b,c,caf\xe9?,d\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv is not UTF-8"):
        read_how2qa(tmp_path / "latin1.csv")


# ----------------------------------------------------------------------------------------- scoring
def test_multiple_choice_accuracy_by_hand():
    records = [
        {"prediction": "The answer is B", "answer": "B", "num_choices": 5, "question_type": "Friends"},
        {"prediction": "(C) A book", "answer": "C", "num_choices": 5, "question_type": "Friends"},
        {"prediction": "A cup, I think", "answer": "B", "num_choices": 5, "question_type": "Castle"},  # no letter
        {"prediction": "E", "answer": "E", "num_choices": 5, "question_type": "Castle"},
    ]
    assert multiple_choice_accuracy(records) == {
        "overall": 75.0,
        "count": 4,
        "per_type": {"Castle": 50.0, "Friends": 100.0},
        "rule": "default",
    }
    out_of_range = [{"prediction": "The answer is E", "answer": "E", "num_choices": 4}]
    assert multiple_choice_accuracy(out_of_range)["overall"] == 0.0
    empty = multiple_choice_accuracy([])
    assert math.isnan(empty["overall"]) and empty["count"] == 0


def test_score_tvqa_and_how2qa(tmp_path, tvqa):
    for name in ("tvqa", "how2qa"):
        assert FORMATS[name].is_video and FORMATS[name].image_paths.startswith("video_dir/")
    q, _ = tvqa
    samples = read_tvqa(q)  # answers B (bbt), E (friends), A (house)
    preds = {"7": "The answer is B.", "8": "The answer is (E)", "9": "B"}
    assert score("tvqa", samples, preds) == {
        "overall": 200 / 3,
        "count": 3,
        "per_type": {"Friends": 100.0, "House M.D.": 0.0, "The Big Bang Theory": 100.0},
        "rule": "default",
    }
    assert score("tvqa", samples, {"7": "B"})["count"] == 1  # only the predicted samples
    how2qa = read_how2qa(_how2qa_csv(tmp_path / "how2QA_val_release.csv", HOW2QA_ROWS[:4]))
    preds = {s.id: s.answers[0] for s in how2qa[:3]}
    preds[how2qa[3].id] = "ABCD"[("ABCD".index(how2qa[3].answers[0]) + 1) % 4]
    assert score("how2qa", how2qa, preds) == {"overall": 75.0, "count": 4, "per_type": {"": 75.0}, "rule": "default"}


def test_multiple_choice_accuracy_reads_letters_by_the_rule():
    # "B, the cup": no letter by 'default' (a leading letter needs ".", ":" or ")"), B by 'memvp' (first capital)
    record = {"prediction": "B, the cup", "answer": "B", "num_choices": 4}
    assert multiple_choice_accuracy([record])["overall"] == 0.0
    assert multiple_choice_accuracy([record], rule="memvp") == {
        "overall": 100.0,
        "count": 1,
        "per_type": {"": 100.0},
        "rule": "memvp",
    }
    with_text = {**record, "prediction": "a cup", "choices": ["a pen", "a cup", "a book", "a phone"]}
    assert multiple_choice_accuracy([with_text], rule="vlmevalkit")["overall"] == 100.0  # option text matched


def test_choice_rule_reaches_tvqa_and_how2qa_scores(tmp_path, tvqa):
    """choice_rule was ignored for the video formats: the same predictions now score by the rule asked for."""
    q, _ = tvqa
    samples = read_tvqa(q)  # qid 7: answer B, "A cup"
    (cup,) = [s for s in samples if s.id == "7"]
    assert score("tvqa", [cup], {"7": "B, the cup"})["overall"] == 0.0
    assert score("tvqa", [cup], {"7": "B, the cup"}, rule="memvp")["overall"] == 100.0
    assert score("tvqa", [cup], {"7": "a cup"}, rule="vlmevalkit") == {
        "overall": 100.0,
        "count": 1,
        "per_type": {"The Big Bang Theory": 100.0},
        "rule": "vlmevalkit",
    }
    assert score("tvqa", [cup], {"7": "B, the cup"}, rule="strict")["rule"] == "default"  # TVQA has no reference rule
    how2qa = read_how2qa(_how2qa_csv(tmp_path / "how2QA_val_release.csv", HOW2QA_ROWS[:1]))
    (h,) = how2qa
    text = h.metadata["choices"]["ABCD".index(h.answers[0])]  # "1": the correct option's text
    assert score("how2qa", how2qa, {h.id: f"{h.answers[0]}, {text}"}, rule="memvp")["overall"] == 100.0
    assert score("how2qa", how2qa, {h.id: f"{h.answers[0]}, {text}"})["overall"] == 0.0
    # a sample without the options' texts can not be read by 'vlmevalkit': one line saying so
    bare = dataclasses.replace(cup, metadata={k: v for k, v in cup.metadata.items() if k != "choices"})
    assert score("tvqa", [bare], {"7": "B"}, rule="memvp")["overall"] == 100.0
    with pytest.raises(ValueError, match=r"tvqa question '7' has no options' texts .*'vlmevalkit'"):
        score("tvqa", [bare], {"7": "a cup"}, rule="vlmevalkit")
