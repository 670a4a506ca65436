"""Data sets: one sample schema, and for each dataset format its reader and its scorer.

Each family module (``scienceqa.py``, ``vqav2.py``, ``gqa.py``, ``coco.py``, ``llava.py``, ``pope.py``,
``mme.py``, ``mmbench.py``, ``video.py``) reads the files users already have into ``list[Sample]`` and
registers its formats (:class:`DatasetFormat`: reader, path arguments, where images are, video or not,
scorer, the files of the field's tools it writes) with :func:`register_format`.  :func:`load_samples` reads
a data spec ``{"format": name, ...}``, :func:`score` scores predictions with the format's scorer,
:func:`write_outputs` writes them in the formats the field's tools read (``outputs.py``).  Every module of
this package is imported here, so a new family module registers its formats without any other file changing.

Readers never open images (checking that they exist is the loader's job).  They check that their files
exist and parse, and raise ``FileNotFoundError`` / ``ValueError`` naming the file and the problem.

Paths: relative path arguments are taken relative to the current directory
(:func:`load_samples` can resolve them against a config's directory instead);
image names stored inside the data files are joined to the given image folder.
Every path in a :class:`Sample` is absolute.

Prompts follow Table 6 of the MemVP paper:

* VQAv2, GQA: ``[Question]`` -> ``[Answer]``
* COCO Captions: ``Provide a one-sentence caption for the provided image.`` -> ``[Caption]``
* ScienceQA: the ``QCM-A`` prompt of MemVP/LaVIN ``util/base_prompt.py``
  (``build_prompt`` + ``"The answer is"`` as in MemVP's ``eval.py``), see
  :func:`scienceqa_prompt`.

The benchmarks of the paper's Table 9 (LLaVA-1.5 evaluation) use LLaVA-1.5's own
prompts (its ``playground/data/eval`` question files and ``model_vqa_mmbench.py``):

* POPE, MME: ``[Question]\\nAnswer the question using a single word or phrase.``
  (MME's trailing ``" Please answer yes or no."`` dropped, as in ``llava_mme.jsonl``);
* MMBench: ``[Hint]\\n[Question]\\nA. ...\\nB. ...\\nAnswer with the option's letter from
  the given choices directly.``

Video question answering (the paper's Table 8): TVQA (:func:`read_tvqa`, subtitles as the context) and
How2QA (:func:`read_how2qa`) use the ScienceQA ``QCM-A`` prompt; the samples carry ``video`` + ``span``.

Readers of data that holds the images themselves (MMBench's base64 TSV, the parquet
files of Hugging Face datasets) write each distinct image once to ``image_dir`` as
``<sha256 of the bytes>.<ext>`` (atomically; an existing file is left alone), so the
samples still have an image *path* and identical images share one path (and one entry
of the feature cache, which is keyed by path).  Those are the only readers that write
files; they still never decode an image.
"""

from __future__ import annotations

import importlib
import pkgutil

from .coco import COCO_CAPTION_PROMPT, read_coco_captions, read_coco_captions_parquet
from .gqa import read_gqa, read_gqa_parquet
from .llava import read_llava
from .mmbench import MMBENCH_ANSWER_PROMPT, read_mmbench
from .mme import read_mme
from .outputs import model_id_of
from .place_words import asked_region, place_box
from .pope import read_pope
from .registry import (
    ALL_OUTPUTS,
    DEFAULT_FEATURES_PATTERN,
    FORMATS,
    STRICT_RULE,
    DatasetFormat,
    get_format,
    load_samples,
    output_formats,
    register_format,
    resolve_paths,
    resolve_rule,
    score,
    write_outputs,
)
from .schema import ASKED_BOX, LLAVA_SHORT_ANSWER_PROMPT, SCIENCEQA_ANSWER_PREFIX, Sample, asked_box, scienceqa_prompt
from .scienceqa import read_scienceqa, read_scienceqa_parquet
from .video import TVQA_FRAME_FOLDERS, how2qa_correct_position, read_how2qa, read_tvqa
from .vqav2 import read_vqav2, read_vqav2_parquet

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Sample",
    "ASKED_BOX",
    "asked_box",
    "asked_region",
    "place_box",
    "DatasetFormat",
    "FORMATS",
    "register_format",
    "resolve_paths",
    "get_format",
    "load_samples",
    "score",
    "resolve_rule",
    "STRICT_RULE",
    "output_formats",
    "write_outputs",
    "ALL_OUTPUTS",
    "model_id_of",
    "DEFAULT_FEATURES_PATTERN",
    "COCO_CAPTION_PROMPT",
    "LLAVA_SHORT_ANSWER_PROMPT",
    "MMBENCH_ANSWER_PROMPT",
    "SCIENCEQA_ANSWER_PREFIX",
    "scienceqa_prompt",
    "read_scienceqa",
    "read_scienceqa_parquet",
    "read_vqav2",
    "read_vqav2_parquet",
    "read_gqa",
    "read_gqa_parquet",
    "read_coco_captions",
    "read_coco_captions_parquet",
    "read_llava",
    "read_pope",
    "read_mme",
    "read_mmbench",
    "TVQA_FRAME_FOLDERS",
    "read_tvqa",
    "read_how2qa",
    "how2qa_correct_position",
]
