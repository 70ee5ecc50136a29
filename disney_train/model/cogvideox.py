"""The CogVideoX family's specifications (`disney_train.model.base.ModelSpec`): one per variant.

The objective is diffusers' `examples/cogvideo/train_cogvideox_lora.py` and the CogVideo project's
trainers: timesteps uniform over the scheduler's 1000, noise added with `CogVideoXDPMScheduler.add_noise`,
the transformer predicts v; `scheduler.get_velocity(v, x_t, t)` turns it into a prediction of the
clean latents x0, and the loss is the mean of (1 / (1 - alpha_bar_t)) * (x0_pred - x0)^2 per
sample, then over the batch.

- `cogvideox-1.0-t2v` (CogVideoX-2b, -5b): the base case.
- `cogvideox-1.0-i2v` (CogVideoX-5b-I2V): the image's latents (x scaling factor) on channels,
  `[image, 0, ...]` over the latent frames.
- `cogvideox-1.5-t2v` (CogVideoX1.5-5B): time patched by 2, so an odd latent frame count gets a
  copy of the first frame in front; RoPE on a grid sliced from the sample size.
- `cogvideox-1.5-i2v` (CogVideoX1.5-5B-I2V): as 1.5 T2V, plus `ofs` = 2 and the image latents
  divided by the factor (`invert_scale_latents`); the conditioning is `[image, 0, ...]` over the
  padded frames.

What the generation (1.0 or 1.5) changes is read off the model's own configs, where diffusers'
pipelines read it (`patch_size_t`, `use_rotary_positional_embeddings`, `ofs_embed_dim`,
`invert_scale_latents`); what the task (text or image to video) changes is the class.

The image-to-video recipe follows both reference trainers (diffusers'
`train_cogvideox_image_to_video_lora.py`, CogVideo's `finetune/models/cogvideox_i2v`): Gaussian noise
on the image in pixel space before it is encoded, sigma = exp(N(-3, 0.5)), and the image latents
zeroed with probability 0.05. The references encode a freshly noised image at every step; with the
latent cache, each clip's entry keeps `image_noise_draws` encodings of independently noised images
(sigma and noise drawn per encoding from (seed, clip)), and every step draws one of them: the VAE
runs once per clip, and the model still sees the image under several noise levels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from disney_train.model.base import Encoders, Family, ModelSpec, Task, pil_image, seeded
from disney_train.model.encode import encode_prompts, encode_video_dist, rotary_embeddings, sample_latents

Generation = Literal["1.0", "1.5"]

# the references' image noise: sigma = exp(N(mean, std)) in pixel space ([-1, 1])
IMAGE_NOISE_LOG_MEAN = -3.0
IMAGE_NOISE_LOG_STD = 0.5
OFS = 2.0  # what the CogVideoX 1.5 I2V pipeline passes as `ofs` (its default)


@dataclass(frozen=True)
class CogVideoXSpec(ModelSpec):
    """A CogVideoX text-to-video model; `CogVideoXI2V` adds the conditioning image."""

    family: ClassVar[Family] = "cogvideox"
    input_latents: ClassVar[int] = 1  # latent-sized tensors on the transformer's input channels

    # ------------------------------------------------------------------ what the model is
    @property
    def generation(self) -> Generation:
        return "1.5" if self.transformer_config.patch_size_t else "1.0"

    @property
    def name(self) -> str:
        return f"cogvideox-{self.generation}-{self.task}"

    @property
    def max_text_length(self) -> int:
        return int(self.transformer_config.max_text_seq_length)  # 226

    @property
    def scaling_factor(self) -> float:
        return float(self.vae_config.scaling_factor)

    @property
    def vae_scale_spatial(self) -> int:
        return int(2 ** (len(self.vae_config.block_out_channels) - 1))

    def cache_facts(self) -> dict[str, Any]:
        """What, besides the model files and the frames, changes a cache entry of this variant."""
        return {}

    # ------------------------------------------------------------------ encoding (cache stage)
    def encode(
        self, enc: Encoders, batch: Mapping[str, Any], device: torch.device, noise_seeds: list[Any]
    ) -> dict[str, torch.Tensor]:
        """A batch of decoded clips -> what training reads: the VAE's latent distribution
        [B, F', 2C, h, w] and the T5 embeddings [B, L, D]. `noise_seeds` (one per clip) seed what
        encoding draws (the image noise of i2v)."""
        return {
            "latent_dist": encode_video_dist(enc.vae, batch["video"].to(device)),
            "prompt_embeds": encode_prompts(
                enc.tokenizer, enc.text_encoder, list(batch["prompt"]), enc.max_text_length, device
            ),
        }

    # ------------------------------------------------------------------ training
    def pad_frames(self, latents: torch.Tensor) -> torch.Tensor:
        """CogVideoX 1.5 patches time by `patch_size_t`: copies of the first latent frame go in
        front until the count divides (CogVideo's 1.5 trainer; the 1.5 pipeline generates the extra
        frames and drops them from the front before decoding)."""
        p_t = self.transformer_config.patch_size_t
        if not p_t or latents.shape[1] % p_t == 0:
            return latents
        extra = p_t - latents.shape[1] % p_t
        return torch.cat([latents[:, :1].expand(-1, extra, -1, -1, -1), latents], dim=1)

    def latent_scale(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.scaling_factor

    def clean_latents(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """x0 [B, F'', C, h, w]: a sample of each clip's cached distribution, scaled, time-padded."""
        return self.pad_frames(super().clean_latents(batch, generator, device))

    def draw_noise_levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """DDPM timesteps, uniform over the scheduler's (1000)."""
        return torch.randint(0, int(self.scheduler.config.num_train_timesteps), (batch_size,), generator=generator)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        noisy: torch.Tensor = self.scheduler.add_noise(latents, noise, levels)
        return noisy

    def conditioning(
        self, batch: Mapping[str, torch.Tensor], noisy: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor | None:
        """What goes on the channels beside the noisy latents (None: nothing)."""
        return None

    def transformer_inputs(
        self,
        batch: Mapping[str, torch.Tensor],
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        """The keyword arguments of the transformer's forward, as the diffusers pipeline passes them."""
        cond = self.conditioning(batch, noisy, generator)
        hidden = noisy if cond is None else torch.cat([noisy, cond], dim=2)
        _, f, _, h, w = noisy.shape
        s = self.vae_scale_spatial
        cfg = self.transformer_config
        return {
            "hidden_states": hidden.to(dtype),
            "encoder_hidden_states": batch["prompt_embeds"].to(device=noisy.device, dtype=dtype),
            "timestep": timesteps,
            "image_rotary_emb": rotary_embeddings(cfg, s, h * s, w * s, f, noisy.device),
            "ofs": noisy.new_full((1,), OFS) if getattr(cfg, "ofs_embed_dim", None) else None,
        }

    def loss(
        self,
        output: torch.Tensor,
        noisy: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """diffusers' example scripts: the v prediction turned into x0 by `get_velocity`, weighted
        by 1 / (1 - alpha_bar_t), the mean per sample, then over the batch."""
        pred = self.scheduler.get_velocity(output.float(), noisy, timesteps)
        alphas = self.scheduler.alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps]
        weights = (1.0 / (1.0 - alphas)).view(-1, 1, 1, 1, 1)
        loss: torch.Tensor = (weights * (pred - latents) ** 2).reshape(latents.shape[0], -1).mean(dim=1).mean()
        return loss

    @classmethod
    def fits(cls, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> bool:
        """Is a model with these configs one of this task (its transformer's input channels)?"""
        return int(transformer["in_channels"]) == cls.input_latents * int(vae["latent_channels"])

    @classmethod
    def refusal(cls, transformer: Mapping[str, Any], scheduler: Mapping[str, Any]) -> str | None:
        """The objective is the CogVideoX schedulers' (v-prediction, their zero-SNR schedule and SNR shift)."""
        name = scheduler.get("_class_name")
        if name in ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"):
            return None
        return f"scheduler {name!r}: a CogVideoX model is trained with CogVideoXDDIMScheduler or CogVideoXDPMScheduler"

    # ------------------------------------------------------------------ rendering
    @classmethod
    def pipeline_class(cls) -> Any:
        from diffusers import CogVideoXPipeline

        return CogVideoXPipeline


@dataclass(frozen=True)
class CogVideoXI2V(CogVideoXSpec):
    """CogVideoX image-to-video: the first frame's latents on channels beside the noisy latents."""

    task: ClassVar[Task] = "i2v"
    description: ClassVar[str] = "image-to-video"
    wants_image: ClassVar[bool] = True
    input_latents: ClassVar[int] = 2  # the noisy latents and the image's

    @property
    def image_scaling_factor(self) -> float:
        """CogVideoX 1.5's VAE sets `invert_scale_latents`: its pipeline divides the image latents
        by the factor ("the CogVideoX team forgot to multiply ... during training")."""
        f = self.scaling_factor
        return 1.0 / f if getattr(self.vae_config, "invert_scale_latents", False) else f

    def cache_facts(self) -> dict[str, Any]:
        r = self.image
        noise = (
            {"log_mean": IMAGE_NOISE_LOG_MEAN, "log_std": IMAGE_NOISE_LOG_STD, "draws": r.draws} if r.noise else None
        )
        return {"image": {"window": "from-the-first-frame", "noise": noise}}

    def noised_images(self, image: torch.Tensor, draws: int, generator: torch.Generator) -> torch.Tensor:
        """[3, H, W] in [-1, 1] -> [draws, 3, H, W]: each with its own sigma = exp(N(-3, 0.5)) and
        Gaussian noise (none when the recipe has no noise: one clean copy)."""
        if not self.image.noise:
            return image[None]
        sigma = torch.exp(torch.normal(IMAGE_NOISE_LOG_MEAN, IMAGE_NOISE_LOG_STD, (draws,), generator=generator))
        noise = torch.randn((draws, *image.shape), generator=generator)
        return image[None] + noise * sigma.view(-1, 1, 1, 1).to(image.dtype)

    def encode(
        self, enc: Encoders, batch: Mapping[str, Any], device: torch.device, noise_seeds: list[Any]
    ) -> dict[str, torch.Tensor]:
        """Adds `image_dist` [B, K, 2C, h, w]: the VAE's distribution of K noised copies of each
        clip's image (one latent frame each)."""
        out = super().encode(enc, batch, device, noise_seeds)
        dists = []
        for image, seed in zip(batch["image"], noise_seeds, strict=True):
            copies = self.noised_images(image.float().cpu(), self.image.draws, seeded("image-noise", seed))
            dists.append(encode_video_dist(enc.vae, copies[:, None].to(device))[:, 0])
        out["image_dist"] = torch.stack(dists)
        return out

    def conditioning(
        self, batch: Mapping[str, torch.Tensor], noisy: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """[image, 0, ..., 0] over the (padded) latent frames, as the I2V pipeline builds it: for 1.5
        the pipeline pads the frame count first, so the image is the first frame of the padded
        latents and nothing is copied in front of it. One of the clip's cached noised encodings,
        drawn per step; zeroed with probability `dropout`."""
        dists = batch["image_dist"].to(device=noisy.device, dtype=torch.float32)  # [B, K, 2C, h, w]
        b, k = dists.shape[:2]
        pick = torch.randint(0, k, (b,), generator=generator).to(noisy.device)
        chosen = dists[torch.arange(b, device=noisy.device), pick][:, None]  # [B, 1, 2C, h, w]
        image = sample_latents(chosen, self.image_scaling_factor, generator)
        keep = (torch.rand((b,), generator=generator) >= self.image.dropout).to(device=noisy.device, dtype=image.dtype)
        image = image * keep.view(b, 1, 1, 1, 1)
        zeros = image.new_zeros((b, noisy.shape[1] - 1, *image.shape[2:]))
        return torch.cat([image, zeros], dim=1)

    @classmethod
    def pipeline_class(cls) -> Any:
        from diffusers import CogVideoXImageToVideoPipeline

        return CogVideoXImageToVideoPipeline

    def render_inputs(self, image: bytes | None) -> dict[str, Any]:
        return pil_image(image)
