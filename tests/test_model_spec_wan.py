"""The Wan specifications against diffusers' own Wan pipelines and scheduler (issue 21).

As for CogVideoX (tests/test_model_spec.py): the diffusers pipeline (`WanPipeline`,
`WanImageToVideoPipeline`) runs one denoising step on a tiny Wan with a hook on the transformer's
forward; what the specification builds at training time for the same frames, size, image, prompt
and timestep must be what the pipeline fed the transformer: the layout and shapes, the timestep, the
UMT5 embeddings (cut and zero-padded at 512), and for I2V the mask and condition latents value for
value and the CLIP image embedding. The flow-matching objective is checked against the model's own
scheduler (its sigmas, its noising, its flow prediction) and finetrainers' formula.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from disney_train.data.reader import decode_image
from disney_train.model.base import ImageRecipe, ModelSpec
from disney_train.model.spec import frozen_encoders, spec_for
from disney_train.model.tiny_wan import LATENT_CHANNELS, MASK_CHANNELS
from disney_train.model.wan import MAX_TEXT_LENGTH, WanI2V, WanSpec
from tests.support.pipeline_hook import first_step_inputs, noise_png

FRAMES, HEIGHT, WIDTH = 9, 64, 96  # 9 frames: 3 latent frames (Wan: 4N+1)
PROMPT = "A cartoon  mouse &amp; a cat whistle on a steamboat. "  # the pipeline unescapes and cleans it


def _training_inputs(spec: ModelSpec, path: Path, image: bytes, levels: torch.Tensor) -> dict[str, Any]:
    """What training builds for the same prompt, frames, size and image at noise level `levels` (sigma)."""
    enc = frozen_encoders(path, spec=spec)
    video = torch.rand((1, FRAMES, 3, HEIGHT, WIDTH)) * 2 - 1
    batch: dict[str, Any] = {"video": video, "prompt": [PROMPT]}
    if spec.wants_image:
        batch["image"] = decode_image(image, SimpleNamespace(width=WIDTH, height=HEIGHT))[None]  # type: ignore[arg-type]
    entry = spec.encode(enc, batch, torch.device("cpu"), ["parity"])
    g = torch.Generator().manual_seed(1)
    latents = spec.clean_latents(entry, g, torch.device("cpu"))
    noisy = spec.add_noise(latents, torch.randn(latents.shape, generator=g), levels)
    return spec.transformer_inputs(entry, noisy, levels, g, torch.float32)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_training_inputs_are_what_the_wan_pipeline_feeds_the_transformer(
    task: str, tiny_wan_t2v: Path, tiny_wan_i2v: Path
) -> None:
    path = tiny_wan_i2v if task == "i2v" else tiny_wan_t2v
    spec = spec_for(path, task, ImageRecipe(noise=False, draws=1, dropout=0.0))  # type: ignore[arg-type]
    assert isinstance(spec, WanI2V if task == "i2v" else WanSpec) and spec.name == f"wan-2.1-{task}"
    image = noise_png(HEIGHT, WIDTH)
    seen = first_step_inputs(spec, path, PROMPT, (FRAMES, HEIGHT, WIDTH), image)
    # the sigma of the pipeline's first step, from the model's own scheduler: its timestep must be the one the
    # pipeline gave the transformer
    spec.scheduler.set_timesteps(1)
    mine = _training_inputs(spec, path, image, spec.scheduler.sigmas[:1])

    want, got = seen["hidden_states"], mine["hidden_states"]
    assert (
        got.shape
        == want.shape
        == (1, LATENT_CHANNELS * (2 if task == "i2v" else 1) + (4 if task == "i2v" else 0), 3, 8, 12)
    )
    assert torch.equal(mine["timestep"], seen["timestep"].long())
    text, their_text = mine["encoder_hidden_states"], seen["encoder_hidden_states"]
    assert text.shape == their_text.shape and text.shape[1] == MAX_TEXT_LENGTH
    torch.testing.assert_close(text, their_text, rtol=1e-4, atol=1e-5)
    tokens = int((text[0].abs().sum(dim=1) > 0).sum())
    assert 3 < tokens < 40 and torch.count_nonzero(text[0, tokens:]) == 0  # cut at the prompt and zero-padded
    if task == "i2v":  # the mask, then the condition latents of [image, 0, ...], value for value
        cond, their_cond = got[:, LATENT_CHANNELS:], want[:, LATENT_CHANNELS:]
        torch.testing.assert_close(cond, their_cond, rtol=1e-4, atol=1e-4)
        mask = their_cond[:, :MASK_CHANNELS]
        assert torch.all(mask[:, :, 0] == 1) and torch.count_nonzero(mask[:, :, 1:]) == 0
        torch.testing.assert_close(
            mine["encoder_hidden_states_image"], seen["encoder_hidden_states_image"], rtol=1e-4, atol=1e-5
        )
    else:
        assert "encoder_hidden_states_image" not in mine and seen.get("encoder_hidden_states_image") is None


def test_sigmas_noising_and_target_are_the_schedulers(tiny_wan_t2v: Path) -> None:
    """The shift is the scheduler's (its sigma grid from the same u), the noising is its `add_noise`, and
    the target eps - x0 is what its flow prediction means: from x_t and the target it recovers x0."""
    spec = spec_for(tiny_wan_t2v, "t2v")
    assert isinstance(spec, WanSpec) and spec.shift == 3.0
    scheduler = spec.pipeline_class().from_pretrained(str(tiny_wan_t2v)).scheduler
    n = 10
    scheduler.set_timesteps(n)
    u = torch.from_numpy(np.linspace(1, 1 / 1000, n + 1)[:-1])
    torch.testing.assert_close(spec.shifted(u)[1:], scheduler.sigmas[1:n].double(), rtol=1e-5, atol=1e-6)

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn((1, 16, 3, 4, 6), generator=g)  # the scheduler's layout, [B, C, F, h, w]
    noise = torch.randn(x0.shape, generator=g)
    for i in (2, 7):
        sigma = scheduler.sigmas[i].reshape(1)
        theirs = scheduler.add_noise(x0, noise, scheduler.timesteps[i].reshape(1))
        torch.testing.assert_close(spec.add_noise(x0, noise, sigma), theirs, rtol=1e-5, atol=1e-5)
        scheduler._step_index = i
        recovered = scheduler.convert_model_output(noise - x0, sample=theirs)
        torch.testing.assert_close(recovered, x0, rtol=1e-4, atol=1e-4)


def test_loss_is_finetrainers_flow_matching_formula(tiny_wan_t2v: Path) -> None:
    """finetrainers' Wan specification: noisy = (1 - sigma) x0 + sigma eps, target = eps - x0, the squared
    error unweighted ("none"), the mean per sample, then over the batch; the timestep (sigma * 1000).long()."""
    spec = spec_for(tiny_wan_t2v, "t2v")
    assert isinstance(spec, WanSpec)
    g = torch.Generator().manual_seed(2)
    latents = torch.randn((2, 3, LATENT_CHANNELS, 4, 6), generator=g)  # the engine's layout, [B, F, C, h, w]
    noise = torch.randn(latents.shape, generator=g)
    output = torch.randn((2, LATENT_CHANNELS, 3, 4, 6), generator=g)  # the transformer's, [B, C, F, h, w]
    sigmas = spec.draw_noise_levels(2, torch.Generator().manual_seed(4))
    # --- the reference's lines (in the transformer's layout)
    x0, eps = latents.permute(0, 2, 1, 3, 4), noise.permute(0, 2, 1, 3, 4)
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy_ref = (1.0 - s) * x0 + s * eps
    timesteps = (sigmas.flatten() * 1000.0).long()
    target = eps - x0
    loss_ref = ((output - target) ** 2).flatten(1).mean(dim=1).mean()
    # ---
    noisy = spec.add_noise(latents, noise, sigmas)
    torch.testing.assert_close(noisy.permute(0, 2, 1, 3, 4), noisy_ref)
    assert torch.equal(spec.timesteps(sigmas), timesteps)
    torch.testing.assert_close(spec.loss(output, noisy, latents, noise, sigmas), loss_ref)


def test_latents_are_normalised_by_the_vaes_statistics(tiny_wan_t2v: Path) -> None:
    """(z - latents_mean) / latents_std per channel, the inverse of what the pipeline does before decoding."""
    spec = spec_for(tiny_wan_t2v, "t2v")
    cfg = spec.vae_config
    z = torch.randn((1, 2, LATENT_CHANNELS, 2, 2))
    scaled = spec.latent_scale(z)
    mean = torch.tensor(cfg.latents_mean).view(1, 1, -1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, 1, -1, 1, 1)
    decoded_side = scaled / (1.0 / std) + mean  # the pipeline's `latents / latents_std + latents_mean` (1/std)
    torch.testing.assert_close(decoded_side, z)


def test_a_folder_of_another_family_or_task_is_refused(tiny_wan_t2v: Path, tiny_t2v: Path) -> None:
    from disney_train.model.source import ModelError

    with pytest.raises(ModelError, match=r"this is a wan model \(model_index.json\), but model.family is 'cogvideox'"):
        spec_for(tiny_wan_t2v, "t2v", family="cogvideox")
    with pytest.raises(ModelError, match=r"this is a cogvideox model .* but model.family is 'wan'"):
        spec_for(tiny_t2v, "t2v", family="wan")
    with pytest.raises(ModelError, match=r"text-to-video model .* but model.variant is 'i2v'"):
        spec_for(tiny_wan_t2v, "i2v", family="wan")


def _edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("family", "case", "message"),
    [
        ("wan", "a DDIM scheduler", "a Wan model is trained by flow matching"),
        ("wan", "UniPC without flow sigmas", "a Wan model is trained by flow matching"),
        ("wan", "FLF2V", "a Wan 2.1 FLF2V transformer .* not supported yet"),
        ("wan", "CogVideoX's VAE", "fits no wan variant"),
        ("cogvideox", "a DDPM scheduler", "a CogVideoX model is trained with CogVideoXDDIMScheduler or"),
    ],
)
def test_a_folder_whose_parts_train_another_objective_is_refused(
    family: str, case: str, message: str, tmp_path: Path, tiny_wan_i2v: Path, tiny_t2v: Path
) -> None:
    """The scheduler is part of the objective (the family's: flow matching, or CogVideoX's zero-SNR schedule)
    and is read from the folder: one of another objective is refused before anything is trained; as are a
    variant of the family no specification covers and a folder mixing the families' parts."""
    import shutil

    from disney_train.model.source import ModelError

    path = Path(shutil.copytree(tiny_wan_i2v if family == "wan" else tiny_t2v, tmp_path / "model"))
    scheduler, transformer = path / "scheduler" / "scheduler_config.json", path / "transformer" / "config.json"
    if case == "a DDIM scheduler":
        _edit_json(scheduler, _class_name="DDIMScheduler")
    elif case == "UniPC without flow sigmas":
        _edit_json(scheduler, use_flow_sigmas=False)
    elif case == "FLF2V":
        _edit_json(transformer, pos_embed_seq_len=514)
    elif case == "CogVideoX's VAE":
        shutil.rmtree(path / "vae")
        shutil.copytree(tiny_t2v / "vae", path / "vae")
    else:
        _edit_json(scheduler, _class_name="DDPMScheduler")
    task = "i2v" if family == "wan" else "t2v"
    with pytest.raises(ModelError, match=message):
        spec_for(path, task, family=family)  # type: ignore[arg-type]


def test_the_wan_vae_and_clip_encoder_stay_fp32_beside_a_bf16_run(tiny_wan_i2v: Path, tiny_t2v: Path) -> None:
    """GPU runs are bf16; Wan's VAE and CLIP image encoder are kept in fp32 (as diffusers' Wan examples load
    them) in the cache stage and in rendering, the text encoder and transformer in bf16; CogVideoX's all bf16."""
    from disney_train.generate import load_pipeline

    spec = spec_for(tiny_wan_i2v, "i2v", family="wan")
    enc = frozen_encoders(tiny_wan_i2v, torch.bfloat16, spec=spec)
    assert (enc.vae.dtype, enc.image_encoder.dtype, enc.text_encoder.dtype) == (
        torch.float32,
        torch.float32,
        torch.bfloat16,
    )
    pipe = load_pipeline(tiny_wan_i2v, spec, "cpu", torch.bfloat16)
    assert (pipe.vae.dtype, pipe.image_encoder.dtype, pipe.transformer.dtype) == (
        torch.float32,
        torch.float32,
        torch.bfloat16,
    )
    cog = frozen_encoders(tiny_t2v, torch.bfloat16)
    assert cog.vae.dtype == cog.text_encoder.dtype == torch.bfloat16
