"""Writing the report: the inputs checked, the pictures first, the Markdown and HTML last (a report never
links to a missing file)."""

from __future__ import annotations

import numpy as np

from disney_train.eval.report.markdown import (
    ReportError,
    build_markdown,
    gif_key,
    grid_key,
    plot_key,
    prompt_seed_pairs,
    render_html,
    videos_of,
)
from disney_train.eval.report.plots import EMBEDDING_SETS, metrics_plot, style_plot, temporal_plot
from disney_train.eval.results import (
    LABELS,
    MODELS,
    REPORT_HTML,
    REPORT_MD,
    EvalResults,
    VideoKey,
)
from disney_train.media import frame_grid, side_by_side_gif
from disney_train.runs import EVAL_DIR
from disney_train.storage import Store


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
    for prompt, seed in prompt_seed_pairs(results):
        pair = [(LABELS[v.model], videos[(v.model, prompt, seed)]) for v in videos_of(results, prompt, seed)]
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
