"""A tiny Wan (2.1, or 2.2 A14B with two experts) with random weights, in the real diffusers layout.

As `disney_train.model.tiny` does for CogVideoX: tests and `make run` load it through the code that
loads the real Wan weights, so the loading path is exercised without a hub or a GPU. The layouts
are those of the diffusers repositories (`scripts/convert_wan_to_diffusers.py` writes them):

- `t2v`: Wan2.1-T2V-1.3B-Diffusers, `WanPipeline` (tokenizer, UMT5 encoder, VAE, transformer,
  UniPC scheduler).
- `i2v`: Wan2.1-I2V-14B-Diffusers, `WanImageToVideoPipeline`: the transformer takes 16 noise + 4
  mask + 16 image latent channels, and a CLIP vision encoder's penultimate hidden states through
  `image_dim` (CLIP's hidden size) and `added_kv_proj_dim` (= the transformer's inner dim: the
  image's own key and value projections in every cross-attention).
- `experts=2`: Wan2.2-T2V-A14B / Wan2.2-I2V-A14B-Diffusers: a second transformer (`transformer_2`,
  the low-noise expert) and the pipeline's `boundary_ratio` (0.875 / 0.9). Wan 2.2 I2V has no CLIP:
  the pipeline passes `image_embeds` only to a transformer with `image_dim` ("only wan 2.1 i2v
  transformer accepts image_embeds"), so there is no image encoder nor processor and the
  transformer no `image_dim` / `added_kv_proj_dim`.
- `ti2v=True`: Wan2.2-TI2V-5B-Diffusers, `WanPipeline` with `expand_timesteps` (per-token timesteps;
  `WanImageToVideoPipeline` loads the same folder for image-to-video): one transformer of 48 channels
  in and out on the Wan 2.2 VAE (48 latent channels, 2x2 patches folded into 12 input channels,
  16x space compression, residual blocks), scheduler shift 5. Its latent statistics here are made up
  (48 values, not the real VAE's).

The sizes are the smallest that work with diffusers' Wan code (measured): the rotary embedding
splits a head's dimension into time, height and width (`h = w = 2 * (d // 6)`, `t = d - h - w`),
so 6 is the smallest head with all three axes rotated (2 / 2 / 2; 4 and 2 run too, but with no
height or width rotation); the VAE keeps Wan's 4x time and 8x space compression (three spatial
downsamples, two of them temporal) with 2 base channels (its decoder halves them after each
upsample: 1 channel fails). The UMT5 tokenizer is the T5 tokenizer of `disney_train.model.tiny`,
built offline.

Two things the pipelines ask of their callers: Wan 2.1 I2V's attention splits the image tokens from
the text by a hard-coded 512 text tokens, so prompts must be encoded at `max_sequence_length` 512
(the I2V pipeline's default); and diffusers 0.42's I2V pipeline cleans prompts with `ftfy`
unguarded (the T2V pipeline guards it), so it needs `ftfy` installed to take a prompt string.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Literal

from disney_train.model.tiny import _tokenizer

LATENT_CHANNELS = 16  # Wan 2.1's VAE (z_dim)
TI2V_CHANNELS = 48  # Wan 2.2's VAE (TI2V-5B)
MASK_CHANNELS = 4  # I2V: the first-frame mask, one channel per video frame of a latent frame
TEXT_DIM = 32
IMAGE_DIM = 32  # the tiny CLIP's hidden size (1280 for the real ViT-H/14)
IMAGE_SIZE = 32
HEADS = 2
HEAD_DIM = 6  # rotary split 2 / 2 / 2 over time, height, width (Wan 2.1: 128 as 44 / 42 / 42)
# the pipeline's `boundary_ratio`, as Wan2.2-{T2V,I2V}-A14B-Diffusers set it: `transformer` (high
# noise) denoises the timesteps >= ratio x 1000, `transformer_2` (low noise) the rest
BOUNDARY_RATIO = {"t2v": 0.875, "i2v": 0.9}
# Wan's VAE latent statistics (AutoencoderKLWan's defaults), written out so the config shows them
LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip


def _transformer(variant: Literal["t2v", "i2v"], clip: bool, latent_channels: int = LATENT_CHANNELS) -> Any:
    from diffusers import WanTransformer3DModel

    i2v = variant == "i2v"
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=latent_channels * 2 + MASK_CHANNELS if i2v else latent_channels,
        out_channels=latent_channels,
        text_dim=TEXT_DIM,
        freq_dim=16,  # the sinusoidal timestep embedding's width (256 in the real models)
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=IMAGE_DIM if clip else None,
        added_kv_proj_dim=HEADS * HEAD_DIM if clip else None,
        # RoPE's table length per axis, in patches: up to 32 latent frames (125 frames) and
        # 32 x 2 x 8 = 512 pixels a side (the real models: 1024)
        rope_max_seq_len=32,
    )


def _vae() -> dict[str, Any]:
    """Wan 2.1's VAE (16 latent channels; time / 4, space / 8), 2 base channels."""
    return {
        "base_dim": 2,
        "z_dim": LATENT_CHANNELS,
        "dim_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],  # diffusers' spelling
        "latents_mean": LATENTS_MEAN,
        "latents_std": LATENTS_STD,
    }


def _ti2v_vae() -> dict[str, Any]:
    """Wan 2.2's VAE (TI2V-5B): 48 latent channels, 2x2 pixel patches folded into 12 channels, residual
    blocks; time / 4, space / 16."""
    return {
        **_vae(),
        "decoder_base_dim": 2,
        "z_dim": TI2V_CHANNELS,
        "is_residual": True,
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_spatial": 16,
        "scale_factor_temporal": 4,
        "latents_mean": [round(0.1 * math.sin(i), 4) for i in range(TI2V_CHANNELS)],
        "latents_std": [round(1.5 + 0.5 * math.cos(i), 4) for i in range(TI2V_CHANNELS)],
    }


def write_tiny_wan(
    out: Path,
    variant: Literal["t2v", "i2v"] = "t2v",
    seed: int = 0,
    experts: int = 1,
    ti2v: bool = False,
) -> Path:
    """Wan 2.1 (`experts=1`) as T2V-1.3B or I2V-14B; Wan 2.2 A14B (`experts=2`): a high- and a
    low-noise transformer of one config and `boundary_ratio`, for I2V without the CLIP encoder;
    Wan 2.2 TI2V-5B (`ti2v`, for both tasks: `variant` is not used)."""
    if experts not in (1, 2) or (ti2v and experts != 1):
        raise ValueError(f"experts must be 1 (Wan 2.1, TI2V-5B) or 2 (Wan 2.2 A14B), not {experts}")
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="tiny-tokenizer-") as tmp:
        tokenizer = _tokenizer(Path(tmp))
    if ti2v:
        variant = "t2v"  # the transformer is the T2V layout; the pipeline puts the image in the latents
    clip = variant == "i2v" and experts == 1  # only Wan 2.1 I2V conditions on CLIP
    transformer = _transformer(variant, clip, TI2V_CHANNELS if ti2v else LATENT_CHANNELS)
    vae = AutoencoderKLWan(**(_ti2v_vae() if ti2v else _vae()))
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    # Wan2.1-T2V-1.3B-Diffusers' scheduler: UniPC on flow sigmas, shift 3 (the 480p value). The
    # diffusers conversion gives the 2.2 A14B repositories the same 3.0, although Wan's own code
    # samples 2.2 T2V-A14B at shift 12 and I2V-A14B at 5: we keep what the Diffusers repos ship.
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=2,
        prediction_type="flow_prediction",
        thresholding=False,
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        disable_corrector=[],
        use_karras_sigmas=False,
        use_flow_sigmas=True,
        flow_shift=5.0 if ti2v else 3.0,  # Wan2.2-TI2V-5B-Diffusers: 5
        timestep_spacing="linspace",
        steps_offset=0,
        final_sigmas_type="zero",
    )
    components: dict[str, Any] = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "transformer": transformer,
        "scheduler": scheduler,
    }
    if experts == 2:  # same config, its own random weights
        components["transformer_2"] = _transformer(variant, clip)
        components["boundary_ratio"] = BOUNDARY_RATIO[variant]
    if variant == "t2v":
        pipe = WanPipeline(**components, expand_timesteps=ti2v)
    elif clip:
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=IMAGE_DIM,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=IMAGE_SIZE,
                patch_size=8,
            )
        )
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        pipe = WanImageToVideoPipeline(**components, image_encoder=image_encoder, image_processor=image_processor)
    else:
        pipe = WanImageToVideoPipeline(**components)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    return out
