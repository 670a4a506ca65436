"""Batched generation for samples: greedy or top-p, transformers' KV cache, the visual memory
computed once per batch (``MemVPModel.generate``); the answer is the generated text's first line
(:func:`first_line`, also what ``memvp explain`` and ``memvp serve`` show)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .datasets import Sample
from .inputs import DEFAULT_PROMPT_TEMPLATE, VisualInputs, collate_prompts, encode_sample


def first_line(text: str) -> str:
    """The answer in a generated text: stripped, cut at the first line break."""
    return text.strip().split("\n")[0].strip()


@torch.no_grad()
def predict(
    model,
    tokenizer,
    samples: Sequence[Sample],
    visual: VisualInputs | None,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 10,
    max_length: int = 256,
    template: str = DEFAULT_PROMPT_TEMPLATE,
    do_sample: bool = False,
    top_p: float = 0.9,
    temperature: float = 1.0,
    use_images: bool = True,
    progress: bool = True,
    num_beams: int = 1,
) -> dict[str, str]:
    """{sample id: generated answer}, the answer cut at the first line break."""
    model.eval()
    encoder_decoder = bool(model.config.is_encoder_decoder)
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "top_p": top_p, "temperature": temperature} if do_sample else {"do_sample": False}
    if num_beams > 1:
        sampling["num_beams"] = num_beams
    out: dict[str, str] = {}
    for start in tqdm(range(0, len(samples), batch_size), desc="generating", disable=not progress):
        chunk = samples[start : start + batch_size]
        encoded = [encode_sample(tokenizer, s, max_length - max_new_tokens, template, with_answer=False) for s in chunk]
        batch = {k: v.to(device) for k, v in collate_prompts(tokenizer, encoded, encoder_decoder).items()}
        visual_inputs = visual.inputs(chunk) if (visual is not None and use_images) else {}
        generated = model.generate(
            **batch, **visual_inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
        )
        new = generated if encoder_decoder else generated[:, batch["input_ids"].shape[1] :]
        for s, row in zip(chunk, new):
            out[s.id] = first_line(tokenizer.decode(row, skip_special_tokens=True))
    return out
