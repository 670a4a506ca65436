"""What does the model retrieve? Knowledge-locating maps and knowledge distortion (paper Fig. 5, 6).

For a text token whose FFN input is x (in one MemVP layer), the paper's query-key similarity with
visual entry i is  phi(<x, lambda f(z_i)>)  (eq. 6 without the position embedding p^k; phi is that
FFN's own activation). Averaged over the MemVP layers and laid back on the vision encoder's feature
grid (entry i = grid cell i, row-major), it shows which part of the image a word reads.
Blocking the K most responsive entries (their retrieval weight phi(x K_i^T) set to 0 in every
layer, ``MemVPModel(..., blocked_entries=...)``) shows whether the answer depends on them.

This module computes; ``explain_plot`` draws (matplotlib is imported there only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import Sample
from .generation import first_line
from .inputs import DEFAULT_PROMPT_TEMPLATE, encode_sample
from .instruments import measure_scale
from .vision import grid_region  # noqa: F401  (re-exported: where the maps lie on the image)

WORD = re.compile(r"\w+(?:['’-]\w+)*")


# ----------------------------------------------------------------------------- prompt and words
@dataclass(frozen=True)
class Word:
    """A word of the question: its text, character span in the question, and its prompt tokens."""

    text: str
    start: int
    end: int
    tokens: tuple[int, ...]


@dataclass
class EncodedPrompt:
    question: str
    prompt: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character span of each token in ``prompt``
    question_start: int  # where the question starts in ``prompt``
    words: list[Word]


def group_words(question: str, offsets: Sequence[tuple[int, int]], question_start: int = 0) -> list[Word]:
    """The question's words, each with the tokens whose character span overlaps it.

    Byte-level BPE tokens carry their leading space (" shape" spans one character more than
    "shape") and special tokens span (0, 0); overlap handles both. Punctuation belongs to no word.
    """
    words = []
    for m in WORD.finditer(question):
        lo, hi = m.start() + question_start, m.end() + question_start
        tokens = tuple(i for i, (s, e) in enumerate(offsets) if s < hi and e > lo and e > s)
        if tokens:
            words.append(Word(m.group(), m.start(), m.end(), tokens))
    return words


def encode_prompt(
    tokenizer, question: str, template: str = DEFAULT_PROMPT_TEMPLATE, max_length: int = 128
) -> EncodedPrompt:
    """The prompt tokens exactly as training builds them (``data.encode_sample``), with offsets.

    A prompt longer than ``max_length`` is an error here: training would cut words off its start
    and the map would miss them.
    """
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    if "{prompt}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{prompt}} field")
    encoded = encode_sample(
        tokenizer, Sample(id="explain", prompt=question, answers=[]), max_length, template, with_answer=False
    )
    if encoded.truncated:
        raise ValueError(
            f"the question is too long: its prompt is {len(encoded.prompt_ids) + encoded.truncated} "
            f"tokens, over the {max_length} allowed (max_length minus the answer tokens)"
        )
    prompt = template.format(prompt=question)
    try:
        with_offsets = tokenizer(prompt, return_offsets_mapping=True)
    except NotImplementedError as e:
        raise ValueError(
            f"explaining needs a fast tokenizer (one that returns offsets), got {type(tokenizer).__name__}"
        ) from e
    if list(with_offsets["input_ids"]) != list(encoded.prompt_ids):
        raise ValueError("the tokenizer gives different tokens with return_offsets_mapping=True")
    offsets = [tuple(map(int, o)) for o in with_offsets["offset_mapping"]]
    start = template.format(prompt="\x00").index("\x00")
    return EncodedPrompt(
        question, prompt, list(encoded.prompt_ids), offsets, start, group_words(question, offsets, start)
    )


def select_words(words: list[Word], wanted: Sequence[str] | None) -> list[Word]:
    """The words of the question named in ``wanted`` (case-insensitive; every occurrence), or all."""
    if not wanted:
        return list(words)
    keys = {w.strip().lower() for w in wanted}
    chosen = [w for w in words if w.text.lower() in keys]
    missing = sorted(keys - {w.text.lower() for w in chosen})
    if missing:
        raise ValueError(f"word(s) {missing} are not in the question; its words are {[w.text for w in words]}")
    return chosen


# ----------------------------------------------------------------------------- similarities
def _prompt_sites(model) -> list[int]:
    """Sites whose queries are prompt tokens: all of a decoder-only LM, the encoder's otherwise."""
    if not model.config.is_encoder_decoder:
        return list(range(len(model.sites)))
    chosen = [i for i, s in enumerate(model.sites) if s.name.startswith("encoder.")]
    if not chosen:
        raise ValueError("this MemVP model has no layers in the encoder, where the prompt is read")
    return chosen


@torch.no_grad()
def token_similarities(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, visual_features: torch.Tensor
) -> torch.Tensor:
    """phi(<x, g lambda f(z_i)>) (g: the layer's key gain) for every MemVP layer, prompt token and visual
    entry: [layers, B, L, n_visual].

    x is caught by forward pre-hooks on each layer's FFN input during one forward pass of the
    prompt with the visual memory in place (so later layers see what the earlier ones retrieved).
    Only the real visual tokens are kept (the prompts are zero-padded to ``num_entries``).
    """
    if visual_features.dim() == 2:
        visual_features = visual_features.unsqueeze(0)
    memory = model.visual_memory
    n_visual = 1 if memory.config.visual_tokens == "global" else visual_features.shape[1]
    prompts = memory.prompts(visual_features)[:, :n_visual].float()  # [B, n_visual, d]
    indices = _prompt_sites(model)
    captured: dict[int, torch.Tensor] = {}
    hooks = []

    def capture(i: int):
        def hook(module, args, kwargs):
            captured[i] = args[0] if args else next(iter(kwargs.values()))

        return hook

    was_training = model.training
    model.eval()  # no dropout on the retrieval weights while we look at them
    try:
        for i in indices:
            hooks.append(model.sites[i].ffn_input.register_forward_pre_hook(capture(i), with_kwargs=True))
        model.set_visual_memory(visual_features)
        lm = model.language_model
        runner = lm.get_encoder() if lm.config.is_encoder_decoder else lm.base_model
        runner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if len(captured) != len(indices):
        raise RuntimeError("the FFN input of some MemVP layers was not seen during the forward pass")
    maps = []
    for i in indices:
        x = captured[i].float().reshape(prompts.shape[0], -1, prompts.shape[-1])  # OPT flattens tokens
        key_gain = model.site_gains(i)[0]  # 1 with memory_scale='paper', the layer's learned gain with 'ffn'
        maps.append(model.sites[i].activation(x @ prompts.to(x.device).transpose(1, 2) * key_gain))
    return torch.stack(maps)


def grid_side(n_visual: int) -> int:
    side = math.isqrt(n_visual)
    if side * side != n_visual:
        raise ValueError(f"{n_visual} visual tokens do not form a square grid; cannot lay them on the image")
    return side


@dataclass
class SimilarityMaps:
    """Maps of one question about one image; ``[..., side, side]`` arrays, row-major like the grid."""

    encoded: EncodedPrompt
    site_names: list[str]
    per_layer: np.ndarray  # [layers, tokens, side, side]
    token_maps: np.ndarray  # [tokens, side, side]: mean over layers
    words: list[Word]  # the chosen words
    word_maps: np.ndarray  # [words, side, side]: mean of the word's token maps
    absolute: bool = False  # maps of |phi| instead of phi

    @classmethod
    def from_layers(
        cls,
        encoded: EncodedPrompt,
        site_names: list[str],
        per_layer: np.ndarray,
        words: list[Word],
        absolute: bool = False,
    ) -> SimilarityMaps:
        if absolute:
            per_layer = np.abs(per_layer)
        token_maps = per_layer.mean(axis=0)
        word_maps = np.stack([token_maps[list(w.tokens)].mean(axis=0) for w in words])
        return cls(encoded, site_names, per_layer, token_maps, words, word_maps, absolute)

    def magnitude(self) -> SimilarityMaps:
        """The same maps of |phi|: how much of each entry's value is read, whatever the sign.

        With SiLU / GELU, phi of a very negative similarity is ~0 like phi of 0, so when every
        similarity is negative the largest phi marks an entry that is hardly read at all.
        """
        return SimilarityMaps.from_layers(self.encoded, self.site_names, self.per_layer, self.words, True)

    @property
    def grid_side(self) -> int:
        return self.token_maps.shape[-1]

    @property
    def mean_map(self) -> np.ndarray:
        """Mean of the chosen words' maps: what ``explain`` ranks entries by for blocking."""
        return self.word_maps.mean(axis=0)


def similarity_maps(
    model,
    tokenizer,
    visual_features: torch.Tensor,
    question: str,
    words: Sequence[str] | None = None,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    max_length: int = 128,
    absolute: bool = False,
) -> SimilarityMaps:
    """Knowledge-locating maps (Fig. 5) of the chosen words (default: every word of the question).

    ``absolute=True`` maps |phi| (see ``SimilarityMaps.magnitude``) instead of the paper's phi.
    """
    encoded = encode_prompt(tokenizer, question, template, max_length)
    chosen = select_words(encoded.words, words)
    if not chosen:
        raise ValueError(f"the question {question!r} has no words to explain")
    device = next(model.parameters()).device
    ids = torch.tensor([encoded.input_ids], device=device)
    sims = token_similarities(model, ids, torch.ones_like(ids), visual_features)[:, 0]  # [layers, L, n]
    side = grid_side(sims.shape[-1])
    per_layer = sims.reshape(*sims.shape[:2], side, side).cpu().numpy()
    names = [model.sites[i].name for i in _prompt_sites(model)]
    return SimilarityMaps.from_layers(encoded, names, per_layer, chosen, absolute)


# ----------------------------------------------------------------------------- cells and blocking
def hottest_cells(maps: np.ndarray) -> np.ndarray:
    """(row, col) of the largest value of each ``[..., side, side]`` map: ``[..., 2]`` ints."""
    maps = np.asarray(maps)
    side = maps.shape[-1]
    flat = maps.reshape(*maps.shape[:-2], -1).argmax(axis=-1)
    return np.stack([flat // side, flat % side], axis=-1)


def top_entries(score_map: np.ndarray, k: int) -> list[int]:
    """Indices (row-major grid cells = visual entries) of the ``k`` largest values, largest first."""
    flat = np.asarray(score_map).reshape(-1)
    if not 0 <= k <= flat.size:
        raise ValueError(f"cannot block {k} entries: there are {flat.size} visual entries")
    return [int(i) for i in np.argsort(-flat, kind="stable")[:k]]


def blocked_mask(model, entries: Sequence[int], batch: int = 1) -> torch.Tensor:
    """``blocked_entries`` for MemVPModel: [batch, memory entries] bool, True at ``entries``."""
    cfg = model.visual_memory.config
    total = cfg.num_entries * (2 if cfg.position_mode == "concat" else 1)
    bad = [e for e in entries if not 0 <= e < cfg.num_entries]
    if bad:
        raise ValueError(f"visual entries {bad} out of range 0..{cfg.num_entries - 1}")
    mask = torch.zeros(batch, total, dtype=torch.bool, device=model.visual_memory.key_position.device)
    mask[:, list(entries)] = True
    return mask


@torch.no_grad()
def generate_answer(
    model,
    tokenizer,
    input_ids: Sequence[int],
    visual_features: torch.Tensor,
    blocked: Sequence[int] | None = None,
    max_new_tokens: int = 10,
) -> str:
    """Greedy answer, cut at the first line break as ``predict`` does; ``blocked`` entries zeroed."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(input_ids)], device=device)
    if visual_features.dim() == 2:
        visual_features = visual_features.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            visual_features=visual_features,
            blocked_entries=blocked_mask(model, blocked) if blocked else None,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        model.train(was_training)
    new = out[0] if model.config.is_encoder_decoder else out[0, ids.shape[1] :]
    return first_line(tokenizer.decode(new, skip_special_tokens=True))


@dataclass
class Explanation:
    """Maps, the answer, and (with ``block_top > 0``) the blocked entries and the answer without them."""

    maps: SimilarityMaps
    answer: str
    blocked: list[int] = field(default_factory=list)
    answer_blocked: str | None = None
    scale: dict[str, Any] | None = None
    """The instruments on this prompt (memvp.instruments.measure_scale): is the memory in the LM's scale?"""

    def summary(self) -> dict[str, Any]:
        cells = hottest_cells(self.maps.word_maps)
        side = self.maps.grid_side
        return {
            "question": self.maps.encoded.question,
            "answer": self.answer,
            "grid": [side, side],
            "layers": len(self.maps.site_names),
            "words": [
                {"word": w.text, "hottest_cell": [int(r), int(c)], "max": float(m.max()), "min": float(m.min())}
                for w, (r, c), m in zip(self.maps.words, cells, self.maps.word_maps)
            ],
            "blocked_entries": [[e // side, e % side] for e in self.blocked],
            "answer_blocked": self.answer_blocked,
            "scale": self.scale,
        }


def explain(
    model,
    tokenizer,
    visual_features: torch.Tensor,
    question: str,
    words: Sequence[str] | None = None,
    block_top: int = 0,
    max_new_tokens: int = 10,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    max_length: int = 128,
    absolute: bool = False,
    asked_entries: torch.Tensor | None = None,
) -> Explanation:
    """Maps of the chosen words, the greedy answer, and the answer with the top ``block_top`` entries
    (ranked by the mean of the chosen words' maps) blocked in every layer (Fig. 6).

    ``max_length`` counts prompt and answer tokens, as in training; ``absolute`` maps |phi|.
    ``asked_entries`` ([entries]: bool, or how much of each entry the asked object covers, e.g.
    ``vision.box_coverage`` of its box) adds the selectivity to the instruments: per layer, the
    retrieval weight the prompt's last token puts on the object against a uniform reading's.
    """
    require_maps(model)
    if block_top < 0:
        raise ValueError(f"block_top must be >= 0, got {block_top}")
    if asked_entries is not None and not bool(torch.as_tensor(asked_entries).any()):
        raise ValueError("asked_entries marks no entry: the asked object's box lies outside the encoder's grid")
    room = max_length - max_new_tokens  # as predict(): the prompt gets what the answer leaves
    maps = similarity_maps(model, tokenizer, visual_features, question, words, template, room, absolute)
    ids = maps.encoded.input_ids
    answer = generate_answer(model, tokenizer, ids, visual_features, None, max_new_tokens)
    feats = visual_features if visual_features.dim() == 3 else visual_features.unsqueeze(0)
    device = next(model.parameters()).device
    batch = {"input_ids": torch.tensor([list(ids)], device=device), "visual_features": feats}
    if model.config.is_encoder_decoder:  # the decoder's first step, as generation starts
        start = model.config.decoder_start_token_id
        batch["decoder_input_ids"] = torch.tensor([[0 if start is None else start]], device=device)
    entry_mask = None if asked_entries is None else torch.as_tensor(asked_entries).float().reshape(1, -1)
    scale = measure_scale(model, batch, entry_mask=entry_mask)
    if not block_top:
        return Explanation(maps, answer, scale=scale)
    blocked = top_entries(maps.mean_map, block_top)
    return Explanation(
        maps, answer, blocked, generate_answer(model, tokenizer, ids, visual_features, blocked, max_new_tokens), scale
    )


def load_explainer(adapter: str | Path, vision_encoder: str | None = None, language_model: str | None = None):
    """(model in eval mode, tokenizer, vision encoder) of a MemVP-family adapter (``memvp``,
    ``memvp_lora``): ``load_pretrained`` with the maps' requirement checked. The models default to those
    the adapter recorded (adapters saved before format 2 need them given)."""
    from .loading import load_pretrained
    from .methods import adapter_method

    method = adapter_method(adapter)
    require_maps(method.model_class, method.name)  # before any model loads
    loaded = load_pretrained(adapter, language_model, vision_encoder)
    return loaded.model, loaded.tokenizer, loaded.vision_encoder


def require_maps(model, name: str | None = None) -> None:
    """Knowledge-locating maps read MemVP's memory: refuse other methods with one line (``model``: a
    method model or its class, whose ``supports_probing`` says it)."""
    if not getattr(model, "supports_probing", False):
        name = name or getattr(model, "method_name", None) or getattr(model, "__name__", type(model).__name__)
        raise ValueError(
            f"knowledge-locating maps read MemVP's memory; a {name} adapter has none (use a memvp or "
            "memvp_lora adapter)"
        )


__all__ = [
    "Word",
    "EncodedPrompt",
    "SimilarityMaps",
    "Explanation",
    "WORD",
    "group_words",
    "encode_prompt",
    "select_words",
    "token_similarities",
    "similarity_maps",
    "hottest_cells",
    "top_entries",
    "blocked_mask",
    "generate_answer",
    "explain",
    "grid_region",
    "load_explainer",
    "require_maps",
]
