"""Shared figure helpers: eigenvector images on a diverging colormap, eigenvalue bars, grids.

Eigenvectors are shown normalised by their max |value| on a symmetric colour scale (PAPER.md E1), so
red and blue always mean the same sign and white means zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

CMAP = "RdBu_r"


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


def vector_image(ax, v, image_shape: Sequence[int], title: str | None = None, outline=None) -> None:
    """Draw a pixel-space vector v (n,) (extra entries past prod(image_shape) are ignored).

    Grayscale shapes (1, H, W) use the diverging colormap; RGB (3, H, W) maps [-m, m] to [0, 1] per channel.
    ``outline``: optional boolean (H, W) mask drawn as a contour (e.g. rarely-on pixels).
    """
    c, h, w = image_shape
    arr = to_numpy(v)[: c * h * w].reshape(c, h, w)
    m = np.abs(arr).max() or 1.0
    if c == 1:
        ax.imshow(arr[0], cmap=CMAP, vmin=-m, vmax=m)
    else:
        ax.imshow(np.clip(arr.transpose(1, 2, 0) / (2 * m) + 0.5, 0, 1))
    if outline is not None:
        ax.contour(to_numpy(outline).reshape(h, w), levels=[0.5], colors="k", linewidths=0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def vector_grid(vectors, image_shape, titles: Sequence[str], ncols: int, suptitle: str | None = None, scale: float = 1.6,
                outline=None):
    """A figure of pixel-space vectors (k, n) laid out in rows of ``ncols``; ``outline`` (H, W) as in vector_image."""
    k = len(titles)
    nrows = int(np.ceil(k / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < k:
            vector_image(ax, vectors[i], image_shape, titles[i], outline=outline)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def eigenvalue_bars(ax, values, n: int = 20, title: str | None = None) -> None:
    """The n most positive and n most negative eigenvalues as bars (Fig 3 right).

    Each side holds only values of its sign: a class with fewer than n positive eigenvalues gets fewer red bars,
    never negative values drawn as "positive" ones.
    """
    v = np.sort(to_numpy(values))
    pos, neg = v[::-1][v[::-1] > 0][:n], v[v < 0][:n]
    ax.bar(np.arange(len(pos)), pos, color="tab:red", label="positive")
    ax.bar(np.arange(len(neg)), neg, color="tab:blue", label="negative")
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_xlabel("rank within sign")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)


def heatmap(ax, matrix, row_labels: Sequence, col_labels: Sequence, title: str | None = None, fmt: str = "{:.2g}",
            xlabel: str | None = None, ylabel: str | None = None, cmap: str = "viridis", vmin: float | None = None,
            vmax: float | None = None) -> None:
    """A (rows, cols) matrix with every cell's value written in it (Appendix E heatmaps, Appendix F matrix)."""
    m = to_numpy(matrix)
    im = ax.imshow(m, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], fontsize=7)
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels], fontsize=7)
    finite = m[np.isfinite(m)]
    lo = finite.min() if vmin is None and finite.size else (vmin or 0)
    hi = finite.max() if vmax is None and finite.size else (vmax or 0)
    mid = (lo + hi) / 2
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="w" if v < mid else "k")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)


def line_band(ax, x, mean, lo=None, hi=None, label: str | None = None, **kw) -> None:
    """A curve with an optional shaded band between lo and hi (confidence bands over seeds, Fig 5)."""
    line, = ax.plot(to_numpy(x), to_numpy(mean), label=label, **kw)
    if lo is not None and hi is not None:
        ax.fill_between(to_numpy(x), to_numpy(lo), to_numpy(hi), color=line.get_color(), alpha=0.2, linewidth=0)


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
