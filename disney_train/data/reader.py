"""Training input: clips from a packed dataset, decoded in parallel, resumable to the sample.

Why this reader and not webdataset / mosaicml-streaming / litdata / Ray Data (facts measured on
this machine, see the README): we need exact mid-epoch resume, loud failure on a bad shard and no
silently short epoch, over plain-HTTP S3 endpoints, without torchvision. None of them gives all of
that over WebDataset tar shards. The manifest already says where every clip lies in its shard, so
a clip is one ranged GET (retried by `disney_train.storage`), decoded by a torch `DataLoader`'s
worker processes, and the whole order of an epoch is a pure function of (seed, epoch):

- order(epoch): a permutation of all clips, seeded by (seed, epoch) (or the packed order);
- rank r of W takes order[consumed + r :: W]: disjoint across ranks, balanced to one clip;
- the state is {epoch, consumed}: how much of the epoch's order the ranks, which step in
  lockstep, have taken together. It does not depend on W, so a run resumed with another number of
  workers still sees every remaining clip exactly once.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from disney_train.config import DataConfig, S3Options
from disney_train.data.frames import centre_crop_box, clip_rng, frame_indices
from disney_train.data.manifest import Manifest, SampleRecord
from disney_train.data.pack import PackError, load_manifest
from disney_train.errors import UserError
from disney_train.storage import StorageError, Store, open_store


class DataError(UserError, RuntimeError):
    """The dataset cannot give what the run asks for; the message says which clips and why."""


class ShardReadError(DataError):
    """A clip could not be read from its shard even after retries; the message names the shard."""


Sample = dict[str, Any]


@dataclass(frozen=True)
class ReaderState:
    epoch: int = 0
    consumed: int = 0


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch, 0xC11F]).permutation(num_samples)


def rank_slice(order: np.ndarray, consumed: int, rank: int, world_size: int) -> list[int]:
    return [int(i) for i in order[consumed + rank :: world_size]]


def _normalised(u8: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1].

    In a DataLoader worker the result is written straight into shared memory, which is where the
    DataLoader would otherwise copy it (a 49x480x720 clip is 203 MB of float32)."""
    src = torch.from_numpy(u8).movedim(-1, -3)
    out = torch.empty(src.shape, dtype=torch.float32)
    if get_worker_info() is not None:
        out.share_memory_()  # type: ignore[no-untyped-call]
    return out.copy_(src).div_(127.5).sub_(1.0)


def training_prompt(cfg: DataConfig, prompt: str) -> str:
    """The prompt as trained: the optional id token, then a space, then the clip's prompt."""
    return f"{cfg.id_token} {prompt}" if cfg.id_token else prompt


def decode_video(
    data: bytes,
    rec: SampleRecord,
    cfg: DataConfig,
    rng: np.random.Generator,
    threads: int = 1,
    from_start: bool = False,
) -> tuple[torch.Tensor, list[int], float]:
    """mp4 bytes -> float tensor [F, 3, H, W] in [-1, 1] (see `disney_train.data.frames`).

    PyAV decodes every frame up to the last one needed (inter-frame coding needs them) but crops,
    scales and converts to RGB only the frames taken: per clip it was faster here than decord
    scaling every decoded frame (bench/data_throughput.py)."""

    idx, fps = frame_indices(rec.clip.frames, rec.clip.fps, cfg.num_frames, cfg.fps, rng, from_start)
    box = centre_crop_box(rec.clip.width, rec.clip.height, cfg.width, cfg.height)
    frames = np.empty((len(idx), cfg.height, cfg.width, 3), dtype=np.uint8)
    want = {i: k for k, i in enumerate(idx)}
    filled = 0
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads …
        stream.codec_context.thread_count = threads  # … as many as this worker's share of the CPUs
        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(template=stream),
            graph.add("crop", f"{box.width}:{box.height}:{box.left}:{box.top}"),
            graph.add("scale", f"{cfg.width}:{cfg.height}:flags=area"),
            graph.add("format", "rgb24"),
            graph.add("buffersink"),
        ]
        for a, b in itertools.pairwise(chain):
            a.link_to(b)
        graph.configure()
        for i, frame in enumerate(container.decode(stream)):
            if i in want:
                graph.push(frame)
                frames[want[i]] = graph.vpull().to_ndarray()
                filled += 1
            if i >= idx[-1]:
                break
    if filled != len(idx):
        raise DataError(f"clip {rec.key} ({rec.source}) decoded to fewer frames than its manifest's {rec.clip.frames}")
    return _normalised(frames), idx, fps


def decode_image(data: bytes, cfg: DataConfig) -> torch.Tensor:
    """Image bytes -> float tensor [3, H, W] in [-1, 1], cropped and scaled like the video."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        b = centre_crop_box(rgb.width, rgb.height, cfg.width, cfg.height)
        rgb = rgb.resize(
            (cfg.width, cfg.height), Image.Resampling.BOX, box=(b.left, b.top, b.left + b.width, b.top + b.height)
        )
        arr = np.asarray(rgb, dtype=np.uint8)
    return _normalised(arr.copy())


class ClipDataset(Dataset[Sample]):
    """Map-style: index i is manifest sample i, for one epoch (the epoch seeds frame sampling)."""

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        cfg: DataConfig,
        *,
        seed: int,
        epoch: int,
        with_image: bool,
        decode_threads: int = 1,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.cfg = cfg
        self.seed = seed
        self.epoch = epoch
        self.with_image = with_image
        self.decode_threads = decode_threads

    def __len__(self) -> int:
        return len(self.manifest.samples)

    def _read(self, rec: SampleRecord, offset: int, size: int, sha256: str | None) -> bytes:
        shard = self.manifest.shards[rec.shard].key
        try:
            data = self.store.read_range(shard, offset, size)
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                data = self.store.read_range(shard, offset, size)  # one more read before calling it corrupt
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise StorageError(f"{self.store.url(shard)}: clip {rec.key} does not match its sha256")
        except StorageError as err:
            raise ShardReadError(
                f"cannot read clip {rec.key} ({rec.source}) from shard {self.store.url(shard)}: {err}"
            ) from None
        return data

    def __getitem__(self, i: int) -> Sample:
        rec = self.manifest.samples[i]
        data = self._read(rec, rec.video.offset, rec.video.size, rec.sha256)
        try:
            # a packed image is the video's first frame: the window starts there (see data.frames)
            from_start = self.with_image and rec.image is not None
            video, idx, fps = decode_video(
                data, rec, self.cfg, clip_rng(self.seed, self.epoch, rec.line), self.decode_threads, from_start
            )
        except (av.error.FFmpegError, ValueError) as err:
            shard = self.store.url(self.manifest.shards[rec.shard].key)
            raise DataError(f"clip {rec.key} ({rec.source}) in shard {shard} does not decode: {err}") from None
        prompt = training_prompt(self.cfg, rec.prompt)
        sample: Sample = {"key": rec.key, "prompt": prompt, "video": video, "fps": fps, "frame_indices": idx}
        if self.with_image:
            if rec.image is not None:
                sample["image"] = decode_image(
                    self._read(rec, rec.image.offset, rec.image.size, rec.image_sha256), self.cfg
                )
            else:
                sample["image"] = video[0].clone()
        return sample


PREFETCH = 2  # items read ahead of the step


def read_ahead(dataset: Dataset[Sample], indices: list[int], batch_size: int | None, depth: int) -> Iterator[Sample]:
    """`dataset[i]` for `indices` in order, `depth` reads ahead on a thread; batched and collated as a
    DataLoader with `batch_size` would (None: the items themselves). A read's error is raised where its
    item would have come."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from torch.utils.data import default_collate

    step = batch_size or 1
    groups = iter([indices[k : k + step] for k in range(0, len(indices), step)])

    def read(group: list[int]) -> Sample:
        items = [dataset[i] for i in group]
        collated: Sample = items[0] if batch_size is None else default_collate(items)
        return collated

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending: deque[Future[Sample]] = deque(pool.submit(read, g) for g in itertools.islice(groups, depth))
        try:
            while pending:
                head = pending.popleft()
                if (group := next(groups, None)) is not None:
                    pending.append(pool.submit(read, group))
                yield head.result()
        finally:  # the consumer stopped early: the reads not started are not made
            for f in pending:
                f.cancel()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class TrainingClips:
    """The clips one rank trains on, epoch after epoch, resumable from `state_dict()`.

    Iterating yields the rest of the current epoch (one sample, or a batch when `batch_size` is
    set), then moves the state to the next epoch. It raises rather than end an epoch short.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        with_image: bool = False,
        batch_size: int | None = None,
        even_ranks: bool = False,
        s3: S3Options | None = None,
        store: Store | None = None,
        source: Dataset[Sample] | None = None,
    ) -> None:
        """`source`: read index i from this dataset instead of decoding clip i (the latent cache).

        `even_ranks`: every rank gets the same number of clips (what lockstep data-parallel
        training needs); the len % world_size clips at the end of each epoch's order, different
        ones every epoch, wait for the next. Off, the ranks' clips make up exactly the epoch."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.cfg = cfg
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.even_ranks = even_ranks
        self.with_image = with_image
        self.store = store or open_store(cfg.uri, s3)
        try:
            self.manifest = load_manifest(cfg.uri, store=self.store)
        except (StorageError, PackError, ValueError) as err:
            raise DataError(str(err)) from None
        short = [s for s in self.manifest.samples if s.clip.frames < cfg.num_frames]
        if short:
            names = ", ".join(f"{s.source} ({s.clip.frames})" for s in short[:10])
            raise DataError(
                f"{cfg.uri}: {len(short)} clip(s) have fewer than data.num_frames={cfg.num_frames} frames: "
                f"{names}{' …' if len(short) > 10 else ''}. Re-pack with --min-frames {cfg.num_frames} "
                "to leave them out, or lower data.num_frames."
            )
        if not self.manifest.samples:
            raise DataError(f"{cfg.uri}: the dataset has no clips")
        self.dataset_digest = hashlib.sha256(self.manifest.to_json()).hexdigest()[:16]
        self.source = source
        self._state = ReaderState()

    @property
    def num_samples(self) -> int:
        return len(self.manifest.samples)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._state.epoch,
            "consumed": self._state.consumed,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "shuffle": self.cfg.shuffle,
            "dataset": self.dataset_digest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; refused when the state belongs to another order (dataset, seed or shuffle)."""
        mine = self.state_dict()
        for field in ("dataset", "num_samples", "seed", "shuffle"):
            if state.get(field) != mine[field]:
                raise DataError(
                    f"reader state is for {field}={state.get(field)!r}, this reader has {field}={mine[field]!r}: "
                    "resuming would skip or repeat clips (was the dataset re-packed, or the seed changed?)"
                )
        consumed = int(state["consumed"])
        if not 0 <= consumed <= self.num_samples:
            raise DataError(f"reader state consumed={consumed} is outside 0..{self.num_samples}")
        self._state = ReaderState(int(state["epoch"]), consumed)

    def indices(self) -> list[int]:
        """Manifest indices this rank still reads in the current epoch, in order."""
        st = self._state
        order = epoch_order(self.num_samples, self.seed, st.epoch, self.cfg.shuffle)
        if self.even_ranks:
            # cut what is left of the epoch, not the whole order: after a resize mid-epoch the
            # clips taken so far are a multiple of the old world size, not of this one
            rest = order[st.consumed :]
            rest = rest[: len(rest) - len(rest) % self.world_size]
            return [int(i) for i in rest[self.rank :: self.world_size]]
        return rank_slice(order, st.consumed, self.rank, self.world_size)

    def __len__(self) -> int:
        n = len(self.indices())
        return n if self.batch_size is None else -(-n // self.batch_size)

    def _items(self, indices: list[int], epoch: int) -> Iterator[Sample]:
        """This epoch's items (batches when batch_size is set): a cached source's entries read ahead by a
        thread in this process (one GET and a tensor load each: a DataLoader worker process, started anew
        every epoch, cost more than the read); clips decoded by DataLoader worker processes."""
        if self.source is not None:
            return read_ahead(self.source, indices, self.batch_size, depth=PREFETCH)
        workers = self.cfg.decode_workers
        dataset = ClipDataset(
            self.store,
            self.manifest,
            self.cfg,
            seed=self.seed,
            epoch=epoch,
            with_image=self.with_image,
            decode_threads=max(1, len(os.sched_getaffinity(0)) // max(1, workers)),
        )
        loader: DataLoader[Sample] = DataLoader(
            dataset,
            sampler=indices,
            batch_size=self.batch_size,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=PREFETCH if workers else None,
        )
        return iter(loader)

    def __iter__(self) -> Iterator[Sample]:
        st = self._state
        indices = self.indices()
        taken = 0
        for item in self._items(indices, st.epoch):
            taken += len(item["key"]) if self.batch_size is not None else 1
            if taken >= len(indices):  # the epoch's last item: the epoch is done once it is used
                self._state = ReaderState(st.epoch + 1, 0)
            else:
                self._state = ReaderState(st.epoch, min(self.num_samples, st.consumed + taken * self.world_size))
            yield item
        if taken != len(indices):
            raise DataError(f"epoch {st.epoch} ended after {taken} of {len(indices)} clips on rank {self.rank}")
        self._state = ReaderState(st.epoch + 1, 0)
