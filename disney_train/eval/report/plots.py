"""The report's plots, PNG bytes from matplotlib (no pyplot): each metric for both models, the temporal
curves, and the style PCA of CLIP embeddings."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from disney_train.eval.report.markdown import direction
from disney_train.eval.results import (
    LABELS,
    METRICS,
    MODELS,
    PER_VIDEO,
    EvalResults,
    Metric,
    ModelName,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


EMBEDDING_SETS = ("reference", *MODELS)
COLOURS: dict[str, str] = {"reference": "#7f7f7f", "baseline": "#1f77b4", "finetuned": "#d62728"}
SET_LABELS: dict[str, str] = {"reference": "Training clips", **{str(m): label for m, label in LABELS.items()}}


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _per_video_values(results: EvalResults, model: ModelName, key: str) -> list[float]:
    return [float(getattr(v.metrics, key)) for v in results.videos if v.model == model]


def _metric_panel(ax: Axes, results: EvalResults, metric: Metric) -> None:
    rng = np.random.default_rng(0)  # the dots' jitter: the same picture every time
    for x, model in enumerate(MODELS):
        ax.bar(x, results.figure(model, metric.key), width=0.6, color=COLOURS[model], alpha=0.6)
        if metric.key in PER_VIDEO:
            values = _per_video_values(results, model, metric.key)
            jitter = rng.uniform(-0.15, 0.15, len(values))
            ax.scatter(x + jitter, values, s=12, color="black", zorder=3)
    ax.set_xticks(range(len(MODELS)), [LABELS[m] for m in MODELS])
    ax.set_title(f"{metric.label} {direction(metric)}", fontsize=9, wrap=True)
    ax.tick_params(labelsize=8)


def metrics_plot(results: EvalResults) -> bytes:
    """One panel per metric: both models' figures as bars, the per-video values as dots."""
    columns = 3
    rows = math.ceil(len(METRICS) / columns)
    fig = new_figure(4 * columns, 3.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, METRICS, strict=False):
        _metric_panel(ax, results, metric)
    for ax in axes[len(METRICS) :]:
        ax.set_visible(False)
    return png(fig)


def mean_curve(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """The mean over curves of possibly different lengths, position by position (NaN where none has one)."""
    if not curves:
        return np.zeros(0)
    padded = np.full((len(curves), max(len(c) for c in curves)), np.nan)
    for i, c in enumerate(curves):
        padded[i, : len(c)] = c
    counts = np.sum(np.isfinite(padded), axis=0)
    sums = np.nansum(padded, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def temporal_plot(results: EvalResults) -> bytes:
    """Adjacent-frame CLIP cosine and SSIM against the frame pair, each model's mean over its videos."""
    fig = new_figure(11, 3.8)
    panels = fig.subplots(1, 2)
    for ax, field, title in (
        (panels[0], "clip_adjacent", "Adjacent-frame CLIP cosine"),
        (panels[1], "ssim_adjacent", "Adjacent-frame SSIM"),
    ):
        for model in MODELS:
            curves = [getattr(v.metrics, field) for v in results.videos if v.model == model]
            mean = mean_curve(curves)
            if len(mean):
                ax.plot(np.arange(len(mean)), mean, marker=".", color=COLOURS[model], label=LABELS[model])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("frame pair (i, i+1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png(fig)


def pca_2d(sets: Sequence[np.ndarray]) -> tuple[list[np.ndarray], tuple[float, float]]:
    """The sets' rows projected on the two main axes of all rows together (SVD of the centred rows), and the
    share of the variance each axis explains. A missing second axis (one-dimensional data) projects to 0."""
    stacked = np.concatenate([np.asarray(s, dtype=np.float64) for s in sets])
    centred = stacked - stacked.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.zeros((2, stacked.shape[1]))
    axes[: min(2, len(vt))] = vt[:2]
    variance = singular**2
    total = float(variance.sum())
    shares = [float(v / total) if total > 0 else 0.0 for v in variance[:2]] + [0.0, 0.0]
    projected = centred @ axes.T
    bounds = [int(b) for b in np.cumsum([0, *(len(s) for s in sets)])]
    return [projected[a:b] for a, b in itertools.pairwise(bounds)], (shares[0], shares[1])


def style_plot(embeddings: dict[str, np.ndarray]) -> bytes:
    """A scatter of the three embedding sets on their first two principal axes, each set's centroid marked."""
    names = [n for n in EMBEDDING_SETS if n in embeddings]
    projected, (pc1, pc2) = pca_2d([embeddings[n] for n in names])
    fig = new_figure(6.5, 5.2)
    ax = fig.subplots()
    for name, points in zip(names, projected, strict=True):
        ax.scatter(points[:, 0], points[:, 1], s=10, alpha=0.5, color=COLOURS[name], label=SET_LABELS[name])
        centre = points.mean(axis=0)
        ax.scatter([centre[0]], [centre[1]], s=160, marker="X", color=COLOURS[name], edgecolors="black", zorder=3)
    ax.set_xlabel(f"PC 1 ({pc1:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({pc2:.0%} of the variance)")
    ax.set_title("CLIP embeddings of the frames (PCA; X: each set's centre)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


# --------------------------------------------------------------------------- entry point
