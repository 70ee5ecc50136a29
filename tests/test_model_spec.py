"""The model specifications against diffusers' own CogVideoX pipelines (issue 17).

For each of the four variants, the diffusers pipeline runs one denoising step on a tiny model of that
variant with a hook on the transformer's forward; what the specification builds at training time for
the same frames, size, image, prompt and timestep must match what the pipeline fed the transformer:
the shapes, the conditioning frames (image, zeros, time padding) value for value, the rotary
embeddings, `ofs` and the prompt embeddings. The loss is checked against diffusers' example script's
own lines on the same tensors.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from disney_train.data.reader import decode_image
from disney_train.model.base import ImageRecipe, ModelSpec, seeded
from disney_train.model.cogvideox import IMAGE_NOISE_LOG_MEAN, IMAGE_NOISE_LOG_STD, CogVideoXI2V, CogVideoXSpec
from disney_train.model.spec import frozen_encoders, spec_for
from disney_train.model.tiny import LATENT_CHANNELS, write_tiny_model
from tests.support.pipeline_hook import first_step_inputs, noise_png

FRAMES, HEIGHT, WIDTH = 9, 64, 96  # 9 frames: 3 latent frames, odd: CogVideoX 1.5 pads them to 4
PROMPT = "A cartoon mouse whistles at the wheel of a steamboat."
# (task, generation, like the 5b): 1.0 as the 2b (sinusoidal positions) and as the 5b and 5b-I2V
# (3D RoPE; the I2V also learned positions)
VARIANTS = {
    "cogvideox-1.0-t2v": ("t2v", "1.0", False),
    "cogvideox-1.0-t2v-5b": ("t2v", "1.0", True),
    "cogvideox-1.0-i2v": ("i2v", "1.0", False),
    "cogvideox-1.0-i2v-5b": ("i2v", "1.0", True),
    "cogvideox-1.5-t2v": ("t2v", "1.5", False),
    "cogvideox-1.5-i2v": ("i2v", "1.5", False),
}
EXACT = ImageRecipe(noise=False, draws=1, dropout=0.0)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    task, generation, like_5b = VARIANTS[request.param]
    path = write_tiny_model(tmp_path_factory.mktemp(request.param), task, 3, generation, like_5b)  # type: ignore[arg-type]
    return request.param, path


def _pipeline_inputs(spec: ModelSpec, path: Path, image: bytes, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the diffusers pipeline passes to the transformer at its first step (no guidance: one
    batch entry). The image's latents are the VAE's mode, not a sample, so that values compare."""
    import diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video as i2v_pipeline

    monkeypatch.setattr(
        i2v_pipeline, "retrieve_latents", lambda out, generator=None, sample_mode="sample": out.latent_dist.mode()
    )
    return first_step_inputs(spec, path, PROMPT, (FRAMES, HEIGHT, WIDTH), image)


def _training_inputs(
    spec: ModelSpec, path: Path, image: bytes, timestep: torch.Tensor
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What training builds for the same frames, size, image and prompt: the entry the cache stage
    encodes (from a random video of the same shape), then one step's transformer inputs."""
    enc = frozen_encoders(path)
    video = torch.rand((1, FRAMES, 3, HEIGHT, WIDTH)) * 2 - 1
    batch: dict[str, Any] = {"video": video, "prompt": [PROMPT]}
    if spec.wants_image:
        batch["image"] = decode_image(image, SimpleNamespace(width=WIDTH, height=HEIGHT))[None]  # type: ignore[arg-type]
    entry = spec.encode(enc, batch, torch.device("cpu"), ["parity"])
    if "image_dist" in entry:  # a point mass at the mean: the sample is the VAE's mode, as in the pipeline
        mean, logvar = entry["image_dist"].chunk(2, dim=2)
        entry["image_dist"] = torch.cat([mean, torch.full_like(logvar, -60.0)], dim=2)
    g = torch.Generator().manual_seed(1)
    latents = spec.clean_latents(entry, g, torch.device("cpu"))
    noisy = spec.scheduler.add_noise(latents, torch.randn(latents.shape, generator=g), timestep)
    return spec.transformer_inputs(entry, noisy, timestep, g, torch.float32), entry


def test_training_inputs_are_what_the_diffusers_pipeline_feeds_the_transformer(
    variant: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, path = variant
    task, generation, like_5b = VARIANTS[name]
    spec = spec_for(path, task, EXACT)  # type: ignore[arg-type]
    assert isinstance(spec, CogVideoXSpec)
    assert spec.name == name.removesuffix("-5b") and spec.generation == generation
    rope = like_5b or generation == "1.5"
    assert spec.transformer_config.use_rotary_positional_embeddings == rope
    image = noise_png(HEIGHT, WIDTH)
    seen = _pipeline_inputs(spec, path, image, monkeypatch)
    mine, _ = _training_inputs(spec, path, image, seen["timestep"].long())

    want, got = seen["hidden_states"], mine["hidden_states"]
    assert got.shape == want.shape  # frames (with 1.5's time padding), channels (+ the image's), size
    torch.testing.assert_close(got[:, :, LATENT_CHANNELS:], want[:, :, LATENT_CHANNELS:], rtol=1e-4, atol=1e-5)
    if spec.wants_image:  # the layout itself: the image in the first latent frame, zeros after it
        assert torch.count_nonzero(want[:, 0, LATENT_CHANNELS:]) > 0
        assert torch.count_nonzero(want[:, 1:, LATENT_CHANNELS:]) == 0
    assert (seen["image_rotary_emb"] is not None) == rope
    if seen["image_rotary_emb"] is None:
        assert mine["image_rotary_emb"] is None
    else:
        for a, b in zip(mine["image_rotary_emb"], seen["image_rotary_emb"], strict=True):
            torch.testing.assert_close(a, b)
    if seen.get("ofs") is None:
        assert mine["ofs"] is None
    else:
        torch.testing.assert_close(mine["ofs"], seen["ofs"])
    torch.testing.assert_close(mine["encoder_hidden_states"], seen["encoder_hidden_states"], rtol=1e-4, atol=1e-5)
    assert generation == "1.0" or want.shape[1] % 2 == 0  # 1.5: padded to patch_size_t


def test_loss_is_the_example_scripts_formula(variant: tuple[str, Path]) -> None:
    """diffusers' train_cogvideox_lora.py (and its I2V twin), on the same tensors."""
    name, path = variant
    spec = spec_for(path, VARIANTS[name][0], EXACT)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(2)
    model_input = torch.randn((2, 4, LATENT_CHANNELS, 8, 12), generator=g)
    noisy_model_input = torch.randn(model_input.shape, generator=g)
    model_output = torch.randn(model_input.shape, generator=g)
    timesteps = torch.tensor([17, 901])
    scheduler = spec.scheduler
    # --- the example script's lines
    model_pred = scheduler.get_velocity(model_output, noisy_model_input, timesteps)
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    weights = 1 / (1 - alphas_cumprod)
    while len(weights.shape) < len(model_pred.shape):
        weights = weights.unsqueeze(-1)
    target = model_input
    loss = torch.mean((weights * (model_pred - target) ** 2).reshape(2, -1), dim=1)
    loss = loss.mean()
    # ---
    mine = spec.loss(model_output, noisy_model_input, model_input, torch.zeros_like(model_input), timesteps)
    torch.testing.assert_close(mine, loss.to(mine.dtype), rtol=1e-5, atol=1e-6)  # the engine computes in fp32


@pytest.fixture(scope="module")
def tiny_i2v_15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-i2v-15"), "i2v", generation="1.5")


def test_image_noise_draws_are_the_references_and_each_step_takes_one(tiny_i2v_15: Path) -> None:
    """sigma = exp(N(-3, 0.5)) per noised copy, as both reference I2V trainers draw it; the cache
    entry keeps `draws` encodings, the same for the same seed; a step conditions on one of them."""
    spec = spec_for(tiny_i2v_15, "i2v", ImageRecipe(noise=True, draws=4, dropout=0.0))
    assert isinstance(spec, CogVideoXI2V)
    image = torch.zeros((3, 16, 16))
    copies = spec.noised_images(image, 4000, seeded("sigma"))
    sigmas = copies.reshape(4000, -1).std(dim=1)
    assert float(sigmas.log().mean()) == pytest.approx(IMAGE_NOISE_LOG_MEAN, abs=0.05)
    assert float(sigmas.log().std()) == pytest.approx(IMAGE_NOISE_LOG_STD, abs=0.05)
    torch.testing.assert_close(spec.noised_images(image, 3, seeded("a")), spec.noised_images(image, 3, seeded("a")))
    clean = spec_for(tiny_i2v_15, "i2v", ImageRecipe(noise=False, draws=4))
    assert isinstance(clean, CogVideoXI2V)
    assert torch.equal(clean.noised_images(image, 4, seeded("a")), image[None])  # off: one clean copy

    enc = frozen_encoders(tiny_i2v_15)
    batch = {
        "video": torch.zeros((1, FRAMES, 3, HEIGHT, WIDTH)),
        "prompt": [PROMPT],
        "image": torch.zeros((1, 3, HEIGHT, WIDTH)),
    }
    entry = spec.encode(enc, batch, torch.device("cpu"), ["clip"])
    assert entry["image_dist"].shape == (1, 4, 2 * LATENT_CHANNELS, HEIGHT // 8, WIDTH // 8)
    means = entry["image_dist"][0, :, :LATENT_CHANNELS]
    assert len({float(m.sum()) for m in means}) == 4  # four different noised encodings
    torch.testing.assert_close(
        spec.encode(enc, batch, torch.device("cpu"), ["clip"])["image_dist"], entry["image_dist"]
    )
    assert clean.encode(enc, batch, torch.device("cpu"), ["clip"])["image_dist"].shape[1] == 1

    # a step's conditioning frame is one of the four (the logvar made a point mass: no sampling noise)
    entry["image_dist"][:, :, LATENT_CHANNELS:] = -60.0
    noisy = torch.zeros((1, 4, LATENT_CHANNELS, HEIGHT // 8, WIDTH // 8))
    picked = set()
    for step in range(24):
        cond = spec.conditioning(entry, noisy, seeded("step", step))
        first = cond[0, 0] * spec.scaling_factor  # the 1.5 pipeline divides by the factor: undo it
        match = [k for k in range(4) if torch.allclose(first, means[k], rtol=1e-5, atol=1e-5)]
        assert len(match) == 1 and torch.count_nonzero(cond[0, 1:]) == 0
        picked.add(match[0])
    assert len(picked) > 1
