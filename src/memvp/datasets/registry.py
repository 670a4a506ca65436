"""The table of dataset formats: each family module registers its formats here (reader, the reader's
path arguments, where the samples' images are, video or not, scorer, the files of the field's tools it
writes), and everything that needs a format looks it up: :func:`load_samples` reads a data spec,
:func:`score` scores predictions, :func:`write_outputs` writes submission files, the training run names
where images are expected and whether it reads videos."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from ..metrics import CHOICE_RULES
from .io import absolute
from .outputs import Writer, llava_answers
from .schema import VIDEO_NAME, Sample

Reader = Callable[..., list[Sample]]
Scorer = Callable[[Sequence[Sample], Mapping[str, str], str], dict]
"""``(samples, predictions, rule) -> metrics``: every sample has a prediction (``predictions[sample.id]``,
the model's raw text); ``rule`` says how a multiple-choice letter is read (``metrics.extract_choice_letter``)."""

DEFAULT_FEATURES_PATTERN = "{image_id}.safetensors"
STRICT_RULE = "strict"
"""A ``choice_rule`` that stands for the letter rule of the format's reference tool (``DatasetFormat.strict_rule``)."""
ALL_OUTPUTS = "all"
"""An output format that stands for every output format of the split's dataset format."""


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
    writers: Mapping[str, Writer] = field(default_factory=dict)
    """Output formats of the field's tools, by name (``memvp predict --output-format NAME``): each builds
    files from the split's predictions (``memvp.datasets.outputs``). Every format also has ``llava_jsonl``
    (LLaVA's answers file); a writer of that name here replaces the default one (how the format's
    questions are named in LLaVA's question files)."""
    strict_rule: str | None = None
    """The letter rule of the format's reference tool, which ``choice_rule: strict`` stands for (ScienceQA:
    LLaVA's 'llava', MMBench: VLMEvalKit's 'vlmevalkit'); None: 'strict' reads letters by 'default'."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_keys", frozenset(self.path_keys))
        object.__setattr__(self, "writers", {"llava_jsonl": llava_answers(), **self.writers})
        if self.strict_rule is not None and self.strict_rule not in CHOICE_RULES:
            raise ValueError(
                f"dataset format {self.name!r}: strict_rule {self.strict_rule!r} is not one of {CHOICE_RULES}"
            )


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


def resolve_rule(task: str, rule: str) -> str:
    """The letter rule ``rule`` means for dataset format ``task``: itself, or for ``'strict'`` the format's
    :attr:`DatasetFormat.strict_rule` ('default' where it has none)."""
    if rule == STRICT_RULE:
        return get_format(task).strict_rule or "default"
    if rule not in CHOICE_RULES:
        raise ValueError(f"unknown multiple-choice rule {rule!r}; rules: {[*CHOICE_RULES, STRICT_RULE]}")
    return rule


def score(task: str, samples: Sequence[Sample], predictions: Mapping[str, str], rule: str = "default") -> dict:
    """Metrics of the samples that have a prediction, by the scorer of their dataset format ``task``.
    ``rule``: how a multiple-choice option letter is read (``metrics.extract_choice_letter``: 'default', the
    official MemVP code's 'memvp', LLaVA's 'llava', VLMEvalKit's 'vlmevalkit', or 'strict' for the format's
    reference tool's, :func:`resolve_rule`); the metrics of a format that reads letters name the rule."""
    if task not in FORMATS:
        raise ValueError(f"no metric for task {task!r}; tasks: {', '.join(FORMATS)}")
    predicted = [s for s in samples if s.id in predictions]
    return FORMATS[task].scorer(predicted, {s.id: predictions[s.id] for s in predicted}, resolve_rule(task, rule))


def output_formats(task: str, requested: Sequence[str]) -> list[str]:
    """The output formats ``requested`` for dataset format ``task``, in order, each once (``'all'``: every
    one of the format's); a ValueError naming the choices for one the format does not write."""
    writers = get_format(task).writers
    names: list[str] = []
    for name in requested:
        for one in list(writers) if name == ALL_OUTPUTS else [name]:
            if one not in writers:
                raise ValueError(
                    f"output format {one!r} is not written for dataset format {task!r}; choices: "
                    f"{', '.join([*writers, ALL_OUTPUTS])}"
                )
            if one not in names:
                names.append(one)
    return names


def write_outputs(
    task: str,
    requested: Sequence[str],
    samples: Sequence[Sample],
    predictions: Mapping[str, str],
    folder: str | os.PathLike,
    model_id: str,
) -> list[tuple[str, Path]]:
    """Write the files of the output formats ``requested`` (:func:`output_formats`) for the split ``samples``
    under ``folder``, each atomically; returns (output format, path) of every file written."""
    written = []
    for name in output_formats(task, requested):
        for relative, content in get_format(task).writers[name](samples, predictions, model_id).items():
            path = Path(folder) / relative
            mode, encoding = ("wb", None) if isinstance(content, bytes) else ("w", "utf-8")

            def write(tmp: str, content=content, mode=mode, encoding=encoding) -> None:
                with open(tmp, mode, encoding=encoding) as f:
                    f.write(content)

            atomic_write(path, write)
            written.append((name, path))
    return written


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
    "resolve_rule",
    "output_formats",
    "write_outputs",
    "load_samples",
    "DEFAULT_FEATURES_PATTERN",
    "STRICT_RULE",
    "ALL_OUTPUTS",
]
