"""Packing against the real SeaweedFS: bad inputs, the WebDataset layout, strict mode, multipart."""

from __future__ import annotations

import faulthandler
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from disney_train.cli import app
from disney_train.config import S3Options
from disney_train.data.pack import PackError, PackOptions, load_manifest, pack
from disney_train.data.probe import ProbeResult, probe_clip
from disney_train.storage import S3Store
from tests.support.corpus import write_bad_corpus, write_more_videos_than_prompts
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import BUCKET, SeaweedS3


def test_bad_inputs_rejected_by_name_rest_packed(
    sample_src: Path, tmp_path: Path, s3: S3Options, s3_uri: str, s3_server: SeaweedS3, prefix: str
) -> None:
    corpus = write_bad_corpus(sample_src, tmp_path / "src")
    report = pack(corpus.root, s3_uri, PackOptions(min_frames=17, shard_bytes=400_000), s3)
    m = report.manifest
    rejects = {r.where: r.reason for r in m.rejects}
    for where, fragment in corpus.expected.items():
        assert where in rejects, f"{where} not rejected; rejects: {rejects}"
        assert fragment in rejects[where], f"{where}: {rejects[where]!r} lacks {fragment!r}"
    assert len(rejects) == len(corpus.expected), rejects
    assert sorted(s.source for s in m.samples) == sorted(corpus.good)
    assert m.totals.clips == 4 and m.totals.rejects == len(corpus.expected)
    assert len(m.shards) >= 2
    keys = s3_server.keys(prefix + "/")
    assert keys == sorted([f"{prefix}/manifest.json"] + [f"{prefix}/{s.key}" for s in m.shards])
    # the prompts that were packed are the valid lines'
    by_source = {s.source: s.prompt for s in m.samples}
    assert by_source["videos/stretch-yawn.mp4"] == "A rabbit stretches and yawns."
    assert by_source["videos/yawn-end.mp4"] == "A rabbit finishes its yawn."


def test_more_videos_than_prompts(sample_src: Path, tmp_path: Path) -> None:
    corpus = write_more_videos_than_prompts(sample_src, tmp_path / "src")
    m = pack(corpus.root, str(tmp_path / "out"), PackOptions(min_frames=17)).manifest
    assert {r.where: r.reason for r in m.rejects}.keys() == corpus.expected.keys()
    assert corpus.expected["videos.txt:4"] in m.rejects[0].reason
    assert sorted(s.source for s in m.samples) == sorted(corpus.good)
    assert m.prompt_file == "prompts.txt"


def test_shards_are_webdataset_and_carry_everything(
    sample_src: Path, tmp_path: Path, s3: S3Options, s3_uri: str, s3_server: SeaweedS3, prefix: str
) -> None:
    import webdataset as wds

    m = pack(sample_src, s3_uri, PackOptions(min_frames=17, shard_bytes=600_000), s3).manifest
    client = s3_server.client()
    local = []
    for shard in m.shards:
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{shard.key}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == shard.sha256
        path = tmp_path / Path(shard.key).name
        path.write_bytes(body)
        local.append(str(path))
    got = {s["__key__"]: s for s in wds.WebDataset(local, shardshuffle=False)}
    assert sorted(got) == sorted(s.key for s in m.samples)
    prompts = (sample_src / "prompt.txt").read_text().splitlines()
    videos = (sample_src / "videos.txt").read_text().splitlines()
    for rec in m.samples:
        sample = got[rec.key]
        source_bytes = (sample_src / rec.source).read_bytes()
        assert sample["mp4"] == source_bytes
        assert sample["txt"].decode() == prompts[videos.index(rec.source)] == rec.prompt
        meta = json.loads(sample["json"])
        assert meta["sha256"] == hashlib.sha256(source_bytes).hexdigest() == rec.sha256
        assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (33, 25.0, 1280, 720)
        assert meta["source"] == rec.source


def test_shards_are_deterministic_and_readable_by_others(sample_src: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sample_src, src)
    with (src / "videos.txt").open("a") as f:
        f.write("\n\n")  # blank lines at the end of a list are not entries
    a = pack(sample_src, str(tmp_path / "a"), PackOptions(min_frames=17)).manifest
    b = pack(src, str(tmp_path / "b"), PackOptions(min_frames=17, strict=True)).manifest
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    for shard in a.shards:
        assert (tmp_path / "a" / shard.key).stat().st_mode & 0o044 == 0o044  # group and others may read


def test_strict_refuses_and_writes_nothing(
    sample_src: Path, tmp_path: Path, s3: S3Options, s3_uri: str, s3_server: SeaweedS3, prefix: str
) -> None:
    corpus = write_bad_corpus(sample_src, tmp_path / "src")
    with pytest.raises(PackError) as err:
        pack(corpus.root, s3_uri, PackOptions(min_frames=17, strict=True), s3)
    assert "--strict" in str(err.value) and "videos/zero.mp4: empty file" in str(err.value)
    assert s3_server.keys(prefix) == []


def test_large_shards_go_multipart(
    sample_src_x3: Path, s3: S3Options, s3_uri: str, proxy: FaultProxy, s3_server: SeaweedS3, prefix: str
) -> None:
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint})
    # S3 parts are at least 5 MiB (s3transfer enforces it): a 3 MB shard over a 1 MiB threshold
    # goes as a one-part multipart upload.
    store = S3Store(BUCKET, prefix, via_proxy, multipart_threshold=1024 * 1024)
    m = pack(sample_src_x3, s3_uri, PackOptions(min_frames=17, shard_bytes=64 * 1024 * 1024), store=store).manifest
    assert len(m.shards) == 1 and m.shards[0].bytes > 1024 * 1024  # 12 clips in one shard
    shard_requests = [(meth, p) for meth, p in proxy.seen if "/shards/shard-000000-" in p]
    assert ("POST", f"/{BUCKET}/{prefix}/{m.shards[0].key}?uploads") in shard_requests, shard_requests
    assert any(meth == "PUT" and "partNumber=1" in p for meth, p in shard_requests), shard_requests
    assert not any(meth == "PUT" and p.endswith(".tar") for meth, p in shard_requests)  # no single PUT
    body = s3_server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{m.shards[0].key}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == m.shards[0].sha256
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert len(tar.getnames()) == 3 * 12


def test_cli_pack_prints_rejects_and_inspect_summarises(
    sample_src: Path, tmp_path: Path, s3: S3Options, s3_uri: str
) -> None:
    corpus = write_bad_corpus(sample_src, tmp_path / "src")
    runner = CliRunner()
    env = {"AWS_ENDPOINT_URL": str(s3.endpoint_url), "COLUMNS": "200"}
    res = runner.invoke(app, ["data", "pack", str(corpus.root), s3_uri, "--min-frames", "17"], env=env)
    assert res.exit_code == 0, res.output
    assert "Rejected (11)" in res.output and "videos/text.mp4" in res.output
    assert "packed 4 clip(s)" in res.output
    res = runner.invoke(app, ["data", "inspect", s3_uri, "--json"], env=env)
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["clips"] == 4 and info["frames"]["total"] == 132
    assert info["resolutions"] == {"1280x720": 4} and len(info["rejects"]) == 11
    res = runner.invoke(
        app, ["data", "pack", str(corpus.root), s3_uri + "-strict", "--min-frames", "17", "--strict"], env=env
    )
    assert res.exit_code == 1 and "nothing was written" in res.output


def test_missing_manifest_is_a_clear_error(s3: S3Options, s3_uri: str) -> None:
    with pytest.raises(PackError, match=r"manifest\.json: no manifest"):
        load_manifest(s3_uri, s3)


def _probe_that_crashes(path: Path, min_frames: int, image: Path | None = None) -> ProbeResult:
    """A decoder that dies on one file (as a native library can), in the worker process."""
    if path.name == "crash.mp4":
        faulthandler.disable()  # no traceback on the terminal for a crash this test makes on purpose
        os.abort()
    return probe_clip(path, min_frames, image)


def test_a_decoder_crash_rejects_that_clip_only(
    sample_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    shutil.copytree(sample_src, src)
    shutil.copy(src / "videos" / "climb-out.mp4", src / "videos" / "crash.mp4")
    with (src / "videos.txt").open("a") as f:
        f.write("videos/crash.mp4\n")
    with (src / "prompt.txt").open("a") as f:
        f.write("This clip crashes the decoder.\n")
    monkeypatch.setattr("disney_train.data.pack.probe_clip", _probe_that_crashes)
    m = pack(src, str(tmp_path / "out"), PackOptions(min_frames=17, workers=2)).manifest
    assert [(r.where, r.reason) for r in m.rejects] == [("videos/crash.mp4", "the video decoder crashed on this file")]
    assert m.totals.clips == 4
