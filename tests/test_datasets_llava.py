"""memvp.datasets.llava: LLaVA conversation files, per turn and per conversation."""

from __future__ import annotations

import json
import os
import re

import pytest
from dataset_files import FIX

from memvp.datasets import load_samples, read_llava


def test_llava_turns_history_and_no_image():
    s0, s1, t = read_llava(os.path.join(FIX, "llava", "conversations.json"), "/data/llava")
    assert s0.id == "000000033471_0" and s1.id == "000000033471_1" and t.id == "i6IyJda_0_0"
    assert s0.prompt == "What are the colors of the bus in the image?"
    assert s0.answers == ["The bus in the image is white and red."]
    assert s1.prompt == "What feature can be seen on the back of the bus?"
    assert s0.image == s1.image == "/data/llava/coco/train2017/000000033471.jpg"
    assert s1.image_id == "coco/train2017/000000033471.jpg"
    assert s0.metadata == {"conversation_id": "000000033471", "turn": 0, "history": []}
    assert s1.metadata["history"] == [
        ["What are the colors of the bus in the image?", "The bus in the image is white and red."]
    ]
    assert t.image is None and t.image_id is None and not t.has_image
    assert t.prompt == "Write a haiku about autumn."


def test_llava_bad_roles():
    with pytest.raises(ValueError, match=r"bad_roles\.json: conversation 'x' turn 0 is not human -> gpt"):
        read_llava(os.path.join(FIX, "llava", "bad_roles.json"), "/x")


@pytest.mark.parametrize(
    "message, described",
    [
        ("hello", "message 1 is 'hello'"),
        (None, "message 1 is None"),
        (7, "message 1 is 7"),
        ({"from": "gpt", "value": None}, "message 1 has the value None"),
    ],
)
def test_llava_malformed_message_names_the_conversation_or_is_skipped(tmp_path, message, described):
    """Issue 24.7: a string, null or number where a {from, value} object belongs was an AttributeError."""
    good = {
        "id": "ok",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}],
    }
    bad = {"id": 17, "image": "b.jpg", "conversations": [{"from": "human", "value": "Q?"}, message]}
    f = tmp_path / "llava.json"
    f.write_text(json.dumps([good, bad, "not a conversation"]))
    with pytest.raises(
        ValueError,
        match=rf"llava\.json: conversation '17': {re.escape(described)}; each message "
        r"must be a \{from, value\} object with text: fix it, or skip",
    ):
        read_llava(f, tmp_path)
    skipped = {}
    (only,) = read_llava(f, tmp_path, skipped=skipped)
    assert only.id == "ok_0" and list(skipped) == ["conversation 17", "entry 2"]
    assert described in skipped["conversation 17"]
    assert [
        s.id for s in load_samples({"format": "llava", "json_file": str(f), "image_dir": str(tmp_path)}, skipped={})
    ] == ["ok_0"]
    with pytest.raises(ValueError, match="bad arguments for dataset format 'llava'.*'skipped'"):
        load_samples({"format": "llava", "json_file": str(f), "image_dir": str(tmp_path), "skipped": {}})


def test_llava_per_conversation_keeps_last_turn_and_history():
    f = os.path.join(FIX, "llava", "conversations.json")
    per_turn = read_llava(f, "/data/llava")
    c, t = read_llava(f, "/data/llava", per_conversation=True)
    assert (c.id, t.id) == ("000000033471", "i6IyJda_0")
    # the last turn's prompt / answer, every earlier [human, gpt] pair as history
    assert c.prompt == "What feature can be seen on the back of the bus?"
    assert c.answers == ["The back of the bus features an advertisement."]
    assert c.metadata == {
        "conversation_id": "000000033471",
        "turn": 1,
        "history": [["What are the colors of the bus in the image?", "The bus in the image is white and red."]],
    }
    assert c.image == "/data/llava/coco/train2017/000000033471.jpg"
    # the same as the per-turn sample of the last turn, but for its id
    for whole, last in ((c, per_turn[1]), (t, per_turn[2])):
        assert (whole.prompt, whole.answers, whole.image, whole.image_id, whole.metadata) == (
            last.prompt,
            last.answers,
            last.image,
            last.image_id,
            last.metadata,
        )
    assert t.metadata["history"] == [] and t.image is None
    assert len(load_samples({"format": "llava", "json_file": f, "image_dir": "/l", "per_conversation": True})) == 2
    with pytest.raises(ValueError, match=r"bad_roles\.json: conversation 'x' turn 0 is not human -> gpt"):
        read_llava(os.path.join(FIX, "llava", "bad_roles.json"), "/x", per_conversation=True)
