"""memvp.datasets.mmbench: MMBench's TSV, its rotations, and circular scoring."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from dataset_files import FIXTURES, MMB, png

from memvp.datasets import Sample, read_mmbench, score


def test_mmbench_rotations_prompts_and_images(tmp_path):
    samples = read_mmbench(os.path.join(MMB, "originals.tsv"), tmp_path / "img")
    # 4 + 2 + 3 options -> 9 rotations, ids in MMBench's own numbering (index + r * 1e6)
    assert [s.id for s in samples] == ["0", "1000000", "2000000", "3000000", "1", "1000001", "2", "1000002", "2000002"]
    first, rot1 = samples[0], samples[1]
    assert first.prompt == (
        "What color is the square?\nA. blue\nB. red\nC. green\nD. yellow\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert rot1.prompt == (
        "What color is the square?\nA. red\nB. green\nC. yellow\nD. blue\n"
        "Answer with the option's letter from the given choices directly."
    )
    # the answer letter follows its option ("red")
    assert [s.answers for s in samples[:4]] == [["B"], ["A"], ["D"], ["C"]]
    assert first.question_type == "attribute_recognition"
    row = rot1.metadata.pop("row")  # the TSV row, for the submission table
    assert rot1.metadata == {
        "circular_group": "0",
        "rotation": 1,
        "index": 0,
        "num_choices": 4,
        "choices": ["red", "green", "yellow", "blue"],
        "category": "attribute_recognition",
        "l2_category": "finegrained_perception (instance-level)",
    }
    assert row["index"] == 0 and (row["A"], row["answer"], row["hint"]) == ("blue", "B", "nan") and "image" not in row
    # hint first; options end at the first empty cell (pandas' NA)
    two = samples[4]
    assert two.prompt.startswith("The image shows a day in July.\nWhich is warmer?\nA. summer\nB. winter\n")
    assert two.metadata["num_choices"] == 2 and samples[5].answers == ["B"]
    assert samples[6].metadata["num_choices"] == 3  # D is "nan"
    # images decoded once, content-addressed; row 2's image cell "0" is row 0's image
    red = hashlib.sha256(png("red")).hexdigest()
    assert first.image == str(tmp_path / "img" / f"{red}.png") and first.image_id == red
    assert samples[6].image == first.image != two.image
    assert sorted(os.listdir(tmp_path / "img")) == sorted([f"{red}.png", os.path.basename(two.image)])
    with open(first.image, "rb") as f:
        assert f.read() == png("red")
    # single pass
    assert [s.id for s in read_mmbench(os.path.join(MMB, "originals.tsv"), tmp_path / "img", circular=False)] == [
        "0",
        "1",
        "2",
    ]


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
    with pytest.raises(
        ValueError,
        match=r"mmb\.tsv: line 3 repeats index 4 of line 2; every question needs its own "
        r"index",
    ):  # issue 24.6: the two questions became one, one prediction lost
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
    f.write_text(
        "index\tquestion\thint\tA\tB\timage\tcategory\n"
        f"3\tq?\tnan\tx\ty\t{base64.b64encode(png('red')).decode()}\tocr\n"
    )
    a, b = read_mmbench(f, tmp_path / "img")
    assert a.answers == b.answers == [] and a.target is None and a.metadata["l2_category"] == ""


def test_mmbench_score_circular(tmp_path):
    samples = read_mmbench(FIXTURES / "mmbench" / "originals.tsv", tmp_path)
    right = {s.id: s.answers[0] for s in samples}
    result = score("mmbench", samples, right)
    assert result["overall"] == 100.0 and result["count"] == 3 and result["rotations"] == 9
    # a failed rotation of question 1 (2 options) makes the whole question wrong
    result = score("mmbench", samples, {**right, "1000001": "A"})
    assert result["overall"] == pytest.approx(200 / 3) and result["vanilla"] == 100.0
    assert result["per_category"] == {"attribute_recognition": 100.0, "physical_property_reasoning": 0.0}
    assert result["per_l2_category"] == {"attribute_reasoning": 0.0, "finegrained_perception (instance-level)": 100.0}
    unanswered = [Sample(id="9", prompt="q", answers=[], metadata={"circular_group": "9", "rotation": 0})]
    with pytest.raises(ValueError, match=r"1 MMBench question\(s\) have no answer"):
        score("mmbench", unanswered, {"9": "A"})


def test_mmbench_strict_is_vlmevalkits_matching(tmp_path):
    samples = read_mmbench(FIXTURES / "mmbench" / "originals.tsv", tmp_path)
    # each rotation answered with the text of the right option, as shown in that rotation
    texts = {s.id: f"It is {s.metadata['choices'][ord(s.answers[0]) - ord('A')]}." for s in samples}
    strict = score("mmbench", samples, texts, "strict")
    assert strict["rule"] == "vlmevalkit" and strict["overall"] == 100.0
    assert score("mmbench", samples, texts)["overall"] == 0.0 and score("mmbench", samples, texts)["rule"] == "default"
