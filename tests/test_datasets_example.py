"""Adding a dataset: a format defined here, and nowhere else (a reader and a scorer registered with
``register_format``), is read by ``load_samples`` and scored by ``score`` like the shipped ones.
docs/design.md ("Adding a dataset") shows the same code as a module of ``memvp/datasets/``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import pytest

from memvp.datasets import FORMATS, DatasetFormat, Sample, get_format, io, load_samples, register_format, score


def read_shapes(questions_file: str, image_dir: str) -> list[Sample]:
    """One question per line: {"id", "image", "question", "answer"}."""
    path, image_dir = io.absolute(questions_file), io.absolute(image_dir)
    samples = []
    for n, q in io.json_lines(path, "shapes questions file"):  # errors name the file and the line
        qid = io.field(q, "id", path, f"line {n}")
        image = io.field(q, "image", path, qid)
        samples.append(
            Sample(
                id=str(qid),
                prompt=io.field(q, "question", path, qid),
                answers=[io.field(q, "answer", path, qid)],
                image=io.inside(image_dir, image, path, f"question {qid!r}"),
                image_id=image,
            )
        )
    return io.non_empty(samples, path)


def score_shapes(samples: Sequence[Sample], predictions: Mapping[str, str], rule: str) -> dict:
    """samples: those with a prediction; predictions: sample id -> the model's answer."""
    right = [predictions[s.id].strip().lower() == s.answers[0] for s in samples]
    return {"accuracy": 100.0 * sum(right) / len(right), "count": len(right)}


SHAPES = DatasetFormat(
    "shapes", read_shapes, {"questions_file", "image_dir"}, "image_dir/<image> of each question", score_shapes
)  # a module of memvp/datasets/ passes it to register_format where it is defined


@pytest.fixture
def shapes():
    register_format(SHAPES)
    yield SHAPES
    del FORMATS[SHAPES.name]  # the other tests see the shipped formats only


def test_a_format_defined_outside_the_package_loads_and_scores(shapes, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "q.jsonl").write_text(
        "".join(
            json.dumps(q) + "\n"
            for q in [
                {"id": 1, "image": "a.png", "question": "Which shape?", "answer": "circle"},
                {"id": 2, "image": "b.png", "question": "Which shape?", "answer": "square"},
            ]
        )
    )
    samples = load_samples(
        {"format": "shapes", "questions_file": "data/q.jsonl", "image_dir": "data"}, base_dir=str(tmp_path)
    )  # its path keys resolve against the config's folder
    assert [(s.id, s.image, s.target) for s in samples] == [
        ("1", str(tmp_path / "data" / "a.png"), "circle"),
        ("2", str(tmp_path / "data" / "b.png"), "square"),
    ]
    assert score("shapes", samples, {"1": "Circle", "2": "circle"}) == {"accuracy": 50.0, "count": 2}
    assert score("shapes", samples, {"2": "square"}) == {"accuracy": 100.0, "count": 1}  # only the predicted ones
    assert get_format("shapes").image_paths == "image_dir/<image> of each question"
    (tmp_path / "feats").mkdir()  # what every format takes: pre-extracted features
    with_features = load_samples(
        {"format": "shapes", "questions_file": "data/q.jsonl", "image_dir": "data", "features_dir": "feats"},
        base_dir=str(tmp_path),
    )
    assert with_features[0].features == os.path.join(tmp_path, "feats", "a.png.safetensors")
    with pytest.raises(ValueError, match="bad arguments for dataset format 'shapes'"):
        load_samples({"format": "shapes", "questions_file": "q.jsonl"})
