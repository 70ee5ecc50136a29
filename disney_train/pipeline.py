"""The embedded default's inputs, made on this machine: what `disney-train run` (`make run`) and `monitor`
train on with no dataset, model or cluster of the user's.

The sample dataset (4 clips cut from Big Buck Bunny, CC-BY) packed into the run's data URI, and a tiny
random-weight CogVideoX or Wan (and CLIP, for the evaluation) where the configuration names local folders that
hold none. Then the CLI trains (`disney_train.train.launch`) and evaluates
(`disney_train.eval.evaluate`) as for any run; the console is the CLI's, not this module's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.progress import Progress

from disney_train.config import RunConfig
from disney_train.data.pack import PackOptions, PackReport, pack
from disney_train.data.sample import write_sample
from disney_train.model.tiny import write_tiny_model
from disney_train.model.tiny_clip import write_tiny_clip
from disney_train.model.tiny_wan import write_tiny_wan
from disney_train.storage import is_s3

SAMPLE_SHARD_BYTES = 512 * 1024  # the sample's 4 clips in a few shards, so the reader's sharding is exercised


SAMPLE_SUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` in the sample folder checks it by hand


def write_sample_dataset(workdir: Path) -> tuple[Path, bool]:
    """The sample dataset in the Disney Video Generation Dataset's layout, under `workdir/sample`, and whether
    it was written: one whose files all match the sums written with them is kept (cutting and encoding
    the clips again took 2.6 s of every `make run`); anything missing or changed and it is written anew."""
    src = workdir / "sample"
    if _sums_match(src):
        return src, False
    files = [*write_sample(src), *(src / name for name in ("prompt.txt", "videos.txt", "ATTRIBUTION.txt"))]
    sums = "".join(f"{_sha256(f)}  {f.relative_to(src).as_posix()}\n" for f in files)
    (src / SAMPLE_SUMS).write_text(sums, encoding="utf-8")
    return src, True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sums_match(src: Path) -> bool:
    try:
        pairs = [line.split("  ", 1) for line in (src / SAMPLE_SUMS).read_text(encoding="utf-8").splitlines()]
        return bool(pairs) and all(_sha256(src / name) == digest for digest, name in pairs)
    except (OSError, ValueError):  # no sums, a file gone, a line that is not "<digest>  <name>"
        return False


def pack_sample(src: Path, cfg: RunConfig, progress: Progress | None = None) -> PackReport:
    """The sample packed into `cfg.data.uri` (shards already there are kept)."""
    options = PackOptions(min_frames=cfg.data.num_frames, shard_bytes=SAMPLE_SHARD_BYTES)
    return pack(src, cfg.data.uri, options, cfg.s3, progress)


def tiny_model_if_missing(cfg: RunConfig) -> bool:
    """A tiny random-weight model of the configuration's family and variant in its local model folder, unless
    one is there or the model is in S3; whether it wrote one."""
    folder = Path(cfg.model.uri)
    if is_s3(cfg.model.uri) or (folder / "model_index.json").is_file():
        return False
    if cfg.model.family == "wan":
        write_tiny_wan(folder, cfg.model.variant)
    else:
        write_tiny_model(folder, cfg.model.variant)
    return True


def tiny_clip_if_missing(cfg: RunConfig) -> bool:
    """A tiny random-weight CLIP in the evaluation's local CLIP folder, unless one is there (or none is
    named, or it is in S3); whether it wrote one."""
    clip = cfg.evaluation.clip_uri if cfg.evaluation else None
    if clip is None or is_s3(clip) or (Path(clip) / "config.json").is_file():
        return False
    write_tiny_clip(Path(clip))
    return True
