"""`disney-train data pack`: a dataset folder -> checked clips -> WebDataset tar shards + manifest.

Properties (each covered by a test):
- every clip is decoded before it is packed; a bad one is rejected with its reason, the rest goes on;
- shards are byte-for-byte deterministic (same input, same keys, same sha256), so a re-run skips
  every shard already stored with the same sha256: an interrupted pack resumes where it stopped;
- each shard appears whole or not at all (temp file + rename locally; S3 PUT / multipart upload);
- the manifest is written last: a dataset without one is unfinished and readers refuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from disney_train import __version__
from disney_train.config import S3Options
from disney_train.data.layout import SourceEntry, read_source
from disney_train.data.manifest import (
    MANIFEST_KEY,
    Manifest,
    MemberRef,
    Reject,
    SampleRecord,
    ShardRecord,
    Totals,
)
from disney_train.data.probe import ProbeResult, probe_clip
from disney_train.errors import UserError
from disney_train.storage import Store, open_store, sha256_file

SHARD_DIR = "shards"
DEFAULT_SHARD_BYTES = 256 * 1024 * 1024


class PackError(UserError, RuntimeError):
    """Packing stopped; the message says why and what, if anything, was written."""


@dataclass
class PackOptions:
    shard_bytes: int = DEFAULT_SHARD_BYTES
    min_frames: int = 49
    workers: int = 2
    strict: bool = False


@dataclass
class PackReport:
    manifest: Manifest
    dest: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # shards of earlier packs, no longer referenced


@dataclass(frozen=True)
class _Checked:
    entry: SourceEntry
    probe: ProbeResult


def shard_key(index: int, sha256: str) -> str:
    """Content-addressed: the same input gives the same key (a re-run skips it), and a changed input
    gives a new key, so a re-pack never overwrites a shard that the current manifest points at."""
    return f"{SHARD_DIR}/shard-{index:06d}-{sha256[:16]}.tar"


def sample_key(line: int) -> str:
    return f"{line:06d}"


def _probe_all(entries: list[SourceEntry], options: PackOptions, progress: Progress | None) -> list[ProbeResult]:
    """Probe every clip in worker processes, so that a decoder crash never takes the pack down."""
    task = progress.add_task("checking clips", total=len(entries)) if progress else None

    def advance() -> None:
        if progress and task is not None:
            progress.advance(task)

    results: dict[int, ProbeResult] = {}
    crashed: list[int] = []
    with ProcessPoolExecutor(max_workers=max(1, options.workers)) as pool:
        futures = {
            pool.submit(probe_clip, e.video_path, options.min_frames, e.image_path): i for i, e in enumerate(entries)
        }
        for f in as_completed(futures):
            try:
                results[futures[f]] = f.result()
            except BrokenProcessPool:
                crashed.append(futures[f])
                continue
            advance()
    # A crash breaks the whole pool: probe each unfinished clip alone to find the one that crashes.
    for i in sorted(crashed):
        e = entries[i]
        with ProcessPoolExecutor(max_workers=1) as solo:
            try:
                results[i] = solo.submit(probe_clip, e.video_path, options.min_frames, e.image_path).result()
            except BrokenProcessPool:
                size = e.video_path.stat().st_size
                results[i] = ProbeResult("", size, None, "the video decoder crashed on this file")
        advance()
    return [results[i] for i in range(len(entries))]


def _plan_shards(clips: list[_Checked], shard_bytes: int) -> list[list[_Checked]]:
    shards: list[list[_Checked]] = [[]]
    size = 0
    for c in clips:
        if shards[-1] and size + c.probe.size > shard_bytes:  # a clip is never split across shards
            shards.append([])
            size = 0
        shards[-1].append(c)
        size += c.probe.size + (c.entry.image_path.stat().st_size if c.entry.image_path else 0) + 3 * 1024
    return shards


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def _metadata(c: _Checked, key: str) -> dict[str, object]:
    clip = c.probe.clip
    assert clip is not None
    return {
        "key": key,
        "line": c.entry.line,
        "source": c.entry.video,
        "sha256": c.probe.sha256,
        "prompt": c.entry.prompt,
        **clip.model_dump(),
        **({"image_source": c.entry.image} if c.entry.image else {}),
    }


def _write_shard(path: Path, clips: list[_Checked]) -> dict[int, str]:
    """A WebDataset shard: per sample KEY.mp4, KEY.txt (prompt), KEY.json, [KEY.png|jpg].

    Returns the sha256 of each packed image by source line."""
    image_sha: dict[int, str] = {}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for c in clips:
            key = sample_key(c.entry.line)
            suffix = c.entry.video_path.suffix.lower() or ".mp4"
            video = c.entry.video_path.read_bytes()
            if hashlib.sha256(video).hexdigest() != c.probe.sha256:
                raise PackError(f"{c.entry.video}: the file changed while it was being packed; run the pack again")
            members = [
                (f"{key}{suffix}", video),
                (f"{key}.txt", c.entry.prompt.encode()),
                (f"{key}.json", json.dumps(_metadata(c, key), sort_keys=True).encode()),
            ]
            if c.entry.image_path is not None:
                image = c.entry.image_path.read_bytes()
                image_sha[c.entry.line] = hashlib.sha256(image).hexdigest()
                members.append((f"{key}{c.entry.image_path.suffix.lower()}", image))
            for name, data in members:
                tar.addfile(*_member(name, data))
    return image_sha


def _member_refs(path: Path) -> dict[str, MemberRef]:
    with tarfile.open(path) as tar:
        return {m.name: MemberRef(name=m.name, offset=m.offset_data, size=m.size) for m in tar.getmembers()}


def _reject_order(r: Reject) -> tuple[str, int, str]:
    """videos.txt:9 before videos.txt:10."""
    name, _, line = r.where.rpartition(":")
    return (name, int(line), "") if line.isdigit() else (r.where, 0, "")


def format_rejects(rejects: list[Reject]) -> str:
    return "\n".join(f"  {r.where}: {r.reason}" for r in rejects)


def pack(
    src: Path,
    dest: str,
    options: PackOptions | None = None,
    s3: S3Options | None = None,
    progress: Progress | None = None,
    store: Store | None = None,
) -> PackReport:
    options = options or PackOptions()
    listing = read_source(src)
    store = store or open_store(dest, s3)
    store.check_access(write=True)  # refused keys or a missing bucket fail here, before any work

    probes = _probe_all(listing.entries, options, progress)
    rejects = list(listing.rejects)
    good: list[_Checked] = []
    for entry, probe in zip(listing.entries, probes, strict=True):
        if probe.reason:
            rejects.append(Reject(where=entry.video, reason=probe.reason))
        elif probe.image_reason:
            rejects.append(Reject(where=entry.image or "?", reason=probe.image_reason))
        else:
            good.append(_Checked(entry, probe))
    rejects.sort(key=_reject_order)

    if options.strict and rejects:
        raise PackError(
            f"{len(rejects)} input(s) rejected and --strict is set; nothing was written:\n{format_rejects(rejects)}"
        )
    if not good:
        detail = f":\n{format_rejects(rejects)}" if rejects else ""
        raise PackError(f"{src}: no usable clips; nothing was written{detail}")

    uploaded: list[str] = []
    skipped: list[str] = []
    shard_records: list[ShardRecord] = []
    samples: list[SampleRecord] = []
    plan = _plan_shards(good, options.shard_bytes)
    task = progress.add_task("writing shards", total=len(plan)) if progress else None
    with tempfile.TemporaryDirectory(prefix="disney-pack-") as tmp:
        for index, clips in enumerate(plan):
            local = Path(tmp) / f"shard-{index:06d}.tar"
            image_sha = _write_shard(local, clips)
            digest = sha256_file(local)
            key = shard_key(index, digest)
            size = local.stat().st_size
            if store.stored_sha256(key) == digest:
                skipped.append(key)
            else:
                store.write_file(key, local, digest)
                uploaded.append(key)
            refs = _member_refs(local)
            local.unlink()
            for c in clips:
                k = sample_key(c.entry.line)
                vid = refs[f"{k}{c.entry.video_path.suffix.lower() or '.mp4'}"]
                img = refs[f"{k}{c.entry.image_path.suffix.lower()}"] if c.entry.image_path else None
                assert c.probe.clip is not None
                samples.append(
                    SampleRecord(
                        key=k,
                        line=c.entry.line,
                        source=c.entry.video,
                        prompt=c.entry.prompt,
                        sha256=c.probe.sha256,
                        bytes=c.probe.size,
                        clip=c.probe.clip,
                        shard=index,
                        video=vid,
                        image=img,
                        image_source=c.entry.image,
                        image_sha256=image_sha.get(c.entry.line),
                    )
                )
            shard_records.append(ShardRecord(index=index, key=key, sha256=digest, bytes=size, samples=len(clips)))
            if progress and task is not None:
                progress.advance(task)

    manifest = Manifest(
        tool_version=__version__,
        source=str(listing.root),
        prompt_file=listing.prompt_file,
        shard_target_bytes=options.shard_bytes,
        min_frames=options.min_frames,
        has_images=listing.has_images,
        shards=shard_records,
        samples=samples,
        rejects=rejects,
        totals=Totals(
            clips=len(samples),
            frames=sum(s.clip.frames for s in samples),
            seconds=round(sum(s.clip.duration for s in samples), 3),
            bytes=sum(s.bytes for s in shard_records),
            shards=len(shard_records),
            rejects=len(rejects),
        ),
    )
    store.write_bytes(MANIFEST_KEY, manifest.to_json())  # last: it commits the dataset
    referenced = {s.key for s in shard_records}
    stale = [k for k in store.list_keys(f"{SHARD_DIR}/") if k.endswith(".tar") and k not in referenced]
    return PackReport(manifest=manifest, dest=store.uri, uploaded=uploaded, skipped=skipped, stale=stale)


def load_manifest(uri: str, s3: S3Options | None = None, store: Store | None = None) -> Manifest:
    store = store or open_store(uri, s3)
    if not store.exists(MANIFEST_KEY):
        raise PackError(
            f"{store.url(MANIFEST_KEY)}: no manifest; this is not a packed dataset, or its pack did not "
            "finish (re-run `disney-train data pack`, which resumes)"
        )
    return Manifest.from_json(store.read_bytes(MANIFEST_KEY), store.url(MANIFEST_KEY))
