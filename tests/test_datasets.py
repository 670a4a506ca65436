"""memvp.datasets: readers for the real file formats, on tiny fixtures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from memvp.datasets import (
    COCO_CAPTION_PROMPT,
    FORMATS,
    IMAGE_PATHS,
    Sample,
    load_samples,
    read_coco_captions,
    read_coco_captions_parquet,
    read_gqa,
    read_gqa_parquet,
    read_llava,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
    read_scienceqa_parquet,
    read_vqav2,
    read_vqav2_parquet,
    scienceqa_prompt,
)

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "datasets")
SQA = os.path.join(FIX, "scienceqa")
VQA = os.path.join(FIX, "vqav2")


# ------------------------------------------------------------------- ScienceQA
def test_scienceqa_prompts_answers_and_metadata():
    no_img, with_img = read_scienceqa(SQA, "train")
    assert no_img.id == "5" and with_img.id == "9"
    # hint present (its double space collapsed as in base_prompt.py), no image
    # the official create_training_example (QCM-A): input "...Response:", output "The answer is B." glued on
    assert no_img.prompt == ("Question: Which figure of speech is used in this text?\n"
                             "Context: The bees buzzed in the garden.\n"
                             "Options: (A) hyperbole (B) onomatopoeia\n"
                             "Response:")
    assert no_img.answers == ["B"] and no_img.target == "The answer is B."
    assert no_img.answer_separator == "" and no_img.answer_prefix == "The answer is"
    assert no_img.image is None and no_img.image_id is None and not no_img.has_image
    assert no_img.question_type == "language science"
    assert no_img.metadata == {"target": "The answer is B.", "subject": "language science", "grade": "grade8",
                               "has_text_context": True, "has_image_context": False, "num_choices": 2,
                               "choices": ["hyperbole", "onomatopoeia"]}
    # no hint -> N/A, with image
    assert with_img.prompt == ("Question: Which animal's feet are also adapted for digging?\n"
                               "Context: N/A\n"
                               "Options: (A) aardvark (B) Weddell seal (C) mole\n"
                               "Response:")
    assert with_img.answers == ["C"]
    assert with_img.image == os.path.join(SQA, "images", "train", "9", "image.png")
    assert os.path.isabs(with_img.image) and with_img.has_image and with_img.image_id == "9"
    assert with_img.metadata["has_text_context"] is False and with_img.metadata["has_image_context"] is True
    assert with_img.metadata["num_choices"] == 3


def test_scienceqa_captions_join_the_context_as_the_official_eval(tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"captions": {"9": "A drawing of an animal digging.", "5": ""}}))
    no_img, with_img = read_scienceqa(SQA, "train", captions_file=captions)
    assert "Context: A drawing of an animal digging.\n" in with_img.prompt  # N/A gives way to the caption
    assert "Context: The bees buzzed in the garden.\n" in no_img.prompt
    with_both = scienceqa_prompt("Q?", "Hint  here.", ["a", "b"], caption="A  caption.")
    assert with_both == "Question: Q?\nContext: Hint here. A caption.\nOptions: (A) a (B) b\nResponse:"


def test_scienceqa_test_split_and_relative_root(monkeypatch):
    monkeypatch.chdir(FIX)
    (s,) = read_scienceqa("scienceqa", "test")
    assert s.answers == ["A"] and s.metadata["num_choices"] == 4
    assert s.image == os.path.join(SQA, "images", "test", "12", "image.png")


def test_scienceqa_errors(tmp_path):
    with pytest.raises(ValueError,
                       match=r"unknown split 'dev' in .*pid_splits\.json; available: \['test', 'train', 'val'\]"):
        read_scienceqa(SQA, "dev")
    with pytest.raises(ValueError, match=r"split 'val' of .*pid_splits\.json has no samples"):
        read_scienceqa(SQA, "val")
    with pytest.raises(FileNotFoundError, match=r"ScienceQA problems file not found: .*problems\.json"):
        read_scienceqa(tmp_path, "train")


# ----------------------------------------------------------------------- VQAv2
def test_vqav2_answers_target_and_paths():
    samples = read_vqav2(os.path.join(VQA, "questions.json"), os.path.join(VQA, "annotations.json"),
                         "/data/coco/val2014")
    assert [s.id for s in samples] == ["42000", "42001", "73000"]
    s = samples[0]
    assert s.prompt == "What color is the umbrella?"
    assert s.answers == ["red", "red", "dark red", "red", "maroon", "red", "red", "red", "red", "pink"]
    assert s.target == "red"
    assert s.image == "/data/coco/val2014/COCO_val2014_000000000042.jpg"
    assert s.image_id == "42" and samples[1].image_id == "42"
    assert s.question_type == "other"
    assert s.metadata == {"target": "red", "answer_type": "other", "question_type": "what color is the"}
    assert samples[1].question_type == "yes/no" and samples[2].question_type == "number"
    # the target need not be answers[0] and all 10 humans stay in answers
    assert samples[2].target == "2" and len(samples[2].answers) == 10


def test_vqav2_test_dev_without_annotations():
    (s,) = read_vqav2(os.path.join(VQA, "test-dev_questions.json"), None, "/data/coco/test2015")
    assert s.answers == [] and s.target is None and s.question_type == ""
    assert s.image == "/data/coco/test2015/COCO_test2015_000000262144.jpg"


def test_vqav2_custom_pattern_and_missing_annotation(tmp_path):
    (s, *_) = read_vqav2(os.path.join(VQA, "questions.json"), None, "/feats", image_pattern="{image_id}.png")
    assert s.image == "/feats/42.png"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"ann\.json: no annotation for question_id 42000"):
        read_vqav2(os.path.join(VQA, "questions.json"), ann, "/x")


# ------------------------------------------------------------------------- GQA
def test_gqa():
    a, b = read_gqa(os.path.join(FIX, "gqa", "testdev_balanced_questions.json"), "/data/gqa/images")
    assert (a.id, a.prompt, a.answers) == ("20968379", "Is the sky blue or white?", ["white"])
    assert a.image == "/data/gqa/images/n288870.jpg" and a.image_id == "n288870"
    assert a.question_type == "choose" and b.question_type == "verify"
    assert a.metadata == {"full_answer": "The sky is white.", "structural": "choose", "semantic": "attr",
                          "detailed": "chooseAttr"}


# ---------------------------------------------------------------- COCO Captions
def test_coco_captions_splits():
    f = os.path.join(FIX, "coco", "dataset_coco.json")
    train = read_coco_captions(f, "/data/coco", "train")  # train + restval
    assert sorted(s.id for s in train) == ["522418", "57870"]
    s = next(s for s in train if s.id == "57870")
    assert s.prompt == COCO_CAPTION_PROMPT == "Provide a one-sentence caption for the provided image."
    assert s.answers == ["A restaurant with tables.", "Chairs in a room."]
    assert s.image == "/data/coco/train2014/COCO_train2014_000000057870.jpg" and s.image_id == "57870"
    assert s.metadata == {"split": "train", "filename": "COCO_train2014_000000057870.jpg"}
    assert [s.id for s in read_coco_captions(f, "/data/coco", "restval")] == ["522418"]
    assert [s.id for s in read_coco_captions(f, "/data/coco", "val")] == ["184613"]
    (t,) = read_coco_captions(f, "/data/coco", "test")
    assert t.answers == ["A man riding a bike.", "A person on a bicycle."]
    with pytest.raises(ValueError, match=r"unknown split 'dev' .*available: \['restval', 'test', 'train', 'val'\]"):
        read_coco_captions(f, "/data/coco", "dev")


def test_coco_empty_split(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps({"images": [{"filepath": "a", "filename": "b.jpg", "split": "train", "cocoid": 1,
                                         "sentences": [{"raw": "x"}]}]}))
    with pytest.raises(ValueError, match=r"split 'test' of .*dataset_coco\.json has no samples"):
        read_coco_captions(f, tmp_path, "test")


# ----------------------------------------------------------------------- LLaVA
def test_llava_turns_history_and_no_image():
    s0, s1, t = read_llava(os.path.join(FIX, "llava", "conversations.json"), "/data/llava")
    assert s0.id == "000000033471_0" and s1.id == "000000033471_1" and t.id == "i6IyJda_0_0"
    assert s0.prompt == "What are the colors of the bus in the image?"
    assert s0.answers == ["The bus in the image is white and red."]
    assert s1.prompt == "What feature can be seen on the back of the bus?"
    assert s0.image == s1.image == "/data/llava/coco/train2017/000000033471.jpg"
    assert s1.image_id == "coco/train2017/000000033471.jpg"
    assert s0.metadata == {"conversation_id": "000000033471", "turn": 0, "history": []}
    assert s1.metadata["history"] == [["What are the colors of the bus in the image?",
                                       "The bus in the image is white and red."]]
    assert t.image is None and t.image_id is None and not t.has_image
    assert t.prompt == "Write a haiku about autumn."


def test_llava_bad_roles():
    with pytest.raises(ValueError, match=r"bad_roles\.json: conversation 'x' turn 0 is not human -> gpt"):
        read_llava(os.path.join(FIX, "llava", "bad_roles.json"), "/x")


@pytest.mark.parametrize("message, described", [
    ("hello", "message 1 is 'hello'"),
    (None, "message 1 is None"),
    (7, "message 1 is 7"),
    ({"from": "gpt", "value": None}, "message 1 has the value None"),
])
def test_llava_malformed_message_names_the_conversation_or_is_skipped(tmp_path, message, described):
    """Issue 24.7: a string, null or number where a {from, value} object belongs was an AttributeError."""
    good = {"id": "ok", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                           {"from": "gpt", "value": "A"}]}
    bad = {"id": 17, "image": "b.jpg", "conversations": [{"from": "human", "value": "Q?"}, message]}
    f = tmp_path / "llava.json"
    f.write_text(json.dumps([good, bad, "not a conversation"]))
    with pytest.raises(ValueError, match=rf"llava\.json: conversation '17': {re.escape(described)}; each message "
                                         r"must be a \{from, value\} object with text: fix it, or skip"):
        read_llava(f, tmp_path)
    skipped = {}
    (only,) = read_llava(f, tmp_path, skipped=skipped)
    assert only.id == "ok_0" and list(skipped) == ["conversation 17", "entry 2"]
    assert described in skipped["conversation 17"]
    assert [s.id for s in load_samples({"format": "llava", "json_file": str(f), "image_dir": str(tmp_path)},
                                       skipped={})] == ["ok_0"]
    with pytest.raises(ValueError, match="bad arguments for dataset format 'llava'.*'skipped'"):
        load_samples({"format": "llava", "json_file": str(f), "image_dir": str(tmp_path), "skipped": {}})


def test_image_paths_may_not_leave_image_dir(tmp_path):
    """Issue 24: '../../etc/passwd' was opened, then reported as an unreadable image. Absolute paths are
    read where they are; a relative path must stay inside image_dir (symlinks inside it are followed)."""
    conversation = lambda cid, image: {"id": cid, "image": image, "conversations": [  # noqa: E731
        {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]}
    f = tmp_path / "llava.json"
    f.write_text(json.dumps([conversation("in", "sub/../a.jpg"), conversation("abs", "/data/b.jpg"),
                             conversation("out", "../../etc/passwd")]))
    images = tmp_path / "images"
    with pytest.raises(ValueError, match=r"conversation 'out': the path '\.\./\.\./etc/passwd' leaves image_dir "
                                         rf"{re.escape(str(images))}; give a path inside image_dir"):
        read_llava(f, images)
    skipped = {}
    inside, absolute = read_llava(f, images, skipped=skipped)
    assert inside.image == str(images / "sub/../a.jpg") and absolute.image == "/data/b.jpg"
    assert list(skipped) == ["conversation 'out'"]
    video = tmp_path / "video.json"
    video.write_text(json.dumps([{"id": "v", "video": "../clip.mp4", "conversations": [
        {"from": "human", "value": "<video>Q?"}, {"from": "gpt", "value": "A"}]}]))
    with pytest.raises(ValueError, match=r"conversation 'v': the path '\.\./clip\.mp4' leaves video_dir"):
        read_llava(video, images)
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text(json.dumps({"question_id": 1, "image": "../x.jpg", "text": "Is there a cat?", "label": "yes"}))
    with pytest.raises(ValueError, match=r"question 1: the path '\.\./x\.jpg' leaves image_dir"):
        read_pope(pope, images)


# ---------------------------------------------------------------- common errors
def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GQA questions file not found: .*nope\.json"):
        read_gqa(tmp_path / "nope.json", "/x")
    with pytest.raises(FileNotFoundError, match=r"VQAv2 annotations file not found: .*nope\.json"):
        read_vqav2(os.path.join(VQA, "questions.json"), tmp_path / "nope.json", "/x")
    with pytest.raises(ValueError, match=r"VQAv2 questions file .*malformed\.json is not valid JSON"):
        read_vqav2(os.path.join(FIX, "malformed.json"), None, "/x")
    with pytest.raises(ValueError, match=r"LLaVA conversation file .*malformed\.json is not valid JSON"):
        read_llava(os.path.join(FIX, "malformed.json"), "/x")
    with pytest.raises(ValueError, match=r"expected a list of conversations, got dict"):
        read_llava(os.path.join(FIX, "gqa", "testdev_balanced_questions.json"), "/x")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match=r"empty\.json has no samples"):
        read_gqa(empty, "/x")


# -------------------------------------------------------------------- dispatch
def test_load_samples_dispatch_and_base_dir():
    s = load_samples({"format": "scienceqa", "root": SQA, "split": "test"})
    assert [x.id for x in s] == ["12"] and isinstance(s[0], Sample)
    s = load_samples({"format": "vqav2", "questions_file": "vqav2/questions.json",
                      "annotations_file": None, "image_dir": "images"}, base_dir=FIX)
    assert s[0].image == os.path.join(FIX, "images", "COCO_val2014_000000000042.jpg")
    assert len(load_samples({"format": "coco_captions", "karpathy_file": os.path.join(FIX, "coco", "dataset_coco.json"),
                             "image_root": "/c", "split": "train"})) == 2
    assert len(load_samples({"format": "gqa", "questions_file": "gqa/testdev_balanced_questions.json",
                             "image_dir": "/g"}, base_dir=FIX)) == 2
    assert len(load_samples({"format": "llava", "json_file": "llava/conversations.json", "image_dir": "/l"},
                            base_dir=FIX)) == 3


def test_load_samples_errors():
    with pytest.raises(ValueError, match=r"unknown dataset format 'coco'; formats: "
                                         r"\['coco_captions', 'coco_captions_parquet', 'gqa', 'gqa_parquet', 'how2qa', "
                                         r"'llava', 'mmbench', 'mme', 'pope', 'scienceqa', 'scienceqa_parquet', 'tvqa', "
                                         r"'vqav2', 'vqav2_parquet'\]"):
        load_samples({"format": "coco"})
    with pytest.raises(ValueError, match=r"no 'format' key"):
        load_samples({"root": SQA})
    with pytest.raises(ValueError, match=r"bad arguments for dataset format 'gqa'"):
        load_samples({"format": "gqa", "questions_file": "q.json"})


def test_sample_defaults():
    s = Sample(id="1", prompt="p", answers=["a", "b"])
    assert s.target == "a" and not s.has_image and s.metadata == {} and s.question_type == ""
    assert Sample(id="2", prompt="p", answers=[], features="/f.npy").has_image


# ------------------------------------------------------- LLaVA per conversation
def test_llava_per_conversation_keeps_last_turn_and_history():
    f = os.path.join(FIX, "llava", "conversations.json")
    per_turn = read_llava(f, "/data/llava")
    c, t = read_llava(f, "/data/llava", per_conversation=True)
    assert (c.id, t.id) == ("000000033471", "i6IyJda_0")
    # the last turn's prompt / answer, every earlier [human, gpt] pair as history
    assert c.prompt == "What feature can be seen on the back of the bus?"
    assert c.answers == ["The back of the bus features an advertisement."]
    assert c.metadata == {"conversation_id": "000000033471", "turn": 1,
                          "history": [["What are the colors of the bus in the image?",
                                       "The bus in the image is white and red."]]}
    assert c.image == "/data/llava/coco/train2017/000000033471.jpg"
    # the same as the per-turn sample of the last turn, but for its id
    for whole, last in ((c, per_turn[1]), (t, per_turn[2])):
        assert (whole.prompt, whole.answers, whole.image, whole.image_id, whole.metadata) == \
            (last.prompt, last.answers, last.image, last.image_id, last.metadata)
    assert t.metadata["history"] == [] and t.image is None
    assert len(load_samples({"format": "llava", "json_file": f, "image_dir": "/l", "per_conversation": True})) == 2
    with pytest.raises(ValueError, match=r"bad_roles\.json: conversation 'x' turn 0 is not human -> gpt"):
        read_llava(os.path.join(FIX, "llava", "bad_roles.json"), "/x", per_conversation=True)


# ------------------------------------------------------------------------ POPE
POPE = os.path.join(FIX, "pope")
POPE_FILES = [os.path.join(POPE, f"coco_pope_{s}.json") for s in ("random", "popular", "adversarial")]


def test_pope_splits_ids_prompts():
    samples = read_pope(POPE_FILES, "/data/coco/val2014")
    assert [s.id for s in samples] == ["random_1", "random_2", "random_3", "random_4", "popular_1", "popular_2",
                                       "adversarial_1", "adversarial_2"]  # ids restart in every file
    s = samples[1]
    assert s.prompt == "Is there a car in the image?\nAnswer the question using a single word or phrase."
    assert s.answers == ["no"] and s.target == "no" and s.question_type == "random"
    assert s.image == "/data/coco/val2014/COCO_val2014_000000310196.jpg"
    assert s.image_id == "COCO_val2014_000000310196.jpg"
    assert s.metadata == {"split": "random", "question_id": 2, "question": "Is there a car in the image?"}
    # one file, the bare question
    (a, b) = read_pope(POPE_FILES[2], "/x", answer_prompt=None)
    assert a.prompt == "Is there a snowboard in the image?" and a.metadata["split"] == "adversarial"
    # a folder of files, relative to a config's folder
    assert len(load_samples({"format": "pope", "question_files": ["pope/coco_pope_random.json",
                                                                  "pope/coco_pope_popular.json"],
                             "image_dir": "/x"}, base_dir=FIX)) == 6
    assert len(read_pope(POPE, "/x")) == 8


def test_pope_errors(tmp_path):
    with pytest.raises(ValueError, match=r"coco_pope_random\.json and .*coco_pope_random\.json are both split "
                                         r"'random'"):
        read_pope([POPE_FILES[0], POPE_FILES[0]], "/x")
    bad = tmp_path / "coco_pope_random.json"
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: question 1 has label 'maybe'"):
        read_pope(bad, "/x")
    bad.write_text('{"question_id": 1, "image": "a.jpg", "label": "yes"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: record 1 has no 'text' field"):
        read_pope(bad, "/x")
    bad.write_text('{"question_id": 1,\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: line 1 is not valid JSON"):
        read_pope(bad, "/x")
    with pytest.raises(FileNotFoundError, match=r"POPE question file not found: .*nope\.json"):
        read_pope(tmp_path / "nope.json", "/x")


# ------------------------------------------------------------------------- MME
MME = os.path.join(FIX, "mme")


def test_mme_both_layouts_prompts_and_pairs():
    samples = read_mme(MME)
    assert [s.id for s in samples] == [
        "artwork/10002.jpg/0", "artwork/10002.jpg/1", "code_reasoning/0020.png/0", "code_reasoning/0020.png/1",
        "existence/000000006040.jpg/0", "existence/000000006040.jpg/1",
        "existence/000000018150.jpg/0", "existence/000000018150.jpg/1"]
    art = samples[0]  # images/ + questions_answers_YN/
    assert art.image == os.path.join(MME, "artwork", "images", "10002.jpg") and os.path.isfile(art.image)
    assert art.image_id == "artwork/images/10002.jpg" and art.question_type == "artwork"
    # LLaVA-1.5's llava_mme.jsonl: "Please answer yes or no." replaced by the short-answer line
    assert art.prompt == ("Does this artwork exist in the form of painting?\n"
                          "Answer the question using a single word or phrase.")
    assert art.answers == ["Yes"] and samples[1].answers == ["No"]
    assert art.metadata == {"subtask": "artwork", "image_key": "artwork/10002.jpg",
                            "question": "Does this artwork exist in the form of painting? Please answer yes or no."}
    code = samples[2]  # images and .txt side by side; the image found by stem (.png)
    assert code.image == os.path.join(MME, "code_reasoning", "0020.png") and os.path.isfile(code.image)
    assert samples[4].metadata["image_key"] == samples[5].metadata["image_key"] != samples[6].metadata["image_key"]
    (q, _) = read_mme(MME, answer_prompt="", subtasks=["code_reasoning"])
    assert q.prompt == "Is a python code shown in the picture? Please answer yes or no."


def test_mme_result_file_layout_and_errors(tmp_path):
    (tmp_path / "count").mkdir()
    (tmp_path / "count" / "count.txt").write_text(
        "000000.jpg\tAre there two dogs? Please answer yes or no.\tYes\n"
        "000000.jpg\tAre there three dogs? Please answer yes or no.\tNo\n")
    a, b = read_mme(tmp_path)
    assert a.image == str(tmp_path / "count" / "000000.jpg") and (a.id, b.id) == ("count/000000.jpg/0",
                                                                                  "count/000000.jpg/1")
    (tmp_path / "count" / "count.txt").write_text("Are there two dogs?\n")
    with pytest.raises(ValueError, match=r"count\.txt: line 1 has 1 tab-separated fields"):
        read_mme(tmp_path)
    (tmp_path / "count" / "count.txt").write_text("Are there two dogs?\tMaybe\n")
    with pytest.raises(ValueError, match=r"count\.txt: line 1 has answer 'Maybe'; MME answers are Yes or No"):
        read_mme(tmp_path)
    with pytest.raises(ValueError, match=r"MME subtask\(s\) \['OCR'\] not in .*; available: \['count'\]"):
        read_mme(tmp_path, subtasks=["OCR"])
    (tmp_path / "scene" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"'scene': .*scene has images/ but no questions_answers_YN/"):
        read_mme(tmp_path, subtasks=["scene"])
    with pytest.raises(FileNotFoundError, match=r"MME folder not found: .*nope"):
        read_mme(tmp_path / "nope")


# --------------------------------------------------------------------- MMBench
MMB = os.path.join(FIX, "mmbench")


def _png(color, size=(2, 2)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_mmbench_rotations_prompts_and_images(tmp_path):
    samples = read_mmbench(os.path.join(MMB, "originals.tsv"), tmp_path / "img")
    # 4 + 2 + 3 options -> 9 rotations, ids in MMBench's own numbering (index + r * 1e6)
    assert [s.id for s in samples] == ["0", "1000000", "2000000", "3000000", "1", "1000001", "2", "1000002",
                                       "2000002"]
    first, rot1 = samples[0], samples[1]
    assert first.prompt == ("What color is the square?\nA. blue\nB. red\nC. green\nD. yellow\n"
                            "Answer with the option's letter from the given choices directly.")
    assert rot1.prompt == ("What color is the square?\nA. red\nB. green\nC. yellow\nD. blue\n"
                           "Answer with the option's letter from the given choices directly.")
    # the answer letter follows its option ("red")
    assert [s.answers for s in samples[:4]] == [["B"], ["A"], ["D"], ["C"]]
    assert first.question_type == "attribute_recognition"
    assert rot1.metadata == {"circular_group": "0", "rotation": 1, "index": 0, "num_choices": 4,
                             "choices": ["red", "green", "yellow", "blue"], "category": "attribute_recognition",
                             "l2_category": "finegrained_perception (instance-level)"}
    # hint first; options end at the first empty cell (pandas' NA)
    two = samples[4]
    assert two.prompt.startswith("The image shows a day in July.\nWhich is warmer?\nA. summer\nB. winter\n")
    assert two.metadata["num_choices"] == 2 and samples[5].answers == ["B"]
    assert samples[6].metadata["num_choices"] == 3  # D is "nan"
    # images decoded once, content-addressed; row 2's image cell "0" is row 0's image
    red = hashlib.sha256(_png("red")).hexdigest()
    assert first.image == str(tmp_path / "img" / f"{red}.png") and first.image_id == red
    assert samples[6].image == first.image != two.image
    assert sorted(os.listdir(tmp_path / "img")) == sorted([f"{red}.png", os.path.basename(two.image)])
    with open(first.image, "rb") as f:
        assert f.read() == _png("red")
    # single pass
    assert [s.id for s in read_mmbench(os.path.join(MMB, "originals.tsv"), tmp_path / "img", circular=False)] == \
        ["0", "1", "2"]


def test_mmbench_file_with_circular_copies(tmp_path):
    a, b = read_mmbench(os.path.join(MMB, "with_circular_copies.tsv"), tmp_path)
    assert (a.id, b.id) == ("5", "1000005") and a.answers == ["A"] and b.answers == ["B"]
    assert a.metadata["circular_group"] == b.metadata["circular_group"] == "5"
    assert (a.metadata["rotation"], b.metadata["rotation"]) == (0, 1) and b.metadata["choices"] == ["no", "yes"]
    (only,) = read_mmbench(os.path.join(MMB, "with_circular_copies.tsv"), tmp_path, circular=False)
    assert only.id == "5"


def test_mmbench_errors(tmp_path):
    head = "index\tquestion\tA\tB\tanswer\timage\n"
    f = tmp_path / "mmb.tsv"
    f.write_text(head + "0\tq?\tx\ty\tC\tiVBORw0KGgo=\n")
    with pytest.raises(ValueError, match=r"mmb\.tsv: question 0 has answer 'C' but options \['A', 'B'\]"):
        read_mmbench(f, tmp_path / "img")
    f.write_text(head + "0\tq?\tnan\tnan\tA\tiVBORw0KGgo=\n")
    with pytest.raises(ValueError, match=r"mmb\.tsv: question 0 has no options \(column A is empty\)"):
        read_mmbench(f, tmp_path / "img")
    f.write_text(head + "0\tq?\tx\ty\tA\tabcde\n")
    with pytest.raises(ValueError, match=r"mmb\.tsv: question 0: image is not base64"):
        read_mmbench(f, tmp_path / "img")
    f.write_text(head + "0\tq?\tx\ty\tA\t7\n")
    with pytest.raises(ValueError, match=r"question 0 refers to the image of question 7, which is not in the file"):
        read_mmbench(f, tmp_path / "img")
    f.write_text(head + "4\tq?\tx\ty\tA\tiVBORw0KGgo=\n" + "4\tanother q?\tx\ty\tB\tiVBORw0KGgo=\n")
    with pytest.raises(ValueError, match=r"mmb\.tsv: line 3 repeats index 4 of line 2; every question needs its own "
                                         r"index"):  # issue 24.6: the two questions became one, one prediction lost
        read_mmbench(f, tmp_path / "img")
    f.write_text("index\tquestion\tanswer\n0\tq?\tA\n")
    with pytest.raises(ValueError, match=r"mmb\.tsv: MMBench TSV has no column\(s\) \['A', 'image'\]"):
        read_mmbench(f, tmp_path / "img")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"image_dir .*file is a file"):
        read_mmbench(os.path.join(MMB, "originals.tsv"), tmp_path / "file")
    with pytest.raises(FileNotFoundError, match=r"MMBench TSV file not found: .*nope\.tsv"):
        read_mmbench(tmp_path / "nope.tsv", tmp_path)


def test_mmbench_test_file_without_answers(tmp_path):
    f = tmp_path / "mmbench_test.tsv"
    f.write_text("index\tquestion\thint\tA\tB\timage\tcategory\n"
                 f"3\tq?\tnan\tx\ty\t{__import__('base64').b64encode(_png('red')).decode()}\tocr\n")
    a, b = read_mmbench(f, tmp_path / "img")
    assert a.answers == b.answers == [] and a.target is None and a.metadata["l2_category"] == ""


# --------------------------------------------------------------------- parquet
def _image_cell(data: bytes | None, name: str = "image.png"):
    return None if data is None else {"bytes": data, "path": name}


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the datasets Image feature


def _write_parquet(path, columns: dict, types: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()}), path)
    return path


def _scienceqa_columns(rows):
    keys = ["image", "question", "choices", "answer", "hint", "task", "grade", "subject", "topic", "category",
            "skill", "lecture", "solution"]
    return {k: [r[i] for r in rows] for i, k in enumerate(keys)}


SQA_TYPES = {"image": IMAGE_TYPE, "choices": pa.list_(pa.string()), "answer": pa.int8()}


def test_scienceqa_parquet_samples_and_content_addressed_images(tmp_path):
    red, blue = _png("red"), _png("blue")
    data = tmp_path / "data"
    _write_parquet(data / "train-00000-of-00001-1028f23e353fbe3e.parquet", _scienceqa_columns([
        (_image_cell(red), "Which animal's feet are also adapted for digging?", ["aardvark", "Weddell seal", "mole"],
         2, "", "closed choice", "grade2", "natural science", "biology", "Adaptations", "Animal adaptations: feet",
         "lecture", "solution"),
        (None, "Which figure of speech is used in this text?", ["hyperbole", "onomatopoeia"], 1,
         "The bees  buzzed in the garden.", "closed choice", "grade8", "language science", "figurative-language",
         "Literary devices", "Classify the figure of speech", "", ""),
    ]), SQA_TYPES)
    _write_parquet(data / "test-00000-of-00001-f0e719df791966ff.parquet", _scienceqa_columns([
        (_image_cell(red, "other_name.png"), "Which is a mammal?", ["mole", "eagle"], 0, "", "closed choice",
         "grade3", "natural science", "biology", "Classification", "Identify mammals", "", ""),
        (_image_cell(blue), "Which color?", ["red", "blue"], 1, "", "closed choice", "grade1", "natural science",
         "physics", "Colors", "colors", "", ""),
    ]), SQA_TYPES)
    images = tmp_path / "images"
    samples = read_scienceqa_parquet(data, images)  # a folder: its *.parquet files in name order
    assert [s.id for s in samples] == ["test_0", "test_1", "train_0", "train_1"]
    train0, train1 = samples[2:]
    # the same sample as read_scienceqa builds from problems.json (tests above), plus the split
    assert train0.prompt == ("Question: Which animal's feet are also adapted for digging?\nContext: N/A\n"
                             "Options: (A) aardvark (B) Weddell seal (C) mole\nResponse:")
    assert train0.answers == ["C"] and train0.question_type == "natural science" and train0.image_id == "train_0"
    assert train1.image is None and train1.image_id is None
    assert train1.prompt.startswith("Question: Which figure of speech is used in this text?\n"
                                    "Context: The bees buzzed in the garden.\n")
    assert train1.metadata == {"subject": "language science", "grade": "grade8", "has_text_context": True,
                               "has_image_context": False, "num_choices": 2, "target": "The answer is B.",
                               "choices": ["hyperbole", "onomatopoeia"], "split": "train"}
    # identical bytes -> one file, named by their sha256; written once, never rewritten
    sha_red = hashlib.sha256(red).hexdigest()
    assert train0.image == read_scienceqa_parquet(data / "test-00000-of-00001-f0e719df791966ff.parquet",
                                                  images)[0].image == str(images / f"{sha_red}.png")
    assert sorted(os.listdir(images)) == sorted([f"{sha_red}.png", f"{hashlib.sha256(blue).hexdigest()}.png"])
    with open(train0.image, "rb") as f:
        assert f.read() == red
    before = os.stat(train0.image).st_mtime_ns
    os.chmod(train0.image, 0o444)
    read_scienceqa_parquet(str(data / "*.parquet"), images)  # a glob; the existing file is left alone
    assert os.stat(train0.image).st_mtime_ns == before
    assert not [n for n in os.listdir(images) if n.startswith(".")]  # no temporary file left behind
    # through a data spec: a list of files relative to the config's folder
    spec = {"format": "scienceqa_parquet", "files": ["data/train-00000-of-00001-1028f23e353fbe3e.parquet"],
            "image_dir": "images"}
    assert [s.image for s in load_samples(spec, base_dir=str(tmp_path))] == [train0.image, None]


def test_vqav2_parquet_lmms_lab_layout(tmp_path):
    img = _png("green")
    answers_type = pa.list_(pa.struct([("answer", pa.string()), ("answer_confidence", pa.string()),
                                       ("answer_id", pa.int64())]))
    humans = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
              for i, a in enumerate(["red", "red", "dark red", "red", "maroon", "red", "red", "red", "red", "pink"])]
    f = _write_parquet(tmp_path / "data" / "validation-00000-of-00068.parquet", {
        "question_type": ["what color is the", "is the"],
        "multiple_choice_answer": ["red", "yes"],
        "answers": [humans, [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}] * 10],
        "image_id": [42, 42],
        "answer_type": ["other", "yes/no"],
        "question_id": [42000, 42001],
        "question": ["What color is the umbrella?", "Is it raining?"],
        "image": [_image_cell(img, "COCO_val2014_000000000042.jpg")] * 2,
    }, {"answers": answers_type, "image": IMAGE_TYPE})
    a, b = read_vqav2_parquet(f, tmp_path / "img")
    assert (a.id, a.prompt, a.question_type) == ("42000", "What color is the umbrella?", "other")
    assert a.answers == [h["answer"] for h in humans] and a.target == "red"
    assert a.metadata == {"target": "red", "answer_type": "other", "question_type": "what color is the"}
    assert a.image_id == b.image_id == "42"
    assert a.image == b.image == str(tmp_path / "img" / f"{hashlib.sha256(img).hexdigest()}.png")
    # test-dev: no answers
    f = _write_parquet(tmp_path / "data" / "testdev-00000-of-00001.parquet", {
        "question_type": [None], "multiple_choice_answer": [None], "answers": [None], "image_id": [262144],
        "answer_type": [None], "question_id": [262144000], "question": ["Is the ball flying?"],
        "image": [_image_cell(img)],
    }, {"answers": answers_type, "image": IMAGE_TYPE, "question_type": pa.string(),
        "multiple_choice_answer": pa.string(), "answer_type": pa.string()})
    (t,) = read_vqav2_parquet(f, tmp_path / "img")
    assert t.answers == [] and t.target is None and t.question_type == "" and t.metadata == {}


def test_gqa_parquet_joins_instructions_and_images(tmp_path):
    types = pa.struct([("structural", pa.string()), ("semantic", pa.string()), ("detailed", pa.string())])
    q = _write_parquet(tmp_path / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet", {
        "id": ["20968379", "201307251"], "imageId": ["n288870", "n288870"],
        "question": ["Is the sky blue or white?", "Is there a fence?"], "answer": ["white", "no"],
        "fullAnswer": ["The sky is white.", "No, there is no fence."], "isBalanced": [True, True],
        "types": [{"structural": "choose", "semantic": "attr", "detailed": "chooseAttr"},
                  {"structural": "verify", "semantic": "obj", "detailed": "existC"}],
    }, {"types": types})
    sky, unused = _png("white"), _png("black")
    imgs = _write_parquet(tmp_path / "testdev_balanced_images" / "testdev-00000-of-00001.parquet", {
        "id": ["n161313", "n288870"], "image": [_image_cell(unused), _image_cell(sky)]}, {"image": IMAGE_TYPE})
    a, b = read_gqa_parquet(q.parent, imgs.parent, tmp_path / "img")
    assert (a.id, a.prompt, a.answers, a.image_id) == ("20968379", "Is the sky blue or white?", ["white"], "n288870")
    assert a.question_type == "choose" and b.question_type == "verify"
    assert a.metadata == {"full_answer": "The sky is white.", "structural": "choose", "semantic": "attr",
                          "detailed": "chooseAttr"}
    assert a.image == b.image == str(tmp_path / "img" / f"{hashlib.sha256(sky).hexdigest()}.png")
    assert os.listdir(tmp_path / "img") == [os.path.basename(a.image)]  # only the images in use
    other = _write_parquet(tmp_path / "other_images.parquet", {"id": ["n1"], "image": [_image_cell(sky)]},
                           {"image": IMAGE_TYPE})
    with pytest.raises(ValueError, match=r"1 image\(s\) of the GQA questions are in none of the image files "
                                         r".*other_images\.parquet.*, e\.g\. imageId \['n288870'\]"):
        read_gqa_parquet(q, other, tmp_path / "img")


def test_coco_captions_parquet_lmms_lab_layout(tmp_path):
    img = _png("yellow")
    f = _write_parquet(tmp_path / "val-00000-of-00002.parquet", {
        "question_id": ["COCO_val2014_000000391895.jpg"], "image": [_image_cell(img)],
        "question": [COCO_CAPTION_PROMPT], "answer": [["A man riding a bike. ", "A person on a bicycle."]],
        "id": [0]}, {"image": IMAGE_TYPE})
    (s,) = read_coco_captions_parquet(f, tmp_path / "img")
    assert (s.id, s.image_id, s.prompt) == ("391895", "391895", COCO_CAPTION_PROMPT)
    assert s.answers == ["A man riding a bike.", "A person on a bicycle."]
    assert s.metadata == {"filename": "COCO_val2014_000000391895.jpg"}
    assert s.image == str(tmp_path / "img" / f"{hashlib.sha256(img).hexdigest()}.png")


def test_parquet_errors(tmp_path):
    f = _write_parquet(tmp_path / "train-00000-of-00001.parquet", {"question": ["q"]}, {})
    with pytest.raises(ValueError, match=r"train-00000-of-00001\.parquet: ScienceQA parquet file has no column\(s\) "
                                         r"\['image', 'choices', 'answer'\]; its columns: \['question'\]"):
        read_scienceqa_parquet(f, tmp_path / "img")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"VQAv2 parquet file .*fake\.parquet is not a readable parquet file"):
        read_vqav2_parquet(tmp_path / "fake.parquet", tmp_path / "img")
    with pytest.raises(FileNotFoundError, match=r"VQAv2 parquet file: no file matches .*nope-\*\.parquet"):
        read_vqav2_parquet(str(tmp_path / "nope-*.parquet"), tmp_path / "img")
    with pytest.raises(FileNotFoundError, match=r"COCO caption parquet file: no \*\.parquet file in .*empty"):
        (tmp_path / "empty").mkdir()
        read_coco_captions_parquet(tmp_path / "empty", tmp_path / "img")
    f = _write_parquet(tmp_path / "x.parquet", {"question_id": ["a.jpg"], "image": [{"bytes": None, "path": "a.jpg"}]},
                       {"image": IMAGE_TYPE})
    with pytest.raises(ValueError, match=r"x\.parquet: row 'a\.jpg' has an image without bytes, only the relative "
                                         r"path 'a\.jpg'"):
        read_coco_captions_parquet(f, tmp_path / "img")


def test_parquet_values_of_the_wrong_type_name_the_row_and_column(tmp_path):
    """Issue 24.9: `answers` stored as a string became a list of its characters, a null question was asked
    as "None"; now each is an error naming the file, the row and the column."""
    cell = _image_cell(_png("red"))
    vqa = {"question_id": [1, 2], "question": ["Is it red?", None], "image": [cell, cell],
           "answers": [["yes"] * 10, ["no"] * 10], "multiple_choice_answer": ["yes", "no"]}
    cases = [
        ("vqa-null-question", read_vqav2_parquet, vqa, {"image": IMAGE_TYPE},
         r"row 1, column 'question' holds null, expected the question's text"),
        ("vqa-answers-string", read_vqav2_parquet, {**vqa, "question": ["a?", "b?"], "answers": ["yes", "no"]},
         {"image": IMAGE_TYPE}, r"row 0, column 'answers' holds 'yes' of type str, expected a list"),
        ("vqa-target-number", read_vqav2_parquet, {**vqa, "question": ["a?", "b?"], "multiple_choice_answer": [1, 2]},
         {"image": IMAGE_TYPE}, r"row 0, column 'multiple_choice_answer' holds 1 of type int"),
        ("coco-captions-string", read_coco_captions_parquet,
         {"question_id": ["COCO_val2014_000000000001.jpg"], "image": [cell], "answer": ["A red square."]},
         {"image": IMAGE_TYPE}, r"row 0, column 'answer' holds 'A red square\.' of type str, expected a list"),
        ("sqa-null-question", read_scienceqa_parquet, _scienceqa_columns([
            (cell, "Which?", ["a", "b"], 0, "", "", "g1", "s", "", "", "", "", ""),
            (cell, None, ["a", "b"], 0, "", "", "g1", "s", "", "", "", "", "")]),
         {**SQA_TYPES, "question": pa.string()}, r"row 1, column 'question' holds null"),
        ("sqa-choices-string", read_scienceqa_parquet, _scienceqa_columns([
            (cell, "Which?", "ab", 0, "", "", "g1", "s", "", "", "", "", "")]),
         {**SQA_TYPES, "choices": pa.string()}, r"row 0, column 'choices' holds 'ab' of type str, expected a list"),
    ]
    for name, reader, columns, types, message in cases:
        f = _write_parquet(tmp_path / f"{name}.parquet", columns, types)
        with pytest.raises(ValueError, match=rf"{name}\.parquet: {message}"):
            reader(f, tmp_path / "img")
    q = _write_parquet(tmp_path / "gqa-null-question.parquet", {"id": ["1"], "imageId": ["n1"], "question": [None]},
                       {"question": pa.string()})
    with pytest.raises(ValueError, match=r"gqa-null-question\.parquet: row 0, column 'question' holds null"):
        read_gqa_parquet(q, q, tmp_path / "img")


def test_new_formats_are_registered_with_image_paths(tmp_path):
    assert set(IMAGE_PATHS) == set(FORMATS)
    s = load_samples({"format": "mme", "root": "mme", "subtasks": ["existence"]}, base_dir=FIX)
    assert len(s) == 4
    s = load_samples({"format": "mmbench", "tsv_file": "mmbench/originals.tsv", "image_dir": str(tmp_path)},
                     base_dir=FIX)
    assert len(s) == 9 and s[0].image.startswith(str(tmp_path))
