"""memvp.datasets.registry: the format table, load_samples and score."""

from __future__ import annotations

import os
import pkgutil
import sys

import pytest
from dataset_files import FIX, FIXTURES, SQA

from memvp.datasets import (
    FORMATS,
    DatasetFormat,
    Sample,
    get_format,
    load_samples,
    read_gqa,
    read_scienceqa,
    register_format,
    resolve_rule,
    score,
)
from memvp.datasets.gqa import score_exact_match


def test_load_samples_dispatch_and_base_dir():
    s = load_samples({"format": "scienceqa", "root": SQA, "split": "test"})
    assert [x.id for x in s] == ["12"] and isinstance(s[0], Sample)
    s = load_samples(
        {"format": "vqav2", "questions_file": "vqav2/questions.json", "annotations_file": None, "image_dir": "images"},
        base_dir=FIX,
    )
    assert s[0].image == os.path.join(FIX, "images", "COCO_val2014_000000000042.jpg")
    assert (
        len(
            load_samples(
                {
                    "format": "coco_captions",
                    "karpathy_file": os.path.join(FIX, "coco", "dataset_coco.json"),
                    "image_root": "/c",
                    "split": "train",
                }
            )
        )
        == 3  # one sample per (image, caption) of train: 1 + 2 captions
    )
    assert (
        len(
            load_samples(
                {"format": "gqa", "questions_file": "gqa/testdev_balanced_questions.json", "image_dir": "/g"},
                base_dir=FIX,
            )
        )
        == 2
    )
    assert (
        len(load_samples({"format": "llava", "json_file": "llava/conversations.json", "image_dir": "/l"}, base_dir=FIX))
        == 3
    )


def test_load_samples_errors():
    with pytest.raises(
        ValueError,
        match=r"unknown dataset format 'coco'; formats: "
        r"\['coco_captions', 'coco_captions_parquet', 'gqa', 'gqa_parquet', 'how2qa', "
        r"'llava', 'mmbench', 'mme', 'pope', 'scienceqa', 'scienceqa_parquet', 'tvqa', "
        r"'vqav2', 'vqav2_parquet'\]",
    ):
        load_samples({"format": "coco"})
    with pytest.raises(ValueError, match=r"no 'format' key"):
        load_samples({"root": SQA})
    with pytest.raises(ValueError, match=r"bad arguments for dataset format 'gqa'"):
        load_samples({"format": "gqa", "questions_file": "q.json"})


def test_sample_defaults():
    s = Sample(id="1", prompt="p", answers=["a", "b"])
    assert s.target == "a" and not s.has_image and s.metadata == {} and s.question_type == ""
    assert Sample(id="2", prompt="p", answers=[], features="/f.npy").has_image


def test_new_formats_are_registered_with_image_paths(tmp_path):
    assert all(fmt.image_paths and fmt.name == name for name, fmt in FORMATS.items())
    s = load_samples({"format": "mme", "root": "mme", "subtasks": ["existence"]}, base_dir=FIX)
    assert len(s) == 4
    s = load_samples(
        {"format": "mmbench", "tsv_file": "mmbench/originals.tsv", "image_dir": str(tmp_path)}, base_dir=FIX
    )
    assert len(s) == 9 and s[0].image.startswith(str(tmp_path))


def test_parquet_formats_use_the_metric_they_are_named_after():
    gqa = read_gqa(FIXTURES / "gqa" / "testdev_balanced_questions.json", FIXTURES / "gqa")
    assert score("gqa_parquet", gqa, {s.id: s.answers[0] for s in gqa}) == score(
        "gqa", gqa, {s.id: s.answers[0] for s in gqa}
    )
    sqa = read_scienceqa(FIXTURES / "scienceqa", "train")
    assert score("scienceqa_parquet", sqa, {s.id: s.answers[0] for s in sqa})["Average"] == 100.0
    assert {"pope", "mme", "mmbench", "vqav2_parquet", "coco_captions_parquet"} <= set(FORMATS)
    assert get_format("vqav2_parquet").scorer is get_format("vqav2").scorer


def test_unknown_task_has_no_metric():
    with pytest.raises(ValueError, match="no metric for task 'imagenet'; tasks: .*scienceqa"):
        score("imagenet", [], {})


def test_a_format_is_registered_once_with_path_keys_its_reader_takes():
    gqa = get_format("gqa")
    assert gqa.path_keys == {"questions_file", "image_dir"} and not gqa.is_video and get_format("tvqa").is_video
    with pytest.raises(ValueError, match="dataset format 'gqa' is already registered"):
        register_format(gqa)
    with pytest.raises(
        ValueError,
        match=r"dataset format 'gqa2': path keys \['image_root'\] are not arguments of "
        r"its reader",
    ):
        register_format(DatasetFormat("gqa2", read_gqa, {"questions_file", "image_root"}, "-", score_exact_match))
    assert "gqa2" not in FORMATS


def test_strict_stands_for_each_formats_reference_rule():
    assert resolve_rule("scienceqa", "strict") == resolve_rule("scienceqa_parquet", "strict") == "llava"
    assert resolve_rule("mmbench", "strict") == "vlmevalkit"
    assert resolve_rule("tvqa", "strict") == "default"  # no reference tool: the tolerant rule
    assert resolve_rule("tvqa", "memvp") == "memvp"
    with pytest.raises(ValueError, match="unknown multiple-choice rule 'exact'"):
        resolve_rule("scienceqa", "exact")
    with pytest.raises(ValueError, match="strict_rule 'exact' is not one of"):
        DatasetFormat("gqa3", read_gqa, {"questions_file"}, "-", score_exact_match, strict_rule="exact")


def test_every_format_writes_llavas_answers_and_may_replace_that_writer():
    assert all("llava_jsonl" in fmt.writers for fmt in FORMATS.values())
    gqa = DatasetFormat("gqa3", read_gqa, {"questions_file"}, "-", score_exact_match)
    assert list(gqa.writers) == ["llava_jsonl"]
    own = DatasetFormat("gqa3", read_gqa, {"questions_file"}, "-", score_exact_match, writers={"llava_jsonl": len})
    assert own.writers == {"llava_jsonl": len}


def test_every_module_of_the_package_is_imported_so_its_formats_register():
    """A new family module needs no import added anywhere: the package imports all of its modules."""
    import memvp.datasets

    modules = [m.name for m in pkgutil.iter_modules(memvp.datasets.__path__)]
    assert {"scienceqa", "vqav2", "video", "registry"} <= set(modules)
    assert all(f"memvp.datasets.{name}" in sys.modules for name in modules)
