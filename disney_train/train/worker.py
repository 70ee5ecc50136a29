"""One Ray Train worker: cache stage, DeepSpeed ZeRO over the LoRA, checkpoints, validation.

Ray Train runs `train_loop` in every worker of the group with the process group already set up
(gloo on CPU, NCCL on GPU). On a restart (a failed worker, or the group resized by elastic
training) Ray calls it again in the new group and it resumes from the latest committed checkpoint
of the run, at whatever world size the new group has.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from disney_train.config import RunConfig, dump_config
from disney_train.metrics.worker import WorkerMetrics, cuda_reading
from disney_train.runs import RunFiles, checkpoint_identity_error
from disney_train.storage import open_store, read_uri
from disney_train.train import chaos, zero_state
from disney_train.train.checkpoint import Checkpoint, CheckpointStore
from disney_train.train.engine import (
    Placement,
    deepspeed_config,
    lr_factor,
    placement,
    run_progress,
    set_accelerator_env,
    steps_per_epoch,
)
from disney_train.train.zero_state import skip_shm_comm

if TYPE_CHECKING:
    from disney_train.model.spec import CogVideoXSpec

log = logging.getLogger("disney_train.worker")


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # NCCL reduces CUDA tensors only

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size


def _dist() -> Dist:
    import ray.train

    ctx = ray.train.get_context()
    return Dist(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank())


def _report(metrics: dict[str, Any]) -> None:
    import ray.train

    ray.train.report(metrics)


# --------------------------------------------------------------------------- cache stage


def _record_start(cfg: RunConfig, dist: Dist) -> dict[str, Any]:
    """Rank 0 counts this start of the worker group in the run's files; every rank gets the record.
    A failed write costs the figures, never the run."""
    record: list[Any] = [None]
    if dist.rank == 0:
        try:
            record[0] = RunFiles(cfg).record_start(dist.world_size)
        except Exception as err:
            log.warning("start of the worker group not recorded: %s", err)
            record[0] = {}
    if dist.world_size > 1:
        torch.distributed.broadcast_object_list(record, src=0, device=dist.device)  # NCCL: this rank's GPU
    return dict(record[0])


def _serve_metrics(cfg: RunConfig, dist: Dist, device: str) -> WorkerMetrics:
    """This worker's metrics, served on its Ray node's IP (the pod IP; 127.0.0.1 locally)."""
    import ray.util

    index = dist.local_rank
    metrics = WorkerMetrics(cfg.name, dist.rank, (lambda: cuda_reading(index)) if device == "cuda" else None)
    if cfg.metrics.port:
        metrics.serve(ray.util.get_node_ip_address(), cfg.metrics.port + dist.local_rank)  # type: ignore[no-untyped-call]
    return metrics


def ensure_cache(
    cfg: RunConfig, model_path: Any, spec: Any, dist: Dist, device: torch.device, dtype: torch.dtype
) -> Any:
    """Every worker encodes its share of the missing entries; all wait until the cache is complete."""
    from disney_train.data.pack import load_manifest
    from disney_train.model.spec import frozen_encoders
    from disney_train.train.cache import build_entries, cache_set, missing_entries

    data_store = open_store(cfg.data.uri, cfg.s3)
    manifest = load_manifest(cfg.data.uri, store=data_store)
    cs = cache_set(cfg, model_path, spec)
    dist.barrier()  # every rank lists the same state: none has written an entry yet
    missing = missing_entries(cs, manifest, cfg)
    mine = missing[dist.rank :: dist.world_size]
    if mine:
        t0 = time.perf_counter()
        enc = frozen_encoders(model_path, dtype, device)
        n = build_entries(cs, cfg, manifest, data_store, spec, enc, mine, device)
        log.info("rank %d cached %d clip(s) in %.1f s into %s", dist.rank, n, time.perf_counter() - t0, cs.uri)
        del enc
    dist.barrier()
    still = missing_entries(cs, manifest, cfg) if missing else []
    if still:
        raise RuntimeError(f"latent cache {cs.uri}: {len(still)} entr(ies) still missing after the cache stage")
    return cs, manifest, data_store, len(missing)


# --------------------------------------------------------------------------- the loop


@dataclass
class Window:
    """Per-rank figures since the last report."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    data_seconds: float = 0.0
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train loop (`disney-train train` and the operator's RayJob both end up here)."""
    cfg = RunConfig.model_validate(config["run"])
    cache_only = bool(config.get("cache_only"))
    chaos_spec = config.get("chaos")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dist = _dist()
    place = placement(cfg, torch.cuda.is_available())
    if place.device == "cuda":
        dist.device = torch.device(f"cuda:{dist.local_rank}")
    set_accelerator_env(place)
    import deepspeed

    if place.device == "cpu":
        skip_shm_comm()
    deepspeed.init_distributed(dist_backend=place.backend)  # Ray's process group is reused
    metrics = _serve_metrics(cfg, dist, place.device)
    try:
        # No clean-up on an error: the other ranks may be inside a collective that a barrier would
        # never match. The error ends this worker; Ray then tears the whole group down.
        _run(cfg, dist, place, cache_only, chaos_spec, metrics)
        shutdown(dist)
    finally:
        metrics.close()  # frees the port for this rank's next process


def shutdown(dist: Dist) -> None:
    """Free the engine, line the ranks up, then tear the process group down (an abrupt exit
    aborted a gloo thread about one run in eight)."""
    import gc

    gc.collect()
    if torch.distributed.is_initialized():
        try:
            dist.barrier()
        finally:
            torch.distributed.destroy_process_group()


def _run(
    cfg: RunConfig, dist: Dist, place: Placement, cache_only: bool, chaos_spec: str | None, metrics: WorkerMetrics
) -> None:
    import deepspeed

    from disney_train.data.reader import TrainingClips
    from disney_train.model.load import load_transformer
    from disney_train.model.lora import add_lora, lora_file_bytes, peft_key, read_lora_file
    from disney_train.model.source import resolve_model
    from disney_train.model.spec import run_spec
    from disney_train.train.cache import CachedClipDataset
    from disney_train.train.objective import diffusion_loss, step_generator

    device = torch.device(f"cuda:{dist.local_rank}" if place.device == "cuda" else "cpu")
    if place.device == "cuda":
        torch.cuda.set_device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[place.precision]
    model_path = resolve_model(cfg.model.uri, cfg.s3)
    spec = run_spec(cfg, model_path)  # checks the folder holds a model of cfg.model.variant
    files = RunFiles(cfg)
    data_store = open_store(cfg.data.uri, cfg.s3)
    encode: Callable[[dict[str, Any], tuple[int, ...]], dict[str, Any]] | None = None
    source = None
    built = 0
    if cfg.train.use_cache or cache_only:
        metrics.set_stage("caching")
        cs, manifest, data_store, built = ensure_cache(cfg, model_path, spec, dist, device, dtype)
        if cache_only:
            return
        source = CachedClipDataset(cs, manifest, cfg)
    else:  # the reference trainers' way: decode and encode every clip at every step
        encode = _step_encoder(model_path, spec, cfg.seed, device, dtype)
    metrics.set_stage("loading")

    transformer = load_transformer(model_path, dtype, device)
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    torch.manual_seed(cfg.seed)  # LoRA A's initialisation: the same on every rank and every start
    params = add_lora(transformer, cfg.lora)

    reader = TrainingClips(
        cfg.data,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        with_image=spec.wants_image,
        batch_size=cfg.optim.batch_size,
        even_ranks=True,
        store=data_store,
        source=source,
    )
    ckpts = CheckpointStore(files.store, cfg.train.keep_checkpoints)
    resumed = _latest_usable(ckpts, cfg)
    per_epoch = steps_per_epoch(
        reader.num_samples, dist.world_size, cfg.optim.batch_size, cfg.optim.gradient_accumulation_steps
    )
    o = cfg.optim
    # for the progress bar: the run's length in steps at this world size
    horizon = o.max_steps or (resumed.step if resumed else 0) + per_epoch * max(
        0, o.epochs - (int(resumed.state["reader"]["epoch"]) if resumed else 0)
    )
    # where the LR schedule is: set before each optimizer step, read by the scheduler's lambda
    position = {"step": resumed.step if resumed else 0, "progress": 0.0}
    engine, _, _, lr_sched = deepspeed.initialize(
        model=transformer,
        model_parameters=[p for _, p in params],
        config=deepspeed_config(cfg, place),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda _: lr_factor(int(position["step"]), o.warmup_steps, position["progress"], o.lr_schedule)
        ),
    )
    step = 0
    history: list[dict[str, Any]] = []
    if resumed is not None:
        step = resumed.step
        reader.load_state_dict(resumed.state["reader"])
        by_key = read_lora_file(resumed.lora_file)
        weights = {name: by_key[peft_key(name)] for name, _ in params if peft_key(name) in by_key}
        optimizer = {"moments": resumed.optimizer, "meta": resumed.state["optimizer"]}
        zero_state.restore(engine, params, weights, optimizer, resumed.state["lr_scheduler"])
        history = list(resumed.state.get("metrics", []))
        if dist.rank == 0:
            log.info(
                "resumed %s at step %d (world size %d, was %d)",
                ckpts.url(step),
                step,
                dist.world_size,
                resumed.state.get("world_size"),
            )
    # counted once this start is known to resume this run (a refused checkpoint above is no start of it)
    start = _record_start(cfg, dist)
    restarts = max(0, int(start.get("starts", 1)) - 1)
    if start:
        metrics.record_starts(restarts, int(start["resizes"]))
    metrics.started(
        info={
            "model": cfg.model.uri,
            "variant": spec.name,
            "device": place.device,
            "precision": place.precision,
            "zero_stage": str(cfg.train.zero_stage),
        },
        world_size=dist.world_size,
        step=step,
    )

    saved = resumed.step if resumed is not None else -1

    def save_checkpoint() -> str | None:
        """Collective; rank 0 writes. A step already committed (a restart right after the last
        checkpoint) is not written again."""
        nonlocal saved
        if saved == step:
            return ckpts.url(step)
        with metrics.stage("checkpointing"):
            t0 = time.perf_counter()
            uri = write_checkpoint()
            metrics.checkpoint(time.perf_counter() - t0, ckpts.last_saved_bytes if dist.rank == 0 else None)
            return uri

    def write_checkpoint() -> str | None:
        nonlocal saved
        weights, optimizer = zero_state.gather(engine, params)
        uri = None
        if dist.rank == 0:
            state = {
                "step": step,
                "reader": reader.state_dict(),
                "lr_scheduler": lr_sched.state_dict(),
                "optimizer": optimizer["meta"],
                "world_size": dist.world_size,
                "restarts": restarts,
                "rng": {"scheme": "per-step generator seeded by (seed, step, rank, micro-batch)", "seed": cfg.seed},
                "metrics": history,
            }
            lora = lora_file_bytes({peft_key(n): w for n, w in weights.items()}, cfg.lora)
            uri = ckpts.save(Checkpoint(step, lora, optimizer["moments"], state, dump_config(cfg)))
            _best_effort(
                files.write_progress,
                _progress(step, horizon, reader, history, uri, dist.world_size, "running"),
                metrics,
            )
        saved = step
        dist.barrier()
        return uri

    def done() -> bool:
        if o.max_steps is not None:
            return step >= o.max_steps
        return int(reader.state_dict()["epoch"]) >= o.epochs  # the reader moves on at an epoch's last batch

    def batches() -> Iterator[dict[str, Any]]:
        while not done():
            yield from reader

    window = Window()
    last_ckpt: str | None = ckpts.url(step) if resumed is not None else None
    micro = 0
    step_losses: list[float] = []
    step_wait = step_compute = 0.0
    step_samples = 0
    t_data = time.perf_counter()
    engine.train()
    metrics.set_stage("training")
    for batch in batches():
        waited = time.perf_counter() - t_data
        window.data_seconds += waited
        step_wait += waited
        t0 = time.perf_counter()
        gen = step_generator(cfg.seed, step, dist.rank, micro)
        if encode is not None:
            batch = encode(batch, (cfg.seed, step, dist.rank, micro))
        loss = diffusion_loss(engine, spec, batch, gen, device, dtype)
        engine.backward(loss)
        rs = reader.state_dict()
        position["step"] = step + 1  # the scheduler steps after this optimizer step: set the next
        position["progress"] = run_progress(
            step + 1, o.max_steps, rs["epoch"], rs["consumed"], reader.num_samples, o.epochs
        )
        engine.step()
        step_losses.append(float(loss.detach()))
        step_samples += len(batch["key"])
        micro += 1
        step_compute += time.perf_counter() - t0
        t_data = time.perf_counter()
        if micro < o.gradient_accumulation_steps:
            continue
        micro = 0
        step += 1
        window.losses.extend(step_losses)
        window.samples += step_samples
        window.step_seconds.append(step_compute)
        grad_norm = engine.get_global_grad_norm()
        metrics.optimizer_step(
            step=step,
            epoch=int(reader.state_dict()["epoch"]),
            loss=sum(step_losses) / len(step_losses),
            learning_rate=float(lr_sched.get_last_lr()[0]),
            grad_norm=None if grad_norm is None else float(grad_norm),
            compute_seconds=step_compute,
            wait_seconds=step_wait,
            samples=step_samples,
            frames=step_samples * cfg.data.num_frames,
        )
        step_losses, step_wait, step_compute, step_samples = [], 0.0, 0.0, 0
        chaos.after_step(step, dist.rank, chaos_spec)
        finished = done()
        if step % cfg.train.report_every == 0 and not finished:
            record = _window_record(step, reader, window, engine, lr_sched, dist, built, restarts)
            history.append(record)
            _report(record)
            if dist.rank == 0:
                log.info("step %d/%d loss %.4f lr %.2e", step, horizon, record["loss"], record["learning_rate"])
                _best_effort(
                    files.write_progress,
                    _progress(step, horizon, reader, history, last_ckpt, dist.world_size, "running"),
                    metrics,
                )
            window = Window()
        if finished:
            break
        if step % cfg.train.checkpoint_every == 0:
            last_ckpt = save_checkpoint()
        if cfg.validation.every and step % cfg.validation.every == 0:
            with metrics.stage("validating"):
                _validate(cfg, model_path, spec, files, step, params, dist, place)
        t_data = time.perf_counter()

    metrics.set_stage("finishing")
    if window.losses and (not history or history[-1]["step"] != step):
        record = _window_record(step, reader, window, engine, lr_sched, dist, built, restarts)
        history.append(record)
        _report(record)
    last_ckpt = save_checkpoint()
    weights = zero_state.gather_weights(params)
    if dist.rank == 0:
        files.write_final(lora_file_bytes({peft_key(n): w for n, w in weights.items()}, cfg.lora), dump_config(cfg))
    if cfg.validation.at_end:
        with metrics.stage("validating"):
            _validate(cfg, model_path, spec, files, step, params, dist, place)
    if dist.rank == 0:
        files.finish(step, _progress(step, horizon, reader, history, last_ckpt, dist.world_size, "finished"))
    engine.destroy()


def _best_effort(write: Callable[[dict[str, Any]], None], value: dict[str, Any], metrics: WorkerMetrics) -> None:
    """Progress is for watchers: a failed write (after the store's retries) is logged and counted, not fatal."""
    try:
        write(value)
    except Exception as err:
        metrics.progress_write_failed()
        log.warning("progress not written: %s", err)


def _latest_usable(ckpts: CheckpointStore, cfg: RunConfig) -> Checkpoint | None:
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


def _step_encoder(
    model_path: Any, spec: Any, seed: int, device: torch.device, dtype: torch.dtype
) -> Callable[[dict[str, Any], tuple[int, ...]], dict[str, Any]]:
    """Without the cache: the frozen VAE and T5 run on every batch (what the cache saves); the image
    noise of i2v is drawn afresh at every step, seeded by (seed, step, rank, micro-batch) and clip."""
    from disney_train.model.spec import frozen_encoders

    enc = frozen_encoders(model_path, dtype, device)
    fresh = replace(spec, image=replace(spec.image, draws=1))

    def encode(batch: dict[str, Any], where: tuple[int, ...]) -> dict[str, Any]:
        seeds = [(*where, key) for key in batch["key"]]
        return {"key": batch["key"], **fresh.encode(enc, batch, device, seeds)}

    return encode


def _window_record(
    step: int, reader: Any, w: Window, engine: Any, lr_sched: Any, dist: Dist, cached: int, restarts: int
) -> dict[str, Any]:
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


def _progress(
    step: int, horizon: int, reader: Any, history: list[dict[str, Any]], ckpt: str | None, world: int, phase: str
) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "phase": phase,
        "step": step,
        "horizon": horizon,
        "epoch": reader.state_dict()["epoch"],
        "loss": last.get("loss"),
        "world_size": world,
        "last_checkpoint": ckpt,
        "last_checkpoint_time": time.time() if ckpt else None,
        "updated": time.time(),
    }


def _validate(
    cfg: RunConfig,
    model_path: Any,
    model: CogVideoXSpec,
    files: RunFiles,
    step: int,
    params: list[tuple[str, torch.nn.Parameter]],
    dist: Dist,
    place: Placement,
) -> None:
    """Validation videos for the current LoRA, rendered on rank 0 with a fresh pipeline."""
    from disney_train.generate import RenderSpec, apply_lora, load_pipeline, render
    from disney_train.media import mp4_bytes
    from disney_train.model.lora import lora_file_bytes, peft_key

    v = cfg.validation
    if not v.prompts:
        return
    weights = zero_state.gather_weights(params)  # collective: every rank takes part
    if dist.rank == 0:
        t0 = time.perf_counter()
        images = [read_uri(u, cfg.s3) for u in v.images]
        dtype = torch.bfloat16 if place.precision == "bf16" else torch.float32
        pipe = load_pipeline(model_path, model, place.device, dtype)
        apply_lora(pipe, lora_file_bytes({peft_key(n): w for n, w in weights.items()}, cfg.lora))
        spec = RenderSpec(
            prompts=v.prompts,
            images=images,
            num_frames=v.num_frames or cfg.data.num_frames,
            height=cfg.data.height,
            width=cfg.data.width,
            fps=cfg.data.fps,
            steps=v.steps,
            guidance_scale=v.guidance_scale,
            seed=v.seed,
        )
        videos = [mp4_bytes(frames, cfg.data.fps) for frames in render(pipe, spec, model)]
        files.write_validation(step, videos, v.prompts)
        log.info("validation videos for step %d in %.1f s", step, time.perf_counter() - t0)
        del pipe
    dist.barrier()
