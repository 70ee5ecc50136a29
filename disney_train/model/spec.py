"""One model specification per CogVideoX variant: everything that differs between them, in one place.

As finetrainers' `ModelSpecification` does, a specification knows, for its variant, how to encode a
clip (and its conditioning image), how to build the transformer's inputs at training time, the
training target and loss, and which diffusers pipeline renders it. The rest of the engine (cache,
reader, worker, validation, evaluation, generation) asks the specification and never branches on
the variant itself; a new model family is a new specification.

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

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from disney_train.config import RunConfig, TrainOptions
from disney_train.model import load
from disney_train.model.encode import encode_prompts, encode_video_dist, rotary_embeddings, sample_latents

if TYPE_CHECKING:  # the types only (diffusers and transformers load with the components)
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
    from transformers import PreTrainedTokenizerBase, T5EncoderModel

Task = Literal["t2v", "i2v"]
Generation = Literal["1.0", "1.5"]

# the references' image noise: sigma = exp(N(mean, std)) in pixel space ([-1, 1])
IMAGE_NOISE_LOG_MEAN = -3.0
IMAGE_NOISE_LOG_STD = 0.5
OFS = 2.0  # what the CogVideoX 1.5 I2V pipeline passes as `ofs` (its default)


def seeded(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a digest of `parts`: the same draws on every machine and resume."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@dataclass(frozen=True)
class ImageRecipe:
    """How the conditioning image of an image-to-video run is trained (the references' defaults)."""

    noise: bool = True
    draws: int = 4
    dropout: float = 0.05


@dataclass(frozen=True)
class Encoders:
    """The frozen parts: what the cache stage (or, without the cache, every step) runs."""

    vae: AutoencoderKLCogVideoX
    text_encoder: T5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    max_text_length: int


@dataclass(frozen=True)
class CogVideoXSpec:
    """A CogVideoX text-to-video model; `CogVideoXI2V` adds the conditioning image."""

    task: ClassVar[Task] = "t2v"
    description: ClassVar[str] = "text-to-video"
    wants_image: ClassVar[bool] = False  # does a training clip need its conditioning image decoded?
    input_latents: ClassVar[int] = 1  # latent-sized tensors on the transformer's input channels
    transformer_config: Any  # the transformer's config (attribute access)
    vae_config: Any
    scheduler: CogVideoXDPMScheduler  # add_noise, get_velocity, alphas_cumprod
    image: ImageRecipe = ImageRecipe()

    # ------------------------------------------------------------------ what the model is
    @property
    def generation(self) -> Generation:
        return "1.5" if self.transformer_config.patch_size_t else "1.0"

    @property
    def name(self) -> str:
        return f"cogvideox-{self.generation}-{self.task}"

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

    def clean_latents(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """x0 [B, F'', C, h, w]: a sample of each clip's cached distribution, scaled, time-padded."""
        dist = batch["latent_dist"].to(device=device, dtype=torch.float32)
        return self.pad_frames(sample_latents(dist, self.scaling_factor, generator))

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
        self, output: torch.Tensor, noisy: torch.Tensor, latents: torch.Tensor, timesteps: torch.Tensor
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

    # ------------------------------------------------------------------ rendering
    @classmethod
    def pipeline_class(cls) -> Any:
        from diffusers import CogVideoXPipeline

        return CogVideoXPipeline

    def render_inputs(self, image: bytes | None) -> dict[str, Any]:
        """The pipeline's call arguments beyond prompt, size, steps and seed."""
        return {}

    def check_render_images(self, count: int, prompts: int) -> str | None:
        """Why `count` images for `prompts` prompts cannot be rendered (None: they can)."""
        return None if count == 0 else "this is a text-to-video model; images are for image-to-video"


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
        from PIL import Image

        if image is None:
            raise ValueError("an image-to-video model renders from an image")
        return {"image": Image.open(io.BytesIO(image)).convert("RGB")}

    def check_render_images(self, count: int, prompts: int) -> str | None:
        if count in (1, prompts):
            return None
        return f"this is an image-to-video model: give one image, or one per prompt ({prompts}), not {count}"


SPECS: dict[Task, type[CogVideoXSpec]] = {"t2v": CogVideoXSpec, "i2v": CogVideoXI2V}


def model_spec(
    transformer_config: Any, vae_config: Any, scheduler: Any, task: Task, image: ImageRecipe | None = None
) -> CogVideoXSpec:
    return SPECS[task](transformer_config, vae_config, scheduler, image or ImageRecipe())


def model_task(path: Path) -> Task:
    """Which task the model in folder `path` is for, from its configs (no weights read)."""
    from disney_train.model.source import ModelError, check_layout

    check_layout(path)
    transformer, vae = load.component_config(path, "transformer"), load.component_config(path, "vae")
    for task, cls in SPECS.items():
        if cls.fits(transformer, vae):
            return task
    raise ModelError(
        f"{path}: transformer in_channels {transformer['in_channels']} fits no CogVideoX variant "
        f"(vae latent_channels {vae['latent_channels']})"
    )


def check_task(path: Path, task: Task) -> None:
    """Refuse a model folder that is not a `task` model, naming both."""
    from disney_train.model.source import ModelError

    found = model_task(path)
    if found != task:
        raise ModelError(
            f"{path}: this is a {SPECS[found].description} model "
            f"(transformer in_channels vs vae latent_channels), but model.variant is {task!r}"
        )


def image_recipe(train: TrainOptions) -> ImageRecipe:
    return ImageRecipe(noise=train.image_noise, draws=train.image_noise_draws, dropout=train.image_dropout)


def run_spec(cfg: RunConfig, path: Path) -> CogVideoXSpec:
    """The specification a run trains and renders with: its model folder's, with its image recipe."""
    return spec_for(path, cfg.model.variant, image_recipe(cfg.train))


def frozen_encoders(path: Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> Encoders:
    vae, text_encoder, tokenizer = load.load_encoders(path, dtype, device)
    return Encoders(vae, text_encoder, tokenizer, load.max_text_length(path))


def spec_for(path: Path, task: Task, image: ImageRecipe | None = None) -> CogVideoXSpec:
    """The specification of the model in folder `path`, checked to be a `task` model (configs only,
    no weights)."""
    from types import SimpleNamespace

    check_task(path, task)
    transformer = SimpleNamespace(
        **{"patch_size_t": None, "ofs_embed_dim": None, **load.component_config(path, "transformer")}
    )
    vae = SimpleNamespace(**load.component_config(path, "vae"))
    return model_spec(transformer, vae, load.load_scheduler(path), task, image)


@dataclass
class CogVideoXComponents:
    transformer: CogVideoXTransformer3DModel
    vae: AutoencoderKLCogVideoX
    text_encoder: T5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    scheduler: CogVideoXDPMScheduler
    variant: Literal["t2v", "i2v"]
    path: Path


def load_components(
    path: Path, variant: Literal["t2v", "i2v"], dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> CogVideoXComponents:
    check_task(path, variant)
    vae, text_encoder, tokenizer = load.load_encoders(path, dtype, device)
    return CogVideoXComponents(
        transformer=load.load_transformer(path, dtype, device),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=load.load_scheduler(path),
        variant=variant,
        path=path,
    )
