"""scripts/vqav2_karpathy_split.py: VQAv2 train2014 + val2014 re-split along Karpathy's COCO split (VL-T5's
karpathy_train / karpathy_test), end to end on tiny synthetic official files, read back by ``read_vqav2`` and
by the shipped configs' data specs."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import memvp
from memvp.datasets import load_samples, read_vqav2

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "scripts" / "vqav2_karpathy_split.py"
_spec = importlib.util.spec_from_file_location("vqav2_karpathy_split", SCRIPT)
karpathy_split = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(karpathy_split)

# COCO image id -> (Karpathy split, COCO folder); image 7 has VQA questions but is not in Karpathy's file
IMAGES = {1: ("train", "train2014"), 6: ("train", "train2014"), 2: ("restval", "val2014"), 3: ("val", "val2014")}
IMAGES.update({4: ("test", "val2014"), 5: ("test", "val2014")})
QUESTIONS_ON = {"train2014": [1, 6, 7], "val2014": [2, 3, 4, 5]}
WORDS = ["yes", "no", "2", "red", "dog", "table"]


def _official(root: Path, seed: int = 0) -> dict[str, Path]:
    """The four official files (two questions per image) and Karpathy's dataset_coco.json, in their layouts."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for subtype, images in QUESTIONS_ON.items():
        header = {"info": {"version": "2.0"}, "license": {"name": "CC"}, "data_type": "mscoco"}
        questions, annotations = [], []
        for image_id in images:
            for k in range(2):
                qid = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": f"What is {qid}?", "question_id": qid})
                answers = [rng.choice(WORDS) for _ in range(10)]
                annotations.append(
                    {
                        "question_type": "what is",
                        "multiple_choice_answer": max(set(answers), key=answers.count),
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
                        ],
                        "image_id": image_id,
                        "answer_type": "other",
                        "question_id": qid,
                    }
                )
        q = {**header, "task_type": "Open-Ended", "data_subtype": subtype, "questions": questions}
        (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(q))
        (root / f"v2_mscoco_{subtype}_annotations.json").write_text(
            json.dumps({**header, "data_subtype": subtype, "annotations": annotations})
        )
    karpathy = {
        "images": [
            {
                "filepath": folder,
                "filename": f"COCO_{folder}_{image_id:012d}.jpg",
                "split": split,
                "cocoid": image_id,
                "sentences": [{"raw": "A thing."}],
            }
            for image_id, (split, folder) in IMAGES.items()
        ],
        "dataset": "coco",
    }
    (root / "dataset_coco.json").write_text(json.dumps(karpathy))
    return {"vqa": root, "karpathy": root / "dataset_coco.json"}


def _coco_images(root: Path) -> Path:
    for image_id, (_, folder) in IMAGES.items():
        path = root / folder / f"COCO_{folder}_{image_id:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"jpeg {image_id}".encode())
    return root


def _run(tmp_path: Path, *extra: str) -> list[str]:
    files = _official(tmp_path / "vqa")
    return ["--vqa-dir", str(files["vqa"]), "--karpathy-file", str(files["karpathy"]), *extra]


def test_split_as_vl_t5_read_back_by_read_vqav2(tmp_path, capsys):
    out, links, coco = tmp_path / "out", tmp_path / "links", _coco_images(tmp_path / "coco")
    args = _run(tmp_path, "--out-dir", str(out), "--link-images", str(links), "--coco-images", str(coco))
    assert karpathy_split.main(args) == 0
    printed = capsys.readouterr().out
    assert "karpathy_train: 6 questions on 3 images" in printed and "karpathy_test: 4 questions on 2 images" in printed
    assert "left out: 2 questions on Karpathy val images, 2 on images not in" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "karpathy_test_annotations.json",
        "karpathy_test_questions.json",
        "karpathy_train_annotations.json",
        "karpathy_train_questions.json",
    ]
    official = json.loads((tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    train = read_vqav2(
        out / "karpathy_train_questions.json", out / "karpathy_train_annotations.json", links, "{image_id}.jpg"
    )
    # Karpathy train + restval: train2014's images 1, 6, then val2014's restval image 2, in file order
    assert [s.id for s in train] == ["1000", "1001", "6000", "6001", "2000", "2001"]
    restval = {a["question_id"]: a for a in official}[2000]
    (s,) = [s for s in train if s.id == "2000"]
    assert s.answers == [a["answer"] for a in restval["answers"]] and s.target == restval["multiple_choice_answer"]
    for s in train:  # every image through its link, whichever COCO folder holds it
        folder = IMAGES[int(s.image_id)][1]
        assert s.image == str(links / f"{s.image_id}.jpg")
        assert os.path.realpath(s.image) == str(coco / folder / f"COCO_{folder}_{int(s.image_id):012d}.jpg")
    test = read_vqav2(
        out / "karpathy_test_questions.json", out / "karpathy_test_annotations.json", links, "{image_id}.jpg"
    )
    assert [s.id for s in test] == ["4000", "4001", "5000", "5001"] and all(os.path.isfile(s.image) for s in test)
    header = json.loads((out / "karpathy_test_questions.json").read_text())
    assert {k: v for k, v in header.items() if k != "questions"} == {
        "info": {"version": "2.0"},
        "license": {"name": "CC"},
        "data_type": "mscoco",
        "task_type": "Open-Ended",
        "data_subtype": "karpathy_test",
    }
    # a second run changes nothing and makes no new link
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert karpathy_split.main(args) == 0 and "(0 new)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("config", ["vqav2_bart.yaml", "vqav2_t5.yaml"])
def test_the_configs_data_specs_read_the_scripts_files(tmp_path, config):
    """The shipped configs name the script's files and its links' layout (image_pattern "{image_id}.jpg")."""
    data = tmp_path / "data"
    coco = _coco_images(data / "coco" / "images")
    out = data / "vqav2"
    args = ["--out-dir", str(out), "--link-images", str(out / "images"), "--coco-images", str(coco)]
    assert karpathy_split.main(_run(tmp_path, *args)) == 0
    raw = yaml.safe_load((REPO / "configs" / config).read_text())
    counts = {}
    for key in ("train_data", "eval_data"):
        spec = {k: v for k, v in raw[key].items() if not k.startswith("features_")}  # the images themselves
        configs = tmp_path / "configs"  # the config's relative paths, against a copy of the repository's layout
        samples = load_samples(spec, base_dir=configs)
        assert all(os.path.isfile(s.image) for s in samples), key
        counts[key] = len(samples)
    assert counts == {"train_data": 6, "eval_data": 4}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    args = _run(tmp_path, "--out-dir", str(out))
    vqa = tmp_path / "vqa"
    (vqa / "v2_mscoco_val2014_annotations.json").rename(vqa / "moved.json")
    assert karpathy_split.main(args) == 2
    line = _one_error_line(capsys)
    assert "VQAv2 val2014 annotations file not found" in line and "v2_mscoco_val2014_annotations.json" in line
    assert "visualqa.org" in line
    (vqa / "v2_mscoco_val2014_annotations.json").write_text("{not json")
    assert karpathy_split.main(args) == 2
    assert "v2_mscoco_val2014_annotations.json is not valid JSON" in _one_error_line(capsys)
    anns = json.loads((vqa / "moved.json").read_text())
    anns["annotations"] = [a for a in anns["annotations"] if a["question_id"] != 4001]
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(anns))
    assert karpathy_split.main(args) == 2
    assert "no annotation for question_id 4001" in _one_error_line(capsys)
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"questions": []}))
    assert karpathy_split.main(args) == 2
    assert "has no 'annotations' list" in _one_error_line(capsys)
    (vqa / "moved.json").rename(vqa / "v2_mscoco_val2014_annotations.json")
    karpathy = json.loads((vqa / "dataset_coco.json").read_text())
    (vqa / "flickr.json").write_text(json.dumps({"images": [{"imgid": 1, "split": "test", "filename": "1.jpg"}]}))
    flickr = [a if a != str(vqa / "dataset_coco.json") else str(vqa / "flickr.json") for a in args]
    assert karpathy_split.main(flickr) == 2
    assert "flickr.json: record" in (line := _one_error_line(capsys)) and "has no 'cocoid'" in line
    karpathy["images"] = [im for im in karpathy["images"] if im["split"] != "test"]
    (vqa / "dataset_coco.json").write_text(json.dumps(karpathy))
    assert karpathy_split.main(args) == 2
    assert "no VQAv2 question is on a Karpathy test image" in _one_error_line(capsys)
    assert not out.exists()  # nothing written from bad input


def test_missing_coco_image_writes_nothing(tmp_path, capsys):
    coco = _coco_images(tmp_path / "coco")
    (coco / "val2014" / "COCO_val2014_000000000005.jpg").unlink()
    out = tmp_path / "out"
    args = _run(tmp_path, "--out-dir", str(out), "--link-images", str(tmp_path / "links"), "--coco-images", str(coco))
    assert karpathy_split.main(args) == 2
    line = _one_error_line(capsys)
    assert "1 of 5 COCO images not found" in line and "COCO_val2014_000000000005.jpg" in line
    assert not out.exists() and not (tmp_path / "links").exists()


def test_command_line_exit_status(tmp_path):
    """As a command: bad input is exit 2 with one line on stderr; so are bad arguments (argparse)."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(memvp.__file__))}
    args = _run(tmp_path, "--out-dir", str(tmp_path / "out"))
    (tmp_path / "vqa" / "dataset_coco.json").unlink()
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("vqav2_karpathy_split: error: Karpathy split file not found") and "dataset_coco.json" in line
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--link-images", str(tmp_path / "links")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "--link-images and --coco-images go together" in done.stderr
