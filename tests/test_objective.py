"""The training objective: v-prediction through CogVideoXDPMScheduler, weighted by 1/(1 - alpha_bar_t)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from disney_train.model.load import load_scheduler, load_transformer
from disney_train.train.objective import ModelFacts, diffusion_loss, model_facts, step_generator


class Oracle(torch.nn.Module):
    """A stand-in transformer that knows the clean latents x0 and answers with the true v (or zeros):
    with the true v the loss must be exactly zero under the convention the objective claims."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, exact: bool, channels: int) -> None:
        super().__init__()
        self.x0, self.ac, self.exact, self.channels = x0, alphas_cumprod, exact, channels
        self.config = SimpleNamespace(patch_size_t=None, use_rotary_positional_embeddings=False, ofs_embed_dim=None)
        self.inputs: list[torch.Tensor] = []

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **_: Any) -> tuple[torch.Tensor]:
        self.inputs.append(hidden_states)
        x_t = hidden_states[:, :, : self.channels]
        a = self.ac[timestep].view(-1, 1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        v = a.sqrt() * eps - (1 - a).sqrt() * self.x0
        return (v if self.exact else torch.zeros_like(v),)


def _facts(tiny: Path, i2v: bool = False) -> tuple[Any, ModelFacts]:
    scheduler = load_scheduler(tiny)
    vae = SimpleNamespace(**json.loads((tiny / "vae" / "config.json").read_text()))
    facts = model_facts(load_transformer(tiny), vae, scheduler)
    facts.i2v = i2v
    return scheduler, facts


def _batch(b: int = 2, f: int = 3, c: int = 4, h: int = 4, w: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    mean = torch.randn((b, f, c, h, w), generator=g)
    logvar = torch.full((b, f, c, h, w), -60.0)  # a point mass: the sample is the mean
    return {
        "latent_dist": torch.cat([mean, logvar], dim=2),
        "prompt_embeds": torch.randn((b, 5, 8), generator=g),
        "image_dist": torch.cat([mean[:, :1], logvar[:, :1]], dim=2),
    }


def test_true_velocity_gives_zero_loss_and_zero_output_the_weighted_x0_error(tiny_t2v: Path) -> None:
    scheduler, facts = _facts(tiny_t2v)
    batch = _batch()
    x0 = batch["latent_dist"].chunk(2, dim=2)[0] * facts.scaling_factor
    cpu = torch.device("cpu")
    exact = diffusion_loss(
        Oracle(x0, facts.alphas_cumprod, True, 4), scheduler, facts, batch, step_generator(1, 0, 0), cpu, torch.float32
    )
    assert float(exact) == pytest.approx(0.0, abs=1e-6)

    zero = Oracle(x0, facts.alphas_cumprod, False, 4)
    loss = diffusion_loss(zero, scheduler, facts, batch, step_generator(1, 0, 0), cpu, torch.float32)
    # recompute by hand: with v = 0, x0_pred = sqrt(a) x_t, so the error is sqrt(a) x_t - x0
    g = step_generator(1, 0, 0)
    torch.randn(x0.shape, generator=g)  # the latent sample's draw (a point mass here)
    t = torch.randint(0, facts.num_train_timesteps, (2,), generator=g)
    a = facts.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    x_t = zero.inputs[0]
    expected = ((1 / (1 - a)) * (a.sqrt() * x_t - x0) ** 2).reshape(2, -1).mean(dim=1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) > 0.1


def test_image_to_video_conditions_on_the_first_frame_latent(tiny_i2v: Path) -> None:
    scheduler, facts = _facts(tiny_i2v, i2v=True)
    batch = _batch()
    x0 = batch["latent_dist"].chunk(2, dim=2)[0] * facts.scaling_factor
    oracle = Oracle(x0, facts.alphas_cumprod, True, 4)
    loss = diffusion_loss(
        oracle, scheduler, facts, batch, step_generator(1, 0, 0), torch.device("cpu"), torch.float32, image_dropout=0.0
    )
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    x = oracle.inputs[0]
    assert x.shape == (2, 3, 8, 4, 6)  # noisy latents and the image latents on channels
    torch.testing.assert_close(x[:, 0, 4:], x0[:, 0])  # frame 0: the image's latent
    assert torch.count_nonzero(x[:, 1:, 4:]) == 0  # later frames: zero padding
    diffusion_loss(
        oracle, scheduler, facts, batch, step_generator(1, 0, 0), torch.device("cpu"), torch.float32, image_dropout=1.0
    )
    assert torch.count_nonzero(oracle.inputs[-1][:, :, 4:]) == 0  # dropped: no image at all


def test_steps_are_deterministic_per_seed_step_and_rank(tiny_t2v: Path) -> None:
    from disney_train.config import LoraConfig
    from disney_train.train.lora import add_lora

    scheduler, facts = _facts(tiny_t2v)
    transformer = load_transformer(tiny_t2v)
    add_lora(transformer, LoraConfig(rank=4, alpha=4))
    facts.transformer_config = transformer.config
    batch = _batch(h=8, w=12)
    batch["prompt_embeds"] = torch.randn((2, 226, 32), generator=torch.Generator().manual_seed(3))

    def loss(seed: int, step: int, rank: int) -> float:
        return float(
            diffusion_loss(
                transformer,
                scheduler,
                facts,
                batch,
                step_generator(seed, step, rank),
                torch.device("cpu"),
                torch.float32,
            )
        )

    assert loss(5, 3, 0) == loss(5, 3, 0)
    assert len({loss(5, 3, 0), loss(5, 4, 0), loss(5, 3, 1), loss(6, 3, 0)}) == 4


def test_cogvideox_1_5_image_to_video_shapes_train(tiny_t2v: Path) -> None:
    """CogVideoX 1.5 patches time by 2 (odd latent frame counts are padded), uses 3D rotary
    embeddings and, for i2v, the `ofs` embedding: one forward and backward goes through."""
    from diffusers import CogVideoXTransformer3DModel

    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8,
        out_channels=4,
        time_embed_dim=2,
        ofs_embed_dim=2,
        text_embed_dim=32,
        num_layers=1,
        sample_width=12,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2,
        temporal_compression_ratio=4,
        max_text_seq_length=226,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
        patch_bias=False,
    )
    scheduler = load_scheduler(tiny_t2v)
    vae = SimpleNamespace(
        **{**json.loads((tiny_t2v / "vae" / "config.json").read_text()), "invert_scale_latents": True}
    )
    facts = model_facts(transformer, vae, scheduler)
    assert facts.i2v and facts.image_scaling_factor == 1 / facts.scaling_factor
    seen: list[torch.Tensor] = []
    transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["hidden_states"]), with_kwargs=True)
    batch = _batch(b=1, f=3, h=8, w=12)  # 3 latent frames: padded to 4 for patch_size_t=2
    batch["prompt_embeds"] = torch.randn((1, 226, 32), generator=torch.Generator().manual_seed(1))
    gen = step_generator(0, 0, 0)
    loss = diffusion_loss(
        transformer, scheduler, facts, batch, gen, torch.device("cpu"), torch.float32, image_dropout=0
    )
    assert torch.isfinite(loss)
    # the image latents as the 1.5 i2v pipeline builds them: divided by the factor, then
    # [image, image (time padding), zeros, zeros]
    image = batch["image_dist"].chunk(2, dim=2)[0][:, 0] / facts.scaling_factor
    x = seen[0]
    assert x.shape == (1, 4, 8, 8, 12)
    torch.testing.assert_close(x[:, 0, 4:], image)
    torch.testing.assert_close(x[:, 1, 4:], image)
    assert torch.count_nonzero(x[:, 2:, 4:]) == 0
    loss.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None for p in transformer.parameters() if p.requires_grad)
