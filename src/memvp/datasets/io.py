"""Reading the files of a data set: JSON, JSON lines, parquet, lists of files; the checks every reader
makes (a file exists and parses, a record has its field, a path stays in its folder); and images held in
a data file written once to a folder, named by their content.

Every error names the file and the record, so a user can find and fix it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from ..atomic import atomic_write
from .schema import Sample

ID = (int, str)
"""The types a question / image id cell may hold."""

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
_IMAGE_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
]

PARQUET_IMAGES = "image_dir/<sha256>.<ext>, written from the parquet's image bytes by the reader"
"""Where the samples of a parquet reader find their images (see :func:`store_image`)."""


# ----------------------------------------------------------------------------- paths and records
def absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def load_json(path: str | os.PathLike, what: str) -> Any:
    path = absolute(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 (JSON files are)"
        ) from None


def json_lines(path: str, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line of a JSON-lines file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(
                            f"{what} {path}: line {n} is not valid JSON ({e}); "
                            "the file should hold one JSON object per line"
                        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def expect(obj: Any, kind: type, path: str, desc: str) -> Any:
    if not isinstance(obj, kind):
        raise ValueError(f"{absolute(path)}: expected {desc}, got {type(obj).__name__}")
    return obj


def non_empty(samples: list[Sample], path: str, split: str | None = None) -> list[Sample]:
    if not samples:
        where = f"split {split!r} of {absolute(path)}" if split is not None else absolute(path)
        raise ValueError(f"{where} has no samples")
    return samples


def field(record: dict, key: str, path: str, rid: Any) -> Any:
    """``record[key]``, or an error naming the file and the record."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise ValueError(f"{absolute(path)}: record {rid!r} has no {key!r} field") from None


def inside(folder: str, name: str, path: str | os.PathLike, where: str, what: str = "image_dir") -> str:
    """``folder/name`` for a file name read from a data file. An absolute name stays as it is (the file
    says where); a relative one that leaves ``folder`` (``../../etc/passwd``) is refused. Containment is
    checked on the normalised path, not the resolved one: a symlink inside ``folder`` (a data set linked
    in from another disk) is the folder owner's choice."""
    joined = os.path.join(folder, name)
    if not os.path.isabs(name) and os.path.commonpath([os.path.normpath(joined), folder]) != folder:
        raise ValueError(
            f"{absolute(path)}: {where}: the path {name!r} leaves {what} {folder}; give a path inside "
            f"{what} (or an absolute path)"
        )
    return joined


def expand_files(given: str | os.PathLike | Sequence[str | os.PathLike], what: str, suffix: str) -> list[str]:
    """Absolute paths of ``given``: one path, a glob pattern, a folder (its ``*suffix`` files) or a list of those."""
    items = [given] if isinstance(given, (str, os.PathLike)) else list(given)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if any(c in item for c in "*?["):  # a glob pattern
            matched = sorted(glob.glob(item))
            if not matched:
                raise FileNotFoundError(f"{what}: no file matches {absolute(item)}")
        elif os.path.isdir(item):
            matched = sorted(glob.glob(os.path.join(glob.escape(item), f"*{suffix}")))
            if not matched:
                raise FileNotFoundError(f"{what}: no *{suffix} file in {absolute(item)}")
        elif os.path.isfile(item):
            matched = [item]
        else:
            raise FileNotFoundError(f"{what} not found: {absolute(item)}")
        out += [absolute(m) for m in matched]
    if not out:
        raise ValueError(f"{what}: no files given")
    return out


# ----------------------------------------------------------------------------- images from bytes
def _image_extension(data: bytes, name_hint: str | None) -> str:
    """The file extension of image bytes, from their magic number (no decoding), else the hint's."""
    for magic, ext in _IMAGE_MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    ext = os.path.splitext(name_hint or "")[1].lower()
    return ext[1:] if ext in IMAGE_EXTENSIONS else "img"


def check_image_dir(image_dir: str | os.PathLike) -> str:
    """The absolute folder images are written to; an error when it is a file."""
    image_dir = absolute(image_dir)
    if os.path.exists(image_dir) and not os.path.isdir(image_dir):
        raise ValueError(f"image_dir {image_dir} is a file; give a folder to write the images to")
    return image_dir


def store_image(data: bytes, image_dir: str, name_hint: str | None = None) -> str:
    """``image_dir/<sha256>.<ext>``, written once (atomically) and never rewritten: identical images share
    one path (and one entry of the feature cache, which is keyed by path)."""
    path = os.path.join(image_dir, f"{hashlib.sha256(data).hexdigest()}.{_image_extension(data, name_hint)}")
    if not os.path.exists(path):

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        atomic_write(path, write)
    return path


# ----------------------------------------------------------------------------- parquet
def split_of(path: str) -> str:
    """``train-00000-of-00001-1028f23e.parquet`` (the Hugging Face naming) -> ``train``."""
    stem = os.path.basename(path).removesuffix(".parquet")
    match = re.match(r"^(.*?)-\d{5}-of-\d{5}", stem)
    return match.group(1) if match else stem


def parquet_rows(path: str, what: str, required: Sequence[str], optional: Sequence[str] = ()) -> Iterator[dict]:
    """The rows of one parquet file as dicts of ``required`` + the ``optional`` columns it has, read in
    small batches (image columns are large)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet files needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{what} {path} is not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise ValueError(f"{path}: {what} has no column(s) {missing}; its columns: {names}")
    try:
        for batch in pf.iter_batches(batch_size=64, columns=[*required, *(c for c in optional if c in names)]):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{what} {path} could not be read: {e}") from None


def cell(
    row: dict, column: str, kinds: type | tuple[type, ...], path: str, n: int, expected: str, required: bool = False
) -> Any:
    """``row[column]`` when it is of ``kinds`` (None when null and not ``required``); otherwise an error
    naming the file, the row (counted from 0 in the file) and the column. pyarrow hands back whatever the
    file holds: a string where a list belongs would be read as a list of its characters."""
    value = row.get(column)
    if value is None and not required:
        return None
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        got = "null" if value is None else f"{value!r:.40} of type {type(value).__name__}"
        raise ValueError(f"{path}: row {n}, column {column!r} holds {got}, expected {expected}; fix the file")
    return value


def strings(row: dict, column: str, path: str, n: int, required: bool = False) -> list[str] | None:
    """A list-of-strings cell (choices, captions), checked as :func:`cell` does, items included."""
    values = cell(row, column, list, path, n, "a list of strings", required)
    for value in values or []:
        if not isinstance(value, str):
            raise ValueError(
                f"{path}: row {n}, column {column!r} holds a list with {value!r:.40} of type "
                f"{type(value).__name__}, expected a list of strings; fix the file"
            )
    return values


def parquet_image(value: Any, image_dir: str, path: str, rid: Any) -> str | None:
    """The image of a parquet cell (the ``datasets`` Image feature: a struct ``{bytes, path}``, or plain
    bytes) written to ``image_dir``; None for an empty cell."""
    if value is None:
        return None
    name = None
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data is None:
            if name is None:
                return None
            if os.path.isabs(name):
                return name  # an image stored by reference to a local file
            raise ValueError(
                f"{path}: row {rid!r} has an image without bytes, only the relative path {name!r}; "
                "save the dataset with its images embedded"
            )
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    else:
        raise ValueError(
            f"{path}: row {rid!r}: the image column holds {type(value).__name__}, expected the "
            "datasets Image struct {bytes, path} or bytes"
        )
    return store_image(data, image_dir, name)
