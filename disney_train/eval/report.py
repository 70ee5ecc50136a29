"""The evaluation report: `<run>/eval/report.md` and `report.html` (rendered from the Markdown with
markdown-it-py: one source, two formats) with the pictures they embed, all under the run's `eval/` folder
and linked by relative paths, so the folder reads the same downloaded or served from S3.

Top-down the report holds:

1. the run and the evaluation's settings (model, LoRA, CLIP, video size, steps, seeds, reference clips);
2. the baseline-versus-fine-tuned table: one row per metric in `results.METRICS`, grouped by aspect (prompt
   fidelity, temporal consistency, style fidelity), with both models' figures (± the standard deviation over
   videos where there is one), the change (fine-tuned − baseline), which model is better, and for the
   per-video metrics in how many of the paired videos (same prompt and seed) the fine-tuned one is better;
3. notes: how each metric is computed, which prompts CLIP read only the start of, how to read the style figures;
4. plots: `plots/metrics.png` (each metric, both models, per-video values as dots), `plots/temporal.png`
   (adjacent-frame CLIP cosine and SSIM along the video) and `plots/style.png` (a 2-D PCA of the CLIP
   embeddings of the training clips' frames and of both models' frames);
5. per prompt and seed: a frame grid `frames/pNN-sSEED.png` (baseline above fine-tuned, up to 8 evenly spaced
   frames), a side-by-side GIF `gifs/pNN-sSEED.gif`, each video's figures and a link to its mp4.

`write_report` writes the pictures first and the two reports last, so a report never links to a missing file.
The mp4s, `eval.json` and `summary.json` are written by `disney_train.eval.evaluate`, not here.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from disney_train.errors import UserError
from disney_train.eval.results import (
    LABELS,
    METRICS,
    MODELS,
    PER_VIDEO,
    REPORT_HTML,
    REPORT_MD,
    EvalResults,
    Metric,
    ModelName,
    ModelSummary,
    VideoKey,
    VideoResult,
)
from disney_train.media import frame_grid, side_by_side_gif
from disney_train.runs import EVAL_DIR
from disney_train.storage import Store

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


PLOTS_DIR = "plots"
FRAMES_DIR = "frames"
GIFS_DIR = "gifs"
DECIMALS = 4
NOT_AVAILABLE = "n/a"
EMBEDDING_SETS = ("reference", *MODELS)
COLOURS: dict[str, str] = {"reference": "#7f7f7f", "baseline": "#1f77b4", "finetuned": "#d62728"}
SET_LABELS: dict[str, str] = {"reference": "Training clips", **{str(m): label for m, label in LABELS.items()}}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.45; color: #222;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; overflow-wrap: anywhere; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; overflow-wrap: anywhere; }
h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: .3em .6em; vertical-align: top; }
th { background: #f3f3f3; }
td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
code { background: #f3f3f3; padding: 0 .2em; }
""".strip()

_MD_SPECIALS = re.compile(r"([\\`*_\[\]<>|&#~!])")
_LIST_MARKER = re.compile(r"^(\d{1,9})([.)])")


class ReportError(UserError, ValueError):
    """The report's inputs do not fit together (a video or an embedding set is missing or malformed)."""


# --------------------------------------------------------------------------- Markdown text


def md_escape(text: str) -> str:
    """`text` as literal inline Markdown: whitespace (newlines included) folded to single spaces, and every
    character that Markdown or a table would read as syntax backslash-escaped (`|` included, so a table cell
    keeps its columns; `<` and `&` included, so no HTML or entity gets through). Safe at the start of a line
    too: a leading list, quote or heading marker is escaped."""
    folded = " ".join(text.split())
    escaped = _MD_SPECIALS.sub(r"\\\1", folded)
    if escaped[:1] in ("-", "+", "="):
        escaped = "\\" + escaped
    return _LIST_MARKER.sub(r"\1\\\2", escaped)


def fmt(x: float) -> str:
    """A figure as the report prints it: 4 decimals, or `n/a` if it is not finite."""
    return f"{x:.{DECIMALS}f}" if math.isfinite(x) else NOT_AVAILABLE


def fmt_change(delta: float) -> str:
    """fine-tuned − baseline, signed; `0.0000` (no sign) when it rounds to zero."""
    if not math.isfinite(delta):
        return NOT_AVAILABLE
    if round(delta, DECIMALS) == 0:
        return fmt(0.0)
    return f"{delta:+.{DECIMALS}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown (GFM) table; cells must already be escaped."""

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(header):
            raise ValueError(f"a table row has {len(cells)} cells, the header {len(header)}")
        return "| " + " | ".join(cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)]


def _link(text: str, path: str) -> str:
    return f"[{text}]({quote(path)})"


def _image(alt: str, path: str) -> str:
    return f"![{alt}]({quote(path)})"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return NOT_AVAILABLE
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{seconds:.1f} s"


def _date(created: str) -> str:
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return created


# --------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    """One row of the baseline-versus-fine-tuned table, as figures."""

    metric: Metric
    baseline: float
    finetuned: float
    baseline_std: float | None  # over videos, for the per-video metrics that have one
    finetuned_std: float | None
    paired_better: int | None  # paired videos where the fine-tuned one is better (per-video metrics)
    paired: int | None

    @property
    def change(self) -> float:
        return self.finetuned - self.baseline

    @property
    def finite(self) -> bool:
        return math.isfinite(self.baseline) and math.isfinite(self.finetuned)

    @property
    def better(self) -> str:
        """`Fine-tuned`, `Baseline`, `same` (equal to printing precision) or `n/a`."""
        if not self.finite:
            return NOT_AVAILABLE
        if round(self.change, DECIMALS) == 0:
            return "same"
        finetuned_better = (self.change > 0) == self.metric.higher_is_better
        return LABELS["finetuned"] if finetuned_better else LABELS["baseline"]


def _std(summary: ModelSummary, key: str) -> float | None:
    value = getattr(summary, f"{key}_std", None)
    return float(value) if value is not None else None


def compare(results: EvalResults, metric: Metric) -> Comparison:
    """Both models' figures for one metric, and the paired count for a per-video one."""
    paired_better = paired = None
    if metric.key in PER_VIDEO:
        deltas = results.paired_deltas(metric.key)
        sign = 1.0 if metric.higher_is_better else -1.0
        paired_better, paired = sum(1 for d in deltas if sign * d > 0), len(deltas)
    return Comparison(
        metric=metric,
        baseline=results.figure("baseline", metric.key),
        finetuned=results.figure("finetuned", metric.key),
        baseline_std=_std(results.summary["baseline"], metric.key),
        finetuned_std=_std(results.summary["finetuned"], metric.key),
        paired_better=paired_better,
        paired=paired,
    )


def _figure_cell(mean: float, std: float | None) -> str:
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def _direction(metric: Metric) -> str:
    return "↑" if metric.higher_is_better else "↓"


COMPARISON_HEADER = ("Aspect", "Metric", "Baseline", "Fine-tuned", "Change", "Better", "Fine-tuned better in")


def comparison_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    """The table's cells; the aspect is named on the first row of its group."""
    rows, previous = [], None
    for c in comparisons:
        aspect = f"**{md_escape(c.metric.aspect)}**" if c.metric.aspect != previous else ""
        previous = c.metric.aspect
        paired = f"{c.paired_better} of {c.paired} videos" if c.paired is not None else "—"
        rows.append(
            [
                aspect,
                f"{md_escape(c.metric.label)} {_direction(c.metric)}",
                _figure_cell(c.baseline, c.baseline_std),
                _figure_cell(c.finetuned, c.finetuned_std),
                fmt_change(c.change),
                c.better,
                paired,
            ]
        )
    return rows


# --------------------------------------------------------------------------- the Markdown


def _settings_paragraph(results: EvalResults) -> str:
    s, ref = results.settings, results.reference
    seeds = ", ".join(str(x) for x in s.seeds)
    e = md_escape
    return (
        f"Model {e(results.model)} ({results.variant}) with the LoRA {e(results.lora)} at scale {s.lora_scale:g}, "
        f"against the same model without it; scored with the CLIP model {e(results.clip)}. "
        f"Videos of {s.num_frames}×{s.height}×{s.width} (frames×height×width) at {s.fps:g} fps, "
        f"{s.steps} steps, guidance {s.guidance_scale:g}, seeds {seeds}, on {e(s.device)} ({e(results.ran_on)}): "
        f"{len(results.videos)} videos ({len(results.prompts)} prompts × {s.seed_sets} seeds × 2 models). "
        f"Reference: {ref.frames} frames of {ref.clips} training clips from {e(ref.dataset)}. "
        f"Evaluated {e(_date(results.created))} in {_duration(results.seconds)}."
    )


def truncation_sentences(results: EvalResults) -> list[str]:
    """One sentence per prompt CLIP could read only the start of, or one saying none was cut."""
    limit = results.clip_max_tokens
    truncated = results.truncated_prompts()
    if not truncated:
        return [f"No prompt exceeded CLIP's {limit}-token limit."]
    return [
        f"Prompt {i} has {results.prompts[i].tokens} CLIP tokens; CLIP reads {limit}, so only its start was scored."
        for i in truncated
    ]


def _not_finite_notes(comparisons: Sequence[Comparison]) -> list[str]:
    return [
        f"{LABELS[model]}'s {c.metric.label} is not finite ({value}), so it shows as {NOT_AVAILABLE}: "
        "a video or an embedding set the metric needs was degenerate (e.g. a single frame, or all-zero "
        "embeddings)."
        for c in comparisons
        for model, value in zip(MODELS, (c.baseline, c.finetuned), strict=True)
        if not math.isfinite(value)
    ]


def _notes(results: EvalResults, comparisons: Sequence[Comparison]) -> list[str]:
    ref = results.reference
    lines = ["## Notes", ""]
    lines += [f"- **{md_escape(m.label)}** {_direction(m)}: {md_escape(m.description)}." for m in METRICS]
    lines += [
        "- Per-video figures are means over the videos, ± their standard deviation over the videos. Change is "
        "fine-tuned − baseline; Better says which model's figure is better (↑: higher is better, ↓: lower is "
        f"better), or same when the two agree to {DECIMALS} decimals. *Fine-tuned better in* counts the paired "
        "videos (same prompt, same seed) where the fine-tuned model's figure is better.",
        *(f"- {md_escape(s)}" for s in truncation_sentences(results)),
        f"- The style figures compare all of a model's generated frames with {ref.frames} frames of "
        f"{ref.clips} training clips from {md_escape(ref.dataset)}. With this few samples the Fréchet "
        "distance is noisy (its covariance term is poorly estimated): read it beside the mean-embedding "
        "cosine distance, which is steadier.",
        *(f"- Left out of the style reference, unreadable: {md_escape(why)}" for why in ref.skipped),
        *(f"- {md_escape(n)}" for n in _not_finite_notes(comparisons)),
    ]
    return lines


def _per_video_figures(video: VideoResult) -> str:
    figures = ", ".join(
        f"{md_escape(m.label)} {fmt(float(getattr(video.metrics, m.key)))}" for m in METRICS if m.key in PER_VIDEO
    )
    return f"{LABELS[video.model]}: {figures} ({_link('mp4', video.video)})"


def _prompt_heading(results: EvalResults, index: int) -> str:
    prompt = results.prompts[index]
    cut = " (truncated for CLIP)" if prompt.truncated else ""
    return f"## Prompt {index}: {md_escape(prompt.text)}{cut}"


def _prompt_overview(results: EvalResults) -> list[str]:
    """A table of the prompts with each model's CLIP text-frame cosine averaged over the seeds."""
    rows = []
    for i, prompt in enumerate(results.prompts):
        means = []
        for model in MODELS:
            scores = [v.metrics.clip_score for v in results.videos if v.model == model and v.prompt == i]
            means.append(fmt(float(np.mean(scores))) if scores else NOT_AVAILABLE)
        tokens = f"{prompt.tokens}" + (f" (> {results.clip_max_tokens})" if prompt.truncated else "")
        rows.append([str(i), md_escape(prompt.text), tokens, *means])
    header = ("#", "Prompt", "CLIP tokens", *(f"{LABELS[m]} CLIP cosine" for m in MODELS))
    return table(header, rows)


def _pairs(results: EvalResults) -> list[tuple[int, int]]:
    """The (prompt, seed) pairs that have videos, by prompt then in the settings' seed order."""
    order = {seed: i for i, seed in enumerate(results.settings.seeds)}
    found = {(v.prompt, v.seed) for v in results.videos}
    return sorted(found, key=lambda p: (p[0], order.get(p[1], len(order)), p[1]))


def _videos_of(results: EvalResults, prompt: int, seed: int) -> list[VideoResult]:
    """The pair's videos, baseline first."""
    found = [v for v in results.videos if v.prompt == prompt and v.seed == seed]
    return sorted(found, key=lambda v: MODELS.index(v.model))


def grid_key(prompt: int, seed: int) -> str:
    return f"{FRAMES_DIR}/p{prompt:02d}-s{seed}.png"


def gif_key(prompt: int, seed: int) -> str:
    return f"{GIFS_DIR}/p{prompt:02d}-s{seed}.gif"


def plot_key(name: str) -> str:
    return f"{PLOTS_DIR}/{name}.png"


def _prompt_sections(results: EvalResults) -> list[str]:
    lines = ["## Per prompt", "", *_prompt_overview(results), ""]
    pairs = _pairs(results)
    for index, prompt in enumerate(results.prompts):
        lines += [_prompt_heading(results, index), ""]
        if prompt.scored != prompt.text:
            lines += [f"CLIP scored it as: {md_escape(prompt.scored)}", ""]
        if prompt.image:
            lines += [f"Conditioning image: {md_escape(prompt.image)}", ""]
        for p, seed in pairs:
            if p != index:
                continue
            videos = _videos_of(results, p, seed)
            names = " and ".join(LABELS[v.model].lower() for v in videos)
            lines += [
                f"### Seed {seed}",
                "",
                _image(f"Frames of the {names} videos, one row each", grid_key(p, seed)),
                "",
                _image(f"The {names} videos side by side, left to right", gif_key(p, seed)),
                "",
                *(f"- {_per_video_figures(v)}" for v in videos),
                "",
            ]
    return lines


def build_markdown(results: EvalResults) -> str:
    """The report as Markdown, with pictures linked at their paths relative to the eval folder."""
    comparisons = [compare(results, m) for m in METRICS]
    lines = [
        f"# Evaluation of {md_escape(results.run)}",
        "",
        _settings_paragraph(results),
        "",
        "## Baseline versus fine-tuned",
        "",
        *table(COMPARISON_HEADER, comparison_rows(comparisons)),
        "",
        *_notes(results, comparisons),
        "",
        "## Plots",
        "",
        "Each metric for both models; the dots are the per-video values (the style figures are one per model).",
        "",
        _image("Each metric, baseline and fine-tuned", plot_key("metrics")),
        "",
        "Temporal consistency along the video: adjacent frames' CLIP cosine and SSIM against the frame pair, "
        "the mean over each model's videos.",
        "",
        _image("Adjacent-frame CLIP cosine and SSIM along the video", plot_key("temporal")),
        "",
        "The CLIP embeddings of the training clips' frames and of each model's frames, projected on their two "
        "main axes (PCA): the closer a model's points sit to the training clips', the closer its style.",
        "",
        _image("PCA of the CLIP embeddings of training and generated frames", plot_key("style")),
        "",
        *_prompt_sections(results),
    ]
    return "\n".join(lines).rstrip() + "\n"


def render_html(markdown: str, title: str) -> str:
    """The Markdown rendered (raw HTML in it escaped, tables on) in a self-contained page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
        f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- plots (matplotlib, no pyplot)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> bytes:
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
    ax.set_title(f"{metric.label} {_direction(metric)}", fontsize=9, wrap=True)
    ax.tick_params(labelsize=8)


def metrics_plot(results: EvalResults) -> bytes:
    """One panel per metric: both models' figures as bars, the per-video values as dots."""
    columns = 3
    rows = math.ceil(len(METRICS) / columns)
    fig = _new_figure(4 * columns, 3.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, METRICS, strict=False):
        _metric_panel(ax, results, metric)
    for ax in axes[len(METRICS) :]:
        ax.set_visible(False)
    return _png(fig)


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
    fig = _new_figure(11, 3.8)
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
    return _png(fig)


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
    fig = _new_figure(6.5, 5.2)
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
    return _png(fig)


# --------------------------------------------------------------------------- entry point


def check_inputs(results: EvalResults, videos: dict[VideoKey, np.ndarray], embeddings: dict[str, np.ndarray]) -> None:
    """ReportError naming the first thing the report would lack: a video, an embedding set, a sane shape."""
    for v in results.videos:
        key = (v.model, v.prompt, v.seed)
        if key not in videos:
            raise ReportError(f"no frames for the {v.model} video of prompt {v.prompt}, seed {v.seed}")
        frames = videos[key]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ReportError(f"{key}: a video is a uint8 array [frames, height, width, 3]; got {frames.shape}")
        if not 0 <= v.prompt < len(results.prompts):
            raise ReportError(f"{key}: prompt {v.prompt} is not one of the {len(results.prompts)} prompts")
    for name in EMBEDDING_SETS:
        emb = embeddings.get(name)
        if emb is None:
            raise ReportError(f"no {name} embeddings for the style plot")
        if emb.ndim != 2 or len(emb) < 1:
            raise ReportError(f"{name} embeddings: expected [N, D]; got shape {emb.shape}")
    missing = [m for m in MODELS if m not in results.summary]
    if missing:
        raise ReportError(f"no summary figures for {', '.join(missing)}")
    if len({embeddings[n].shape[1] for n in EMBEDDING_SETS}) != 1:
        raise ReportError(f"embedding sizes differ: {[embeddings[n].shape for n in EMBEDDING_SETS]}")


def _pictures(
    results: EvalResults, videos: dict[VideoKey, np.ndarray], embeddings: dict[str, np.ndarray]
) -> dict[str, bytes]:
    """Every picture the report links, by its path relative to the eval folder."""
    pictures = {
        plot_key("metrics"): metrics_plot(results),
        plot_key("temporal"): temporal_plot(results),
        plot_key("style"): style_plot(embeddings),
    }
    for prompt, seed in _pairs(results):
        pair = [(LABELS[v.model], videos[(v.model, prompt, seed)]) for v in _videos_of(results, prompt, seed)]
        pictures[grid_key(prompt, seed)] = frame_grid(pair)
        pictures[gif_key(prompt, seed)] = side_by_side_gif([video for _, video in pair], results.settings.fps)
    return pictures


def write_report(
    results: EvalResults,
    videos: dict[VideoKey, np.ndarray],
    embeddings: dict[str, np.ndarray],
    store: Store,
) -> list[str]:
    """Write the report (Markdown and HTML) and its pictures under `eval/` of the run's store; return the keys
    written, the two reports last."""
    check_inputs(results, videos, embeddings)
    written = []
    for path, data in _pictures(results, videos, embeddings).items():
        key = f"{EVAL_DIR}/{path}"
        store.write_bytes(key, data)
        written.append(key)
    markdown = build_markdown(results)
    store.write_bytes(REPORT_MD, markdown.encode())
    store.write_bytes(REPORT_HTML, render_html(markdown, f"Evaluation of {results.run}").encode())
    return [*written, REPORT_MD, REPORT_HTML]
