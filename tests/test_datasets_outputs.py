"""memvp.datasets.outputs and the families' writers: the files of the field's tools (LLaVA's answers file,
VQAv2 for EvalAI, GQA's eval.py, COCO results, MMBench's submission table, POPE's and MME's official
scripts), their schemas checked field by field on the fixtures, expected values written out by hand."""

from __future__ import annotations

import builtins
import csv
import io
import json
import os

import pytest
from dataset_files import FIX, MMB, MME, POPE_FILES, SQA, VQA

from memvp.datasets import (
    output_formats,
    read_coco_captions,
    read_gqa,
    read_mmbench,
    read_mme,
    read_pope,
    read_scienceqa,
    read_vqav2,
    write_outputs,
)
from memvp.datasets.outputs import answer_id, model_id_of

LLAVA_FIELDS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
SHORTUUID = set("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def _json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(task, names, samples, predictions, folder, model_id="sqa-run"):
    written = write_outputs(task, names, samples, predictions, folder, model_id)
    return {os.path.relpath(path, folder): name for name, path in written}


def test_answer_id_has_shortuuids_form_and_a_rerun_gives_the_same():
    first = answer_id("run", "12", "B")
    assert len(first) == 22 and set(first) <= SHORTUUID
    assert answer_id("run", "12", "B") == first != answer_id("run", "13", "B")


def test_model_id_names_the_run_as_llava_names_a_checkpoint(tmp_path):
    assert model_id_of(tmp_path / "sqa-run" / "adapter") == "sqa-run"  # memvp's run/adapter: the run
    assert model_id_of(tmp_path / "sqa-run" / "checkpoint-200") == "sqa-run_checkpoint-200"  # LLaVA's rule
    assert model_id_of(tmp_path / "my-adapter/") == "my-adapter"


def test_output_format_names_all_and_unknown():
    assert output_formats("vqav2", []) == []
    assert output_formats("vqav2", ["all"]) == ["llava_jsonl", "vqav2_eval_ai"]
    assert output_formats("mmbench", ["mmbench_submission", "all"]) == ["mmbench_submission", "llava_jsonl"]
    assert output_formats("llava", ["all"]) == ["llava_jsonl"]  # every format has LLaVA's
    with pytest.raises(ValueError, match=r"output format 'mme' is not written for dataset format 'pope'; "
                       r"choices: llava_jsonl, pope, all"):  # fmt: skip
        output_formats("pope", ["mme"])


def test_llava_answers_of_scienceqa_as_eval_science_qa_reads_them(tmp_path):
    samples = read_scienceqa(SQA, "train")  # pid 5 without an image, pid 9 with one
    files = _write("scienceqa", ["llava_jsonl"], samples, {"5": "B.", "9": "C."}, tmp_path)
    assert files == {"llava_answers.jsonl": "llava_jsonl"}
    lines = _json_lines(tmp_path / "llava_answers.jsonl")
    assert [list(line) for line in lines] == [LLAVA_FIELDS, LLAVA_FIELDS]
    no_image, image = lines
    assert no_image["question_id"] == "5" and no_image["prompt"] == samples[0].prompt  # the problem id, as LLaVA
    assert image["prompt"] == "<image>\n" + samples[1].prompt  # model_vqa_science.py marks image questions
    # the whole answer: the prompt ended with "The answer is", the model wrote "B."
    assert (no_image["text"], image["text"]) == ("The answer is B.", "The answer is C.")
    assert no_image["model_id"] == "sqa-run" and no_image["metadata"] == {}
    assert no_image["answer_id"] == answer_id("sqa-run", "5", "The answer is B.")
    # a skipped question (no prediction) still has its line, with no text
    _write("scienceqa", ["llava_jsonl"], samples, {"9": "C."}, tmp_path)
    assert _json_lines(tmp_path / "llava_answers.jsonl")[0]["text"] == ""


def test_vqav2_eval_ai_file_as_llava_submits_it(tmp_path):
    samples = read_vqav2(os.path.join(VQA, "questions.json"), os.path.join(VQA, "annotations.json"), tmp_path)
    predictions = {"42000": "Red.", "73000": "Two"}  # 42001 skipped
    files = _write("vqav2", ["all"], samples, predictions, tmp_path)
    assert files == {"llava_answers.jsonl": "llava_jsonl", "vqav2_eval_ai.json": "vqav2_eval_ai"}
    # every question, its id a number as in the questions file, the answer through EvalAI's processor
    assert json.loads((tmp_path / "vqav2_eval_ai.json").read_text()) == [
        {"question_id": 42000, "answer": "red"},
        {"question_id": 42001, "answer": ""},
        {"question_id": 73000, "answer": "2"},
    ]
    lines = _json_lines(tmp_path / "llava_answers.jsonl")
    assert [(a["question_id"], a["prompt"], a["text"]) for a in lines] == [
        (42000, samples[0].prompt, "Red."),
        (42001, samples[1].prompt, ""),
        (73000, samples[2].prompt, "Two"),
    ]


def test_gqa_predictions_and_coco_results(tmp_path):
    gqa = read_gqa(os.path.join(FIX, "gqa", "testdev_balanced_questions.json"), tmp_path)
    assert _write("gqa", ["gqa_eval"], gqa, {"20968379": "White.", "201307251": "No"}, tmp_path) == {
        "gqa_predictions.json": "gqa_eval"
    }
    # convert_gqa_for_eval.py: ids stay strings (GQA's eval.py looks them up in its question file)
    assert json.loads((tmp_path / "gqa_predictions.json").read_text()) == [
        {"questionId": "20968379", "prediction": "white"},
        {"questionId": "201307251", "prediction": "no"},
    ]
    coco = read_coco_captions(os.path.join(FIX, "coco", "dataset_coco.json"), tmp_path, "test")
    _write("coco_captions", ["coco_results"], coco, {"391895": "A man on a bike."}, tmp_path)
    assert json.loads((tmp_path / "coco_captions_results.json").read_text()) == [
        {"image_id": 391895, "caption": "A man on a bike."}
    ]


def test_pope_files_as_eval_pope_reads_them(tmp_path):
    samples = read_pope(POPE_FILES, tmp_path)  # random 4, popular 2, adversarial 2 questions
    predictions = {s.id: "No" for s in samples}
    predictions["random_1"] = "Yes, there is."
    files = _write("pope", ["pope"], samples, predictions, tmp_path)
    assert sorted(files) == [
        "pope/answers.jsonl",
        "pope/coco/coco_pope_adversarial.json",
        "pope/coco/coco_pope_popular.json",
        "pope/coco/coco_pope_random.json",
        "pope/llava_pope_test.jsonl",
    ]
    answers = _json_lines(tmp_path / "pope" / "answers.jsonl")
    questions = _json_lines(tmp_path / "pope" / "llava_pope_test.jsonl")
    assert [list(a) for a in answers] == [LLAVA_FIELDS] * 8
    assert answers[0]["text"] == "Yes, there is." and answers[0]["question_id"] == "random_1"
    # eval_pope.py takes each answer's split from the question file, by question_id
    assert questions[0] == {
        "question_id": "random_1",
        "image": "COCO_val2014_000000310196.jpg",
        "text": "Is there a snowboard in the image?\nAnswer the question using a single word or phrase.",
        "category": "random",
    }
    by_id = {q["question_id"]: q["category"] for q in questions}
    assert [by_id[a["question_id"]] for a in answers] == ["random"] * 4 + ["popular"] * 2 + ["adversarial"] * 2
    # ... and pairs a split's answers, in order, with the labels of coco/coco_pope_<split>.json
    popular = _json_lines(tmp_path / "pope" / "coco" / "coco_pope_popular.json")
    assert popular == [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
         "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dining table in the image?",
         "label": "no"},
    ]  # fmt: skip


def test_mme_results_folder_as_calculation_py_reads_it(tmp_path):
    samples = read_mme(MME)  # artwork, code_reasoning, existence: 2 questions per image
    predictions = {s.id: "No" for s in samples}
    predictions["artwork/10002.jpg/0"] = "Yes\tit is\na painting"  # a tab and a line break in an answer
    files = _write("mme", ["mme", "llava_jsonl"], samples, predictions, tmp_path)
    assert sorted(files) == ["llava_answers.jsonl", "mme/artwork.txt", "mme/code_reasoning.txt", "mme/existence.txt"]
    assert (tmp_path / "mme" / "artwork.txt").read_text() == (
        "10002.jpg\tDoes this artwork exist in the form of painting? Please answer yes or no.\tYes\t"
        "Yes it is a painting\n"
        "10002.jpg\tDoes this artwork exist in the form of glassware? Please answer yes or no.\tNo\tNo\n"
    )
    existence = (tmp_path / "mme" / "existence.txt").read_text().splitlines()
    # calculation.py pairs consecutive lines as the two questions of one image
    assert [line.split("\t")[0] for line in existence] == ["000000006040.jpg"] * 2 + ["000000018150.jpg"] * 2
    # LLaVA's answers: question_id "<subtask>/<image>" as in llava_mme.jsonl, for its convert_answer_to_mme.py
    first = _json_lines(tmp_path / "llava_answers.jsonl")[0]
    assert first["question_id"] == "artwork/10002.jpg"
    assert first["prompt"] == (
        "Does this artwork exist in the form of painting?\nAnswer the question using a single word or phrase."
    )


def _mmbench_table(tmp_path, monkeypatch, without_openpyxl: bool):
    samples = read_mmbench(os.path.join(MMB, "originals.tsv"), tmp_path / "img")  # 4 + 2 + 3 rotations
    predictions = {s.id: "B" for s in samples}
    predictions["1000000"] = "A\tred"
    if without_openpyxl:
        real_import = builtins.__import__

        def no_openpyxl(name, *args, **kwargs):
            if name.startswith("openpyxl"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_openpyxl)
    return _write("mmbench", ["mmbench_submission"], samples, predictions, tmp_path / "out")


# convert_mmbench_for_submission.py: hint, category, source, image, comment, l2-category dropped, prediction 7th
MMB_COLUMNS = ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
MMB_ROWS = [  # a row per rotation: MMBench's index + r * 1e6, options and answer letter as that rotation shows them
    ["0", "What color is the square?", "blue", "red", "green", "yellow", "B", "B", "dev"],
    ["1000000", "What color is the square?", "red", "green", "yellow", "blue", "A\tred", "A", "dev"],
    ["2000000", "What color is the square?", "green", "yellow", "blue", "red", "B", "D", "dev"],
    ["3000000", "What color is the square?", "yellow", "blue", "red", "green", "B", "C", "dev"],
]


def test_mmbench_submission_table_as_tsv_without_openpyxl(tmp_path, monkeypatch):
    assert _mmbench_table(tmp_path, monkeypatch, without_openpyxl=True) == {
        "mmbench_submission.tsv": "mmbench_submission"
    }
    with open(tmp_path / "out" / "mmbench_submission.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == MMB_COLUMNS and rows[1:5] == MMB_ROWS
    # 2 options: C and D empty (pandas' NA); 3 options rotated once: D stays empty
    assert rows[5] == ["1", "Which is warmer?", "summer", "winter", "", "", "B", "A", "dev"]
    assert rows[8][:6] == ["1000002", "How many squares are there?", "two", "three", "one", ""] and len(rows) == 10


def test_mmbench_submission_table_as_xlsx(tmp_path, monkeypatch):
    openpyxl = pytest.importorskip("openpyxl")
    assert _mmbench_table(tmp_path, monkeypatch, without_openpyxl=False) == {
        "mmbench_submission.xlsx": "mmbench_submission"
    }
    sheet = openpyxl.load_workbook(io.BytesIO((tmp_path / "out" / "mmbench_submission.xlsx").read_bytes())).active
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert rows[0] == MMB_COLUMNS
    assert rows[1:5] == [[int(r[0]), *r[1:]] for r in MMB_ROWS]  # the index a number, as pandas writes it
    assert rows[5] == [1, "Which is warmer?", "summer", "winter", None, None, "B", "A", "dev"]


def test_mmbench_llava_answers_are_numbered_by_the_tsv_index(tmp_path):
    samples = read_mmbench(os.path.join(MMB, "with_circular_copies.tsv"), tmp_path / "img")
    _write("mmbench", ["llava_jsonl"], samples, {}, tmp_path)
    ids = [a["question_id"] for a in _json_lines(tmp_path / "llava_answers.jsonl")]
    assert ids == [int(s.id) for s in samples] and all(isinstance(i, int) for i in ids)
