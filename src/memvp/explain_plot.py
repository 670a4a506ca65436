"""Drawing the maps of ``explain`` and the ``memvp explain`` command.

matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend
switch), so this works headless and leaves the caller's matplotlib state alone.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
import numpy as np

from .atomic import atomic_write
from .explain import DEFAULT_VISION_ENCODER, Explanation, explain, grid_region, load_explainer


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_explanation(image, explanation: Explanation, output: str | Path,
                     region: tuple[float, float, float, float] | None = None, max_columns: int = 4,
                     alpha: float = 0.5, cmap: str = "jet", dpi: int = 110) -> Path:
    """The image, then one panel per chosen word: the image under the word's map (one colour scale
    for all panels, so words compare), its hottest cell outlined in white, blocked entries dashed
    red; the question and the answers in the title. ``region`` is where the feature grid lies on
    the image (``grid_region``; default the whole image). Written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .vision import load_image

    image = load_image(image)
    pixels = np.asarray(image)
    maps = explanation.maps
    width, height = image.size
    left, top, right, bottom = region or (0.0, 0.0, float(width), float(height))
    side = maps.grid_side
    cell_w, cell_h = (right - left) / side, (bottom - top) / side
    n = len(maps.words)
    columns = min(n + 1, max_columns)
    rows = math.ceil((n + 1) / columns)
    fig = Figure(figsize=(2.6 * columns + 1.0, 2.7 * rows + 0.9), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).reshape(-1)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(pixels, extent=(0, width, height, 0))
    axes[0].set_title("image", fontsize=11)

    def cell(index: int, **style) -> Rectangle:
        return Rectangle((left + (index % side) * cell_w, top + (index // side) * cell_h), cell_w, cell_h,
                         fill=False, **style)

    vmin, vmax = float(maps.word_maps.min()), float(maps.word_maps.max())
    shown = None
    for ax, word, word_map in zip(axes[1:], maps.words, maps.word_maps):
        ax.imshow(pixels, extent=(0, width, height, 0))
        shown = ax.imshow(word_map, extent=(left, right, bottom, top), cmap=cmap, alpha=alpha,
                          vmin=vmin, vmax=vmax, interpolation="nearest")
        for e in explanation.blocked:
            ax.add_patch(cell(e, edgecolor="red", linewidth=1.5, linestyle="--"))
        ax.add_patch(cell(int(np.argmax(word_map)), edgecolor="white", linewidth=2.0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_title(f"“{word.text}”", fontsize=11)
    for ax in axes[n + 1:]:
        ax.set_visible(False)
    title = f"Q: {_shorten(maps.encoded.question, 90)}\nanswer: {_shorten(explanation.answer)!r}"
    if explanation.blocked:
        title += (f"; with the top {len(explanation.blocked)} entries blocked (dashed red): "
                  f"{_shorten(explanation.answer_blocked or '')!r}")
    fig.suptitle(title, fontsize=11)
    quantity = "|φ(⟨x, λf(z_i)⟩)|" if maps.absolute else "φ(⟨x, λf(z_i)⟩)"
    bar = fig.colorbar(shown, ax=list(axes[1:n + 1]), shrink=0.85)
    bar.set_label(f"{quantity}, mean over {len(maps.site_names)} layers", fontsize=9)
    output = Path(output)
    atomic_write(output, lambda tmp: fig.savefig(tmp, format="png"))
    return output


# ----------------------------------------------------------------------------- command line
def add_explain_parser(subparsers) -> argparse.ArgumentParser:
    """``memvp explain``: add it to the CLI's subparsers."""
    p = subparsers.add_parser("explain", help="which image regions each question word retrieves (paper Fig. 5/6)")
    p.add_argument("--adapter", required=True, help="adapter directory (MemVPModel.save_pretrained)")
    p.add_argument("--image", required=True, help="the image")
    p.add_argument("--question", required=True, help="the question, as it would appear in a data set")
    p.add_argument("--tokens", nargs="+", metavar="WORD", help="words of the question to map (default: all)")
    p.add_argument("--block-top", type=int, default=0, metavar="K",
                   help="also answer with the K most responsive visual entries blocked in every layer")
    p.add_argument("--output", help="PNG to write (default: explain_<image name>.png)")
    p.add_argument("--language-model", default="smollm2", help="the adapter's base model (default smollm2)")
    p.add_argument("--vision-encoder", default=DEFAULT_VISION_ENCODER,
                   help=f"the encoder the adapter was trained with (default {DEFAULT_VISION_ENCODER}, as the demo)")
    p.add_argument("--absolute", action="store_true",
                   help="map |phi| (how much of each entry is read, whatever the sign) instead of phi")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--max-length", type=int, default=128, help="prompt + answer tokens, as in training")
    return p


def run_explain_command(args: argparse.Namespace) -> int:
    """Run ``memvp explain``; bad input raises ValueError / FileNotFoundError (the CLI exits 2)."""
    from .instruments import format_report
    from .vision import load_image

    if args.block_top < 0:
        raise ValueError(f"--block-top must be >= 0, got {args.block_top}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    image = load_image(args.image)  # a missing / corrupt image fails before the models load
    if not args.question.strip():
        raise ValueError("--question is empty")
    output = Path(args.output or f"explain_{Path(args.image).stem}.png")
    model, tokenizer, encoder = load_explainer(args.adapter, args.language_model, args.vision_encoder)
    import torch

    with torch.no_grad():
        features = encoder.encode([image])
    result = explain(model, tokenizer, features, args.question, args.tokens, args.block_top,
                     args.max_new_tokens, max_length=args.max_length, absolute=args.absolute)
    plot_explanation(image, result, output, region=grid_region(encoder, *image.size))
    summary = result.summary()
    side = result.maps.grid_side
    print(f"answer: {result.answer!r}")
    if result.blocked:
        print(f"answer with the top {len(result.blocked)} entries blocked "
              f"{[tuple(c) for c in summary['blocked_entries']]}: {result.answer_blocked!r}")
    cells = ", ".join(f"{w['word']} {tuple(w['hottest_cell'])}" for w in summary["words"])
    print(f"hottest cell (row, col) of the {side}x{side} grid per word: {cells}")
    print(format_report(result.scale))
    print(f"wrote {output}")
    return 0


__all__ = ["plot_explanation", "add_explain_parser", "run_explain_command"]

