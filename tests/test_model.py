"""Models: the tiny model goes through the real loading path, locally and from S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from disney_train.config import S3Options
from disney_train.model.source import SYNC_MARKER, ModelError, push_model, resolve_model
from disney_train.model.spec import load_components
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import BUCKET, SeaweedS3


def test_tiny_models_load_and_generate(tiny_t2v: Path, tiny_i2v: Path) -> None:
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline

    c = load_components(tiny_t2v, "t2v")
    assert c.transformer.config.in_channels == c.vae.config.latent_channels == 4
    assert c.scheduler.config.prediction_type == "v_prediction"
    ids = c.tokenizer("A chubby grey cartoon rabbit yawns.").input_ids
    assert len(ids) > 3 and ids[-1] == c.tokenizer.eos_token_id and c.tokenizer.unk_token_id not in ids[:2]
    pipe = CogVideoXPipeline.from_pretrained(str(tiny_t2v))
    frames = pipe(prompt="a rabbit", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 9, 3, 32, 32)

    i = load_components(tiny_i2v, "i2v")
    assert i.transformer.config.in_channels == 2 * i.vae.config.latent_channels
    ipipe = CogVideoXImageToVideoPipeline.from_pretrained(str(tiny_i2v))
    image = torch.rand(3, 32, 32)
    out = ipipe(
        image=image, prompt="a rabbit", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="pt"
    )
    assert out.frames.shape == (1, 9, 3, 32, 32)


def test_variant_mismatch_and_missing_parts_are_named(tiny_t2v: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"text-to-video model .* but model\.variant is 'i2v'"):
        load_components(tiny_t2v, "i2v")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    (broken / "vae").mkdir()
    with pytest.raises(ModelError, match="missing transformer, text_encoder, tokenizer, scheduler"):
        resolve_model(str(broken))
    with pytest.raises(ModelError, match="no such model folder"):
        resolve_model(str(tmp_path / "nope"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_s3_model_syncs_with_integrity_and_is_reused(
    tiny_t2v: Path, tmp_path: Path, s3: S3Options, s3_uri: str, proxy: FaultProxy, s3_server: SeaweedS3, prefix: str
) -> None:
    written = push_model(tiny_t2v, s3_uri, s3)
    assert "transformer/diffusion_pytorch_model.safetensors" in written
    assert push_model(tiny_t2v, s3_uri, s3) == []  # nothing changed, nothing uploaded

    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint})
    cache = tmp_path / "cache"
    proxy.truncate(1, method="GET", path_contains="/transformer/")  # a body cut in transit is retried
    local = resolve_model(s3_uri, via_proxy, cache)
    assert local == cache / BUCKET / prefix and (local / SYNC_MARKER).is_file()
    remote = _weights(tiny_t2v)
    synced = _weights(local)
    assert remote.keys() == synced.keys() and all(torch.equal(remote[k], synced[k]) for k in remote)
    load_components(local, "t2v")

    proxy.reset()
    assert resolve_model(s3_uri, via_proxy, cache) == local
    assert proxy.requests("GET", "/transformer/") == []  # the cached copy is reused

    # an object replaced in S3 by bytes that do not match its sha256: refused, named
    client = s3_server.client()
    key = f"{prefix}/scheduler/scheduler_config.json"
    meta = client.head_object(Bucket=BUCKET, Key=key)["Metadata"]
    body = json.dumps({"tampered": True}).encode()
    client.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=meta)
    with pytest.raises(ModelError) as err:
        resolve_model(s3_uri, via_proxy, cache)
    assert "scheduler/scheduler_config.json" in str(err.value) and "does not match" in str(err.value)
    assert not (local / SYNC_MARKER).exists()  # the copy is marked incomplete, never used half-synced


def test_concurrent_syncs_download_once(
    tiny_t2v: Path, tmp_path: Path, s3: S3Options, s3_uri: str, proxy: FaultProxy
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    push_model(tiny_t2v, s3_uri, s3)
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint})
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: resolve_model(s3_uri, via_proxy, cache), range(4)))
    assert len(set(paths)) == 1
    files = [p for p in tiny_t2v.rglob("*") if p.is_file()]
    object_gets = [p for p in proxy.requests("GET") if "list-type" not in p]
    assert len(object_gets) == len(files)  # each file fetched once, by whichever worker synced
    load_components(paths[0], "t2v")
