"""The training objective: v-prediction through CogVideoXDPMScheduler, weighted by 1/(1 - alpha_bar_t)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from disney_train.model.base import ImageRecipe
from disney_train.model.cogvideox import CogVideoXSpec
from disney_train.model.load import load_transformer
from disney_train.model.spec import spec_for
from disney_train.train.objective import diffusion_loss, step_generator


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


def _spec(tiny: Path, i2v: bool = False, dropout: float = 0.0) -> CogVideoXSpec:
    spec = spec_for(tiny, "i2v" if i2v else "t2v", ImageRecipe(noise=False, draws=1, dropout=dropout))
    assert isinstance(spec, CogVideoXSpec)
    return spec


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
    spec = _spec(tiny_t2v)
    ac = spec.scheduler.alphas_cumprod
    batch = _batch()
    x0 = batch["latent_dist"].chunk(2, dim=2)[0] * spec.scaling_factor
    cpu = torch.device("cpu")
    exact = diffusion_loss(Oracle(x0, ac, True, 4), spec, batch, step_generator(1, 0, 0), cpu, torch.float32)
    assert float(exact) == pytest.approx(0.0, abs=1e-6)

    zero = Oracle(x0, ac, False, 4)
    loss = diffusion_loss(zero, spec, batch, step_generator(1, 0, 0), cpu, torch.float32)
    # recompute by hand: with v = 0, x0_pred = sqrt(a) x_t, so the error is sqrt(a) x_t - x0
    g = step_generator(1, 0, 0)
    torch.randn(x0.shape, generator=g)  # the latent sample's draw (a point mass here)
    t = torch.randint(0, 1000, (2,), generator=g)
    a = ac[t].view(-1, 1, 1, 1, 1)
    x_t = zero.inputs[0]
    expected = ((1 / (1 - a)) * (a.sqrt() * x_t - x0) ** 2).reshape(2, -1).mean(dim=1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) > 0.1


def test_image_to_video_conditions_on_the_first_frame_latent(tiny_i2v: Path) -> None:
    spec = _spec(tiny_i2v, i2v=True)
    batch = _batch()
    x0 = batch["latent_dist"].chunk(2, dim=2)[0] * spec.scaling_factor
    oracle = Oracle(x0, spec.scheduler.alphas_cumprod, True, 4)
    loss = diffusion_loss(oracle, spec, batch, step_generator(1, 0, 0), torch.device("cpu"), torch.float32)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    x = oracle.inputs[0]
    assert x.shape == (2, 3, 8, 4, 6)  # noisy latents and the image latents on channels
    torch.testing.assert_close(x[:, 0, 4:], x0[:, 0])  # frame 0: the image's latent
    assert torch.count_nonzero(x[:, 1:, 4:]) == 0  # later frames: zero padding
    dropped = _spec(tiny_i2v, i2v=True, dropout=1.0)
    diffusion_loss(oracle, dropped, batch, step_generator(1, 0, 0), torch.device("cpu"), torch.float32)
    assert torch.count_nonzero(oracle.inputs[-1][:, :, 4:]) == 0  # dropped: no image at all


def test_steps_are_deterministic_per_seed_step_and_rank(tiny_t2v: Path) -> None:
    from disney_train.config import LoraConfig
    from disney_train.model.lora import add_lora

    spec = _spec(tiny_t2v)
    transformer = load_transformer(tiny_t2v)
    add_lora(transformer, LoraConfig(rank=4, alpha=4))
    batch = _batch(h=8, w=12)
    batch["prompt_embeds"] = torch.randn((2, 226, 32), generator=torch.Generator().manual_seed(3))

    def loss(seed: int, step: int, rank: int) -> float:
        return float(
            diffusion_loss(
                transformer,
                spec,
                batch,
                step_generator(seed, step, rank),
                torch.device("cpu"),
                torch.float32,
            )
        )

    assert loss(5, 3, 0) == loss(5, 3, 0)
    assert len({loss(5, 3, 0), loss(5, 4, 0), loss(5, 3, 1), loss(6, 3, 0)}) == 4


def test_finding_1_cogvideox_1_5_image_to_video_conditions_as_its_pipeline(tmp_path: Path) -> None:
    """CogVideoX 1.5 patches time by 2: 3 latent frames are padded to 4 (a copy of the first in front
    of the noisy latents); the image latents are divided by the factor (`invert_scale_latents`) and
    laid out [image, 0, 0, 0] over the padded frames, as the 1.5 I2V pipeline feeds them (it pads the
    frame count first), not [image, image, 0, 0]. One forward and backward goes through, with 3D
    rotary embeddings and `ofs`."""
    from disney_train.model.tiny import write_tiny_model

    tiny = write_tiny_model(tmp_path / "tiny-15", "i2v", generation="1.5")
    spec = spec_for(tiny, "i2v", ImageRecipe(noise=False, draws=1, dropout=0.0))
    assert isinstance(spec, CogVideoXSpec) and spec.name == "cogvideox-1.5-i2v"
    transformer = load_transformer(tiny)
    seen: list[torch.Tensor] = []
    transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["hidden_states"]), with_kwargs=True)
    batch = _batch(b=1, f=3, h=8, w=12)
    batch["prompt_embeds"] = torch.randn((1, 226, 32), generator=torch.Generator().manual_seed(1))
    loss = diffusion_loss(transformer, spec, batch, step_generator(0, 0, 0), torch.device("cpu"), torch.float32)
    assert torch.isfinite(loss)
    image = batch["image_dist"].chunk(2, dim=2)[0][:, 0] / spec.scaling_factor
    x = seen[0]
    assert x.shape == (1, 4, 8, 8, 12)
    torch.testing.assert_close(x[:, 0, 4:], image)
    assert torch.count_nonzero(x[:, 1:, 4:]) == 0
    loss.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is not None for p in transformer.parameters() if p.requires_grad)
