"""LLaVA conversation files (visual instruction tuning; images or videos), one sample per turn or per
conversation, scored by exact match (conversations have no standard metric)."""

from __future__ import annotations

import os
from typing import Any

from . import io
from .gqa import score_exact_match
from .registry import DatasetFormat, register_format
from .schema import VIDEO_NAME, Sample


def read_llava(
    json_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    per_conversation: bool = False,
    video_dir: str | os.PathLike | None = None,
    *,
    skipped: dict[str, str] | None = None,
) -> list[Sample]:
    """LLaVA conversation file (e.g. ``llava_v1_5_mix665k.json``).

    One Sample per human -> gpt turn, id ``f"{id}_{turn}"`` (turn counts from 0).
    prompt = the human text with ``"<image>"`` removed and the result stripped
    (as LLaVA's ``preprocess_multimodal`` does); answers = ``[gpt text]``.
    Earlier turns are *not* put in the prompt: they are kept as
    ``metadata["history"]`` = ``[[human, gpt], ...]`` (cleaned the same way) for
    a collator that wants multi-turn context.  All turns share the
    conversation's image (``image_dir/image``, image_id = the relative name);
    entries without ``"image"`` get ``image=None``.  metadata: ``conversation_id``,
    ``turn``, ``history``.

    ``per_conversation=True`` gives one Sample per conversation instead (for
    multi-turn training with a loss on every assistant turn): id = the
    conversation ``id``; prompt / answers = its *last* human -> gpt turn;
    ``metadata["history"]`` = every earlier ``[human, gpt]`` pair and
    ``metadata["turn"]`` = the last turn's index, exactly as the per-turn Sample
    of that last turn has them.

    Entries with ``"video"`` instead of ``"image"`` (the video instruction files of
    LLaVA-NeXT-Video and Video-LLaVA) hold a video: ``video_dir/video`` (``video_dir``
    defaults to ``image_dir``), a file or a folder of frames; ``"<video>"`` is removed
    from the text like ``"<image>"``; image_id = the video's relative name (also
    ``metadata["vid_name"]``, for pre-extracted per-video feature files).

    An image or video name is read by absolute path when it is one; a relative one must stay inside
    ``image_dir`` / ``video_dir``. A malformed conversation (a message that is not a ``{from, value}``
    object, roles out of order, a path leaving the folder, ...) is a ValueError naming its id; with
    ``skipped`` (a dict; ``--skip-bad``) it is left out instead and recorded there as
    ``{"conversation '<id>'": problem}``.
    """
    data = io.expect(io.load_json(json_file, "LLaVA conversation file"), list, json_file, "a list of conversations")
    image_dir = io.absolute(image_dir)
    video_dir = image_dir if video_dir is None else io.absolute(video_dir)
    samples = []
    for k, entry in enumerate(data):
        try:
            samples += _llava_conversation(entry, json_file, image_dir, video_dir, per_conversation)
        except ValueError as e:
            if skipped is None:
                raise
            cid = entry.get("id") if isinstance(entry, dict) else None
            skipped[f"conversation {cid!r}" if cid is not None else f"entry {k}"] = str(e)
    return io.non_empty(samples, json_file)


def _llava_conversation(
    entry: Any, json_file: str | os.PathLike, image_dir: str, video_dir: str, per_conversation: bool
) -> list[Sample]:
    """The samples of one conversation of a LLaVA file; a ValueError naming it when it is malformed."""
    cid = str(io.field(entry, "id", json_file, entry))
    convs = io.field(entry, "conversations", json_file, cid)
    if not isinstance(convs, list):
        raise ValueError(
            f"{io.absolute(json_file)}: conversation {cid!r}: 'conversations' is a "
            f"{type(convs).__name__}, not a list of {{from, value}} messages"
        )
    for n, message in enumerate(convs):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            got = (
                f"is {message!r:.40}"
                if not isinstance(message, dict)
                else f"has the value {message.get('value')!r:.40}"
            )
            raise ValueError(
                f"{io.absolute(json_file)}: conversation {cid!r}: message {n} {got}; each message must be "
                "a {from, value} object with text: fix it, or skip the conversation with --skip-bad"
            )
    image_name, video_name = entry.get("image"), entry.get("video")
    if image_name and video_name:
        raise ValueError(
            f"{io.absolute(json_file)}: conversation {cid!r} has both an image and a video; "
            f"give one visual input per conversation"
        )
    if not isinstance(image_name or video_name or "", str):
        raise ValueError(
            f"{io.absolute(json_file)}: conversation {cid!r}: 'image' / 'video' must be one file name "
            f"(several images per conversation are not supported)"
        )
    where = f"conversation {cid!r}"
    image = io.inside(image_dir, image_name, json_file, where) if image_name else None
    video = io.inside(video_dir, video_name, json_file, where, "video_dir") if video_name else None
    extra = {VIDEO_NAME: video_name} if video else {}
    if len(convs) % 2:
        raise ValueError(f"{io.absolute(json_file)}: conversation {cid!r} has an odd number of messages")
    samples: list[Sample] = []
    history: list[list[str]] = []
    for turn in range(len(convs) // 2):
        human, gpt = convs[2 * turn], convs[2 * turn + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError(
                f"{io.absolute(json_file)}: conversation {cid!r} turn {turn} is not "
                f"human -> gpt (got {human.get('from')!r} -> {gpt.get('from')!r})"
            )
        question = human["value"].replace("<image>", "").replace("<video>", "").strip()
        answer = gpt["value"]
        last_turn = turn == len(convs) // 2 - 1
        if not per_conversation or last_turn:
            samples.append(
                Sample(
                    id=cid if per_conversation else f"{cid}_{turn}",
                    prompt=question,
                    answers=[answer],
                    image=image,
                    image_id=image_name or video_name or None,
                    video=video,
                    metadata={"conversation_id": cid, "turn": turn, "history": [list(h) for h in history], **extra},
                )
            )
        history.append([question, answer])
    return samples


register_format(
    DatasetFormat(
        "llava",
        read_llava,
        {"json_file", "image_dir", "video_dir"},
        "image_dir/<image> (video_dir/<video>, video_dir defaulting to image_dir) of each conversation",
        score_exact_match,
    )
)
