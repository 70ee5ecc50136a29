"""Evaluation metrics on synthetic videos, with a tiny random-weight CLIP loaded like real weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from disney_train.config import S3Options
from disney_train.eval.scores import (
    Clip,
    clip_consistency,
    clip_score,
    embed_frames,
    embed_text,
    load_clip,
    mean_cosine_distance,
    ssim_consistency,
    style_distance,
)
from disney_train.model.source import ModelError
from disney_train.model.tiny_clip import MAX_TOKENS, PROJECTION_DIM
from disney_train.storage import open_store, sha256_file

FRAMES, SIZE, SQUARE = 17, 32, 8
SHUFFLE = np.random.default_rng(0).permutation(FRAMES)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> Clip:
    return load_clip(str(tiny_clip_dir))


def sliding_square(frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """A yellow square sliding left to right, one step a frame, over a colour gradient."""
    x = np.arange(size)[None, :].repeat(size, axis=0)
    background = np.stack([40 + 150 * x / (size - 1), 190 - 150 * x.T / (size - 1), np.full_like(x, 90)], axis=-1)
    video = np.repeat(background.astype(np.uint8)[None], frames, axis=0)
    for i in range(frames):
        left = round(i * (size - SQUARE) / (frames - 1))
        video[i, 12 : 12 + SQUARE, left : left + SQUARE] = (250, 240, 60)
    return video


def test_loads_through_the_model_path(clip: Clip, tiny_clip_dir: Path) -> None:
    assert clip.path == tiny_clip_dir and not clip.model.training
    assert clip.max_tokens == MAX_TOKENS == clip.model.config.text_config.max_position_embeddings
    video = sliding_square()
    emb = embed_frames(clip, video)
    assert emb.shape == (FRAMES, PROJECTION_DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embed_frames(clip, video, batch_size=5), emb, atol=1e-6)  # batching changes nothing
    assert not np.allclose(emb[0], emb[-1], atol=1e-3)  # the frames are told apart


def test_still_video_is_perfectly_consistent(clip: Clip) -> None:
    still = np.repeat(sliding_square()[:1], 6, axis=0)
    assert clip_consistency(clip, still) == pytest.approx(1.0, abs=1e-5)
    assert ssim_consistency(still) == pytest.approx(1.0, abs=1e-12)


def test_smooth_motion_beats_the_same_frames_shuffled(clip: Clip) -> None:
    video = sliding_square()
    shuffled = video[SHUFFLE]
    ordered_ssim, shuffled_ssim = ssim_consistency(video), ssim_consistency(shuffled)
    assert 0 < shuffled_ssim < ordered_ssim < 1
    # With random weights too: CLIP is continuous, adjacent ordered frames differ less (held for 8 model
    # seeds x 5 permutations when written; this is seed 0 and one fixed permutation).
    ordered_clip, shuffled_clip = clip_consistency(clip, video), clip_consistency(clip, shuffled)
    assert shuffled_clip < ordered_clip < 1
    # adjacent pairs are the same pairs played backwards
    assert ssim_consistency(video[::-1]) == pytest.approx(ordered_ssim, abs=1e-9)
    assert clip_consistency(clip, video[::-1]) == pytest.approx(ordered_clip, abs=1e-6)


def test_one_frame_or_a_wrong_array_is_refused(clip: Clip) -> None:
    one = sliding_square()[:1]
    with pytest.raises(ValueError, match="adjacent frames: needs ≥ 2, got 1"):
        ssim_consistency(one)
    with pytest.raises(ValueError, match="adjacent frames: needs ≥ 2, got 1"):
        clip_consistency(clip, one)
    with pytest.raises(ValueError, match=r"uint8 array \[frames, height, width, 3\]; got float64"):
        ssim_consistency(sliding_square().astype(np.float64))


def test_prompt_score_and_truncation(clip: Clip) -> None:
    video = sliding_square()
    short = clip_score(clip, video, "A cartoon mouse steers a steamboat.")
    assert not short.truncated
    assert np.isfinite(short.score) and -1 <= short.score <= 1
    text, _ = embed_text(clip, "A cartoon mouse steers a steamboat.")
    cosines = embed_frames(clip, video).astype(np.float64) @ text
    assert short.score == pytest.approx(cosines.mean(), abs=1e-6)
    assert short.clipscore == pytest.approx(100 * np.maximum(cosines, 0).mean(), abs=1e-4)
    assert 0 <= short.clipscore <= 100

    # the tiny vocabulary spells most words a character a token: "a" is one token, plus start and end
    assert not embed_text(clip, "a " * (MAX_TOKENS - 2))[1]
    long = "a " * (MAX_TOKENS - 1)
    emb_long, truncated = embed_text(clip, long)
    assert truncated and clip_score(clip, video, long).truncated
    emb_longer, _ = embed_text(clip, long + "river boat in the style of disney")
    np.testing.assert_allclose(emb_long, emb_longer, atol=1e-6)  # only the first MAX_TOKENS count


def test_style_distance(clip: Clip) -> None:
    video = sliding_square()
    emb = embed_frames(clip, video)
    assert abs(style_distance(emb, emb)) < 1e-6
    assert abs(style_distance(emb, emb[SHUFFLE])) < 1e-6  # a set, not a sequence
    shift = np.full(PROJECTION_DIM, 0.05)
    assert style_distance(emb, emb + shift) == pytest.approx(float(shift @ shift), abs=1e-6)  # the mean term
    mean = emb.mean(axis=0)
    spread = mean + 2 * (emb - mean)  # same mean, covariance x4: the trace term is Tr(S)
    trace = float(np.trace(np.cov(emb.astype(np.float64), rowvar=False)))
    assert style_distance(emb, spread) == pytest.approx(trace, rel=1e-3)
    inverted = embed_frames(clip, 255 - video)
    assert style_distance(emb, inverted) > 0.1
    with pytest.raises(ValueError, match="embedding sizes differ"):
        style_distance(emb, emb[:, :-1])
    with pytest.raises(ValueError, match=r"reference: expected embeddings \[N ≥ 2, D\]"):
        style_distance(emb, emb[:1])


def test_mean_cosine_distance(clip: Clip) -> None:
    video = sliding_square()
    emb = embed_frames(clip, video)
    assert abs(mean_cosine_distance(emb, emb[SHUFFLE])) < 1e-9
    assert abs(mean_cosine_distance(emb[:1], emb[:1])) < 1e-9  # one sample each is enough
    assert mean_cosine_distance(emb, -emb) == pytest.approx(2.0)
    assert 0.01 < mean_cosine_distance(emb, embed_frames(clip, 255 - video)) < 2


def test_a_folder_that_is_not_clip_is_refused(tiny_clip_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(ModelError) as err:
        load_clip(str(other))
    message = str(err.value)
    assert message.startswith(f"{other}: not a CLIP model")
    assert "model_type 't5', not 'clip'" in message and "missing the weights" in message
    assert "missing the tokenizer files (tokenizer.json, or vocab.json and merges.txt)" in message

    no_tokenizer = Path(shutil.copytree(tiny_clip_dir, tmp_path / "no-tokenizer"))
    for name in ("tokenizer.json", "merges.txt"):
        (no_tokenizer / name).unlink()
    with pytest.raises(ModelError, match=r"no-tokenizer: not a CLIP model .*: missing the tokenizer files") as err:
        load_clip(str(no_tokenizer))
    assert "weights" not in str(err.value) and "config.json" not in str(err.value)
    with pytest.raises(ModelError, match="nope: no such model folder"):
        load_clip(str(tmp_path / "nope"))


def test_an_unreadable_clip_config_is_named(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path.name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(ModelError, match=rf"{tiny_clip_dir}: config.json cannot be read: Permission denied"):
        load_clip(str(tiny_clip_dir))


def test_loads_from_s3(clip: Clip, tiny_clip_dir: Path, tmp_path: Path, s3: S3Options, s3_uri: str) -> None:
    store = open_store(s3_uri, s3)
    for path in sorted(tiny_clip_dir.iterdir()):
        store.write_file(path.name, path, sha256_file(path))
    cache = tmp_path / "cache"
    remote = load_clip(s3_uri, s3, cache_dir=cache)
    assert remote.path.is_relative_to(cache)
    video = sliding_square()[:3]
    np.testing.assert_array_equal(embed_frames(remote, video), embed_frames(clip, video))

    store.delete(["model.safetensors"])
    with pytest.raises(ModelError, match=rf"{s3_uri}: not a CLIP model .*: missing the weights"):
        load_clip(s3_uri, s3, cache_dir=cache)
