"""The Wan family's specifications (`disney_train.model.base.ModelSpec`): Wan 2.1 text- and image-to-video,
Wan 2.2 A14B's two experts, and Wan 2.2 TI2V-5B.

What differs from CogVideoX, each where diffusers' Wan pipelines (`WanPipeline`,
`WanImageToVideoPipeline`) and finetrainers' Wan specification put it:

- The objective is flow matching: sigma in [0, 1), noisy = (1 - sigma) * x0 + sigma * eps, the
  transformer predicts the velocity eps - x0, the loss is its mean squared error (no weighting,
  finetrainers' default), the mean per sample, then over the batch. The timestep the transformer sees
  is sigma * 1000 (finetrainers: `(sigmas * 1000).long()`). Sigma is u ~ U[0, 1) shifted by the
  model's scheduler's `flow_shift` (3.0 for the 480P models, 5.0 for 720P): shift * u / (1 + (shift - 1) * u),
  the shift the pipeline's scheduler samples with.
- The latents are normalised per channel by the VAE config's `latents_mean` and `latents_std`:
  (z - mean) / std, as the I2V pipeline normalises its condition and denormalises before decoding.
- The text is UMT5's, at the pipeline's 512 tokens: the prompt cleaned as the pipeline cleans it, the
  embeddings cut at each prompt's own length and zero-padded (not the encoder's output for the pad tokens).
- The transformer takes [B, C, F, h, w] (channels before frames); the engine's layout is [B, F, C, h, w].
- Frame counts are 4N + 1 (the VAE compresses time by 4; the transformer does not patch time).
- Image-to-video (2.1 I2V): on channels beside the noisy latents, a mask (4 channels: 1 over the
  first latent frame, the pixel frames the VAE folded into it) and the normalised latents of the
  video [image, 0, ..., 0] (the first frame, then zeros: mid-grey in [-1, 1]; the VAE's mode, as the pipeline's
  `retrieve_latents(..., sample_mode="argmax")`); and the image's CLIP vision embedding (the
  penultimate hidden state) as `encoder_hidden_states_image`. Both are the clip's own, encoded once
  in the cache stage.
- Wan 2.2 A14B (T2V, I2V): two transformers of one architecture; the pipeline denoises the timesteps
  t >= boundary_ratio x 1000 with `transformer` (the high-noise expert) and the rest with `transformer_2`
  (low noise). A run trains one of them (`model.expert`): its sigmas are the shifted U[0, 1) drawn
  on its expert's side of the boundary only (u uniform on that side's interval of u, which is the
  shifted distribution conditioned on the side, as DiffSynth-Studio's min/max_timestep_boundary), so
  the expert sees exactly the timesteps the pipeline gives it. Wan 2.2 I2V has no CLIP encoder: its
  transformer has no `image_dim`, and the pipeline passes no image embedding (as here).
- Wan 2.2 TI2V-5B (`expand_timesteps`): one transformer on the Wan 2.2 VAE (48 channels, space / 16)
  for both tasks; the pipelines give it one timestep per token. Image-to-video puts the image's own
  latents in the first latent frame (timestep 0 on its tokens) rather than on channels, and the
  loss leaves that frame out, as DiffSynth-Studio's TI2V training does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from disney_train.model.base import Encoders, Family, ModelSpec, Task, pil_image
from disney_train.model.encode import encode_video_dist

MAX_TEXT_LENGTH = 512  # WanPipeline's max_sequence_length
Expert = Literal["high", "low"]
# the transformer component each Wan 2.2 expert is, as the pipeline names them
EXPERT_PART: dict[str, str] = {"high": "transformer", "low": "transformer_2"}


def encode_umt5(tokenizer: Any, text_encoder: Any, prompts: list[str], max_length: int, device: Any) -> torch.Tensor:
    """UMT5 embeddings [B, max_length, D] as the Wan pipelines compute them: the attention mask given to
    the encoder, each prompt's embeddings cut at its token count and zero-padded."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    tokens = tokenizer(
        [prompt_clean(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    mask = tokens.attention_mask
    with torch.no_grad():
        out: torch.Tensor = text_encoder(tokens.input_ids.to(device), mask.to(device)).last_hidden_state
    lengths = mask.gt(0).sum(dim=1)
    keep = (torch.arange(max_length)[None, :] < lengths[:, None]).to(device=out.device, dtype=out.dtype)
    embeds: torch.Tensor = out * keep[:, :, None]
    return embeds


@dataclass(frozen=True)
class WanSpec(ModelSpec):
    """Wan 2.1 text-to-video (1.3B, 14B); with `boundary_ratio` and `expert`, one expert of Wan 2.2 T2V-A14B."""

    family: ClassVar[Family] = "wan"
    frame_multiple: ClassVar[int] = 4
    # diffusers' Wan examples load the VAE and the CLIP image encoder in fp32 beside a bf16 transformer; the
    # pipelines cast to and from them (latents to vae.dtype, image embeddings to the transformer's)
    fp32_parts: ClassVar[frozenset[str]] = frozenset({"vae", "image_encoder"})
    boundary_ratio: float | None = None  # Wan 2.2 A14B: model_index.json's; None for Wan 2.1
    expert: Expert | None = None  # Wan 2.2 A14B: the expert a run trains (None: rendering, both)

    def __post_init__(self) -> None:
        if self.expert is not None and self.boundary_ratio is None:
            raise ValueError(f"expert {self.expert!r}: a Wan 2.1 model has one transformer")

    # ------------------------------------------------------------------ what the model is
    @property
    def name(self) -> str:
        if self.boundary_ratio is None:
            return f"wan-2.1-{self.task}"
        return f"wan-2.2-{self.task}" + (f"-{self.expert}-noise" if self.expert else "")

    @property
    def transformer_part(self) -> str:
        return "transformer" if self.expert is None else EXPERT_PART[self.expert]

    @property
    def max_text_length(self) -> int:
        return MAX_TEXT_LENGTH

    def cache_facts(self) -> dict[str, Any]:
        return {"family": self.family}

    @property
    def shift(self) -> float:
        """The scheduler's timestep shift (UniPC's `flow_shift`, FlowMatchEuler's `shift`)."""
        cfg = self.scheduler.config
        return float(cfg.get("flow_shift") or cfg.get("shift") or 1.0)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latents_mean and latents_std, shaped for [B, F, C, h, w]."""
        mean = torch.tensor(self.vae_config.latents_mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.vae_config.latents_std, dtype=like.dtype, device=like.device)
        return mean.view(1, 1, -1, 1, 1), std.view(1, 1, -1, 1, 1)

    # ------------------------------------------------------------------ encoding (cache stage)
    def encode(
        self, enc: Encoders, batch: Mapping[str, Any], device: torch.device, noise_seeds: list[Any]
    ) -> dict[str, torch.Tensor]:
        return {
            "latent_dist": encode_video_dist(enc.vae, batch["video"].to(device)),
            "prompt_embeds": encode_umt5(
                enc.tokenizer, enc.text_encoder, list(batch["prompt"]), enc.max_text_length, device
            ),
        }

    # ------------------------------------------------------------------ training
    def latent_scale(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return (latents - mean) / std

    def shifted(self, u: torch.Tensor) -> torch.Tensor:
        """sigma = shift * u / (1 + (shift - 1) * u): the scheduler's own shift of its sigmas."""
        return self.shift * u / (1 + (self.shift - 1) * u)

    def unshifted(self, sigma: float) -> float:
        """The u that `shifted` takes to `sigma`."""
        return sigma / (self.shift - (self.shift - 1) * sigma)

    @property
    def boundary_timestep(self) -> int:
        """The first integer timestep the pipeline gives the high-noise expert (t >= boundary_ratio x N)."""
        assert self.boundary_ratio is not None
        return math.ceil(self.boundary_ratio * float(self.scheduler.config.num_train_timesteps))

    def draw_noise_levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Flow-matching sigmas: u ~ U[0, 1), shifted as the scheduler shifts; for a Wan 2.2 expert, u
        uniform on its side of the boundary (the same distribution, conditioned on the expert)."""
        u = torch.rand((batch_size,), generator=generator)
        if self.boundary_ratio is None:
            return self.shifted(u)
        return self.expert_sigmas(u)

    def expert_sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """u in [0, 1) -> the sigmas of this run's expert: u mapped onto the expert's side of the
        boundary in u, then shifted; every one's timestep on the expert's side as the pipeline compares them."""
        if self.expert is None:
            raise ValueError("a Wan 2.2 model with two experts trains one of them a run: model.expert high or low")
        at = self.unshifted(self.boundary_timestep / float(self.scheduler.config.num_train_timesteps))
        sigma = self.shifted(at + (1 - at) * u if self.expert == "high" else at * u)
        high = self.timesteps(sigma) >= self.boundary_timestep
        # float rounding at the edge: a sigma on the other side takes the nearest one on the expert's
        inside = high if self.expert == "high" else ~high
        return torch.where(inside, sigma, self.edge_sigma(sigma.dtype))

    def edge_sigma(self, dtype: torch.dtype) -> torch.Tensor:
        """The sigma (in `dtype`) at the boundary on this run's expert's side: the smallest whose timestep
        is the high expert's, or the largest below it for the low expert."""
        n = float(self.scheduler.config.num_train_timesteps)
        sigma = torch.tensor(self.boundary_timestep / n, dtype=dtype)
        one, zero = torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype)
        while int(self.timesteps(sigma)) < self.boundary_timestep:  # at most a few float steps
            sigma = torch.nextafter(sigma, one)
        if self.expert == "low":
            while int(self.timesteps(sigma)) >= self.boundary_timestep:
                sigma = torch.nextafter(sigma, zero)
        return sigma

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        sigma = levels.to(device=latents.device, dtype=latents.dtype).view(-1, 1, 1, 1, 1)
        return (1 - sigma) * latents + sigma * noise

    def timesteps(self, levels: torch.Tensor) -> torch.Tensor:
        return (levels * float(self.scheduler.config.num_train_timesteps)).long()

    def conditioning(self, batch: Mapping[str, torch.Tensor], noisy: torch.Tensor) -> torch.Tensor | None:
        """What goes on the channels beside the noisy latents, [B, F, C', h, w] (None: nothing)."""
        return None

    def transformer_inputs(
        self,
        batch: Mapping[str, torch.Tensor],
        noisy: torch.Tensor,
        levels: torch.Tensor,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        cond = self.conditioning(batch, noisy)
        hidden = noisy if cond is None else torch.cat([noisy, cond], dim=2)
        return {
            "hidden_states": hidden.permute(0, 2, 1, 3, 4).to(dtype),
            "timestep": self.timesteps(levels).to(noisy.device),
            "encoder_hidden_states": batch["prompt_embeds"].to(device=noisy.device, dtype=dtype),
        }

    def loss(
        self,
        output: torch.Tensor,
        noisy: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        levels: torch.Tensor,
    ) -> torch.Tensor:
        """Flow matching: the predicted velocity against eps - x0, the mean per sample, then over the batch."""
        pred = output.float().permute(0, 2, 1, 3, 4)
        loss: torch.Tensor = ((pred - (noise - latents)) ** 2).reshape(latents.shape[0], -1).mean(dim=1).mean()
        return loss

    @classmethod
    def fits(cls, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> bool:
        return int(transformer["in_channels"]) == int(vae["z_dim"])

    @classmethod
    def refusal(cls, transformer: Mapping[str, Any], scheduler: Mapping[str, Any]) -> str | None:
        """The objective is flow matching: the scheduler must be a flow one; Wan 2.1 FLF2V (first and last
        frame: `pos_embed_seq_len`, two images) conditions otherwise."""
        name = scheduler.get("_class_name")
        flow = name == "FlowMatchEulerDiscreteScheduler" or (
            name == "UniPCMultistepScheduler"
            and scheduler.get("use_flow_sigmas")
            and scheduler.get("prediction_type") == "flow_prediction"
        )
        if not flow:
            return (
                f"scheduler {name!r}: a Wan model is trained by flow matching (FlowMatchEulerDiscreteScheduler, or "
                "UniPCMultistepScheduler with use_flow_sigmas and prediction_type flow_prediction)"
            )
        if transformer.get("pos_embed_seq_len"):
            return "a Wan 2.1 FLF2V transformer (pos_embed_seq_len: first and last frame): not supported yet"
        return None

    # ------------------------------------------------------------------ rendering
    @classmethod
    def pipeline_class(cls) -> Any:
        from diffusers import WanPipeline

        return WanPipeline


class _FromAnImage:
    """What the Wan image-to-video specifications share: the task, the pipeline and its image argument."""

    task: ClassVar[Task] = "i2v"
    description: ClassVar[str] = "image-to-video"
    wants_image: ClassVar[bool] = True

    @classmethod
    def pipeline_class(cls) -> Any:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline

    def render_inputs(self, image: bytes | None) -> dict[str, Any]:
        return pil_image(image)


@dataclass(frozen=True)
class WanI2V(_FromAnImage, WanSpec):
    """Wan 2.1 image-to-video (14B 480P, 720P): the mask and the first frame's video latents on
    channels, the image's CLIP embedding beside the text. Wan 2.2 I2V-A14B (one expert): the same
    without CLIP (its transformer has no `image_dim`)."""

    mask_channels: ClassVar[int] = 4  # the VAE's time compression: pixel frames per latent frame

    @property
    def uses_clip(self) -> bool:
        """Does the transformer take a CLIP image embedding (Wan 2.1 I2V), as the pipeline decides it?"""
        return getattr(self.transformer_config, "image_dim", None) is not None

    def cache_facts(self) -> dict[str, Any]:
        facts = {
            **super().cache_facts(),
            "image": {"window": "from-the-first-frame", "condition": "first-frame-then-zeros", "noise": None},
        }
        return facts if self.uses_clip else {**facts, "clip": False}

    def encode(
        self, enc: Encoders, batch: Mapping[str, Any], device: torch.device, noise_seeds: list[Any]
    ) -> dict[str, torch.Tensor]:
        """Adds `condition_dist` [B, F', 2C, h, w] (the VAE's distribution of [image, 0, ..., 0]) and
        (Wan 2.1) `image_embeds` [B, N, D] (CLIP vision, penultimate layer)."""
        if self.uses_clip and (enc.image_encoder is None or enc.image_processor is None):
            raise ValueError(
                "this Wan I2V transformer takes a CLIP image embedding (image_dim), but the model folder has no "
                "image_encoder and image_processor"
            )
        out = super().encode(enc, batch, device, noise_seeds)
        video = batch["video"]
        image = batch["image"].to(device=device, dtype=video.dtype)  # [B, 3, H, W] in [-1, 1]
        first_then_zeros = torch.cat(
            [image[:, None], image.new_zeros((image.shape[0], video.shape[1] - 1, *image.shape[1:]))], dim=1
        )
        out["condition_dist"] = encode_video_dist(enc.vae, first_then_zeros)
        if not self.uses_clip:
            return out
        pixels = ((image.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        inputs = enc.image_processor(images=list(pixels), return_tensors="pt").to(device)
        with torch.no_grad():
            out["image_embeds"] = enc.image_encoder(**inputs, output_hidden_states=True).hidden_states[-2]
        return out

    def conditioning(self, batch: Mapping[str, torch.Tensor], noisy: torch.Tensor) -> torch.Tensor:
        """[mask, condition latents] on channels: the mask 1 over the first latent frame."""
        dist = batch["condition_dist"].to(device=noisy.device, dtype=torch.float32)
        latents = self.latent_scale(dist.chunk(2, dim=2)[0])  # the mode
        mask = latents.new_zeros((*latents.shape[:2], self.mask_channels, *latents.shape[3:]))
        mask[:, 0] = 1
        return torch.cat([mask, latents], dim=2)

    def transformer_inputs(
        self,
        batch: Mapping[str, torch.Tensor],
        noisy: torch.Tensor,
        levels: torch.Tensor,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        inputs = super().transformer_inputs(batch, noisy, levels, generator, dtype)
        if self.uses_clip:
            inputs["encoder_hidden_states_image"] = batch["image_embeds"].to(device=noisy.device, dtype=dtype)
        return inputs

    @classmethod
    def fits(cls, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> bool:
        return int(transformer["in_channels"]) == 2 * int(vae["z_dim"]) + cls.mask_channels

    @classmethod
    def needs_parts(cls, transformer: Mapping[str, Any]) -> frozenset[str]:
        """Wan 2.1 I2V's CLIP (its transformer takes the embedding: `image_dim`); not Wan 2.2's."""
        return frozenset({"image_encoder", "image_processor"}) if transformer.get("image_dim") else frozenset()


@dataclass(frozen=True)
class WanTI2V(WanSpec):
    """Wan 2.2 TI2V-5B as text-to-video: one 5B transformer on the Wan 2.2 VAE (48 latent channels, 16x
    space compression), whose pipeline gives the transformer one timestep per token (`expand_timesteps`)."""

    size_multiple: ClassVar[int] = 32  # the VAE's 16 times the 2x2 patch

    @property
    def name(self) -> str:
        return f"wan-2.2-ti2v-5b-{self.task}"

    def cache_facts(self) -> dict[str, Any]:
        return {**super().cache_facts(), "expand_timesteps": True}

    def token_timesteps(self, levels: torch.Tensor, noisy: torch.Tensor, clean_first: bool) -> torch.Tensor:
        """[B, tokens]: each sample's timestep on every token, as the pipeline expands it (0 on the first
        latent frame's tokens when that frame is the clean image, `clean_first`)."""
        patch = self.transformer_config.patch_size
        frames, height, width = noisy.shape[1], noisy.shape[3] // patch[1], noisy.shape[4] // patch[2]
        mask = torch.ones((frames, height, width), device=noisy.device)
        if clean_first:
            mask[0] = 0
        return mask.flatten()[None, :] * self.timesteps(levels).to(noisy.device)[:, None]

    def transformer_inputs(
        self,
        batch: Mapping[str, torch.Tensor],
        noisy: torch.Tensor,
        levels: torch.Tensor,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        """Image-to-video: the image's latents as the first frame, whose tokens get timestep 0."""
        hidden = self.with_image(batch, noisy) if self.wants_image else noisy
        inputs = super().transformer_inputs(batch, hidden, levels, generator, dtype)
        inputs["timestep"] = self.token_timesteps(levels, hidden, clean_first=self.wants_image)
        return inputs

    def with_image(self, batch: Mapping[str, torch.Tensor], noisy: torch.Tensor) -> torch.Tensor:
        """The noisy latents with the image's latents as their first frame."""
        dist = batch["condition_dist"].to(device=noisy.device, dtype=torch.float32)
        first = self.latent_scale(dist.chunk(2, dim=2)[0])  # the mode, [B, 1, C, h, w]
        return torch.cat([first.to(noisy.dtype), noisy[:, 1:]], dim=1)

    @classmethod
    def fits(cls, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> bool:
        return int(transformer["in_channels"]) == int(vae["z_dim"])


@dataclass(frozen=True)
class WanTI2VImage(_FromAnImage, WanTI2V):
    """Wan 2.2 TI2V-5B as image-to-video: the image's normalised latents (its own one-frame encoding, the
    VAE's mode) take the first latent frame's place in the noisy latents, with timestep 0 on its tokens;
    the loss leaves that frame out (DiffSynth-Studio's TI2V training: `noise_pred[:, :, 1:]`)."""

    min_frames: ClassVar[int] = 5  # a frame beside the image's: two latent frames

    def cache_facts(self) -> dict[str, Any]:
        return {**super().cache_facts(), "image": {"window": "from-the-first-frame", "condition": "the-image-alone"}}

    def encode(
        self, enc: Encoders, batch: Mapping[str, Any], device: torch.device, noise_seeds: list[Any]
    ) -> dict[str, torch.Tensor]:
        """Adds `condition_dist` [B, 1, 2C, h, w]: the VAE's distribution of the image as a one-frame video."""
        out = super().encode(enc, batch, device, noise_seeds)
        image = batch["image"].to(device=device, dtype=batch["video"].dtype)  # [B, 3, H, W] in [-1, 1]
        out["condition_dist"] = encode_video_dist(enc.vae, image[:, None])
        return out

    def loss(
        self,
        output: torch.Tensor,
        noisy: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        levels: torch.Tensor,
    ) -> torch.Tensor:
        """As T2V, over the frames after the first (the image's, given, not predicted)."""
        return super().loss(output[:, :, 1:], noisy[:, 1:], latents[:, 1:], noise[:, 1:], levels)
