"""VQAv2 re-split along Karpathy's COCO split, as VL-T5 / VL-PET train and test it (``configs/vqav2_*.yaml``).

VL-T5 (j-min/VL-T5, ``src/vqa_data.py`` reads ``datasets/vqa/karpathy_{train,val,test}.json`` from its
Google Drive) pools the questions of VQAv2 train2014 and val2014 and splits them by image along Karpathy's
``dataset_coco.json``: ``karpathy_train`` = the questions on Karpathy's ``train`` + ``restval`` images,
``karpathy_val`` on its ``val`` images, ``karpathy_test`` on its ``test`` images (605,102 / 26,729 / 26,280
questions: all 658,111 of train2014 + val2014). This script builds the train and test files from the
official files, in the official question / annotation layout that memvp's ``vqav2`` reader reads::

    OUT/karpathy_train_questions.json   OUT/karpathy_train_annotations.json
    OUT/karpathy_test_questions.json    OUT/karpathy_test_annotations.json

Question and annotation records are copied as they are (file order, train2014 first); the files'
``data_subtype`` is ``karpathy_train`` / ``karpathy_test``, not a COCO image folder, because a split
holds images of both train2014 and val2014, whose file names differ (``COCO_train2014_...``,
``COCO_val2014_...``). ``--link-images DIR --coco-images ROOT`` makes ``DIR/{image_id}.jpg`` a link to
each image of the two splits where Karpathy's file puts it (``ROOT/<filepath>/<filename>``, as the
``coco_captions`` reader finds it), so ``image_dir: DIR, image_pattern: "{image_id}.jpg"`` reads every
image. Runs with pre-extracted features (``features_pattern: "{image_id}.npy"``) read no image.

    python scripts/vqav2_karpathy_split.py --vqa-dir data/vqav2 --karpathy-file data/coco/dataset_coco.json \\
        --out-dir data/vqav2 --link-images data/vqav2/images --coco-images data/coco/images

Every file is written atomically, and only after all inputs were read and checked; bad input is one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from memvp.atomic import atomic_write
from memvp.datasets import io

OFFICIAL = {  # argument -> (file name in --vqa-dir, what it is)
    "train_questions": ("v2_OpenEnded_mscoco_train2014_questions.json", "VQAv2 train2014 questions file"),
    "train_annotations": ("v2_mscoco_train2014_annotations.json", "VQAv2 train2014 annotations file"),
    "val_questions": ("v2_OpenEnded_mscoco_val2014_questions.json", "VQAv2 val2014 questions file"),
    "val_annotations": ("v2_mscoco_val2014_annotations.json", "VQAv2 val2014 annotations file"),
}
SPLITS = {"karpathy_train": ("train", "restval"), "karpathy_test": ("test",)}
"""Output split -> the Karpathy splits whose images' questions it holds (VL-T5's karpathy_train / _test)."""
NAME = "vqav2_karpathy_split"


def _load(path: str, what: str, key: str, hint: str) -> dict:
    """The JSON object at ``path`` with a list under ``key``; one-line errors naming the file and the fix."""
    try:
        data = io.load_json(path, what)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; {hint}") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{what} {io.absolute(path)} has no {key!r} list at the top level; {hint}")
    return data


def _image_id(value: Any, path: str, where: Any) -> int:
    """An image id as a number (COCO's are); a one-line error naming the file and the record otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ValueError(f"{io.absolute(path)}: record {where!r} has image id {value!r}, expected a COCO image number")
    return int(value)


def _karpathy_images(path: str) -> dict[int, dict]:
    """COCO image id -> its record in Karpathy's ``dataset_coco.json`` (``split``, ``filepath``, ``filename``)."""
    hint = "give Karpathy's COCO split file dataset_coco.json (caption_datasets.zip)"
    images = {}
    for im in _load(path, "Karpathy split file", "images", hint)["images"]:
        if not isinstance(im, dict) or "cocoid" not in im or "split" not in im:
            raise ValueError(
                f"Karpathy split file {io.absolute(path)}: record {str(im)[:80]!r} has no 'cocoid' or 'split'; {hint}"
            )
        images[_image_id(im["cocoid"], path, im.get("filename"))] = im
    return images


class Official:
    """The official train2014 + val2014 files read: every question (train2014 first, file order), each
    question's annotation, and the header fields (info, license, data_type, ...) of the train2014 files."""

    def __init__(self, paths: dict[str, str]):
        hint = "download the official VQAv2 files from visualqa.org or give their paths"
        self.questions: list[dict] = []
        self.annotations: dict[Any, dict] = {}
        self.image_of: dict[Any, int] = {}
        self.headers: dict[str, dict] = {}
        source: dict[Any, str] = {}
        for part in ("train", "val"):
            q_path, a_path = paths[f"{part}_questions"], paths[f"{part}_annotations"]
            q_data = _load(q_path, OFFICIAL[f"{part}_questions"][1], "questions", hint)
            a_data = _load(a_path, OFFICIAL[f"{part}_annotations"][1], "annotations", hint)
            for key, data in (("questions", q_data), ("annotations", a_data)):
                self.headers.setdefault(key, {k: v for k, v in data.items() if k not in (key, "data_subtype")})
            annotations = {io.field(a, "question_id", a_path, str(a)[:80]): a for a in a_data["annotations"]}
            for q in q_data["questions"]:
                qid = io.field(q, "question_id", q_path, str(q)[:80])
                q_image = _image_id(io.field(q, "image_id", q_path, qid), q_path, qid)
                if qid in source:
                    raise ValueError(
                        f"{io.absolute(q_path)}: question_id {qid} is also in {source[qid]}; give the train2014 "
                        "and the val2014 questions file, one each"
                    )
                if qid not in annotations:
                    raise ValueError(
                        f"{io.absolute(a_path)}: no annotation for question_id {qid} of {io.absolute(q_path)}; "
                        "give the annotations file of the same split"
                    )
                source[qid] = io.absolute(q_path)
                self.questions.append(q)
                self.image_of[qid] = q_image
                self.annotations[qid] = annotations[qid]

    def layout(self, key: str, subtype: str, records: list[dict]) -> dict:
        """An official-layout ``key`` file (questions / annotations) holding ``records``."""
        return {**self.headers[key], "data_subtype": subtype, key: records}


def _write_json(path: str, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f)

    atomic_write(path, write)


def _link(link: str, target: str) -> bool:
    """Make ``link`` a symlink to ``target`` (atomically, through a temporary link); False when it is one."""
    if os.path.islink(link) and os.readlink(link) == target:
        return False
    if os.path.lexists(link) and not os.path.islink(link):
        raise ValueError(f"{link} exists and is not a link; give --link-images a folder of its own")
    tmp = f"{link}.tmp{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def make_split(
    paths: dict[str, str],
    karpathy_file: str,
    out_dir: str,
    link_images: str | None = None,
    coco_images: str | None = None,
) -> dict:
    """Write the four files (and, with ``link_images``, the image links); returns a summary: questions and
    images per split, links made, and the questions left out (on Karpathy val images, or on images
    Karpathy's file does not have)."""
    karpathy = _karpathy_images(karpathy_file)
    official = Official(paths)
    wanted = {k: s for s, ks in SPLITS.items() for k in ks}
    chosen: dict[str, list[dict]] = {s: [] for s in SPLITS}
    left_out = {"karpathy_val": 0, "not_in_karpathy_file": 0}
    for q in official.questions:
        im = karpathy.get(official.image_of[q["question_id"]])
        if im is None:
            left_out["not_in_karpathy_file"] += 1
        elif im["split"] in wanted:
            chosen[wanted[im["split"]]].append(q)
        else:  # Karpathy val: VL-T5's karpathy_val, which the configs do not use
            left_out["karpathy_val"] += 1
    for name, qs in chosen.items():
        if not qs:
            raise ValueError(
                f"no VQAv2 question is on a Karpathy {' / '.join(SPLITS[name])} image of "
                f"{io.absolute(karpathy_file)}; give COCO's dataset_coco.json and the VQAv2 train2014 / val2014 files"
            )
    targets: dict[int, str] = {}
    if link_images is not None:  # every image checked before anything is written
        root = io.absolute(coco_images)
        for q in chosen["karpathy_train"] + chosen["karpathy_test"]:
            image_id = official.image_of[q["question_id"]]
            filename = io.field(karpathy[image_id], "filename", karpathy_file, image_id)
            targets[image_id] = os.path.join(root, karpathy[image_id].get("filepath", ""), filename)
        missing = [t for t in targets.values() if not os.path.isfile(t)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(targets)} COCO images not found, e.g. {missing[0]}; give --coco-images "
                "the folder holding train2014/ and val2014/"
            )
    summary: dict[str, Any] = {}
    for name, qs in chosen.items():
        anns = [official.annotations[q["question_id"]] for q in qs]
        _write_json(os.path.join(out_dir, f"{name}_questions.json"), official.layout("questions", name, qs))
        _write_json(os.path.join(out_dir, f"{name}_annotations.json"), official.layout("annotations", name, anns))
        summary[name] = {"questions": len(qs), "images": len({q["image_id"] for q in qs})}
    summary["left_out"] = left_out
    if link_images is not None:
        os.makedirs(link_images, exist_ok=True)
        made = sum(_link(os.path.join(link_images, f"{i}.jpg"), t) for i, t in sorted(targets.items()))
        summary["links"] = {"images": len(targets), "made": made, "folder": io.absolute(link_images)}
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=NAME, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vqa-dir", help="folder of the four official VQAv2 files, under their official names")
    for arg, (filename, what) in OFFICIAL.items():
        parser.add_argument(f"--{arg.replace('_', '-')}", help=f"the {what} (default: VQA_DIR/{filename})")
    parser.add_argument("--karpathy-file", required=True, help="Karpathy's COCO split file, dataset_coco.json")
    parser.add_argument("--out-dir", required=True, help="where the four karpathy_{train,test}_*.json files go")
    parser.add_argument("--link-images", metavar="DIR", help="make DIR/{image_id}.jpg links to the splits' images")
    parser.add_argument("--coco-images", metavar="ROOT", help="COCO's image folder: ROOT/train2014, ROOT/val2014")
    args = parser.parse_args(argv)
    for arg, (filename, _) in OFFICIAL.items():
        if getattr(args, arg) is None:
            if args.vqa_dir is None:
                flag = f"--{arg.replace('_', '-')}"
                parser.error(f"give --vqa-dir (the folder of {filename} and the other official files) or {flag}")
            setattr(args, arg, os.path.join(args.vqa_dir, filename))
    if (args.link_images is None) != (args.coco_images is None):
        parser.error("--link-images and --coco-images go together (the links' folder, COCO's image folder)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = make_split(
            {arg: getattr(args, arg) for arg in OFFICIAL},
            args.karpathy_file,
            args.out_dir,
            args.link_images,
            args.coco_images,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"{NAME}: error: {e}", file=sys.stderr)
        return 2
    for name in SPLITS:
        print(
            f"{name}: {summary[name]['questions']} questions on {summary[name]['images']} images "
            f"({io.absolute(os.path.join(args.out_dir, name))}_{{questions,annotations}}.json)"
        )
    left = summary["left_out"]
    print(
        f"left out: {left['karpathy_val']} questions on Karpathy val images, "
        f"{left['not_in_karpathy_file']} on images not in {args.karpathy_file}"
    )
    if "links" in summary:
        links = summary["links"]
        print(f"links: {links['folder']}/{{image_id}}.jpg for {links['images']} images ({links['made']} new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
