"""The evaluation report (disney_train.eval.report) on synthetic results: the table's figures, the notes, the
pictures it links and that no prompt text can break a table or inject HTML."""

from __future__ import annotations

import html
import io
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from PIL import Image, ImageSequence

from disney_train.eval.report import (
    ReportError,
    compare,
    md_escape,
    pca_2d,
    render_html,
    write_report,
)
from disney_train.eval.results import (
    METRICS,
    MODELS,
    EvalResults,
    Metric,
    ModelName,
    ModelSummary,
    PromptInfo,
    Reference,
    Settings,
    VideoMetrics,
    VideoResult,
)
from disney_train.media import evenly_spaced, side_by_side_gif
from disney_train.storage import LocalStore, open_store

FRAMES, SIZE, DIM = 9, 32, 16
SEEDS = [0, 7]
NASTY = "A girl | a *cat* and `code` <script>alert(1)</script>\nwalk & [run](x) \\| # ~~away~~ _now_"
PROMPTS = [
    PromptInfo(
        text="A fox runs through a snowy forest", scored="A fox runs through a snowy forest", truncated=False, tokens=9
    ),
    PromptInfo(text=NASTY, scored=NASTY, truncated=True, tokens=91),
]
# Per (prompt, seed) index 0..3: the fine-tuned model's clip_score is better in 3 of the 4 pairs,
# its clip_consistency in 1 of 4.
CLIP_SCORE = {"baseline": [0.20, 0.22, 0.24, 0.26], "finetuned": [0.25, 0.21, 0.30, 0.27]}
CONSISTENCY = {"baseline": [0.95, 0.96, 0.94, 0.93], "finetuned": [0.90, 0.97, 0.91, 0.92]}
# The summary: fine-tuned better on prompt fidelity and Fréchet distance (lower is better), baseline better
# on CLIP consistency and the cosine distance (lower is better), SSIM equal to 4 decimals.
SUMMARY: dict[ModelName, dict[str, float]] = {
    "baseline": dict(
        clip_score=0.25,
        clipscore=25.0,
        clip_consistency=0.95,
        ssim_consistency=0.8,
        style_frechet=12.5,
        style_cosine=0.10,
        clip_score_std=0.012,
        clipscore_std=1.2,
        clip_consistency_std=0.01,
        ssim_consistency_std=0.02,
    ),
    "finetuned": dict(
        clip_score=0.3125,
        clipscore=31.25,
        clip_consistency=0.91,
        ssim_consistency=0.80004,
        style_frechet=10.25,
        style_cosine=0.15,
        clip_score_std=0.02,
        clipscore_std=2.0,
        clip_consistency_std=0.03,
        ssim_consistency_std=0.01,
    ),
}
EXPECTED_BETTER = {
    "clip_score": "Fine-tuned",
    "clipscore": "Fine-tuned",
    "clip_consistency": "Baseline",
    "ssim_consistency": "same",
    "style_frechet": "Fine-tuned",
    "style_cosine": "Baseline",
}
EXPECTED_PAIRED = {"clip_score": "3 of 4 videos", "clip_consistency": "1 of 4 videos"}


def _metrics(model: ModelName, pair: int, frames: int) -> VideoMetrics:
    pairs = frames - 1
    return VideoMetrics(
        clip_score=CLIP_SCORE[model][pair],
        clipscore=100 * CLIP_SCORE[model][pair],
        clip_consistency=CONSISTENCY[model][pair],
        ssim_consistency=0.8,
        clip_adjacent=[CONSISTENCY[model][pair]] * pairs,
        ssim_adjacent=list(np.linspace(0.7, 0.9, pairs)),
    )


def make_results(prompts: list[PromptInfo], seeds: list[int], frames: int = FRAMES) -> EvalResults:
    """`seeds`: the first seed of each seed set; prompt p of a set is seeded first + p, as evaluate.py does."""
    videos = [
        VideoResult(
            model=model,
            prompt=p,
            seed=first + p,
            video=f"videos/{model}-p{p:02d}-s{first + p}.mp4",
            metrics=_metrics(model, (p * len(seeds) + s) % 4, frames),
        )
        for model in MODELS
        for p in range(len(prompts))
        for s, first in enumerate(seeds)
    ]
    return EvalResults(
        run="s3://runs/disney_2b",
        model="s3://models/CogVideoX-2b",
        variant="t2v",
        lora="s3://runs/disney_2b/final/pytorch_lora_weights.safetensors",
        clip="s3://models/clip-vit-base-patch32",
        clip_max_tokens=77,
        settings=Settings(
            num_frames=frames,
            height=SIZE,
            width=SIZE,
            fps=8,
            steps=4,
            guidance_scale=6.0,
            seed_sets=len(seeds),
            seeds=sorted(first + p for first in seeds for p in range(len(prompts))),
            lora_scale=1.0,
            device="cpu",
        ),
        reference=Reference(
            dataset="s3://data/disney",
            clips=3,
            frames=24,
            clip_keys=["a", "b", "c"],
            skipped=["d (shard-0.tar): does not match its sha256"],
        ),
        prompts=prompts,
        videos=videos,
        summary={m: ModelSummary(**SUMMARY[m]) for m in MODELS},
        created="2025-01-02T03:04:05Z",
        seconds=754.2,
        ran_on="process 7 on test-host",
    )


def make_videos(results: EvalResults, frames: int = FRAMES) -> dict[tuple[ModelName, int, int], np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        (v.model, v.prompt, v.seed): rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8)
        for v in results.videos
    }


def make_embeddings(rows: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    out = {}
    for name in ("reference", "baseline", "finetuned"):
        x = rng.normal(size=(rows, DIM))
        out[name] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class Page(HTMLParser):
    """The HTML's tables (rows of cell texts), image sources and heading texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self._in = "cell"
        elif tag in ("h1", "h2", "h3"):
            self.headings.append("")
            self._in = "heading"
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th", "h1", "h2", "h3"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "cell":
            self.tables[-1][-1][-1] += data
        elif self._in == "heading":
            self.headings[-1] += data


def count_frames(img: Image.Image) -> int:
    return sum(1 for _ in ImageSequence.Iterator(img))


def split_row(line: str) -> list[str]:
    """A Markdown table row's cells: split at the pipes no backslash escapes."""
    cells, cell, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if ch == "|" and not escaped:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        escaped = ch == "\\" and not escaped
    return [*cells, cell.strip()]


def md_tables(markdown: str) -> list[list[list[str]]]:
    tables: list[list[list[str]]] = []
    previous = False
    for line in markdown.splitlines():
        row = line.startswith("|")
        if row and not previous:
            tables.append([])
        if row and not re.fullmatch(r"\|(-+\|)+", line):
            tables[-1].append(split_row(line))
        previous = row
    return tables


def section(markdown: str, title: str) -> str:
    start = markdown.index(f"## {title}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end >= 0 else None]


class RecordingStore(LocalStore):
    """A local store that remembers the order of its writes."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def write_bytes(self, key: str, data: bytes) -> None:
        self.writes.append(key)
        super().write_bytes(key, data)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalResults, Path, list[str]]:
    results = make_results(PROMPTS, SEEDS)
    store = RecordingStore(tmp_path_factory.mktemp("eval") / "run")
    keys = write_report(results, make_videos(results), make_embeddings(), store)
    assert keys == store.writes  # what it returns is what it wrote, in order
    return results, store.root, keys


def test_every_key_is_written_and_pictures_open(report: tuple[EvalResults, Path, list[str]]) -> None:
    results, root, keys = report
    expected_pictures = {f"eval/plots/{n}.png" for n in ("metrics", "temporal", "style")}
    expected_pictures |= {
        f"eval/{d}/p{p:02d}-s{s}.{e}"
        for p in (0, 1)
        for s in (SEEDS[0] + p, SEEDS[1] + p)
        for d, e in (("frames", "png"), ("gifs", "gif"))
    }
    assert set(keys) == expected_pictures | {"eval/report.md", "eval/report.html"}
    assert keys[-2:] == ["eval/report.md", "eval/report.html"]  # written after what they link
    assert all((root / k).is_file() for k in keys)
    assert not (root / "eval/eval.json").exists() and not (root / "eval/summary.json").exists()
    for key in keys:
        if key.endswith(".png"):
            with Image.open(root / key) as img:
                assert img.format == "PNG" and 200 <= img.width <= 4000 and 150 <= img.height <= 3000, key
    with Image.open(root / "eval/frames/p01-s8.png") as grid:
        # two rows of 8 tiles, the 32 px frames enlarged to 128 px
        assert grid.width >= 8 * 128 and 2 * 128 <= grid.height <= 2 * 200
    with Image.open(root / "eval/gifs/p01-s8.gif") as gif:
        assert gif.format == "GIF" and count_frames(gif) == FRAMES
        assert gif.size == (2 * SIZE, SIZE)  # the two videos side by side, unscaled
        assert gif.info["loop"] == 0 and abs(gif.info["duration"] - 1000 / results.settings.fps) <= 10


def test_table_holds_the_results_figures(report: tuple[EvalResults, Path, list[str]]) -> None:
    _, root, _ = report
    markdown = (root / "eval/report.md").read_text()
    header, *rows = md_tables(section(markdown, "Baseline versus fine-tuned"))[0]
    assert header == ["Aspect", "Metric", "Baseline", "Fine-tuned", "Change", "Better", "Fine-tuned better in"]
    assert len(rows) == len(METRICS)
    for metric, row in zip(METRICS, rows, strict=True):
        assert row[1].startswith(md_escape(metric.label)), row
        b, f = SUMMARY["baseline"][metric.key], SUMMARY["finetuned"][metric.key]
        b_std, f_std = SUMMARY["baseline"].get(f"{metric.key}_std"), SUMMARY["finetuned"].get(f"{metric.key}_std")
        assert row[2] == (f"{b:.4f}" if b_std is None else f"{b:.4f} ± {b_std:.4f}"), row
        assert row[3] == (f"{f:.4f}" if f_std is None else f"{f:.4f} ± {f_std:.4f}"), row
        assert row[4] == ("0.0000" if EXPECTED_BETTER[metric.key] == "same" else f"{f - b:+.4f}"), row
        assert row[5] == EXPECTED_BETTER[metric.key], row
        if metric.key in EXPECTED_PAIRED:
            assert row[6] == EXPECTED_PAIRED[metric.key], row
        assert "nan" not in " ".join(row).lower()
    aspects = [r[0] for r in rows]
    assert aspects == ["**Prompt fidelity**", "", "**Temporal consistency**", "", "**Style (aesthetic) fidelity**", ""]


def test_notes_name_the_truncated_prompt(report: tuple[EvalResults, Path, list[str]]) -> None:
    _, root, _ = report
    notes = section((root / "eval/report.md").read_text(), "Notes")
    assert "Prompt 1 has 91 CLIP tokens; CLIP reads 77, so only its start was scored." in notes
    assert "Prompt 0 has" not in notes and "No prompt exceeded" not in notes
    assert "24 frames of 3 training clips" in notes and "noisy" in notes
    assert "Left out of the style reference, unreadable: d (shard-0.tar): does not match its sha256" in notes
    assert all(md_escape(m.description) in notes for m in METRICS)


def test_html_is_escaped_and_links_only_written_files(report: tuple[EvalResults, Path, list[str]]) -> None:
    _, root, keys = report
    text = (root / "eval/report.html").read_text()
    page = Page()
    page.feed(text)
    page.close()
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text and "<table>" in text
    assert "<script" not in text.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    written = {k.removeprefix("eval/") for k in keys}
    assert page.images and set(page.images) == {k for k in written if k.endswith((".png", ".gif"))}
    assert all((root / "eval" / src).is_file() for src in page.images)
    assert "videos/baseline-p01-s8.mp4" in text and "videos/finetuned-p00-s0.mp4" in text
    flat = " ".join(NASTY.split())
    assert f"Prompt 1: {flat} (truncated for CLIP)" in page.headings  # the prompt's text, literally
    prompt_cells = [row[1] for t in page.tables for row in t[1:] if len(row) > 1 and row[0] == "1"]
    assert prompt_cells == [flat]


def test_a_pipe_in_a_prompt_adds_no_column(report: tuple[EvalResults, Path, list[str]]) -> None:
    _, root, _ = report
    page = Page()
    page.feed((root / "eval/report.html").read_text())
    assert len(page.tables) >= 2
    for t in page.tables:
        assert all(len(row) == len(t[0]) for row in t), t
    for t in md_tables((root / "eval/report.md").read_text()):
        assert all(len(row) == len(t[0]) for row in t), t


def test_one_short_video_and_no_truncated_prompt(tmp_path: Path) -> None:
    results = make_results(PROMPTS[:1], [3], frames=5)
    keys = write_report(
        results, make_videos(results, frames=5), make_embeddings(rows=2), open_store(str(tmp_path), None)
    )
    assert len(keys) == 3 + 2 + 2
    markdown = (tmp_path / "eval/report.md").read_text()
    assert "No prompt exceeded CLIP's 77-token limit." in section(markdown, "Notes")
    assert "1 of 1 videos" in markdown  # the one pair's clip_score: 0.25 against 0.20
    with Image.open(tmp_path / "eval/gifs/p00-s3.gif") as gif:
        assert count_frames(gif) == 5 and gif.size == (2 * SIZE, SIZE)


def test_missing_video_or_embeddings_is_refused(tmp_path: Path) -> None:
    results = make_results(PROMPTS[:1], [0])
    videos = make_videos(results)
    del videos[("finetuned", 0, 0)]
    store = open_store(str(tmp_path), None)
    with pytest.raises(ReportError, match="finetuned video of prompt 0, seed 0"):
        write_report(results, videos, make_embeddings(), store)
    embeddings = make_embeddings()
    del embeddings["reference"]
    with pytest.raises(ReportError, match="reference"):
        write_report(results, make_videos(results), embeddings, store)
    assert not list(tmp_path.iterdir())  # nothing written


def _rendered_text(markdown: str) -> str:
    out = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    assert out.startswith("<p>") and out.endswith("</p>\n") and "<" not in out[3:-5], (markdown, out)
    return html.unescape(out[3:-5])


@pytest.mark.parametrize(
    "text",
    [
        NASTY,
        "1. a list?",
        "2) another",
        "- dash",
        "+ plus",
        "> quote",
        "# heading",
        "=== setext",
        "    indented code",
        "trailing backslash \\",
        "&amp; &#65; entities",
        "<https://example.com> autolink",
        "![img](x.png) and [link][ref]",
        "a  b\tc\r\nd",
        "**",
        "",
    ],
)
def test_md_escape_renders_literally(text: str) -> None:
    flat = " ".join(text.split())
    if flat:
        assert _rendered_text(md_escape(text)) == flat  # at the start of a line
    assert _rendered_text("x " + md_escape(text)) == ("x " + flat).strip()
    cells = Page()
    cells.feed(
        MarkdownIt("commonmark", {"html": False})
        .enable("table")
        .render(f"| a | b |\n|---|---|\n| {md_escape(text)} | z |\n")
    )
    assert cells.tables == [[["a", "b"], [flat, "z"]]]


def test_md_escape_random_punctuation() -> None:
    rng = random.Random(0)
    alphabet = "ab 1.\\`*_{}[]()<>#+-=!|&~;:\"'/\n^$%@"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        flat = " ".join(text.split())
        assert _rendered_text("x " + md_escape(text)) == ("x " + flat).strip(), text


def test_evenly_spaced_frames() -> None:
    assert evenly_spaced(5, 8) == [0, 1, 2, 3, 4]
    assert evenly_spaced(8, 8) == list(range(8))
    for n in (9, 13, 49):
        idx = evenly_spaced(n, 8)
        assert len(idx) == 8 and idx[0] == 0 and idx[-1] == n - 1 and idx == sorted(set(idx))


def test_gif_of_large_long_videos_is_bounded() -> None:
    t, y, x = np.arange(60)[:, None, None], np.arange(400)[None, :, None], np.arange(600)[None, None, :]
    video = np.empty((60, 400, 600, 3), dtype=np.uint8)
    video[..., 0], video[..., 1], video[..., 2] = (x + 3 * t) % 256, (y + 2 * t) % 256, (x + y) // 4 % 256
    with Image.open(io.BytesIO(side_by_side_gif([video, video[:, ::-1]], fps=8))) as gif:
        assert count_frames(gif) == 49 and gif.size == (2 * 540, 360)
        assert abs(gif.info["duration"] - 1000 * 59 / 48 / 8) <= 10  # the clip still lasts 60 frames at 8 fps


def test_pca_separates_the_set_that_differs() -> None:
    rng = np.random.default_rng(3)
    e0, e1 = np.eye(DIM)[0], np.eye(DIM)[1]
    reference, finetuned, baseline = (c + 0.05 * rng.normal(size=(10, DIM)) for c in (e0, e0, e1))
    (ref, fine, base), (pc1, pc2) = pca_2d([reference, finetuned, baseline])
    assert ref.shape == fine.shape == base.shape == (10, 2) and pc1 >= pc2 >= 0 and pc1 + pc2 <= 1 + 1e-9
    centre = ref.mean(axis=0)
    assert np.linalg.norm(fine.mean(axis=0) - centre) < 0.2 * np.linalg.norm(base.mean(axis=0) - centre)
    (one,), _ = pca_2d([np.arange(4.0)[:, None]])  # one-dimensional data: the second axis is 0
    assert one.shape == (4, 2) and np.all(one[:, 1] == 0)


def test_raw_html_in_the_markdown_is_escaped() -> None:
    page = render_html('<script>alert(1)</script>\n\n<img src="x" onerror="y">\n', "a <b> title")
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page
    assert "<title>a &lt;b&gt; title</title>" in page


def test_paired_count_follows_the_metrics_direction() -> None:
    results = make_results(PROMPTS, SEEDS)
    higher = next(m for m in METRICS if m.key == "clip_score")
    lower = Metric(**{**higher.model_dump(), "higher_is_better": False})
    assert (compare(results, higher).paired_better, compare(results, higher).paired) == (3, 4)
    assert (compare(results, lower).paired_better, compare(results, lower).better) == (1, "Baseline")


def test_the_cli_figures_table_reads_at_80_columns() -> None:
    """`make run` printed the figures as one line per metric that broke across lines in an 80-column terminal
    ("Baseline -0.3951 ⏎ Fine-tuned -0.3889"): the table keeps each metric's two figures on its row."""
    from rich.console import Console

    from disney_train.cli.common import figures_table

    results = make_results(PROMPTS, SEEDS)
    out = Console(width=80, record=True, file=io.StringIO())
    out.print(figures_table(results))
    lines = out.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    for metric in METRICS:
        row = " ".join(line for line in lines if metric.label.split()[0] in line)
        for model in MODELS:
            assert f"{results.figure(model, metric.key):.4f}" in row, (metric.key, lines)
