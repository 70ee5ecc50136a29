"""The evaluation's heavy imports, made on a thread while the workers train.

`disney-train run` trains on local Ray and then evaluates in its own process, which only waits on Ray
while the workers train. Measured on `make run` (warm): the evaluation's first 2.7 s were transformers'
CLIP import, and diffusers' pipeline and matplotlib came later. Imported on a thread during training,
they are in `sys.modules` when the evaluation asks for them. A module that fails to import here is left
for the evaluation's own import to report.
"""

from __future__ import annotations

import importlib
import logging
import threading

log = logging.getLogger(__name__)

MODULES = (
    "transformers.models.clip.modeling_clip",
    "transformers.models.clip.processing_clip",
    "diffusers.pipelines.cogvideo",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "skimage.metrics",
    "scipy.linalg",
    "disney_train.eval.evaluate",
    "disney_train.eval.scores",
    "disney_train.eval.report",
    "disney_train.generate",
)


def preload(modules: tuple[str, ...] = MODULES) -> threading.Thread:
    """Start importing `modules` on a daemon thread; returns the thread."""

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as err:  # the evaluation imports it again and says what is wrong
                log.debug("preloading %s failed: %s", name, err)

    thread = threading.Thread(target=run, name="eval-preload", daemon=True)
    thread.start()
    return thread
