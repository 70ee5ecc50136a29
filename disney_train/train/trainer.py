"""One worker's training, in named phases (as finetrainers' trainer and torchtitan's `Trainer.train()`):

    prepare_data   the latent cache stage (every rank encodes its share), or the per-step encoder
    load           the transformer with its LoRA, the reader of this rank's share
    resume         the newest usable checkpoint, the DeepSpeed engine at its step, the start recorded
    train          optimizer steps; after each one `maybe_report`, `maybe_checkpoint`, `maybe_validate`
                   decide for themselves whether it is their turn
    finish         the last report and checkpoint, the final LoRA, the end validation, `finished.json`

Each phase's wall time is logged by rank 0 (`phase train: 2.15 s`).

`worker.train_loop` (the Ray entry point) sets up the process group and runs `Trainer.run`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from disney_train.config import RunConfig, dump_config
from disney_train.metrics.exporter import WorkerMetrics
from disney_train.model.base import ModelSpec
from disney_train.runs import RunFiles, checkpoint_identity_error
from disney_train.storage import open_store
from disney_train.train import chaos, zero_state
from disney_train.train.cache import ensure_cache
from disney_train.train.checkpoint import Checkpoint, CheckpointStore
from disney_train.train.dist import Dist
from disney_train.train.engine import Placement, deepspeed_config
from disney_train.train.ray_reports import RayReports
from disney_train.train.schedule import lr_factor, run_progress, steps_per_epoch
from disney_train.train.validation import validate

log = logging.getLogger("disney_train.worker")

Encode = Callable[[dict[str, Any], tuple[int, ...]], dict[str, Any]]


@dataclass
class Window:
    """Per-rank figures since the last report."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    data_seconds: float = 0.0
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class StepFigures:
    """One optimizer step's figures, over its micro-batches."""

    losses: list[float] = field(default_factory=list)
    wait: float = 0.0
    compute: float = 0.0
    samples: int = 0


class Trainer:
    def __init__(
        self, cfg: RunConfig, dist: Dist, place: Placement, metrics: WorkerMetrics, chaos_spec: str | None = None
    ) -> None:
        from disney_train.model.source import resolve_model
        from disney_train.model.spec import run_spec

        self.cfg, self.dist, self.place, self.metrics, self.chaos_spec = cfg, dist, place, metrics, chaos_spec
        self.device = torch.device(f"cuda:{dist.local_rank}" if place.device == "cuda" else "cpu")
        if place.device == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[place.precision]
        self.model_path: Path = resolve_model(cfg.model.uri, cfg.s3)
        self.spec = run_spec(cfg, self.model_path)  # checks the folder holds a model of cfg.model.variant
        self.files = RunFiles(cfg)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.built = 0  # cache entries this start built
        self.restarts = 0

    def run(self, cache_only: bool = False) -> None:
        with self._timed("prepare_data"):
            source, encode = self.prepare_data(cache_only)
        if cache_only:
            return
        with self._timed("load"):
            self.load(source)
        with self._timed("resume"):
            self.resume()
        with self._timed("train"):
            self.train(encode)
        with self._timed("finish"):
            self.finish()

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """The phase's wall time in the worker's log (rank 0): where a start or an end spends its time."""
        t0 = time.perf_counter()
        yield
        if self.dist.rank == 0:
            log.info("phase %s: %.2f s", phase, time.perf_counter() - t0)

    # ----------------------------------------------------------------------- phases

    def prepare_data(self, cache_only: bool) -> tuple[Any, Encode | None]:
        """The cached entries' dataset (building what is missing), or None and the per-step encoder."""
        from disney_train.train.cache import CachedClipDataset

        self.data_store = open_store(self.cfg.data.uri, self.cfg.s3)
        if not (self.cfg.train.use_cache or cache_only):  # the reference trainers' way: encode every step
            return None, step_encoder(self.model_path, self.spec, self.device, self.dtype)
        self.metrics.set_stage("caching")
        cs, manifest, self.data_store, self.built = ensure_cache(
            self.cfg, self.model_path, self.spec, self.dist, self.device, self.dtype
        )
        return (None if cache_only else CachedClipDataset(cs, manifest, self.cfg)), None

    def load(self, source: Any) -> None:
        """The transformer with a LoRA (initialised the same on every rank and every start), and the reader."""
        from disney_train.data.reader import TrainingClips
        from disney_train.model.load import load_transformer
        from disney_train.model.lora import add_lora

        self.metrics.set_stage("loading")
        transformer = load_transformer(self.model_path, self.dtype, self.device, part=self.spec.transformer_part)
        if self.cfg.train.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        torch.manual_seed(self.cfg.seed)  # LoRA A's initialisation
        self.transformer, self.params = transformer, add_lora(transformer, self.cfg.lora)
        self.reader = TrainingClips(
            self.cfg.data,
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            with_image=self.spec.wants_image,
            batch_size=self.cfg.optim.batch_size,
            even_ranks=True,
            store=self.data_store,
            source=source,
        )
        self.ckpts = CheckpointStore(self.files.store, self.cfg.train.keep_checkpoints)

    def resume(self) -> None:
        """The newest usable checkpoint (if any), the engine at its step, then this start recorded."""
        resumed = latest_usable(self.ckpts, self.cfg)
        o = self.cfg.optim
        per_epoch = steps_per_epoch(
            self.reader.num_samples, self.dist.world_size, o.batch_size, o.gradient_accumulation_steps
        )
        done_epochs = int(resumed.state["reader"]["epoch"]) if resumed else 0
        # for the progress bar: the run's length in steps at this world size
        self.horizon = o.max_steps or (resumed.step if resumed else 0) + per_epoch * max(0, o.epochs - done_epochs)
        self.step = resumed.step if resumed else 0
        self._start_engine()
        if resumed is not None:
            self._restore(resumed)
        self.saved = resumed.step if resumed is not None else -1  # the newest committed checkpoint's step
        self.last_ckpt: str | None = self.ckpts.url(self.step) if resumed is not None else None
        self._announce()

    def train(self, encode: Encode | None) -> None:
        """Optimizer steps until the run is done; after each, report, checkpoint and validate when due."""
        self.engine.train()
        self.ray_reports = RayReports()
        self.metrics.set_stage("training")
        self.window, figures, micro = Window(), StepFigures(), 0
        self.t_data = time.perf_counter()
        for batch in self._batches():
            figures.wait += time.perf_counter() - self.t_data
            self._micro_step(batch, micro, encode, figures)
            micro += 1
            self.t_data = time.perf_counter()
            if micro < self.cfg.optim.gradient_accumulation_steps:
                continue
            self._stepped(figures)
            micro, figures = 0, StepFigures()
            finished = self.done()
            self.maybe_report(finished)
            if finished:
                break
            self.maybe_checkpoint()
            self.maybe_validate()
            self.t_data = time.perf_counter()

    def finish(self) -> None:
        self.metrics.set_stage("finishing")
        if self.window.losses and (not self.history or self.history[-1]["step"] != self.step):
            self._report_window()
        self.last_ckpt = self.save_checkpoint()
        weights = zero_state.gather_weights(self.params)
        if self.dist.rank == 0:
            lora = self._lora_file(weights)
            self.files.write_final(lora, dump_config(self.cfg))
        if self.cfg.validation.at_end:
            self._validate()
        if self.dist.rank == 0:
            self.files.finish(self.step, self._progress("finished"))
        self.ray_reports.close()
        self.engine.destroy()

    # ----------------------------------------------------------------------- what each step may do

    def maybe_report(self, finished: bool) -> None:
        """Every `report_every` steps (the last step's report is the finish's): the history, the log, progress."""
        if self.step % self.cfg.train.report_every or finished:
            return
        record = self._report_window()
        if self.dist.rank == 0:
            log.info("step %d/%d loss %.4f lr %.2e", self.step, self.horizon, record["loss"], record["learning_rate"])
            self._write_progress()

    def maybe_checkpoint(self) -> None:
        if self.step % self.cfg.train.checkpoint_every == 0:
            self.last_ckpt = self.save_checkpoint()

    def maybe_validate(self) -> None:
        every = self.cfg.validation.every
        if every and self.step % every == 0:
            self._validate()

    def done(self) -> bool:
        o = self.cfg.optim
        if o.max_steps is not None:
            return self.step >= o.max_steps
        return int(self.reader.state_dict()["epoch"]) >= o.epochs  # the reader moves on at an epoch's last batch

    def save_checkpoint(self) -> str | None:
        """Collective; rank 0 writes. A step already committed (a restart right after the last checkpoint) is
        not written again."""
        if self.saved == self.step:
            return self.ckpts.url(self.step)
        with self.metrics.stage("checkpointing"):
            t0 = time.perf_counter()
            uri = self._write_checkpoint()
            saved_bytes = self.ckpts.last_saved_bytes if self.dist.rank == 0 else None
            self.metrics.checkpoint(time.perf_counter() - t0, saved_bytes)
            return uri

    # ----------------------------------------------------------------------- the parts

    def _start_engine(self) -> None:
        """DeepSpeed over the LoRA parameters; the LR schedule reads `self.position`, set before each
        optimizer step."""
        import deepspeed

        o = self.cfg.optim
        self.position = {"step": self.step, "progress": 0.0}

        def factor(_: int) -> float:
            return lr_factor(int(self.position["step"]), o.warmup_steps, self.position["progress"], o.lr_schedule)

        conf = deepspeed_config(self.cfg, self.place)
        self.engine, _, _, self.lr_sched = deepspeed.initialize(
            model=self.transformer,
            model_parameters=[p for _, p in self.params],
            config=conf,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        )
        if self.dist.rank == 0:  # the wrapper chosen (at world size 1, ZeRO-0 measured no faster than 2)
            log.info(
                "DeepSpeed ZeRO stage %d at world size %d: %s, %s, %s",
                conf["zero_optimization"]["stage"],
                self.dist.world_size,
                self.place.device,
                self.place.precision,
                "torch AdamW" if conf["optimizer"]["params"]["torch_adam"] else "DeepSpeed Adam",
            )

    def _restore(self, resumed: Checkpoint) -> None:
        from disney_train.model.lora import peft_key, read_lora_file

        self.reader.load_state_dict(resumed.state["reader"])
        by_key = read_lora_file(resumed.lora_file)
        weights = {name: by_key[peft_key(name)] for name, _ in self.params if peft_key(name) in by_key}
        optimizer = {"moments": resumed.optimizer, "meta": resumed.state["optimizer"]}
        zero_state.restore(self.engine, self.params, weights, optimizer, resumed.state["lr_scheduler"])
        self.history = list(resumed.state.get("metrics", []))
        if self.dist.rank == 0:
            was = resumed.state.get("world_size")
            log.info(
                "resumed %s at step %d (world size %d, was %s)",
                self.ckpts.url(self.step),
                self.step,
                self.dist.world_size,
                was,
            )

    def _announce(self) -> None:
        """This start counted (once it is known to resume this run) and the worker's metrics started."""
        start = record_start(self.cfg, self.dist)
        self.restarts = max(0, int(start.get("starts", 1)) - 1)
        if start:
            self.metrics.record_starts(self.restarts, int(start["resizes"]))
        info = {
            "model": self.cfg.model.uri,
            "variant": self.spec.name,
            "device": self.place.device,
            "precision": self.place.precision,
            "zero_stage": str(self.cfg.train.zero_stage),
        }
        self.metrics.started(info=info, world_size=self.dist.world_size, step=self.step)

    def _batches(self) -> Iterator[dict[str, Any]]:
        while not self.done():
            yield from self.reader

    def _micro_step(self, batch: dict[str, Any], micro: int, encode: Encode | None, figures: StepFigures) -> None:
        """Forward and backward of one micro-batch; the engine steps the optimizer at the accumulation's end."""
        from disney_train.train.objective import diffusion_loss, step_generator

        t0 = time.perf_counter()
        where = (self.cfg.seed, self.step, self.dist.rank, micro)
        gen = step_generator(*where)
        if encode is not None:
            batch = encode(batch, where)
        loss = diffusion_loss(self.engine, self.spec, batch, gen, self.device, self.dtype)
        self.engine.backward(loss)
        rs, o = self.reader.state_dict(), self.cfg.optim
        self.position["step"] = self.step + 1  # the scheduler steps after this optimizer step: set the next
        self.position["progress"] = run_progress(
            self.step + 1, o.max_steps, rs["epoch"], rs["consumed"], self.reader.num_samples, o.epochs
        )
        self.engine.step()
        figures.losses.append(float(loss.detach()))
        figures.samples += len(batch["key"])
        figures.compute += time.perf_counter() - t0

    def _stepped(self, figures: StepFigures) -> None:
        """An optimizer step done: its figures into the window and the worker's metrics."""
        self.step += 1
        self.window.losses.extend(figures.losses)
        self.window.samples += figures.samples
        self.window.step_seconds.append(figures.compute)
        self.window.data_seconds += figures.wait
        grad_norm = self.engine.get_global_grad_norm()
        self.metrics.optimizer_step(
            step=self.step,
            epoch=int(self.reader.state_dict()["epoch"]),
            loss=sum(figures.losses) / len(figures.losses),
            learning_rate=float(self.lr_sched.get_last_lr()[0]),
            grad_norm=None if grad_norm is None else float(grad_norm),
            compute_seconds=figures.compute,
            wait_seconds=figures.wait,
            samples=figures.samples,
            frames=figures.samples * self.cfg.data.num_frames,
        )
        chaos.after_step(self.step, self.dist.rank, self.chaos_spec)

    def _report_window(self) -> dict[str, Any]:
        record = window_record(
            self.step, self.reader, self.window, self.engine, self.lr_sched, self.dist, self.built, self.restarts
        )
        self.history.append(record)
        self.window = Window()
        return record

    def _lora_file(self, weights: dict[str, torch.Tensor]) -> bytes:
        from disney_train.model.lora import spec_lora_file

        return spec_lora_file(weights, self.cfg.lora, self.spec)

    def _write_checkpoint(self) -> str | None:
        weights, optimizer = zero_state.gather(self.engine, self.params)
        uri = None
        if self.dist.rank == 0:
            state = {
                "step": self.step,
                "reader": self.reader.state_dict(),
                "lr_scheduler": self.lr_sched.state_dict(),
                "optimizer": optimizer["meta"],
                "world_size": self.dist.world_size,
                "restarts": self.restarts,
                "rng": {
                    "scheme": "per-step generator seeded by (seed, step, rank, micro-batch)",
                    "seed": self.cfg.seed,
                },
                "metrics": self.history,
            }
            lora = self._lora_file(weights)
            uri = self.ckpts.save(Checkpoint(self.step, lora, optimizer["moments"], state, dump_config(self.cfg)))
            self.last_ckpt = uri
            self._write_progress()
        self.saved = self.step
        self.dist.barrier()
        self.ray_reports.submit(self.history[-1] if self.history else {"step": self.step})  # Ray's, not ours
        return uri

    def _write_progress(self) -> None:
        """Progress is for watchers: a failed write (after the store's retries) is logged and counted, not fatal."""
        try:
            self.files.write_progress(self._progress("running"))
        except Exception as err:
            self.metrics.progress_write_failed()
            log.warning("progress not written: %s", err)

    def _progress(self, phase: str) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "phase": phase,
            "step": self.step,
            "horizon": self.horizon,
            "epoch": self.reader.state_dict()["epoch"],
            "loss": last.get("loss"),
            "world_size": self.dist.world_size,
            "last_checkpoint": self.last_ckpt,
            "last_checkpoint_time": time.time() if self.last_ckpt else None,
            "updated": time.time(),
        }

    def _validate(self) -> None:
        with self.metrics.stage("validating"):
            validate(self.cfg, self.model_path, self.spec, self.files, self.step, self.params, self.dist, self.place)


def record_start(cfg: RunConfig, dist: Dist) -> dict[str, Any]:
    """Rank 0 counts this start of the worker group in the run's files; every rank gets the record.
    A failed write costs the figures, never the run."""
    record: dict[str, Any] | None = None
    if dist.rank == 0:
        try:
            record = RunFiles(cfg).record_start(dist.world_size)
        except Exception as err:
            log.warning("start of the worker group not recorded: %s", err)
            record = {}
    shared = dist.from_rank0(record)
    return dict(shared or {})


def latest_usable(ckpts: CheckpointStore, cfg: RunConfig) -> Checkpoint | None:
    """The newest committed checkpoint that loads and fits this run; a damaged one is skipped
    (with a warning) for the one before it, rather than failing every restart. One S3 cannot serve
    now is not skipped (the start fails and is retried): the next save would prune it as a left timeline."""
    from disney_train.train.checkpoint import CheckpointDamaged, CheckpointError, config_of

    for step in reversed(ckpts.committed()):
        try:
            ckpt = ckpts.load(step)
        except CheckpointDamaged as err:
            log.warning("skipping checkpoint: %s", err)
            continue
        refusal = checkpoint_identity_error(ckpts.url(step), config_of(ckpt.config_yaml), cfg)
        if refusal is not None:
            raise CheckpointError(refusal)
        return ckpt
    return None


def step_encoder(model_path: Path, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> Encode:
    """Without the cache: the frozen VAE and T5 run on every batch (what the cache saves); the image
    noise of i2v is drawn afresh at every step, seeded by (seed, step, rank, micro-batch) and clip."""
    from disney_train.model.spec import frozen_encoders

    enc = frozen_encoders(model_path, dtype, device, spec)
    fresh = replace(spec, image=replace(spec.image, draws=1))

    def encode(batch: dict[str, Any], where: tuple[int, ...]) -> dict[str, Any]:
        seeds = [(*where, key) for key in batch["key"]]
        return {"key": batch["key"], **fresh.encode(enc, batch, device, seeds)}

    return encode


def window_record(
    step: int, reader: Any, w: Window, engine: Any, lr_sched: Any, dist: Dist, cached: int, restarts: int
) -> dict[str, Any]:
    """The figures of a window of `report_every` steps, as the run's history keeps them: means over the ranks
    (Ray Train is told the last one at each checkpoint, see `ray_reports`)."""
    elapsed = max(1e-9, time.perf_counter() - w.started)
    local_loss = sum(w.losses) / max(1, len(w.losses))
    loss = dist.mean(local_loss)
    samples = dist.mean(float(w.samples)) * dist.world_size
    grad_norm = engine.get_global_grad_norm()
    return {
        "step": step,
        "epoch": reader.state_dict()["epoch"],
        "loss": loss,
        "loss_rank": local_loss,
        "learning_rate": float(lr_sched.get_last_lr()[0]),
        "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
        "step_seconds": sum(w.step_seconds) / max(1, len(w.step_seconds)),
        "data_wait_seconds": w.data_seconds / max(1, len(w.step_seconds)),
        "samples_per_second": samples / elapsed,
        "world_size": dist.world_size,
        "restarts": restarts,
        "cache_entries_built": cached,
        "time": time.time(),
    }
