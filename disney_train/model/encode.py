"""What the frozen parts of CogVideoX compute: T5 prompt embeddings, VAE latents, rotary embeddings.

These run once per clip in the cache stage (`disney_train.train.cache`) and at generation time;
training itself only runs the transformer. The tensor layouts follow diffusers' CogVideoX pipeline:
videos [B, F, 3, H, W] in [-1, 1] in, latents [B, F', C, h, w] out (F' = (F - 1) / 4 + 1).
"""

from __future__ import annotations

from typing import Any

import torch


def encode_prompts(
    tokenizer: Any, text_encoder: Any, prompts: list[str], max_length: int, device: torch.device | str
) -> torch.Tensor:
    """T5 embeddings [B, max_length, D] exactly as the pipeline computes them (padded, truncated)."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        out: torch.Tensor = text_encoder(ids.to(device))[0]
    return out


def encode_video_dist(vae: Any, video: torch.Tensor) -> torch.Tensor:
    """[B, F, 3, H, W] in [-1, 1] -> the VAE's latent distribution parameters [B, F', 2C, h, w]
    (mean and log-variance on channels, as diffusers' DiagonalGaussianDistribution keeps them), so
    that each step can draw its own sample from the cached distribution."""
    x = video.permute(0, 2, 1, 3, 4).to(device=vae.device, dtype=vae.dtype)  # [B, 3, F, H, W]
    with torch.no_grad():
        params: torch.Tensor = vae.encode(x).latent_dist.parameters
    return params.permute(0, 2, 1, 3, 4).contiguous()


def sample_latents(dist: torch.Tensor, scaling_factor: float, generator: torch.Generator | None) -> torch.Tensor:
    """Draw scaled latents [B, F', C, h, w] from distribution parameters [B, F', 2C, h, w]."""
    mean, logvar = dist.chunk(2, dim=2)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
    return (mean + std * noise) * scaling_factor


def rotary_embeddings(
    transformer_config: Any, vae_scale_spatial: int, height: int, width: int, latent_frames: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The 3D rotary position embeddings the CogVideoX pipeline passes (None for models without)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    cfg = transformer_config
    if not cfg.use_rotary_positional_embeddings:
        return None
    p, p_t = cfg.patch_size, cfg.patch_size_t
    grid_h, grid_w = height // (vae_scale_spatial * p), width // (vae_scale_spatial * p)
    base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
    if p_t is None:  # CogVideoX 1.0
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim,
            crops_coords=crops,
            grid_size=(grid_h, grid_w),
            temporal_size=latent_frames,
            device=device,
        )
    else:  # CogVideoX 1.5
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim,
            crops_coords=None,
            grid_size=(grid_h, grid_w),
            temporal_size=(latent_frames + p_t - 1) // p_t,
            grid_type="slice",
            max_size=(base_h, base_w),
            device=device,
        )
    return cos, sin
