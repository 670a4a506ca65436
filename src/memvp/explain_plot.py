"""Drawing the maps of ``explain`` and the ``memvp explain`` command.

matplotlib is used through its object API with the Agg canvas (no pyplot, no global backend
switch), so this works headless and leaves the caller's matplotlib state alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .explain import Explanation


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_explanation(
    image,
    explanation: Explanation,
    output: str | Path,
    region: tuple[float, float, float, float] | None = None,
    max_columns: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    dpi: int = 110,
) -> Path:
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
        return Rectangle(
            (left + (index % side) * cell_w, top + (index // side) * cell_h), cell_w, cell_h, fill=False, **style
        )

    vmin, vmax = float(maps.word_maps.min()), float(maps.word_maps.max())
    shown = None
    for ax, word, word_map in zip(axes[1:], maps.words, maps.word_maps):
        ax.imshow(pixels, extent=(0, width, height, 0))
        shown = ax.imshow(
            word_map,
            extent=(left, right, bottom, top),
            cmap=cmap,
            alpha=alpha,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        for e in explanation.blocked:
            ax.add_patch(cell(e, edgecolor="red", linewidth=1.5, linestyle="--"))
        ax.add_patch(cell(int(np.argmax(word_map)), edgecolor="white", linewidth=2.0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_title(f"“{word.text}”", fontsize=11)
    for ax in axes[n + 1 :]:
        ax.set_visible(False)
    title = f"Q: {_shorten(maps.encoded.question, 90)}\nanswer: {_shorten(explanation.answer)!r}"
    if explanation.blocked:
        title += (
            f"; with the top {len(explanation.blocked)} entries blocked (dashed red): "
            f"{_shorten(explanation.answer_blocked or '')!r}"
        )
    fig.suptitle(title, fontsize=11)
    quantity = "|φ(⟨x, λf(z_i)⟩)|" if maps.absolute else "φ(⟨x, λf(z_i)⟩)"
    bar = fig.colorbar(shown, ax=list(axes[1 : n + 1]), shrink=0.85)
    bar.set_label(f"{quantity}, mean over {len(maps.site_names)} layers", fontsize=9)
    output = Path(output)
    atomic_write(output, lambda tmp: fig.savefig(tmp, format="png"))
    return output


__all__ = ["plot_explanation"]
