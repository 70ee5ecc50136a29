"""LoRA weights and AdamW state in and out of DeepSpeed ZeRO, in a world-size-independent form.

DeepSpeed's own checkpoints keep ZeRO's partitions and cannot be loaded at another world size
("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not
currently supported"). The LoRA is small, so every piece is gathered whole instead: the fp32
master weight and both Adam moments per trainable parameter, plus Adam's step count. Restoring
writes them back into the partitions of an engine of any world size and ZeRO stage.

Measured (2 gloo ranks, tiny CogVideoX LoRA): saved at 2 ranks and resumed at 1 (and the other
way, and across ZeRO 2 <-> 3, with and without optimizer offload), the losses after the resume
equal the uninterrupted run's exactly. Leaving out any one piece (moments, step, learning rate)
changes them. This uses DeepSpeed internals that have no public API (the Adam step, creating the
state of a fresh engine, copying master weights to the model): deepspeed is pinned for that.

Every function here is collective: all ranks call it, in the same order.
"""

from __future__ import annotations

from typing import Any

import torch

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _base_optimizer(engine: Any) -> Any:
    zopt = engine.optimizer
    return getattr(zopt, "optimizer", zopt)


def adam_step(engine: Any) -> int:
    """ZeRO keeps one flat fp32 partition per group; its Adam state holds the step (a float tensor
    for torch's AdamW, an int for DeepSpeed's fused and CPU Adam)."""
    for st in _base_optimizer(engine).state.values():
        if "step" in st:
            s = st["step"]
            return int(s.item() if torch.is_tensor(s) else s)
    return 0


def gather(engine: Any, params: list[tuple[str, torch.nn.Parameter]]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(fp32 weights by parameter name, optimizer state: moments by "name.key", step, lr)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    weights: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    for name, p in params:
        weights[name] = safe_get_full_fp32_param(p).detach().float().cpu().clone()
        for key in ADAM_KEYS:
            value = safe_get_full_optimizer_state(p, key)
            if value is not None:
                moments[f"{name}.{key}"] = value.detach().float().cpu().clone()
    meta = {
        "adam_step": adam_step(engine),
        "lr": [float(g["lr"]) for g in engine.optimizer.param_groups],
        "global_steps": int(engine.global_steps),
        "global_samples": int(engine.global_samples),
    }
    return weights, {"moments": moments, "meta": meta}


def gather_weights(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(p).detach().float().cpu().clone() for name, p in params}


def _materialise_adam_state(engine: Any, step: int) -> None:
    """A fresh engine has no Adam state (torch creates it in the first step), so there is nothing
    for `safe_set_full_optimizer_state` to write into: create it on the flat fp32 partitions."""
    base = _base_optimizer(engine)
    torch_style = type(base).__module__.startswith("torch.optim")
    zopt = engine.optimizer
    if hasattr(zopt, "fp32_partitioned_groups_flat"):  # ZeRO-3 empties param_groups outside step()
        flats = list(zopt.fp32_partitioned_groups_flat)
    else:
        flats = [fp for g in base.param_groups for fp in g["params"]]
    for fp in flats:
        st = base.state[fp]
        st["step"] = torch.tensor(float(step), dtype=torch.float32) if torch_style else int(step)
        for key in ADAM_KEYS:
            if key not in st:
                st[key] = torch.zeros_like(fp, memory_format=torch.preserve_format)
    for g in base.param_groups:
        if not torch_style and "step" in g:  # FusedAdam's per-group step
            g["step"] = int(step)
    if hasattr(zopt, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2: link the fragments
        zopt._hp_optimizer_states_linked = False
        zopt._lazy_init_hp_params_optimizer_state()


def restore(
    engine: Any,
    params: list[tuple[str, torch.nn.Parameter]],
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    lr_scheduler_state: dict[str, Any] | None,
) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    missing = [n for n, _ in params if n not in weights]
    if missing:
        raise KeyError(f"no saved weights for {len(missing)} LoRA parameter(s), e.g. {missing[0]}")
    moments: dict[str, torch.Tensor] = optimizer["moments"]
    meta: dict[str, Any] = optimizer["meta"]
    _materialise_adam_state(engine, int(meta["adam_step"]))
    for name, p in params:
        safe_set_full_fp32_param(p, weights[name])
        for key in ADAM_KEYS:
            if f"{name}.{key}" in moments:
                safe_set_full_optimizer_state(p, moments[f"{name}.{key}"], key)
    zopt = engine.optimizer
    if hasattr(zopt, "update_lp_params"):  # ZeRO-1/2: fp32 master -> model weights (all-gather)
        zopt.update_lp_params()
    elif hasattr(zopt, "_reassign_or_swap_out_partitioned_parameters"):  # ZeRO-3
        for i in range(len(zopt.fp16_groups)):
            zopt._reassign_or_swap_out_partitioned_parameters(i)
    engine.global_steps = int(meta["global_steps"])
    engine.global_samples = int(meta["global_samples"])
    if engine.lr_scheduler is not None and lr_scheduler_state is not None:
        engine.lr_scheduler.load_state_dict(lr_scheduler_state)
    # neither torch's nor DeepSpeed's scheduler load_state_dict rewrites the groups' lr
    for g, lr in zip(engine.optimizer.param_groups, meta["lr"], strict=False):
        g["lr"] = lr


def skip_shm_comm() -> None:
    """On CPU, DeepSpeed compiles its shared-memory all-reduce (~30 s) inside init_distributed,
    though only inference and tensor-parallel code use it: mark it incompatible so it is skipped
    (training losses were identical with and without it)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


MUON_MODULES = ("deepspeed.runtime.zero.muon.muon_optimizer", "deepspeed.runtime.zero.muon.original_muon")


def skip_muon() -> None:
    """DeepSpeed's ZeRO imports its Muon optimizer when it builds an engine (to add it to the optimizers ZeRO
    supports) and when it partitions gradients (for `muon_update`), and that import compiles Muon's kernels
    with torch.compile: 1.3 s of every worker's start here, for an optimizer the run never uses (AdamW).
    Stand-in modules take their place, with the two names DeepSpeed's ZeRO and bf16 code take from them:
    `MuonWithAuxAdam`, a class nothing is an instance of (so their Muon branches stay off, as they are for
    AdamW), and `muon_update`, which refuses. Must run before DeepSpeed builds an engine."""
    import sys
    import types

    class MuonWithAuxAdam:  # never instantiated
        pass

    def muon_update(*_: object, **__: object) -> None:
        raise RuntimeError("DeepSpeed's Muon was left out (zero_state.skip_muon): the run's optimizer is AdamW")

    values: tuple[Any, ...] = (MuonWithAuxAdam, muon_update)
    for module, value in zip(MUON_MODULES, values, strict=True):
        if module not in sys.modules:
            stand_in = types.ModuleType(module, "Stand-in (disney_train.train.zero_state.skip_muon): Muon is unused.")
            setattr(stand_in, value.__name__, value)
            sys.modules[module] = stand_in
