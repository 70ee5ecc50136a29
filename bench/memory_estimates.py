"""GPU memory on paper: DeepSpeed's ZeRO estimators for CogVideoX-2b and -5b and Wan 2.1 (1.3B, 14B, I2V
14B; Wan 2.2 A14B is two such 14B experts), and what they mean for LoRA on the attention projections,
set beside the CogVideo project's published 16 GB (2b) and 24 GB (5b) for LoRA at batch 1.

The transformers are built on the meta device from the public configs (no weights needed).
DeepSpeed's estimators assume full fine-tuning (every parameter trained); with LoRA the frozen
weights are not in the optimizer, so the model states are, per GPU (bf16 weights, fp32 master
weights and Adam moments for the LoRA only):

    ZeRO-2: 2·P_frozen (replicated) + 2·P_lora (bf16 LoRA weights) + (2 + 4 + 8)·P_lora / N
    ZeRO-3: (2·P_frozen + 2·P_lora + (2 + 4 + 8)·P_lora) / N + 4·largest layer (gathered for compute)

Activations (the bulk at 49x480x720 even with gradient checkpointing) and the frozen T5-XXL and
VAE come on top; the latent cache keeps T5 and the VAE off the training GPUs altogether.
Figures go to bench/results/memory_estimates.{json,md}. Run with `make bench`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
RANK = 128
# the default lora.target_modules, matched as peft matches them (a module name ending in one): CogVideoX
# has them in attn1 only, Wan in attn1 (self) and attn2 (cross) of every block
TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0")
# public transformer/config.json values of THUDM/CogVideoX-2b, THUDM/CogVideoX-5b, and
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan2.1-T2V-14B-Diffusers, Wan2.1-I2V-14B-480P-Diffusers
_WAN = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096, freq_dim=256)
_WAN_14B = dict(_WAN, num_attention_heads=40, ffn_dim=13824, num_layers=40)
CONFIGS: dict[str, dict[str, Any]] = {
    "CogVideoX-2b": dict(
        num_attention_heads=30,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        time_embed_dim=512,
        text_embed_dim=4096,
        num_layers=30,
        use_rotary_positional_embeddings=False,
    ),
    "CogVideoX-5b": dict(
        num_attention_heads=48,
        attention_head_dim=64,
        in_channels=16,
        out_channels=16,
        time_embed_dim=512,
        text_embed_dim=4096,
        num_layers=42,
        use_rotary_positional_embeddings=True,
    ),
    "Wan2.1-T2V-1.3B": dict(_WAN, num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "Wan2.1-T2V-14B": _WAN_14B,  # and each of Wan 2.2 T2V-A14B's two experts
    "Wan2.1-I2V-14B": dict(_WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
    # Wan-AI/Wan2.2-I2V-A14B-Diffusers: each expert (transformer, transformer_2) is this; no CLIP image branch
    "Wan2.2-I2V-A14B (one expert)": dict(_WAN_14B, in_channels=36),
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers: 48 latent channels in and out (the Wan 2.2 VAE)
    "Wan2.2-TI2V-5B": dict(_WAN, num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
}
# CogVideo README: LoRA fine-tuning, batch 1, bf16 (none published for Wan LoRA)
PUBLISHED_LORA_GB: dict[str, int | None] = {"CogVideoX-2b": 16, "CogVideoX-5b": 24}
GPUS = (1, 2, 8)


def _ds_full_finetune(total: int, largest: int, gpus: int) -> dict[str, float]:
    """DeepSpeed's own estimators (full fine-tuning), parsed from what they print."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    out: dict[str, float] = {}
    for stage, fn, kwargs in (
        ("zero2", estimate_zero2_model_states_mem_needs_all_cold, {}),
        ("zero3", estimate_zero3_model_states_mem_needs_all_cold, {"largest_layer_params": largest}),
    ):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            fn(total_params=total, num_gpus_per_node=gpus, num_nodes=1, **kwargs)
        for line in buf.getvalue().splitlines():
            m = re.match(r"\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.*)$", line)
            if m and "offload_optimizer=none" in m.group(3) and "zero_init=0" not in m.group(3):
                out[stage] = float(m.group(2))
    return out


def estimate(name: str) -> dict[str, Any]:
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    cls = WanTransformer3DModel if name.startswith("Wan") else CogVideoXTransformer3DModel
    with torch.device("meta"):
        model = cls(**CONFIGS[name])
    total = sum(p.numel() for p in model.parameters())
    largest = max(p.numel() for p in model.parameters())
    targets = [m for n, m in model.named_modules() if n.endswith(TARGETS)]
    lora = sum(RANK * (t.in_features + t.out_features) for t in targets)
    rows = []
    for n in GPUS:
        z2 = 2 * total + 2 * lora + 14 * lora / n
        z3 = (2 * total + 2 * lora + 14 * lora) / n + 4 * largest
        rows.append(
            {
                "gpus": n,
                "lora_zero2_gib": round(z2 / GIB, 2),
                "lora_zero3_gib": round(z3 / GIB, 2),
                "full_finetune_ds_estimator_gb": _ds_full_finetune(total, largest, n),
            }
        )
    return {
        "model": name,
        "params": total,
        "largest_layer_params": largest,
        "lora_rank": RANK,
        "lora_params": lora,
        "lora_modules": len(targets),
        "published_lora_batch1_gb": PUBLISHED_LORA_GB.get(name),
        "per_gpu": rows,
    }


def published(gb: int | None) -> str:
    return "none published" if gb is None else f"{gb} GB (all memory)"


def main() -> None:
    results = [estimate(n) for n in CONFIGS]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_estimates.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "# GPU memory on paper (model states per GPU, activations not included)",
        "",
        f"LoRA rank {RANK} on every module ending in {', '.join(TARGETS)} (CogVideoX: attn1; Wan: attn1 and attn2); "
        "bf16 weights, fp32 master weights and Adam moments. Wan 2.2 A14B: two 14B experts, each trained by "
        "its own run (`model.expert`), which loads only its expert: one expert's row per run (T2V-A14B's "
        "experts are Wan2.1-T2V-14B's size).",
        "",
        "| model | params | LoRA params | GPUs | LoRA ZeRO-2 | LoRA ZeRO-3 | full FT ZeRO-2 (DeepSpeed) | full FT ZeRO-3 (DeepSpeed) | CogVideo published, LoRA batch 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["per_gpu"]:
            ds = row["full_finetune_ds_estimator_gb"]
            lines.append(
                f"| {r['model']} | {r['params'] / 1e9:.2f} B | {r['lora_params'] / 1e6:.1f} M | {row['gpus']} "
                f"| {row['lora_zero2_gib']:.2f} GiB | {row['lora_zero3_gib']:.2f} GiB "
                f"| {ds.get('zero2', float('nan')):.2f} GB | {ds.get('zero3', float('nan')):.2f} GB "
                f"| {published(r['published_lora_batch1_gb'])} |"
            )
    lines += [
        "",
        "With LoRA, ZeRO-2 hardly lowers the model states: the frozen bf16 weights (2 bytes a parameter) are",
        "replicated and dominate; ZeRO-3 partitions them too. The gap to the published figures is",
        "activations (49x480x720 gives 17,550 video tokens) and, without the latent cache, T5-XXL and the VAE.",
        "Wan at 81x480x832 has 32,760 video tokens a clip; its UMT5-XXL (5.7 B) stays off the training GPUs",
        "with the latent cache.",
        "",
    ]
    (out / "memory_estimates.md").write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
