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

    markdown  the text (Markdown and its HTML rendering)
    plots     the plots (PNG)
    write     `write_report`: checks the inputs, writes the pictures, then the reports
"""

from disney_train.eval.report.markdown import ReportError, compare, md_escape, render_html
from disney_train.eval.report.plots import pca_2d
from disney_train.eval.report.write import check_inputs, write_report

__all__ = ["ReportError", "check_inputs", "compare", "md_escape", "pca_2d", "render_html", "write_report"]
