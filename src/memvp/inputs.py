"""From samples to model inputs: prompt/answer tokens with answer-only labels, and visual features.

Depends on the sample schema (``datasets/schema.py``), the vision side and the feature cache; knows nothing
of training or the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .datasets import Sample, asked_region
from .feature_cache import FeatureCache
from .vision import (
    VideoClip,
    VisionEncoder,
    box_coverage,
    grid_side_of,
    load_features,
    load_frame_features,
    load_image,
)

DEFAULT_PROMPT_TEMPLATE = "{prompt}\nAnswer:"
CHAT = "chat"
"""``prompt_template: chat``: the conversation (``metadata["history"]`` + this turn) through the
tokenizer's own chat template, the loss on every assistant turn; Vicuna v1 when it has none."""
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass
class Encoded:
    prompt_ids: list[int]
    answer_ids: list[int]
    truncated: int  # prompt tokens dropped from the left
    prompt_labels: list[int] | None = None
    """Labels of the prompt tokens (earlier assistant turns of a conversation), -100 elsewhere;
    None: no label in the prompt."""


def _chat_segments(tokenizer, turns: list[tuple[str, str | None]]) -> list[tuple[list[int], bool]]:
    """A conversation as token segments (ids, is an assistant answer), rendered by the tokenizer's
    chat template (``apply_chat_template``) or, without one, LLaVA-1.5's Vicuna v1 template. The last
    turn's answer may be None (a prompt for generation: ends with the assistant's header)."""

    def ids(text: str, first: bool = False) -> list[int]:
        return tokenizer(text, add_special_tokens=first)["input_ids"]

    segments: list[tuple[list[int], bool]] = []
    if getattr(tokenizer, "chat_template", None):
        messages, done = [], ""
        for user, answer in turns:
            for role, content, generation in (("user", user, True), ("assistant", answer, False)):
                if content is None:
                    break
                messages.append({"role": role, "content": content})
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
                if not text.startswith(done):
                    raise ValueError(
                        f"the chat template of {type(tokenizer).__name__} does not render a conversation "
                        "as a prefix of its continuation; use prompt_template without 'chat'"
                    )
                segments.append((ids(text[len(done) :]), role == "assistant"))  # the template writes its own BOS
                done = text
        return segments
    segments.append((ids(VICUNA_SYSTEM, first=True), False))
    for user, answer in turns:
        segments.append((ids(f" USER: {user} ASSISTANT:"), False))
        if answer is not None:
            segments.append((ids(f" {answer}") + [tokenizer.eos_token_id], True))
    return segments


def _prompt_and_answer_ids(tokenizer, prompt_text: str, answer_text: str) -> tuple[list[int], list[int]]:
    """The prompt's tokens, and the answer's + EOS as they are tokenized *after* the prompt: the whole
    example is tokenized at once, as the official MemVP / LLaVA code does (a SentencePiece tokenizer
    reads a word differently at the start of a string). When the prompt's tokens are not a prefix of
    the example's (a token spans the join, or the tokenizer ends every string with EOS, as T5's), the
    answer is tokenized on its own."""
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    example = tokenizer(prompt_text + answer_text)["input_ids"]
    if example[: len(prompt_ids)] == prompt_ids and len(example) > len(prompt_ids):
        answer_ids = example[len(prompt_ids) :]
        if answer_ids[-1] == tokenizer.eos_token_id:
            answer_ids = answer_ids[:-1]
    else:
        answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [tokenizer.eos_token_id]


def encode_sample(
    tokenizer, sample: Sample, max_length: int, template: str = DEFAULT_PROMPT_TEMPLATE, with_answer: bool = True
) -> Encoded:
    """Prompt tokens, then (for training) the answer (after ``sample.answer_separator``, " " unless the
    format says otherwise) + EOS; without the answer, the prompt ends with ``sample.answer_prefix``
    when the format has one. With ``template='chat'`` the conversation
    in the tokenizer's chat template, the answer being the last assistant turn (earlier ones become
    ``prompt_labels``).

    A sequence longer than ``max_length`` loses tokens from the *start of the prompt* (the end of
    the prompt, next to the answer, holds the question's cue), after any leading special tokens
    (BOS); the answer is never cut: a too-long answer is an error.
    """
    if with_answer and sample.target is None:
        raise ValueError(f"sample {sample.id} has no answer to train on")
    prompt_labels: list[int] | None = None
    if template == CHAT:
        turns = [(h[0], h[1]) for h in sample.metadata.get("history", [])]
        segments = _chat_segments(tokenizer, turns + [(sample.prompt, sample.target if with_answer else None)])
        answer_ids = segments.pop()[0] if with_answer else []
        prompt_ids = [t for seg, _ in segments for t in seg]
        if any(is_answer for _, is_answer in segments):
            prompt_labels = [t if is_answer else -100 for seg, is_answer in segments for t in seg]
    else:
        prompt_text = template.format(prompt=sample.prompt)
        if with_answer:
            prompt_ids, answer_ids = _prompt_and_answer_ids(
                tokenizer, prompt_text, sample.answer_separator + sample.target
            )
        else:
            if sample.answer_prefix:  # the generation continues after the answers' shared start
                prompt_text += sample.answer_separator + sample.answer_prefix
            prompt_ids, answer_ids = tokenizer(prompt_text)["input_ids"], []
    room = max_length - len(answer_ids)
    if room < 1:
        raise ValueError(
            f"sample {sample.id}: the answer alone is {len(answer_ids)} tokens, over "
            f"max_length={max_length}; raise max_length (answers are never truncated)"
        )
    truncated = max(0, len(prompt_ids) - room)
    head = 0  # the special tokens the tokenizer puts first (BOS on Llama tokenizers) survive the cut
    if truncated:
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        while head < room - 1 and prompt_ids[head] in special:
            head += 1
    keep = slice(head + truncated, None)
    if prompt_labels is not None:
        prompt_labels = prompt_labels[:head] + prompt_labels[keep]
    return Encoded(prompt_ids[:head] + prompt_ids[keep], answer_ids, truncated, prompt_labels)


def collate_training(tokenizer, encoded: Sequence[Encoded], encoder_decoder: bool = False) -> dict:
    """Right-padded batch; labels are -100 everywhere but on answer tokens."""
    pad = tokenizer.pad_token_id
    if encoder_decoder:
        inputs = _pad([e.prompt_ids for e in encoded], pad, left=False)
        labels = _pad([e.answer_ids for e in encoded], -100, left=False)["input_ids"]
        return {**inputs, "labels": labels}
    rows = [e.prompt_ids + e.answer_ids for e in encoded]
    batch = _pad(rows, pad, left=False)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, e in enumerate(encoded):
        start = len(e.prompt_ids)
        labels[i, start : start + len(e.answer_ids)] = torch.tensor(e.answer_ids)
        if e.prompt_labels is not None:  # earlier assistant turns of a conversation
            labels[i, :start] = torch.tensor(e.prompt_labels)
    return {**batch, "labels": labels}


def collate_prompts(tokenizer, encoded: Sequence[Encoded], encoder_decoder: bool = False) -> dict:
    """Prompts only, left-padded so that generation continues every row at the same position."""
    return _pad([e.prompt_ids for e in encoded], tokenizer.pad_token_id, left=not encoder_decoder)


def _pad(rows: Sequence[list[int]], pad: int, left: bool) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


class VisualInputs:
    """Visual features for samples: from the feature cache (images, videos), feature files, or zeros.

    ``prepare`` encodes every image (or video) once up front, so a bad file is found before training
    starts; with ``skip_bad`` unreadable ones are counted and their samples dropped. A video encoder
    (one with ``num_frames``: ``FrameEncoder``, or ``PrecomputedFeatures`` of videos) reads video
    samples, and feature files as ``num_frames`` rows sampled from each.
    """

    def __init__(self, encoder: VisionEncoder, cache_dir: str, batch_size: int = 32):
        self.encoder = encoder
        self.num_frames = int(getattr(encoder, "num_frames", 0) or 0)
        if self.num_frames:  # a batch holds batch_size x num_frames decoded frames at once
            batch_size = max(1, 256 // self.num_frames)
        self.pixels = encoder.has_adapters
        """The encoder has trained parts (ViT adapters): batches carry ``pixel_values`` that the model
        encodes in its forward, since cached features would go stale as the adapters train."""
        if self.pixels and self.num_frames:
            raise ValueError(
                "ViT adapters (vision.adapter_hidden) are for images; a video run encodes its frames "
                "once with a frozen encoder: set vision.adapter_hidden=0"
            )
        self.cache = None if self.pixels else FeatureCache(cache_dir, encoder, batch_size=batch_size)
        self.feature_dim, self.num_tokens = encoder.feature_dim, encoder.num_tokens
        self._stamps: dict[str, str] = {}  # file -> its modification time and size, read by prepare
        self._sizes: dict[str, tuple[int, int]] = {}  # image -> (width, height), for asked boxes

    @staticmethod
    def _clip(s: Sample) -> VideoClip:
        return VideoClip(s.video, s.span, s.metadata.get("fps"))

    @staticmethod
    def _file(s: Sample) -> str | None:
        """The image or video file a sample's features are encoded from (None: a feature file or none)."""
        return s.image if s.image is not None else s.video

    @classmethod
    def _name(cls, s: Sample) -> str | None:
        """What errors and skip lists name: the image's (video's, with its span) absolute path, not the
        data set's image id (ids repeat across data sets), or the feature file."""
        return s.image if s.image is not None else cls._clip(s).key if s.video is not None else s.features

    def _key(self, s: Sample) -> str | None:
        """The feature-cache key: the name, and for an image or video its file's modification time and
        size, so a file rewritten in place (a regenerated data set) is encoded again, not served the
        old file's features."""
        file = self._file(s)
        if file is None:
            return s.features
        if file not in self._stamps:
            try:
                st = os.stat(file)
                self._stamps[file] = f"|{st.st_mtime_ns}:{st.st_size}"
            except OSError:  # missing: the encoder's error names the file
                self._stamps[file] = ""
        return self._name(s) + self._stamps[file]

    def _from_file(self, s: Sample) -> torch.Tensor:
        if self.num_frames:
            return load_frame_features(s.features, self.feature_dim, self.num_frames, s.span, s.metadata.get("fps"))
        return load_features(s.features, self.feature_dim)

    def prepare(self, samples: list[Sample], skip_bad: bool = False) -> tuple[list[Sample], dict[str, str]]:
        media = [s for s in samples if self._file(s) is not None]
        video = next((s.video for s in media if s.video is not None), None)
        image = next((s.image for s in media if s.image is not None), None)
        if video is not None and not self.num_frames:
            raise ValueError(f"video samples (e.g. {video}) need a video encoder: set num_frames")
        if image is not None and self.num_frames:
            raise ValueError(f"a video run (num_frames={self.num_frames}) got image samples, e.g. {image}")
        for s in media:  # read the files' stamps afresh: they may have changed since the last prepare
            self._stamps.pop(self._file(s), None)
        if self.pixels:
            bad = self._check_images(media, skip_bad)
        else:
            keys = [self._key(s) for s in media]
            failed = self.cache.add(
                keys, [s.image if s.image is not None else self._clip(s) for s in media], skip_bad=skip_bad
            )
            name_of = dict(zip(keys, map(self._name, media)))
            bad = {name_of[k]: message for k, message in failed.items()}
        for s in samples:
            if s.features is not None and s.image is None and s.video is None:
                try:
                    self._from_file(s)
                except (OSError, ValueError) as e:
                    if not skip_bad:
                        raise
                    bad[s.features] = str(e)
        kept = [s for s in samples if self._name(s) not in bad]
        return kept, bad

    @staticmethod
    def _check_images(samples: Sequence[Sample], skip_bad: bool) -> dict[str, str]:
        """Pixel mode: every image decodes (read once now, so a bad file stops the run before step 1)."""
        bad = {}
        for s in dict.fromkeys(s.image for s in samples):
            try:
                load_image(s)
            except (OSError, ValueError) as e:
                if not skip_bad:
                    raise
                bad[s] = str(e)
        return bad

    def inputs(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor | None]:
        """The model's visual keyword inputs for a batch: ``visual_features`` (or, with ViT adapters,
        ``pixel_values``) and ``has_image``."""
        if self.pixels:
            has_image = torch.tensor([s.has_image for s in samples])
            if not has_image.any():
                return {"pixel_values": None, "has_image": has_image}
            pixels = self.encoder.preprocess([s.image for s in samples if s.image is not None])
            batch = pixels.new_zeros(len(samples), *pixels.shape[1:])  # image-less samples: zeros, as official
            batch[has_image] = pixels
            return {"pixel_values": batch, "has_image": has_image}
        feats, has_image = self.batch(samples)
        return {"visual_features": feats, "has_image": has_image}

    def asked_entries(self, samples: Sequence[Sample], place_words: bool = False) -> torch.Tensor | None:
        """[B, num_tokens] float: how much of each grid cell each sample's asked object covers
        (``metadata["asked_box"]``, ``vision.box_coverage``) or, with ``place_words``, for a sample
        without a box, the part of the image its question or answer names ("top left": the top-left
        quarter; ``datasets.place_box``); zeros for a sample with neither; None when no sample has
        one or the encoder has no image grid. Reads only the images' sizes."""
        boxes = [asked_region(s, place_words) if s.image is not None else None for s in samples]
        if grid_side_of(self.encoder) is None or all(box is None for box in boxes):
            return None
        rows = []
        for s, box in zip(samples, boxes):
            if box is None:
                rows.append(torch.zeros(self.num_tokens))
                continue
            if s.image not in self._sizes:
                with Image.open(s.image) as img:  # the header only
                    self._sizes[s.image] = img.size
            rows.append(box_coverage(self.encoder, box, *self._sizes[s.image]))
        return torch.stack(rows)

    def batch(self, samples: Sequence[Sample]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """([B, n_visual, feature_dim] or None when no sample has an image, has_image [B]); in pixel
        mode the features are encoded now (no gradient), e.g. for statistics."""
        has_image = torch.tensor([s.has_image for s in samples])
        if not has_image.any():
            return None, has_image
        if self.pixels:
            param = next(self.encoder.parameters())
            with torch.no_grad():
                pixels = self.inputs(samples)["pixel_values"].to(param.device, param.dtype)
                return self.encoder(pixels).float().cpu(), has_image
        feats = []
        for s in samples:
            if s.image is not None or s.video is not None:
                feats.append(self.cache.get(self._key(s)))
            elif s.features is not None:
                feats.append(self._from_file(s))
            else:
                feats.append(torch.zeros(self.num_tokens, self.feature_dim))
        return torch.stack(feats), has_image


def describe_truncation(count: int, total: int, max_length: int) -> str:
    return (
        f"{count} of {total} prompts were longer than max_length={max_length} and lost tokens "
        "from their start (the left); answers are never truncated"
    )


__all__ = [
    "CHAT",
    "encode_sample",
    "collate_training",
    "collate_prompts",
    "VisualInputs",
    "Encoded",
    "DEFAULT_PROMPT_TEMPLATE",
    "describe_truncation",
]
