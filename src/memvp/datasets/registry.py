"""The table of dataset formats: each family module registers its formats here (reader, the reader's
path arguments, where the samples' images are, video or not, scorer), and everything that needs a
format looks it up: :func:`load_samples` reads a data spec, :func:`score` scores predictions, the
training run names where images are expected and whether it reads videos."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .io import absolute
from .schema import VIDEO_NAME, Sample

Reader = Callable[..., list[Sample]]
Scorer = Callable[[Sequence[Sample], Mapping[str, str], str], dict]
"""``(samples, predictions, rule) -> metrics``: every sample has a prediction (``predictions[sample.id]``,
the model's raw text); ``rule`` says how a multiple-choice letter is read (``metrics.extract_choice_letter``)."""

DEFAULT_FEATURES_PATTERN = "{image_id}.safetensors"


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset format: what ``{"format": name, ...}`` in a data spec reads, and how its samples are scored."""

    name: str
    reader: Reader
    """``reader(**spec) -> list[Sample]``; the spec's keys are its keyword arguments."""
    path_keys: frozenset[str]
    """The reader's arguments that are paths: resolved against a config's folder by :func:`load_samples`."""
    image_paths: str
    """Where the samples' images are found, for an "image not found" error to point at."""
    scorer: Scorer
    is_video: bool = False
    """Its samples are videos (a run samples ``num_frames`` frames of each)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_keys", frozenset(self.path_keys))


FORMATS: dict[str, DatasetFormat] = {}
"""Every registered format by name, in the order they were registered."""


def register_format(fmt: DatasetFormat) -> DatasetFormat:
    """Add ``fmt`` to :data:`FORMATS` (a name is registered once; its path keys must be reader arguments)."""
    if fmt.name in FORMATS:
        raise ValueError(f"dataset format {fmt.name!r} is already registered")
    unknown = set(fmt.path_keys) - set(inspect.signature(fmt.reader).parameters)
    if unknown:
        raise ValueError(f"dataset format {fmt.name!r}: path keys {sorted(unknown)} are not arguments of its reader")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; formats: {sorted(FORMATS)}")
    return FORMATS[name]


def score(task: str, samples: Sequence[Sample], predictions: Mapping[str, str], rule: str = "default") -> dict:
    """Metrics of the samples that have a prediction, by the scorer of their dataset format ``task``.
    ``rule``: how a multiple-choice option letter is read (``metrics.extract_choice_letter``: 'default' or
    the official MemVP code's 'memvp')."""
    if task not in FORMATS:
        raise ValueError(f"no metric for task {task!r}; tasks: {', '.join(FORMATS)}")
    predicted = [s for s in samples if s.id in predictions]
    return FORMATS[task].scorer(predicted, {s.id: predictions[s.id] for s in predicted}, rule)


def _use_feature_files(samples: list[Sample], features_dir: str, pattern: str) -> list[Sample]:
    """Point every sample with an image or a video at its pre-extracted feature file instead
    (``features_dir/pattern``, the pattern formatted with ``image_id`` and the sample ``id``; for a
    video that is the video's name).  A video sample keeps its ``span`` and ``metadata["fps"]`` (the
    rate of the feature rows); one read without ``video_dir`` (no ``video``, but
    ``metadata["vid_name"]``) is pointed at its features too."""
    for s in samples:
        if s.image is None and s.video is None and not (s.image_id is not None and VIDEO_NAME in s.metadata):
            continue
        try:
            name = pattern.format(image_id=s.image_id, id=s.id)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"features_pattern {pattern!r}: {e!r}; it may use {{image_id}} and {{id}}") from None
        s.features, s.image, s.video = os.path.join(absolute(features_dir), name), None, None
    return samples


def resolve_paths(spec: dict, base_dir: str | os.PathLike | None) -> dict:
    """The spec with its format's path arguments (and ``features_dir``) joined to ``base_dir``; absolute
    paths stay as they are."""
    if base_dir is None or "format" not in spec:
        return dict(spec)
    spec = dict(spec)
    for k in (get_format(spec["format"]).path_keys | {"features_dir"}) & spec.keys():
        if isinstance(spec[k], (list, tuple)):  # several files (POPE splits, parquet shards)
            spec[k] = [os.path.join(base_dir, v) for v in spec[k]]
        elif spec[k] is not None:
            spec[k] = os.path.join(base_dir, spec[k])
    return spec


def load_samples(
    spec: dict, base_dir: str | os.PathLike | None = None, skipped: dict[str, str] | None = None
) -> list[Sample]:
    """Read samples from ``spec = {"format": <name>, **reader_kwargs}``.

    e.g. ``{"format": "scienceqa", "root": "data/sqa", "split": "test"}``.
    With ``base_dir`` (say, a config file's folder) the format's relative path arguments
    (:attr:`DatasetFormat.path_keys`, and ``features_dir``) resolve against it instead of the
    current directory.

    Every format also takes ``features_dir`` (and ``features_pattern``, default
    ``"{image_id}.safetensors"``; ``{id}`` is the sample id): the samples then read
    pre-extracted features (.safetensors, .npy or .pt, [n_visual, dim]) from there
    instead of encoding their images.  Video samples (tvqa, how2qa: image_id = the video's
    name) read one feature file per video instead, keeping their ``span`` and ``metadata["fps"]``.

    ``skipped`` (a dict): readers that can leave out a malformed record (``read_llava``) do so and
    record it there instead of raising (``--skip-bad``).
    """
    if "format" not in spec:
        raise ValueError(f"dataset spec has no 'format' key; formats: {sorted(FORMATS)}")
    fmt = get_format(spec["format"])
    kwargs = {k: v for k, v in resolve_paths(spec, base_dir).items() if k != "format"}
    features_pattern = kwargs.pop("features_pattern", DEFAULT_FEATURES_PATTERN)
    features_dir = kwargs.pop("features_dir", None)
    if not isinstance(features_pattern, str) or (features_dir is not None and not isinstance(features_dir, str)):
        raise ValueError("features_dir and features_pattern must be strings (a folder, a file name pattern)")
    if features_dir is not None and not os.path.isdir(features_dir):
        raise FileNotFoundError(f"features_dir not found: {absolute(features_dir)}")
    try:
        if "skipped" in kwargs:  # the caller's argument, not a data-spec key
            raise TypeError("got an unexpected keyword argument 'skipped'")
        inspect.signature(fmt.reader).bind(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for dataset format {fmt.name!r}: {e}") from None
    if skipped is not None and "skipped" in inspect.signature(fmt.reader).parameters:
        kwargs["skipped"] = skipped
    samples = fmt.reader(**kwargs)
    return _use_feature_files(samples, features_dir, features_pattern) if features_dir is not None else samples


__all__ = [
    "resolve_paths",
    "DatasetFormat",
    "Reader",
    "Scorer",
    "FORMATS",
    "register_format",
    "get_format",
    "score",
    "load_samples",
    "DEFAULT_FEATURES_PATTERN",
]
