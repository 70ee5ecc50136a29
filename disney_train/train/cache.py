"""The latent cache: VAE latents and T5 prompt embeddings computed once, reused by every later run.

Training only updates the transformer's LoRA; the VAE and the T5 encoder are frozen, so what they
compute for a clip never changes. Encoding a 49x480x720 clip through even a tiny VAE took ~30 s on
this CPU, which the cache removes from every step (bench/latent_cache.py).

Layout, beside the dataset by default (`train.cache_uri` moves it):

    <data.uri>/cache/<set>/info.json             what the set was computed with (written first)
    <data.uri>/cache/<set>/<entry>.safetensors   one clip: latent_dist, prompt_embeds[, image_dist]

- `<set>` is a digest of what changes every entry: the model revision (a digest of the VAE,
  text-encoder and tokenizer files), the variant, the frames, fps and resolution, the text length
  and the cache format. Another resolution or model gets another set; nothing is overwritten.
- `<entry>` is a digest of what one clip's entry depends on: the clip's sha256, the prompt as
  trained (with the id token) and, for image-to-video, the conditioning image's sha256. Two
  datasets holding the same clip share its entry; a changed prompt makes a new one.
- One object per clip, not tar shards: at the real shape an entry is ~4.5 MB (bf16), a good S3
  object size, and content-addressed objects make a crashed cache build resume where it stopped
  (entries are written atomically) and let other datasets and runs reuse entries without an index.

The latents are stored as the VAE's distribution (mean and log-variance), so each step still
draws its own sample, as the reference trainers do when they encode every step. The frames are
those the reader takes in epoch 0 (the random start within a longer clip is then fixed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from disney_train.config import RunConfig
from disney_train.data.manifest import Manifest, SampleRecord
from disney_train.data.reader import ClipDataset, DataError, Sample, training_prompt
from disney_train.model.base import Encoders, ModelSpec
from disney_train.model.spec import frozen_encoders
from disney_train.storage import StorageError, Store, open_store
from disney_train.train.dist import Dist

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MODEL_PARTS = ("vae", "text_encoder", "tokenizer")
_REVISION_MEMO = ".disney-train-revision.json"


def model_revision(path: Path) -> str:
    """A digest of the files that decide the cached values (VAE, text encoder, tokenizer).

    Hashing a real T5-XXL (9 GB) takes a while, so per-file digests are remembered beside the
    model, keyed by size and modification time, and recomputed only for files that changed."""
    memo_path = path / _REVISION_MEMO
    try:
        memo: dict[str, Any] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for part in MODEL_PARTS:
        for f in sorted((path / part).rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(path).as_posix()
            st = f.stat()
            stamp = [st.st_size, st.st_mtime_ns]
            entry = memo.get(rel)
            if not (isinstance(entry, dict) and entry.get("stamp") == stamp):
                from disney_train.storage import sha256_file

                entry = {"stamp": stamp, "sha256": sha256_file(f)}
                memo[rel] = entry
                changed = True
            h.update(f"{rel}\0{entry['sha256']}\n".encode())
    if changed:
        try:
            tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, indent=1))
            tmp.replace(memo_path)
        except OSError:  # a read-only model folder: recompute next time
            pass
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class CacheSet:
    """Where the entries of one (model revision, shape) live and what they were computed with."""

    store: Store
    key: str
    info: dict[str, Any]
    with_image: bool  # the clip's conditioning image is part of each entry

    @property
    def uri(self) -> str:
        return self.store.url(self.key)

    def entry_key(self, rec: SampleRecord, prompt: str) -> str:
        image = (rec.image_sha256 or "first-frame") if self.with_image else ""
        digest = hashlib.sha256(f"{rec.sha256}\0{prompt}\0{image}".encode()).hexdigest()[:40]
        return f"{self.key}/{digest}.safetensors"


def cache_set(cfg: RunConfig, model_path: Path, spec: ModelSpec) -> CacheSet:
    uri = cfg.train.cache_uri or f"{cfg.data.uri.rstrip('/')}/cache"
    info = {
        **spec.cache_facts(),  # i2v: the image's window and noise (nothing for t2v: its sets keep their keys)
        "format": CACHE_FORMAT,
        "model_revision": model_revision(model_path),
        "variant": cfg.model.variant,
        "num_frames": cfg.data.num_frames,
        "fps": cfg.data.fps,
        "height": cfg.data.height,
        "width": cfg.data.width,
        "max_text_length": spec.max_text_length,
        "seed": cfg.seed,  # picks each clip's frame window (clip_rng(seed, 0, line))
    }
    key = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return CacheSet(open_store(uri, cfg.s3), key, info, spec.wants_image)


def entry_keys(cs: CacheSet, manifest: Manifest, cfg: RunConfig) -> list[str]:
    return [cs.entry_key(rec, training_prompt(cfg.data, rec.prompt)) for rec in manifest.samples]


def missing_entries(cs: CacheSet, manifest: Manifest, cfg: RunConfig) -> list[int]:
    """Manifest indices whose entry is not in the cache yet (one listing, not one HEAD per clip)."""
    present = set(cs.store.list_keys(f"{cs.key}/"))
    return [i for i, k in enumerate(entry_keys(cs, manifest, cfg)) if k not in present]


def _encode_entry(
    spec: ModelSpec, enc: Encoders, sample: Sample, key: str, device: torch.device
) -> dict[str, torch.Tensor]:
    """One clip's entry: the specification's encoding of a batch of one, its draws (the image
    noise) seeded by the entry's key, so that an entry is the same whoever builds it."""
    out = spec.encode(enc, sample, device, [key])
    return {k: v[0].detach().to("cpu").contiguous() for k, v in out.items()}


def build_entries(
    cs: CacheSet,
    cfg: RunConfig,
    manifest: Manifest,
    data_store: Store,
    spec: ModelSpec,
    enc: Encoders,
    indices: list[int],
    device: torch.device,
    on_entry: Callable[[int], None] | None = None,
) -> int:
    """Encode and write the entries of `indices` (this worker's share of the missing ones)."""
    from safetensors.torch import save

    if not indices:
        return 0
    cs.store.write_bytes(f"{cs.key}/info.json", json.dumps(cs.info, indent=1).encode())
    keys = entry_keys(cs, manifest, cfg)
    dataset = ClipDataset(data_store, manifest, cfg.data, seed=cfg.seed, epoch=0, with_image=spec.wants_image)
    workers = min(cfg.data.decode_workers, len(indices))
    loader: DataLoader[Sample] = DataLoader(
        dataset, sampler=indices, batch_size=1, num_workers=workers, prefetch_factor=2 if workers else None
    )
    written = 0
    for i, sample in zip(indices, loader, strict=True):
        tensors = _encode_entry(spec, enc, sample, keys[i], device)
        meta = {"clip": manifest.samples[i].key, "sha256": manifest.samples[i].sha256, "set": cs.key}
        cs.store.write_bytes(keys[i], save(tensors, metadata=meta))
        written += 1
        if on_entry is not None:
            on_entry(i)
    return written


class CachedClipDataset(Dataset[Sample]):
    """Map-style, like `ClipDataset`, but index i reads manifest sample i's cache entry."""

    def __init__(self, cs: CacheSet, manifest: Manifest, cfg: RunConfig) -> None:
        self.cs = cs
        self.manifest = manifest
        self.keys = entry_keys(cs, manifest, cfg)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Sample:
        from safetensors.torch import load

        key = self.keys[i]
        rec = self.manifest.samples[i]
        try:
            tensors = load(self.cs.store.read_bytes(key))
        except StorageError as err:
            raise DataError(f"cache entry of clip {rec.key} ({rec.source}): {err}") from None
        except Exception as err:  # safetensors raises its own error types on a corrupt file
            raise DataError(f"cache entry {self.cs.store.url(key)} of clip {rec.key} is corrupt: {err}") from None
        sample: Sample = {"key": rec.key, **tensors}
        return sample


def describe(cs: CacheSet) -> str:
    i = cs.info
    return (
        f"{cs.uri} (model {i['model_revision']}, {i['variant']}, {i['num_frames']} frames at {i['fps']:g} fps, "
        f"{i['height']}x{i['width']})"
    )


def ensure_cache(
    cfg: RunConfig, model_path: Path, spec: ModelSpec, dist: Dist, device: torch.device, dtype: torch.dtype
) -> tuple[CacheSet, Manifest, Store, int]:
    """Every worker encodes its share of the missing entries; all wait until the cache is complete."""
    from disney_train.data.pack import load_manifest

    data_store = open_store(cfg.data.uri, cfg.s3)
    manifest = load_manifest(cfg.data.uri, store=data_store)
    cs = cache_set(cfg, model_path, spec)
    dist.barrier()  # every rank lists the same state: none has written an entry yet
    missing = missing_entries(cs, manifest, cfg)
    mine = missing[dist.rank :: dist.world_size]
    if mine:
        t0 = time.perf_counter()
        enc = frozen_encoders(model_path, dtype, device, spec)
        n = build_entries(cs, cfg, manifest, data_store, spec, enc, mine, device)
        log.info("rank %d cached %d clip(s) in %.1f s into %s", dist.rank, n, time.perf_counter() - t0, cs.uri)
        del enc
    dist.barrier()
    still = missing_entries(cs, manifest, cfg) if missing else []
    if still:
        raise RuntimeError(f"latent cache {cs.uri}: {len(still)} entr(ies) still missing after the cache stage")
    return cs, manifest, data_store, len(missing)
