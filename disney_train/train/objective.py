"""The training objective of CogVideoX LoRA fine-tuning, as the reference trainers compute it.

diffusers' `examples/cogvideo/train_cogvideox_lora.py` and the CogVideo project's SAT trainer:
timesteps uniform over the scheduler's 1000, noise added with `CogVideoXDPMScheduler.add_noise`,
the transformer predicts v; `scheduler.get_velocity(v, x_t, t)` turns it into a prediction of the
clean latents x0, and the loss is the mean of (1 / (1 - alpha_bar_t)) * (x0_pred - x0)^2 per
sample, then over the batch. For image-to-video the (cached) first-frame latent, zero-padded over
time, is concatenated to the noisy latents on channels; with probability `image_dropout` it is
zeroed instead (the reference's noised-image dropout), so the model also learns from the prompt.

All randomness comes from one `torch.Generator` per step, seeded by (seed, step, rank): a resumed
run draws the same timesteps, noise and latent samples as an uninterrupted one, without storing
RNG state, and whatever the world size was before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from disney_train.model.encode import pad_for_patch_t, rotary_embeddings, sample_latents


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@dataclass
class ModelFacts:
    """What the objective needs to know about the frozen parts (read once from their configs)."""

    scaling_factor: float
    image_scaling_factor: float  # what the i2v pipeline multiplies the image latents by
    vae_scale_spatial: int
    transformer_config: Any
    num_train_timesteps: int
    alphas_cumprod: torch.Tensor
    i2v: bool


def model_facts(transformer: Any, vae_config: Any, scheduler: Any) -> ModelFacts:
    return ModelFacts(
        scaling_factor=float(vae_config.scaling_factor),
        # CogVideoX 1.5's VAE config sets invert_scale_latents: its pipeline divides the image
        # latents by the factor ("the CogVideoX team forgot to multiply ... during training")
        image_scaling_factor=(
            1.0 / float(vae_config.scaling_factor)
            if getattr(vae_config, "invert_scale_latents", False)
            else float(vae_config.scaling_factor)
        ),
        vae_scale_spatial=2 ** (len(vae_config.block_out_channels) - 1),
        transformer_config=transformer.config,
        num_train_timesteps=int(scheduler.config.num_train_timesteps),
        alphas_cumprod=scheduler.alphas_cumprod.clone().float(),
        i2v=int(transformer.config.in_channels) == 2 * int(vae_config.latent_channels),
    )


def diffusion_loss(
    transformer: Any,
    scheduler: Any,
    facts: ModelFacts,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    image_dropout: float = 0.05,
) -> torch.Tensor:
    """One batch of cached entries -> the scalar loss (graph attached to the transformer's LoRA)."""
    dist = batch["latent_dist"].to(device=device, dtype=torch.float32)  # [B, F', 2C, h, w]
    patch_t = facts.transformer_config.patch_size_t
    unpadded = sample_latents(dist, facts.scaling_factor, generator)
    latents = pad_for_patch_t(unpadded, patch_t)
    b, f, _, h, w = latents.shape
    t = torch.randint(0, facts.num_train_timesteps, (b,), generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, t)
    model_input = noisy
    if facts.i2v:
        image_dist = batch["image_dist"].to(device=device, dtype=torch.float32)
        image = sample_latents(image_dist, facts.image_scaling_factor, generator)
        keep = (torch.rand((b,), generator=generator) >= image_dropout).to(device=device, dtype=image.dtype)
        image = image * keep[:, None, None, None, None]
        # as the i2v pipeline builds it: zeros after the first frame, then 1.5's time padding
        padded = torch.cat([image, image.new_zeros((b, unpadded.shape[1] - 1, *image.shape[2:]))], dim=1)
        model_input = torch.cat([noisy, pad_for_patch_t(padded, patch_t)], dim=2)
    cfg = facts.transformer_config
    rotary = rotary_embeddings(
        cfg, facts.vae_scale_spatial, h * facts.vae_scale_spatial, w * facts.vae_scale_spatial, f, device
    )
    ofs = model_input.new_full((1,), 2.0) if getattr(cfg, "ofs_embed_dim", None) else None
    output = transformer(
        hidden_states=model_input.to(dtype),
        encoder_hidden_states=batch["prompt_embeds"].to(device=device, dtype=dtype),
        timestep=t,
        image_rotary_emb=rotary,
        ofs=ofs,
        return_dict=False,
    )[0]
    pred = scheduler.get_velocity(output.float(), noisy, t)
    weights = (1.0 / (1.0 - facts.alphas_cumprod.to(device)[t])).view(b, 1, 1, 1, 1)
    loss: torch.Tensor = (weights * (pred - latents) ** 2).reshape(b, -1).mean(dim=1).mean()
    return loss
