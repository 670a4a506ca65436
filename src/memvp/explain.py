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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .data import DEFAULT_PROMPT_TEMPLATE, encode_sample
from .datasets import Sample
from .instruments import measure_scale

DEFAULT_VISION_ENCODER = "efficientnet-lite0:block6,head"  # what ``memvp demo`` trains with
_WORD = re.compile(r"\w+(?:['’-]\w+)*")


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
    for m in _WORD.finditer(question):
        lo, hi = m.start() + question_start, m.end() + question_start
        tokens = tuple(i for i, (s, e) in enumerate(offsets) if s < hi and e > lo and e > s)
        if tokens:
            words.append(Word(m.group(), m.start(), m.end(), tokens))
    return words


def encode_prompt(tokenizer, question: str, template: str = DEFAULT_PROMPT_TEMPLATE,
                  max_length: int = 128) -> EncodedPrompt:
    """The prompt tokens exactly as training builds them (``data.encode_sample``), with offsets.

    A prompt longer than ``max_length`` is an error here: training would cut words off its start
    and the map would miss them.
    """
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    if "{prompt}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{prompt}} field")
    encoded = encode_sample(tokenizer, Sample(id="explain", prompt=question, answers=[]), max_length,
                            template, with_answer=False)
    if encoded.truncated:
        raise ValueError(f"the question is too long: its prompt is {len(encoded.prompt_ids) + encoded.truncated} "
                         f"tokens, over the {max_length} allowed (max_length minus the answer tokens)")
    prompt = template.format(prompt=question)
    try:
        with_offsets = tokenizer(prompt, return_offsets_mapping=True)
    except NotImplementedError as e:
        raise ValueError("explaining needs a fast tokenizer (one that returns offsets), got "
                         f"{type(tokenizer).__name__}") from e
    if list(with_offsets["input_ids"]) != list(encoded.prompt_ids):
        raise ValueError("the tokenizer gives different tokens with return_offsets_mapping=True")
    offsets = [tuple(map(int, o)) for o in with_offsets["offset_mapping"]]
    start = template.format(prompt="\x00").index("\x00")
    return EncodedPrompt(question, prompt, list(encoded.prompt_ids), offsets, start,
                         group_words(question, offsets, start))


def select_words(words: list[Word], wanted: Sequence[str] | None) -> list[Word]:
    """The words of the question named in ``wanted`` (case-insensitive; every occurrence), or all."""
    if not wanted:
        return list(words)
    keys = {w.strip().lower() for w in wanted}
    chosen = [w for w in words if w.text.lower() in keys]
    missing = sorted(keys - {w.text.lower() for w in chosen})
    if missing:
        raise ValueError(f"word(s) {missing} are not in the question; its words are "
                         f"{[w.text for w in words]}")
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
def token_similarities(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       visual_features: torch.Tensor) -> torch.Tensor:
    """phi(<x, g lambda f(z_i)>) (g: the layer's key gain) for every MemVP layer, prompt token and visual entry: [layers, B, L, n_visual].

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
    per_layer: np.ndarray   # [layers, tokens, side, side]
    token_maps: np.ndarray  # [tokens, side, side]: mean over layers
    words: list[Word]       # the chosen words
    word_maps: np.ndarray   # [words, side, side]: mean of the word's token maps
    absolute: bool = False  # maps of |phi| instead of phi

    @classmethod
    def from_layers(cls, encoded: EncodedPrompt, site_names: list[str], per_layer: np.ndarray,
                    words: list[Word], absolute: bool = False) -> "SimilarityMaps":
        if absolute:
            per_layer = np.abs(per_layer)
        token_maps = per_layer.mean(axis=0)
        word_maps = np.stack([token_maps[list(w.tokens)].mean(axis=0) for w in words])
        return cls(encoded, site_names, per_layer, token_maps, words, word_maps, absolute)

    def magnitude(self) -> "SimilarityMaps":
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


def similarity_maps(model, tokenizer, visual_features: torch.Tensor, question: str,
                    words: Sequence[str] | None = None, template: str = DEFAULT_PROMPT_TEMPLATE,
                    max_length: int = 128, absolute: bool = False) -> SimilarityMaps:
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
def generate_answer(model, tokenizer, input_ids: Sequence[int], visual_features: torch.Tensor,
                    blocked: Sequence[int] | None = None, max_new_tokens: int = 10) -> str:
    """Greedy answer, cut at the first line break as ``predict`` does; ``blocked`` entries zeroed."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(input_ids)], device=device)
    if visual_features.dim() == 2:
        visual_features = visual_features.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), visual_features=visual_features,
                             blocked_entries=blocked_mask(model, blocked) if blocked else None,
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    new = out[0] if model.config.is_encoder_decoder else out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True).strip().split("\n")[0].strip()


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
            "question": self.maps.encoded.question, "answer": self.answer, "grid": [side, side],
            "layers": len(self.maps.site_names),
            "words": [{"word": w.text, "hottest_cell": [int(r), int(c)], "max": float(m.max()),
                       "min": float(m.min())} for w, (r, c), m in zip(self.maps.words, cells, self.maps.word_maps)],
            "blocked_entries": [[e // side, e % side] for e in self.blocked],
            "answer_blocked": self.answer_blocked, "scale": self.scale,
        }


def explain(model, tokenizer, visual_features: torch.Tensor, question: str, words: Sequence[str] | None = None,
            block_top: int = 0, max_new_tokens: int = 10, template: str = DEFAULT_PROMPT_TEMPLATE,
            max_length: int = 128, absolute: bool = False) -> Explanation:
    """Maps of the chosen words, the greedy answer, and the answer with the top ``block_top`` entries
    (ranked by the mean of the chosen words' maps) blocked in every layer (Fig. 6).

    ``max_length`` counts prompt and answer tokens, as in training; ``absolute`` maps |phi|.
    """
    if block_top < 0:
        raise ValueError(f"block_top must be >= 0, got {block_top}")
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
    scale = measure_scale(model, batch)
    if not block_top:
        return Explanation(maps, answer, scale=scale)
    blocked = top_entries(maps.mean_map, block_top)
    return Explanation(maps, answer, blocked,
                       generate_answer(model, tokenizer, ids, visual_features, blocked, max_new_tokens), scale)


# ----------------------------------------------------------------------------- where is the grid
def grid_region(encoder, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the image part the feature grid covers, in image pixels.

    EfficientNet-Lite0 (and SigLIP) squash the whole image to a square; a CLIP image processor
    resizes the short side and centre-crops, so its grid covers the centre square only.
    """
    proc = getattr(encoder, "image_processor", None)
    if proc is None or not getattr(proc, "do_center_crop", False):
        return 0.0, 0.0, float(width), float(height)
    def entry(value, key: str):  # a dict, or transformers' SizeDict
        return value.get(key) if isinstance(value, dict) else getattr(value, key, None)

    short = entry(getattr(proc, "size", None), "shortest_edge")
    crop = getattr(proc, "crop_size", None)
    crop_w, crop_h = entry(crop, "width"), entry(crop, "height")
    if not short or not crop_w or not crop_h:
        return 0.0, 0.0, float(width), float(height)
    scale = short / min(width, height)
    cw, ch = min(width, crop_w / scale), min(height, crop_h / scale)
    left, top = (width - cw) / 2, (height - ch) / 2
    return left, top, left + cw, top + ch


# ----------------------------------------------------------------------------- measuring on the demo
def object_cells(scene, obj, side: int) -> np.ndarray:
    """[side, side] bool: grid cells holding at least one pixel of ``obj``, drawn as the demo draws it."""
    from .scenes import BACKGROUND, Scene, draw_scene

    pixels = np.asarray(draw_scene(Scene([obj], scene.width, scene.height)))
    mask = (pixels != np.asarray(BACKGROUND, dtype=pixels.dtype)).any(axis=-1)
    rows = np.linspace(0, scene.height, side + 1)
    cols = np.linspace(0, scene.width, side + 1)
    cells = np.zeros((side, side), dtype=bool)
    for r in range(side):
        for c in range(side):
            block = mask[math.floor(rows[r]):math.ceil(rows[r + 1]), math.floor(cols[c]):math.ceil(cols[c + 1])]
            cells[r, c] = bool(block.any())
    return cells


def named_color(question: str, colors: Sequence[str]) -> str | None:
    """The one colour word of a demo question ("What shape is the red object?" -> "red")."""
    found = [w for w in _WORD.findall(question.lower()) if w in colors]
    return found[0] if len(found) == 1 else None


MODES = ("phi", "abs")  # maps of phi (the paper's) and of |phi| (SimilarityMaps.magnitude)


def evaluate_localization(model, tokenizer, encode: Callable[[list[str]], torch.Tensor], samples: list[Sample],
                          scenes: dict, k: int = 2, seed: int = 0, max_new_tokens: int = 3,
                          template: str = DEFAULT_PROMPT_TEMPLATE, max_length: int = 48,
                          progress: bool = True) -> dict[str, Any]:
    """Does the hottest cell lie on the object the question names, and does blocking matter?

    For each demo question naming one object by colour, and for maps of phi and of |phi|:
    (a) whether the hottest cell of the colour word's map, and of the mean map of all the
    question's words, is a cell the object covers, against chance (the fraction of cells the
    object covers); (b) for the questions answered correctly, whether blocking the top-``k``
    entries (ranked by the mean map of all words, as ``explain`` does) changes the answer, against
    blocking ``k`` entries drawn uniformly at random (seeded, one draw per question).
    ``encode(image_paths)`` gives [n, n_visual, dim] features; ``scenes`` maps image id -> Scene.
    """
    from tqdm.auto import tqdm

    from .metrics import normalize_vqa_answer
    from .scenes import COLORS

    if k < 1:
        raise ValueError(f"k must be >= 1 to measure blocking, got {k}")
    rng = np.random.default_rng(seed)
    features: dict[str, torch.Tensor] = {}
    paths = sorted({s.image for s in samples})
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            chunk = paths[i:i + 32]
            for p, f in zip(chunk, encode(chunk)):
                features[p] = f.unsqueeze(0)
    records = []
    for s in tqdm(samples, desc="explaining", disable=not progress):
        scene = scenes[int(s.image_id)]
        color = named_color(s.prompt, list(COLORS))
        if color is None:
            raise ValueError(f"question {s.id} ({s.prompt!r}) does not name exactly one object by colour")
        feats = features[s.image]
        phi = similarity_maps(model, tokenizer, feats, s.prompt, None, template, max_length - max_new_tokens)
        ids = phi.encoded.input_ids
        answer = generate_answer(model, tokenizer, ids, feats, None, max_new_tokens)
        side = phi.grid_side
        on = object_cells(scene, scene.find(color), side)
        correct = normalize_vqa_answer(answer) == normalize_vqa_answer(s.target or "")
        random_entries = [int(e) for e in rng.choice(side * side, size=k, replace=False)]
        record = {"id": s.id, "question": s.prompt, "type": s.metadata.get("question_type", s.question_type),
                  "target": s.target, "answer": answer, "correct": correct,
                  "object_cells": int(on.sum()), "chance": float(on.mean()), "random_blocked": random_entries}
        if correct:
            record["answer_random_blocked"] = generate_answer(model, tokenizer, ids, feats, random_entries,
                                                              max_new_tokens)
        color_index = [w.text.lower() for w in phi.words].index(color)
        for mode, maps in zip(MODES, (phi, phi.magnitude())):
            (cr, cc), (mr, mc) = hottest_cells(maps.word_maps[color_index]), hottest_cells(maps.mean_map)
            top = top_entries(maps.mean_map, k)
            record.update({f"{mode}_color_hit": bool(on[cr, cc]), f"{mode}_mean_hit": bool(on[mr, mc]),
                           f"{mode}_top_blocked": top, f"{mode}_top_on_object": int(sum(on.flat[e] for e in top))})
            if correct:
                record[f"{mode}_answer_top_blocked"] = generate_answer(model, tokenizer, ids, feats, top,
                                                                       max_new_tokens)
        records.append(record)
    return {**summarize_localization(records, k), "records": records}


def summarize_localization(records: list[dict], k: int) -> dict[str, Any]:
    """Rates (and counts) over the records of ``evaluate_localization``, overall and per question type."""
    def rate(count: int, total: int) -> float:
        return count / total if total else float("nan")

    def rates(rs: list[dict]) -> dict[str, Any]:
        n = len(rs)
        correct = [r for r in rs if r["correct"]]
        random_changed = sum(r["answer_random_blocked"] != r["answer"] for r in correct)
        out = {"questions": n, "accuracy": rate(len(correct), n),
               "chance_rate": rate(sum(r["chance"] for r in rs), n),
               "correct_answers": len(correct), f"changed_by_random{k}": random_changed,
               f"changed_by_random{k}_rate": rate(random_changed, len(correct))}
        for mode in MODES:
            changed = sum(r[f"{mode}_answer_top_blocked"] != r["answer"] for r in correct)
            out[mode] = {"color_word_hit_rate": rate(sum(r[f"{mode}_color_hit"] for r in rs), n),
                         "mean_map_hit_rate": rate(sum(r[f"{mode}_mean_hit"] for r in rs), n),
                         f"top{k}_cells_on_object": rate(sum(r[f"{mode}_top_on_object"] for r in rs), k * n),
                         f"changed_by_top{k}": changed, f"changed_by_top{k}_rate": rate(changed, len(correct))}
        return out

    types = sorted({r["type"] for r in records})
    return {"k": k, "overall": rates(records),
            "per_type": {t: rates([r for r in records if r["type"] == t]) for t in types}}


def load_explainer(adapter: str | Path, language_model: str = "smollm2",
                   vision_encoder: str = DEFAULT_VISION_ENCODER):
    """(MemVPModel in eval mode, tokenizer, vision encoder) for an adapter; clear errors on mismatch."""
    from .baselines import check_adapter_features
    from .model import CONFIG_NAME, WEIGHTS_NAME, MemVPModel
    from .pretrained import load_language_model, load_vision_encoder

    adapter = Path(adapter)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (adapter / name).is_file():
            raise FileNotFoundError(f"{adapter / name} not found: {adapter} is not a MemVP adapter directory")
    encoder = load_vision_encoder(vision_encoder)
    lm, tokenizer = load_language_model(language_model)
    model = MemVPModel.from_pretrained(lm, adapter)
    check_adapter_features(model, adapter, encoder.feature_dim, vision_encoder)
    return model.eval(), tokenizer, encoder.eval()


def evaluate_demo(data_dir: str | Path, adapter: str | Path, max_questions: int = 300,
                  question_types: Sequence[str] = ("shape", "horizontal", "vertical"), k: int = 2,
                  seed: int = 0, language_model: str = "smollm2",
                  vision_encoder: str = DEFAULT_VISION_ENCODER, progress: bool = True) -> dict[str, Any]:
    """``evaluate_localization`` on a seeded subset of the demo's held-out questions of ``question_types``.

    These types ask about the named object alone (its shape, side, or half), so it is the object
    the answer needs. The demo's settings are used: max_length 48, 3 answer tokens, greedy.
    """
    import random

    from .datasets import read_vqav2
    from .scenes import IMAGE_PATTERN, load_scenes

    data_dir = Path(data_dir)
    samples = read_vqav2(data_dir / "questions_test.json", data_dir / "annotations_test.json",
                         data_dir / "images", IMAGE_PATTERN)
    samples = [s for s in samples if s.metadata.get("question_type") in set(question_types)]
    if max_questions and len(samples) > max_questions:
        samples = sorted(random.Random(seed).sample(samples, max_questions), key=lambda s: int(s.id))
    model, tokenizer, encoder = load_explainer(adapter, language_model, vision_encoder)
    result = evaluate_localization(model, tokenizer, encoder.encode, samples,
                                   load_scenes(data_dir / "scenes_test.json"), k=k, seed=seed, progress=progress)
    return {"data_dir": str(data_dir), "adapter": str(adapter), "question_types": list(question_types),
            "seed": seed, **result}


__all__ = ["Word", "EncodedPrompt", "SimilarityMaps", "Explanation", "group_words", "encode_prompt",
           "select_words", "token_similarities", "similarity_maps", "hottest_cells", "top_entries",
           "blocked_mask", "generate_answer", "explain", "grid_region", "object_cells", "named_color",
           "evaluate_localization", "summarize_localization", "MODES", "load_explainer", "evaluate_demo",
           "DEFAULT_VISION_ENCODER"]
