"""The quick-start job: MemVP on the real SmolLM2-135M-Instruct + EfficientNet-Lite0, on this machine.

Two photos, one question, two different answers: a few optimizer steps teach the (frozen) LM to
read each photo from its FFN memory. Before training both photos get the same answer; after it,
each gets its own, which only the visual memory can explain (the text is identical).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..methods.memvp import MemVPConfig, MemVPModel, get_memvp_model
from ..pretrained import load_smollm2
from ..vision import EfficientNetLite0Encoder

QUESTION = "What is in the picture? Answer in a few words."
DEFAULT_PAIRS = (("chelsea", "A ginger cat."), ("astronaut", "An astronaut in a space suit."))


def _skimage_photo(name: str):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _encode_batch(tokenizer, question: str, answers: list[str]):
    """Prompt (chat template) + answer tokens; labels only on the answer (and its end token)."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = [prompt_ids + tokenizer(a + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for a in answers]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(prompt_ids) : len(row)] = torch.tensor(row[len(prompt_ids) :])
    return prompt_ids, ids, mask, labels


def _answers(model: MemVPModel, tokenizer, prompt_ids, feats, max_new_tokens: int) -> list[str]:
    ids = torch.tensor([prompt_ids] * feats.shape[0])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        visual_features=feats,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True).strip() for row in out]


def run_demo(
    output_dir: str | Path = "runs/demo", steps: int = 30, lr: float = 1e-2, max_new_tokens: int = 12, seed: int = 0
) -> dict:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    lm, tokenizer = load_smollm2()
    vision = EfficientNetLite0Encoder()
    names, answers = zip(*DEFAULT_PAIRS)
    with torch.no_grad():
        feats = vision.encode([_skimage_photo(n) for n in names])  # [2, 49, 1280]
    print(
        f"loaded SmolLM2-135M-Instruct + EfficientNet-Lite0 in {time.perf_counter() - t0:.1f}s; "
        f"visual features {tuple(feats.shape)}"
    )

    model = get_memvp_model(lm, MemVPConfig(visual_dim=vision.feature_dim, num_entries=64))
    model.print_trainable_parameters()
    prompt_ids, ids, mask, labels = _encode_batch(tokenizer, QUESTION, list(answers))
    model.eval()
    before = _answers(model, tokenizer, prompt_ids, feats, max_new_tokens)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    t1 = time.perf_counter()
    losses = []
    for step in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, visual_features=feats, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step + 1:3d}/{steps}  loss {loss.item():.4f}")
    train_s = time.perf_counter() - t1
    model.eval()
    with torch.no_grad():
        swapped = model(input_ids=ids, attention_mask=mask, visual_features=feats.flip(0), labels=labels).loss.item()
        final = model(input_ids=ids, attention_mask=mask, visual_features=feats, labels=labels).loss.item()
    after = _answers(model, tokenizer, prompt_ids, feats, max_new_tokens)

    model.save_pretrained(output_dir)
    reloaded = MemVPModel.from_pretrained(model.remove_hooks(), output_dir)
    after_reload = _answers(reloaded, tokenizer, prompt_ids, feats, max_new_tokens)

    print(f"\nQ: {QUESTION}")
    print(f"{'image':<10} | {'target':<30} | {'before training':<30} | after {steps} steps")
    for n, a, b, c in zip(names, answers, before, after):
        print(f"{n:<10} | {a:<30} | {b[:30]:<30} | {c}")
    print(f"\nloss with the right images {final:.4f}, with the images swapped {swapped:.4f}")
    print(
        f"training: {steps} steps in {train_s:.1f}s; adapter saved to {output_dir}; "
        f"reloaded adapter answers identically: {after_reload == after}"
    )
    return {
        "before": before,
        "after": after,
        "after_reload": after_reload,
        "losses": losses,
        "loss": final,
        "loss_swapped": swapped,
        "train_seconds": train_s,
    }
