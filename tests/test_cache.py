"""The latent cache: computed once, keyed by clip, prompt, model revision and shape, reused, checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from disney_train.config import S3Options
from disney_train.data.pack import PackOptions, load_manifest, pack
from disney_train.data.reader import ClipDataset, DataError, TrainingClips
from disney_train.model.base import ModelSpec
from disney_train.model.encode import encode_prompts, encode_video_dist
from disney_train.model.load import load_encoders
from disney_train.model.spec import spec_for
from disney_train.storage import open_store
from disney_train.train.cache import CachedClipDataset, cache_set, missing_entries, model_revision
from tests.support.training import build_cache, train_config


def T2V(path: Path) -> ModelSpec:
    return spec_for(path, "t2v")


def test_entries_hold_the_encoders_outputs_and_are_reused(tiny_t2v: Path, packed: Path, tmp_path: Path) -> None:
    cfg = train_config(tiny_t2v, packed, tmp_path / "out")
    assert build_cache(cfg, tiny_t2v) == 4
    assert build_cache(cfg, tiny_t2v) == 0  # a second run finds every entry
    manifest = load_manifest(cfg.data.uri)
    cs = cache_set(cfg, tiny_t2v, T2V(tiny_t2v))
    entry = CachedClipDataset(cs, manifest, cfg)[2]
    assert entry["latent_dist"].shape == (5, 8, 8, 12)  # 17 frames -> 5 latent frames; mean+logvar; 64x96 / 8
    assert entry["prompt_embeds"].shape == (226, 32)

    vae, te, tok = (load_encoders(tiny_t2v)[k] for k in ("vae", "text_encoder", "tokenizer"))
    clip = ClipDataset(open_store(cfg.data.uri), manifest, cfg.data, seed=cfg.seed, epoch=0, with_image=False)[2]
    torch.testing.assert_close(entry["latent_dist"], encode_video_dist(vae, clip["video"][None])[0])
    torch.testing.assert_close(entry["prompt_embeds"], encode_prompts(tok, te, [clip["prompt"]], 226, "cpu")[0])

    # the reader serves entries in its usual order when given the cache as its source
    reader = TrainingClips(cfg.data, seed=cfg.seed, batch_size=2, source=CachedClipDataset(cs, manifest, cfg))
    batches = list(reader)
    assert [len(b["key"]) for b in batches] == [2, 2] and batches[0]["latent_dist"].shape == (2, 5, 8, 8, 12)


def test_keys_follow_model_shape_and_prompt(tiny_t2v: Path, tiny_i2v: Path, packed: Path, tmp_path: Path) -> None:
    cfg = train_config(tiny_t2v, packed, tmp_path / "out")
    base = cache_set(cfg, tiny_t2v, T2V(tiny_t2v))
    assert cache_set(cfg, tiny_t2v, T2V(tiny_t2v)).key == base.key
    other_size = train_config(tiny_t2v, packed, tmp_path / "out", **{"data.height": 48})
    assert cache_set(other_size, tiny_t2v, T2V(tiny_t2v)).key != base.key
    assert cache_set(cfg, tiny_i2v, T2V(tiny_t2v)).key != base.key  # another model revision
    assert model_revision(tiny_t2v) != model_revision(tiny_i2v)
    manifest = load_manifest(cfg.data.uri)
    rec = manifest.samples[0]
    assert base.entry_key(rec, rec.prompt) != base.entry_key(rec, "sks " + rec.prompt)

    build_cache(cfg, tiny_t2v)
    with_token = train_config(tiny_t2v, packed, tmp_path / "out", **{"data.id_token": "sks"})
    assert len(missing_entries(cache_set(with_token, tiny_t2v, T2V(tiny_t2v)), manifest, with_token)) == 4


def test_corrupt_entry_is_named(tiny_t2v: Path, packed: Path, tmp_path: Path) -> None:
    cfg = train_config(tiny_t2v, packed, tmp_path / "out")
    build_cache(cfg, tiny_t2v)
    manifest = load_manifest(cfg.data.uri)
    cs = cache_set(cfg, tiny_t2v, T2V(tiny_t2v))
    ds = CachedClipDataset(cs, manifest, cfg)
    path = packed / "cache" / ds.keys[1]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"cache entry .*{ds.keys[1]} of clip {manifest.samples[1].key} is corrupt"):
        ds[1]


def test_cache_on_s3(tiny_t2v: Path, sample_src: Path, s3: S3Options, s3_uri: str, tmp_path: Path) -> None:
    pack(sample_src, s3_uri, PackOptions(min_frames=17, shard_bytes=512 * 1024), s3, None)
    cfg = train_config(tiny_t2v, s3_uri, tmp_path / "out", **{"s3.endpoint_url": s3.endpoint_url})
    assert build_cache(cfg, tiny_t2v) == 4
    store = open_store(s3_uri, s3)
    keys = store.list_keys("cache/")
    assert sum(k.endswith(".safetensors") for k in keys) == 4 and any(k.endswith("info.json") for k in keys)
    assert build_cache(cfg, tiny_t2v) == 0
