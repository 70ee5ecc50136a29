"""The report's text: the settings, the baseline-versus-fine-tuned table, the notes and the per-prompt
sections in Markdown, and the same rendered to a self-contained HTML page (markdown-it-py)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import numpy as np

from disney_train.errors import UserError
from disney_train.eval.results import (
    LABELS,
    METRICS,
    MODELS,
    PER_VIDEO,
    EvalResults,
    Metric,
    ModelSummary,
    VideoResult,
)

PLOTS_DIR = "plots"
FRAMES_DIR = "frames"
GIFS_DIR = "gifs"
DECIMALS = 4
NOT_AVAILABLE = "n/a"

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


def direction(metric: Metric) -> str:
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
                f"{md_escape(c.metric.label)} {direction(c.metric)}",
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
    lines += [f"- **{md_escape(m.label)}** {direction(m)}: {md_escape(m.description)}." for m in METRICS]
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


def prompt_seed_pairs(results: EvalResults) -> list[tuple[int, int]]:
    """The (prompt, seed) pairs that have videos, by prompt then in the settings' seed order."""
    order = {seed: i for i, seed in enumerate(results.settings.seeds)}
    found = {(v.prompt, v.seed) for v in results.videos}
    return sorted(found, key=lambda p: (p[0], order.get(p[1], len(order)), p[1]))


def videos_of(results: EvalResults, prompt: int, seed: int) -> list[VideoResult]:
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
    pairs = prompt_seed_pairs(results)
    for index, prompt in enumerate(results.prompts):
        lines += [_prompt_heading(results, index), ""]
        if prompt.scored != prompt.text:
            lines += [f"CLIP scored it as: {md_escape(prompt.scored)}", ""]
        if prompt.image:
            lines += [f"Conditioning image: {md_escape(prompt.image)}", ""]
        for p, seed in pairs:
            if p != index:
                continue
            videos = videos_of(results, p, seed)
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
