"""Metrics for generated videos (uint8 arrays [frames, height, width, 3], as `disney_train.generate.render`
returns them).

- Prompt fidelity: `clip_score`, the cosine between the prompt's CLIP text embedding and each frame's
  CLIP image embedding, averaged over the frames.
- Temporal consistency: `clip_consistency` (cosine between adjacent frames' CLIP embeddings) and
  `ssim_consistency` (SSIM between adjacent frames: needs no model). Both are 1 for a still video.
- Style closeness: `style_distance`, the Fréchet distance between Gaussian fits of two sets of CLIP
  image embeddings (generated frames against reference frames of the target style), with
  `mean_cosine_distance` as a robust companion when there are only a few samples.

CLIP is loaded with transformers' `from_pretrained` from a local folder or an s3:// prefix in the
transformers layout (as `openai/clip-vit-base-patch32` ships), synced like the CogVideoX weights.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from disney_train.config import S3Options
from disney_train.model.source import ModelError, resolve_model

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either set
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # transformers 4 / 5 name


@dataclass(frozen=True)
class Clip:
    """A CLIP model (eval mode, on `device`) with its processor (tokenizer and image processor)."""

    model: Any
    processor: Any
    device: str
    path: Path

    @property
    def max_tokens(self) -> int:
        """The longest token sequence the text model takes (77 for the released CLIP models)."""
        return int(self.model.config.text_config.max_position_embeddings)


@dataclass(frozen=True)
class PromptScore:
    """How well a video matches its prompt.

    score: the mean over frames of cos(text, frame), in [-1, 1].
    clipscore: the CLIPScore scale, 100 * the mean over frames of max(cos, 0), in [0, 100] (Hessel et al.
        2021 clamp each pair at 0 and weight by 2.5; 100 is the scale torchmetrics' CLIPScore reports).
    truncated: the prompt had more tokens than the text model takes; only its start was scored.
    """

    score: float
    clipscore: float
    truncated: bool


def clip_layout_problems(has: Callable[[str], bool], config_json: bytes | None) -> list[str]:
    """What keeps a folder (`has(name)`: is that file there; its config.json's bytes, None when absent)
    from being a CLIP model in the transformers layout; empty when nothing does."""
    problems = []
    if config_json is None:
        problems.append("missing config.json")
    else:
        try:
            loaded = json.loads(config_json)
        except ValueError as err:
            raise ModelError(f"config.json is not readable JSON: {err}") from None
        model_type = loaded.get("model_type") if isinstance(loaded, dict) else None
        if model_type != "clip":
            problems.append(f"config.json has model_type {model_type!r}, not 'clip'")
    if not any(has(w) for w in WEIGHTS):
        problems.append("missing the weights (model.safetensors or pytorch_model.bin)")
    if not any(all(has(f) for f in files) for files in TOKENIZER_FILES):
        problems.append("missing the tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    if not any(has(f) for f in IMAGE_PROCESSOR_FILES):
        problems.append(f"missing the image processor config ({' or '.join(IMAGE_PROCESSOR_FILES)})")
    return problems


def check_clip_layout(path: Path, where: str | None = None) -> Path:
    """`path` if it holds a CLIP model in the transformers layout, else ModelError naming what is wrong."""
    where = where or str(path)
    if not path.is_dir():
        raise ModelError(f"{where}: no such model folder")
    config = path / "config.json"
    try:
        problems = clip_layout_problems(
            lambda name: (path / name).is_file(), config.read_bytes() if config.is_file() else None
        )
    except ModelError as err:
        raise ModelError(f"{where}: {err}") from None
    except OSError as err:
        raise ModelError(f"{where}: config.json cannot be read: {err.strerror or err}") from None
    if problems:
        raise ModelError(f"{where}: not a CLIP model in the transformers layout: {'; '.join(problems)}")
    return path


def check_clip_source(uri: str, s3: S3Options | None = None) -> None:
    """The checks of `check_clip_layout` on a folder or an s3:// prefix, without downloading the weights
    (a listing and config.json): a run can find out before training that its evaluation's CLIP is wrong."""
    from disney_train.storage import StorageError, is_s3, open_store

    if not is_s3(uri):
        check_clip_layout(Path(uri))
        return
    store = open_store(uri, s3)
    keys = set(store.list_keys(""))
    if not keys:
        raise ModelError(f"{uri}: no such model folder (nothing under that prefix)")
    try:
        config = store.read_bytes("config.json") if "config.json" in keys else None
        problems = clip_layout_problems(keys.__contains__, config)
    except (ModelError, StorageError) as err:
        raise ModelError(f"{uri}: {err}") from None
    if problems:
        raise ModelError(f"{uri}: not a CLIP model in the transformers layout: {'; '.join(problems)}")


def load_clip(uri: str, s3: S3Options | None = None, device: str = "cpu", cache_dir: Path | None = None) -> Clip:
    """CLIP from a local folder or an s3:// prefix (synced to the model cache, or `cache_dir`, first)."""
    from transformers import CLIPModel, CLIPProcessor

    path = resolve_model(uri, s3, cache_dir, check=check_clip_layout)
    model = CLIPModel.from_pretrained(str(path)).to(device).eval()
    return Clip(model=model, processor=CLIPProcessor.from_pretrained(str(path)), device=device, path=path)


def _check_video(frames: np.ndarray, min_frames: int = 1) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"a video is a uint8 array [frames, height, width, 3]; got {frames.dtype} {frames.shape}")
    if len(frames) < min_frames:
        raise ValueError(f"temporal consistency compares adjacent frames: needs ≥ {min_frames}, got {len(frames)}")


def _unit(features: Any) -> np.ndarray:
    """transformers 5 returns a model output whose pooler_output is the projected embedding, 4.x the
    tensor itself; either way L2-normalised rows as float32 numpy."""
    import torch

    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    unit: np.ndarray = torch.nn.functional.normalize(tensor.float(), dim=-1).cpu().numpy()
    return unit


def embed_frames(clip: Clip, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """L2-normalised CLIP image embeddings [F, D] of a video's frames."""
    import torch

    _check_video(frames)
    parts = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = list(frames[start : start + batch_size])
            pixels = clip.processor.image_processor(images=batch, return_tensors="pt")
            parts.append(_unit(clip.model.get_image_features(pixel_values=pixels["pixel_values"].to(clip.device))))
    return np.concatenate(parts)


def count_tokens(clip: Clip, prompt: str) -> int:
    """The prompt's CLIP tokens, uncut (start and end tokens included)."""
    return len(clip.processor.tokenizer(prompt, verbose=False)["input_ids"])  # quiet about its length


def embed_text(clip: Clip, prompt: str) -> tuple[np.ndarray, bool]:
    """The prompt's L2-normalised CLIP text embedding [D], and whether the prompt was cut to fit
    the text model (`clip.max_tokens`, start and end tokens included)."""
    import torch

    enc = clip.processor.tokenizer(prompt, truncation=True, max_length=clip.max_tokens, return_tensors="pt")
    with torch.no_grad():
        features = clip.model.get_text_features(
            input_ids=enc["input_ids"].to(clip.device), attention_mask=enc["attention_mask"].to(clip.device)
        )
    return _unit(features)[0], count_tokens(clip, prompt) > clip.max_tokens


def text_frame_score(text: np.ndarray, frames: np.ndarray, truncated: bool = False) -> PromptScore:
    """Prompt fidelity from embeddings: a text [D] against a video's frames [F, D] (see `PromptScore`)."""
    cosines = frames.astype(np.float64) @ text.astype(np.float64)
    return PromptScore(
        score=float(cosines.mean()), clipscore=float(100 * np.maximum(cosines, 0).mean()), truncated=truncated
    )


def clip_score(clip: Clip, frames: np.ndarray, prompt: str) -> PromptScore:
    """Prompt fidelity: see `PromptScore` for the two scales."""
    text, truncated = embed_text(clip, prompt)
    return text_frame_score(text, embed_frames(clip, frames), truncated)


def adjacent_cosines(embeddings: np.ndarray) -> np.ndarray:
    """cos between each pair of adjacent rows of L2-normalised embeddings [F, D]: F-1 values."""
    if len(embeddings) < 2:
        raise ValueError(f"temporal consistency compares adjacent frames: needs ≥ 2, got {len(embeddings)}")
    emb = embeddings.astype(np.float64)
    cosines: np.ndarray = np.sum(emb[:-1] * emb[1:], axis=1)
    return cosines


def clip_consistency(clip: Clip, frames: np.ndarray) -> float:
    """The mean cosine between adjacent frames' CLIP embeddings: 1 for a still video."""
    _check_video(frames, min_frames=2)
    return float(np.mean(adjacent_cosines(embed_frames(clip, frames))))


def adjacent_ssim(frames: np.ndarray) -> np.ndarray:
    """SSIM between each pair of adjacent frames (RGB, 7x7 windows): F-1 values. Needs no model."""
    from skimage.metrics import structural_similarity

    _check_video(frames, min_frames=2)
    return np.array(
        [
            float(structural_similarity(a, b, channel_axis=-1, data_range=255))  # type: ignore[no-untyped-call]
            for a, b in itertools.pairwise(frames)
        ]
    )


def ssim_consistency(frames: np.ndarray) -> float:
    """The mean SSIM between adjacent frames: 1 for a still video."""
    return float(np.mean(adjacent_ssim(frames)))


def _embedding_set(x: np.ndarray, name: str, min_rows: int) -> np.ndarray:
    if x.ndim != 2 or len(x) < min_rows:
        raise ValueError(f"{name}: expected embeddings [N ≥ {min_rows}, D]; got shape {x.shape}")
    return x.astype(np.float64)


def style_distance(generated: np.ndarray, reference: np.ndarray, eps: float = 1e-6) -> float:
    """The Fréchet distance between Gaussian fits of two embedding sets [N, D] and [M, D] (N, M ≥ 2):
    |mu_g - mu_r|² + Tr(S_g + S_r - 2 (S_g S_r)^½), as FID computes it on Inception features.

    With fewer samples than dimensions (a few videos' frames against 512-d CLIP embeddings) the
    covariances are singular and their product's square root is ill-conditioned; `eps * I` is added
    to both (a ridge, as pytorch-fid does when the root fails), which leaves a set's distance to itself
    0 and moves other distances by O(eps * D). The square root's imaginary part, rounding noise, is dropped.
    With that few samples the covariance term is noisy: read it beside `mean_cosine_distance`.
    """
    import scipy.linalg  # type: ignore[import-untyped]

    g, r = _embedding_set(generated, "generated", 2), _embedding_set(reference, "reference", 2)
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"embedding sizes differ: generated {g.shape[1]}, reference {r.shape[1]}")
    ridge = eps * np.eye(g.shape[1])
    cov_g = np.atleast_2d(np.cov(g, rowvar=False)) + ridge
    cov_r = np.atleast_2d(np.cov(r, rowvar=False)) + ridge
    root = np.real(scipy.linalg.sqrtm(cov_g @ cov_r))
    diff = g.mean(axis=0) - r.mean(axis=0)
    return float(diff @ diff + np.trace(cov_g) + np.trace(cov_r) - 2 * np.trace(root))


def mean_cosine_distance(generated: np.ndarray, reference: np.ndarray) -> float:
    """1 - the cosine between the two sets' mean embeddings: 0 for sets alike on average, up to 2.
    Defined from a single sample each, and steadier than `style_distance` for small sets."""
    g, r = _embedding_set(generated, "generated", 1), _embedding_set(reference, "reference", 1)
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"embedding sizes differ: generated {g.shape[1]}, reference {r.shape[1]}")
    mg, mr = g.mean(axis=0), r.mean(axis=0)
    norms = float(np.linalg.norm(mg) * np.linalg.norm(mr))
    if norms == 0:
        raise ValueError("a set's mean embedding is zero: its direction is undefined")
    return float(1 - mg @ mr / norms)
