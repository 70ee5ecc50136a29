"""What every model specification is: the contract between a model family and the engine.

A specification (`disney_train.model.cogvideox`, `disney_train.model.wan`) knows, for its family and
task, how to encode a clip (and its conditioning image), how to draw a step's noise level and noise
the latents, the transformer's inputs, the training target and loss, and which diffusers pipeline
renders it. The engine (cache, reader, worker, validation, evaluation, generation) asks the
specification and never branches on the family or the task itself; a new model family is a new
specification.

Tensor layout shared by the engine: a clip's latents are [B, F', C, h, w] (frames before channels)
and the cache keeps the VAE's distribution as [B, F', 2C, h, w]; a family whose transformer wants
another layout permutes in `transformer_inputs` and `loss`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from disney_train.model.encode import sample_latents

Task = Literal["t2v", "i2v"]
Family = Literal["cogvideox", "wan"]


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
    """The frozen parts: what the cache stage (or, without the cache, every step) runs. The image
    encoder and its processor are Wan 2.1 I2V's CLIP vision model (None elsewhere)."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    max_text_length: int
    image_encoder: Any = None
    image_processor: Any = None


@dataclass(frozen=True)
class ModelSpec:
    """One family and task. Subclasses fill in the methods; the fields are the model's own configs."""

    family: ClassVar[Family]
    task: ClassVar[Task] = "t2v"
    description: ClassVar[str] = "text-to-video"
    wants_image: ClassVar[bool] = False  # does a training clip need its conditioning image decoded?
    frame_multiple: ClassVar[int] = 8  # frame counts are frame_multiple * N + 1
    size_multiple: ClassVar[int] = 16  # heights and widths: the VAE's space compression times the patch
    min_frames: ClassVar[int] = 1
    # frozen parts kept in fp32 whatever the run's precision (bf16 on GPUs), as the family's references load them
    fp32_parts: ClassVar[frozenset[str]] = frozenset()
    transformer_config: Any  # the transformer's config (attribute access)
    vae_config: Any
    scheduler: Any  # the model folder's scheduler (its config: num_train_timesteps, shift, ...)
    image: ImageRecipe = ImageRecipe()

    # ------------------------------------------------------------------ what the model is
    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def transformer_part(self) -> str:
        """The model folder's transformer this run trains (Wan 2.2's low-noise expert: `transformer_2`); its
        LoRA loads into that part of the pipeline."""
        return "transformer"

    @property
    def max_text_length(self) -> int:
        """The text encoder's sequence length the pipeline uses (prompts are padded or cut to it)."""
        raise NotImplementedError

    def cache_facts(self) -> dict[str, Any]:
        """What, besides the model files and the frames, changes a cache entry of this variant."""
        return {}

    # ------------------------------------------------------------------ encoding (cache stage)
    def encode(
        self, enc: Encoders, batch: Mapping[str, Any], device: torch.device, noise_seeds: list[Any]
    ) -> dict[str, torch.Tensor]:
        """A batch of decoded clips -> what training reads: at least the VAE's latent distribution
        `latent_dist` [B, F', 2C, h, w] and the text embeddings `prompt_embeds` [B, L, D].
        `noise_seeds` (one per clip) seed what encoding draws."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def latent_scale(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents [B, F', C, h, w] -> the transformer's latent space."""
        raise NotImplementedError

    def clean_latents(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """x0 [B, F', C, h, w]: a sample of each clip's cached distribution, in the model's latent space."""
        dist = batch["latent_dist"].to(device=device, dtype=torch.float32)
        return self.latent_scale(sample_latents(dist, 1.0, generator))

    def draw_noise_levels(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """One noise level per sample (the family's: a DDPM timestep, a flow-matching sigma)."""
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transformer_inputs(
        self,
        batch: Mapping[str, torch.Tensor],
        noisy: torch.Tensor,
        levels: torch.Tensor,
        generator: torch.Generator,
        dtype: torch.dtype,
    ) -> dict[str, Any]:
        """The keyword arguments of the transformer's forward, as the diffusers pipeline passes them."""
        raise NotImplementedError

    def loss(
        self,
        output: torch.Tensor,
        noisy: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        levels: torch.Tensor,
    ) -> torch.Tensor:
        """The scalar training loss of the transformer's output (fp32)."""
        raise NotImplementedError

    @classmethod
    def fits(cls, transformer: Mapping[str, Any], vae: Mapping[str, Any]) -> bool:
        """Is a model of this family with these configs one of this task?"""
        raise NotImplementedError

    @classmethod
    def needs_parts(cls, transformer: Mapping[str, Any]) -> frozenset[str]:
        """The pipeline components beyond the VAE, text encoder and tokenizer that this model's encoding
        needs (checked in model_index.json when the folder is read, not when the cache stage runs)."""
        return frozenset()

    @classmethod
    def refusal(cls, transformer: Mapping[str, Any], scheduler: Mapping[str, Any]) -> str | None:
        """Why a model that fits this variant still cannot be trained as it (None: it can): a scheduler of
        another objective, a model of the family this specification does not cover."""
        return None

    # ------------------------------------------------------------------ rendering
    @classmethod
    def pipeline_class(cls) -> Any:
        raise NotImplementedError

    def render_inputs(self, image: bytes | None) -> dict[str, Any]:
        """The pipeline's call arguments beyond prompt, size, steps and seed."""
        return {}

    def check_render_images(self, count: int, prompts: int) -> str | None:
        """Why `count` images for `prompts` prompts cannot be rendered (None: they can)."""
        if self.wants_image:
            if count in (1, prompts):
                return None
            return f"this is an image-to-video model: give one image, or one per prompt ({prompts}), not {count}"
        return None if count == 0 else "this is a text-to-video model; images are for image-to-video"


def pil_image(image: bytes | None) -> dict[str, Any]:
    """The `image` argument of an image-to-video pipeline."""
    import io

    from PIL import Image

    if image is None:
        raise ValueError("an image-to-video model renders from an image")
    return {"image": Image.open(io.BytesIO(image)).convert("RGB")}
