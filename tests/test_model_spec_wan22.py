"""Wan 2.2 A14B's two experts against diffusers' own pipelines (issue 21).

The pipeline denoises a timestep t >= boundary_ratio x 1000 with `transformer` (the high-noise expert)
and the rest with `transformer_2`. A run trains one expert (`model.expert`): every timestep it draws
must be one the pipeline gives that expert (checked against the experts the pipeline really calls,
hooked, over a whole denoising), drawn from the flow-matching distribution conditioned on that side;
its transformer inputs are what the pipeline feeds that expert (Wan 2.2 I2V: the mask and condition
latents, no CLIP embedding); and its LoRA file says which part it is for, so that it loads into
`transformer_2` with diffusers' `load_into_transformer_2`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from disney_train.model.base import ImageRecipe, seeded
from disney_train.model.spec import run_spec, spec_for
from disney_train.model.tiny_wan import LATENT_CHANNELS, MASK_CHANNELS, write_tiny_wan
from disney_train.model.wan import WanI2V, WanSpec
from tests.support.pipeline_hook import noise_png

FRAMES, HEIGHT, WIDTH = 9, 64, 96
RECIPE = ImageRecipe(noise=False, draws=1, dropout=0.0)


@pytest.fixture(scope="module")
def wan22(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan22")
    return {task: write_tiny_wan(root / task, task, experts=2) for task in ("t2v", "i2v")}


def _experts_called(pipe: Any, steps: int, **call: Any) -> list[tuple[int, str]]:
    """(timestep, expert) of every transformer call of a whole denoising of `steps` steps."""
    calls: list[tuple[int, str]] = []
    for part in ("transformer", "transformer_2"):

        def hook(_m: Any, _a: Any, kwargs: dict[str, Any], part: str = part) -> None:
            calls.append((int(kwargs["timestep"].reshape(-1)[0]), part))

        getattr(pipe, part).register_forward_pre_hook(hook, with_kwargs=True)
    pipe(num_inference_steps=steps, guidance_scale=1.0, output_type="latent", **call)
    return calls


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_each_expert_draws_only_the_timesteps_the_pipeline_gives_it(task: str, wan22: dict[str, Path]) -> None:
    path = wan22[task]
    high = spec_for(path, task, RECIPE, "wan", "high")  # type: ignore[arg-type]
    low = spec_for(path, task, RECIPE, "wan", "low")  # type: ignore[arg-type]
    assert isinstance(high, WanSpec) and isinstance(low, WanSpec) and high.name == f"wan-2.2-{task}-high-noise"
    assert (high.transformer_part, low.transformer_part) == ("transformer", "transformer_2")
    pipe = high.pipeline_class().from_pretrained(str(path))
    image = {"image": high.render_inputs(noise_png(HEIGHT, WIDTH))["image"]} if task == "i2v" else {}
    calls = _experts_called(
        pipe,
        40,
        prompt="a mouse",
        num_frames=5,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
        **image,
    )
    boundary = high.boundary_timestep
    assert boundary == {"t2v": 875, "i2v": 900}[task]
    assert {part for _, part in calls} == {"transformer", "transformer_2"}  # the denoising crossed the boundary
    for t, part in calls:  # the pipeline's own switch, as the specification reads it
        assert part == ("transformer" if t >= boundary else "transformer_2"), (t, part)
    g = seeded("draws", task)
    drawn_high = high.timesteps(high.draw_noise_levels(20000, g))
    drawn_low = low.timesteps(low.draw_noise_levels(20000, g))
    assert int(drawn_high.min()) >= boundary and int(drawn_high.max()) <= 999
    assert int(drawn_low.max()) < boundary and int(drawn_low.min()) >= 0
    edges = torch.tensor([0.0, 1e-7, 1 - 1e-7])  # the ends of each side, where float rounding crosses it
    assert bool((high.timesteps(high.expert_sigmas(edges)) >= boundary).all())
    assert bool((low.timesteps(low.expert_sigmas(edges)) < boundary).all())


@pytest.mark.parametrize("ratio", [0.251, 0.253, 0.502, 0.506, 0.511, 0.8755, 0.875, 0.9])
def test_every_boundary_keeps_each_experts_timesteps_on_its_side(ratio: float, wan22: dict[str, Path]) -> None:
    """The pipeline compares integer timesteps with ratio x 1000 (t >= 875.5 is 876 on); the edge sigmas
    float32 rounding puts back are on the right side for boundaries where sigma x 1000 rounds down."""
    import dataclasses

    base = spec_for(wan22["t2v"], "t2v", RECIPE, "wan", "high")
    assert isinstance(base, WanSpec)
    first = math.ceil(ratio * 1000)
    u = torch.cat([torch.tensor([0.0, 1e-7, 1 - 1e-7]), torch.rand(2000, generator=seeded("edges", ratio))])
    for expert in ("high", "low"):
        spec = dataclasses.replace(base, boundary_ratio=ratio, expert=expert)
        assert spec.boundary_timestep == first
        steps = spec.timesteps(spec.expert_sigmas(u))
        assert bool((steps >= first).all() if expert == "high" else (steps < first).all()), (expert, steps.min())
    with pytest.raises(ValueError, match=r"trains one of them a run: model.expert high or low"):
        dataclasses.replace(base, expert=None).draw_noise_levels(2, seeded("none"))


def test_an_experts_sigmas_are_the_flow_matching_ones_on_its_side(wan22: dict[str, Path]) -> None:
    """The same shifted distribution a Wan 2.1 run draws, conditioned on the expert's side: an expert's
    draws and the unconditioned draws that fall on its side have the same quantiles."""
    path = wan22["t2v"]
    one = spec_for(path, "t2v", RECIPE, "wan", "high")
    assert isinstance(one, WanSpec)
    plain = WanSpec(one.transformer_config, one.vae_config, one.scheduler)  # Wan 2.1's draw
    everything = plain.draw_noise_levels(200000, seeded("all"))
    edge = one.boundary_timestep / 1000
    qs = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for expert, side in (("high", everything >= edge), ("low", everything < edge)):
        spec = spec_for(path, "t2v", RECIPE, "wan", expert)  # type: ignore[arg-type]
        mine = spec.draw_noise_levels(50000, seeded("mine", expert)).double()
        torch.testing.assert_close(mine.quantile(qs), everything[side].double().quantile(qs), rtol=0, atol=0.01)
    # the high expert's share of the unconditioned draws is the shift's: u >= unshifted(edge)
    assert abs(float((everything >= edge).double().mean()) - (1 - one.unshifted(edge))) < 0.005


def test_wan_2_2_image_to_video_is_conditioned_as_the_pipeline_without_clip(wan22: dict[str, Path]) -> None:
    from disney_train.data.reader import decode_image
    from disney_train.model.spec import frozen_encoders
    from tests.support.pipeline_hook import first_step_inputs

    path = wan22["i2v"]
    spec = spec_for(path, "i2v", RECIPE, "wan", "high")
    assert isinstance(spec, WanI2V) and not spec.uses_clip and spec.cache_facts()["clip"] is False
    image = noise_png(HEIGHT, WIDTH)
    seen = first_step_inputs(spec, path, "a mouse", (FRAMES, HEIGHT, WIDTH), image)  # the high expert's first step
    enc = frozen_encoders(path, spec=spec)
    assert enc.image_encoder is None
    from types import SimpleNamespace

    batch: dict[str, Any] = {
        "video": torch.rand((1, FRAMES, 3, HEIGHT, WIDTH)) * 2 - 1,
        "prompt": ["a mouse"],
        "image": decode_image(image, SimpleNamespace(width=WIDTH, height=HEIGHT))[None],  # type: ignore[arg-type]
    }
    entry = spec.encode(enc, batch, torch.device("cpu"), ["parity"])
    assert "image_embeds" not in entry
    spec.scheduler.set_timesteps(1)
    levels = spec.scheduler.sigmas[:1]
    g = torch.Generator().manual_seed(1)
    latents = spec.clean_latents(entry, g, torch.device("cpu"))
    mine = spec.transformer_inputs(
        entry, spec.add_noise(latents, torch.randn(latents.shape), levels), levels, g, torch.float32
    )
    assert "encoder_hidden_states_image" not in mine and seen.get("encoder_hidden_states_image") is None
    assert torch.equal(mine["timestep"], seen["timestep"].long())
    got, want = mine["hidden_states"], seen["hidden_states"]
    assert got.shape == want.shape == (1, 2 * LATENT_CHANNELS + MASK_CHANNELS, 3, 8, 12)
    torch.testing.assert_close(got[:, LATENT_CHANNELS:], want[:, LATENT_CHANNELS:], rtol=1e-4, atol=1e-4)


def _cfg(path: Path, expert: str | None) -> Any:
    from disney_train.config import RunConfig

    model = {"uri": str(path), "family": "wan", **({"expert": expert} if expert else {})}
    return RunConfig.model_validate(
        {"name": "r", "model": model, "data": {"uri": "/d", "num_frames": 9}, "output": {"uri": "/o"}}
    )


def test_a_run_names_its_expert_and_only_a_two_expert_model_takes_one(
    wan22: dict[str, Path], tiny_wan_t2v: Path
) -> None:
    from disney_train.config import ConfigError
    from disney_train.model.source import ModelError

    assert run_spec(_cfg(wan22["t2v"], "low"), wan22["t2v"]).transformer_part == "transformer_2"
    with pytest.raises(ModelError, match=r"two experts .*boundary_ratio 0.875.*set model.expert to 'high'"):
        run_spec(_cfg(wan22["t2v"], None), wan22["t2v"])
    with pytest.raises(ModelError, match=r"model.expert is 'high', but this model has one transformer"):
        run_spec(_cfg(tiny_wan_t2v, "high"), tiny_wan_t2v)
    with pytest.raises((ConfigError, ValueError), match=r"model.expert 'low': only a Wan 2.2 model has experts"):
        from disney_train.config import RunConfig

        RunConfig.model_validate(
            {"name": "r", "model": {"uri": "/m", "expert": "low"}, "data": {"uri": "/d"}, "output": {"uri": "/o"}}
        )


def _index(path: Path, **changes: Any) -> None:
    p = path / "model_index.json"
    index = {**json.loads(p.read_text()), **changes}
    p.write_text(json.dumps({k: v for k, v in index.items() if v is not ...}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"boundary_ratio": ...}, r"two experts need transformer_2 and a boundary_ratio"),
        ({"boundary_ratio": 1.5}, r"boundary_ratio 1.5"),
        ({"transformer_2": [None, None]}, r"found transformer_2 \[None, None\], boundary_ratio 0.875"),
        ({"expand_timesteps": True}, r"two experts\) are a Wan 2.2 A14B layout, not one with expand_timesteps"),
        ({"expand_timesteps": "yes"}, r"expand_timesteps 'yes': true or false"),
        ({"expand_timesteps": 1}, r"expand_timesteps 1: true or false"),
        ({"boundary_ratio": True}, r"boundary_ratio True"),
        ({"boundary_ratio": float("nan")}, r"boundary_ratio nan"),
    ],
)
def test_half_a_two_expert_layout_is_refused(change: dict[str, Any], message: str, tmp_path: Path) -> None:
    from disney_train.model.source import ModelError

    path = write_tiny_wan(tmp_path / "m", "t2v", experts=2)
    _index(path, **change)
    with pytest.raises(ModelError, match=message):
        spec_for(path, "t2v", family="wan")


def test_a_second_expert_of_another_variant_is_refused(wan22: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from disney_train.model.source import ModelError

    path = tmp_path / "mixed"
    shutil.copytree(wan22["t2v"], path)
    shutil.rmtree(path / "transformer_2")
    shutil.copytree(wan22["i2v"] / "transformer", path / "transformer_2")
    with pytest.raises(ModelError, match=r"transformer and transformer_2 are different variants \(i2v, t2v\)"):
        spec_for(path, "t2v", family="wan")


def _expert_lora(path: Path, expert: str, value: float) -> bytes:
    """A LoRA file of `expert` as training saves it (every LoRA weight `value`)."""
    from disney_train.config import LoraConfig
    from disney_train.model.load import load_transformer
    from disney_train.model.lora import add_lora, lora_file_bytes, peft_key

    spec = spec_for(path, "t2v", RECIPE, "wan", expert)  # type: ignore[arg-type]
    lora_cfg = LoraConfig(rank=4, alpha=4)
    params = add_lora(load_transformer(path, part=spec.transformer_part), lora_cfg)
    state = {peft_key(n): torch.full_like(p, value) for n, p in params}
    return lora_file_bytes(state, lora_cfg, spec.pipeline_class(), spec.transformer_part)


def test_an_experts_lora_is_marked_and_loads_into_its_transformer_only(wan22: dict[str, Path]) -> None:
    """The file diffusers' save_lora_weights writes, the low-noise expert's with its part in the metadata:
    `apply_loras` (generate, validation, evaluation) loads it with load_into_transformer_2 (transformer_2's
    output changes, transformer's does not), the two runs' LoRAs together each into its own expert, and a
    pipeline without a transformer_2 is told so, naming the part."""
    from disney_train.generate import GenerateError, apply_loras

    path = wan22["t2v"]
    low, high = _expert_lora(path, "low", 0.05), _expert_lora(path, "high", 0.05)
    inputs = {
        "hidden_states": torch.randn((1, LATENT_CHANNELS, 3, 8, 8), generator=torch.Generator().manual_seed(0)),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn((1, 16, 32), generator=torch.Generator().manual_seed(1)),
        "return_dict": False,
    }

    def outputs(loras: list[tuple[bytes, float]]) -> dict[str, torch.Tensor]:
        pipe = WanSpec.pipeline_class().from_pretrained(str(path))
        apply_loras(pipe, loras)
        with torch.no_grad():
            return {part: getattr(pipe, part)(**inputs)[0] for part in ("transformer", "transformer_2")}

    base, only_low, both = outputs([]), outputs([(low, 1.0)]), outputs([(high, 1.0), (low, 1.0)])
    assert torch.equal(base["transformer"], only_low["transformer"])
    assert not torch.allclose(base["transformer_2"], only_low["transformer_2"])
    assert torch.equal(both["transformer_2"], only_low["transformer_2"])
    assert not torch.allclose(base["transformer"], both["transformer"])
    one_expert = WanSpec.pipeline_class().from_pretrained(str(path), transformer_2=None, boundary_ratio=None)
    with pytest.raises(GenerateError, match=r"LoRA 1 is for the model's transformer_2 .*this model has none"):
        apply_loras(one_expert, [(low, 1.0)])


# --------------------------------------------------------------------------- TI2V-5B


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wan(tmp_path_factory.mktemp("ti2v") / "m", ti2v=True)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_ti2v_training_inputs_are_what_the_pipeline_feeds_the_transformer(task: str, ti2v: Path) -> None:
    """One TI2V-5B folder, both tasks (the run's variant picks): per-token timesteps as the pipeline
    expands them ([B, tokens]; image-to-video: 0 on the first latent frame's tokens), and for
    image-to-video the image's own latents in the first frame's place, value for value."""
    from types import SimpleNamespace

    from disney_train.data.reader import decode_image
    from disney_train.model.spec import frozen_encoders
    from disney_train.model.tiny_wan import TI2V_CHANNELS
    from tests.support.pipeline_hook import first_step_inputs

    spec = spec_for(ti2v, task, RECIPE, "wan")  # type: ignore[arg-type]
    assert spec.name == f"wan-2.2-ti2v-5b-{task}" and spec.wants_image == (task == "i2v")
    image = noise_png(HEIGHT, WIDTH)
    seen = first_step_inputs(spec, ti2v, "a mouse", (FRAMES, HEIGHT, WIDTH), image)
    batch: dict[str, Any] = {"video": torch.rand((1, FRAMES, 3, HEIGHT, WIDTH)) * 2 - 1, "prompt": ["a mouse"]}
    batch["image"] = decode_image(image, SimpleNamespace(width=WIDTH, height=HEIGHT))[None]  # type: ignore[arg-type]
    entry = spec.encode(frozen_encoders(ti2v, spec=spec), batch, torch.device("cpu"), ["parity"])
    spec.scheduler.set_timesteps(1)
    levels = spec.scheduler.sigmas[:1]
    g = torch.Generator().manual_seed(1)
    latents = spec.clean_latents(entry, g, torch.device("cpu"))
    noisy = spec.add_noise(latents, torch.randn(latents.shape), levels)
    mine = spec.transformer_inputs(entry, noisy, levels, g, torch.float32)
    got, want = mine["hidden_states"], seen["hidden_states"]
    assert got.shape == want.shape == (1, TI2V_CHANNELS, 3, HEIGHT // 16, WIDTH // 16)
    tokens = 3 * (HEIGHT // 32) * (WIDTH // 32)
    assert mine["timestep"].shape == seen["timestep"].shape == (1, tokens)
    torch.testing.assert_close(mine["timestep"], seen["timestep"].float())
    first = tokens // 3
    if task == "i2v":
        assert torch.count_nonzero(seen["timestep"][:, :first]) == 0 and bool((seen["timestep"][:, first:] > 0).all())
        torch.testing.assert_close(got[:, :, 0], want[:, :, 0], rtol=1e-4, atol=1e-4)  # the image's latents
    else:
        assert bool((seen["timestep"] > 0).all())
    torch.testing.assert_close(mine["encoder_hidden_states"], seen["encoder_hidden_states"], rtol=1e-4, atol=1e-5)


def test_ti2v_image_to_video_loss_leaves_the_given_first_frame_out(ti2v: Path) -> None:
    """DiffSynth-Studio's TI2V loss: the prediction on the first latent frame (the image, given) is not
    trained; the rest is the flow-matching velocity as for text-to-video."""
    spec = spec_for(ti2v, "i2v", RECIPE, "wan")
    t2v = spec_for(ti2v, "t2v", RECIPE, "wan")
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn((2, 3, 48, 2, 3), generator=g), torch.randn((2, 3, 48, 2, 3), generator=g)
    levels = torch.tensor([0.3, 0.8])
    noisy = spec.add_noise(latents, noise, levels)
    exact = (noise - latents).permute(0, 2, 1, 3, 4).clone()  # [B, C, F, h, w], as the transformer answers
    exact[:, :, 0] += 100.0  # anything on the image's frame
    assert float(spec.loss(exact, noisy, latents, noise, levels)) == 0.0
    assert float(t2v.loss(exact, noisy, latents, noise, levels)) > 100.0


def test_a_ti2v_run_of_a_size_its_vae_and_patches_cannot_take_is_refused(ti2v: Path) -> None:
    from disney_train.model.source import ModelError

    cfg = _cfg(ti2v, None)
    with pytest.raises(ModelError, match=r"data.width 720: a wan-2.2-ti2v-5b-t2v model takes multiples of 32"):
        run_spec(cfg, ti2v)  # the default 480x720 (CogVideoX's)
    cfg.data.width = 832
    assert run_spec(cfg, ti2v).size_multiple == 32
    cfg.data.height = 48  # a multiple of 16 (CogVideoX, Wan 2.1), not of 32
    with pytest.raises(ModelError, match=r"data.height 48: a wan-2.2-ti2v-5b-t2v model takes multiples of 32"):
        run_spec(cfg, ti2v)


def test_a_wan_2_1_image_to_video_folder_without_its_clip_is_refused_when_read(
    tiny_wan_i2v: Path, tmp_path: Path
) -> None:
    """The transformer takes a CLIP embedding (image_dim): a folder naming no image encoder is refused when
    the model is read, naming what is missing, not in the cache stage after the workers started."""
    import shutil

    from disney_train.model.source import ModelError

    path = tmp_path / "no-clip"
    shutil.copytree(tiny_wan_i2v, path)
    _index(path, image_encoder=[None, None])
    with pytest.raises(
        ModelError, match=r"image-to-video model whose transformer needs image_encoder, which the pipeline"
    ):
        spec_for(path, "i2v", family="wan")


def test_two_experts_or_per_token_timesteps_in_a_cogvideox_folder_are_refused() -> None:
    from disney_train.model.spec import unsupported_pipeline

    assert unsupported_pipeline({"expand_timesteps": True}, "cogvideox") == (
        "expand_timesteps (per-token timesteps) is a Wan 2.2 TI2V layout, not a cogvideox one"
    )
    refusal = unsupported_pipeline({"transformer_2": ["diffusers", "X"], "boundary_ratio": 0.9}, "cogvideox")
    assert refusal is not None and refusal.endswith("a Wan 2.2 A14B layout, not a cogvideox one")
    assert unsupported_pipeline({"expand_timesteps": False, "transformer_2": [None, None]}, "wan") is None


def test_a_ti2v_image_to_video_run_needs_a_frame_beside_the_image(ti2v: Path) -> None:
    from disney_train.model.source import ModelError

    cfg = _cfg(ti2v, None)
    cfg.model.variant, cfg.data.width, cfg.data.num_frames = "i2v", 832, 1
    with pytest.raises(ModelError, match=r"data.num_frames 1: a wan-2.2-ti2v-5b-i2v model takes at least 5 frames"):
        run_spec(cfg, ti2v)
    cfg.model.variant = "t2v"  # text-to-video trains on one frame
    assert run_spec(cfg, ti2v).min_frames == 1


def test_generate_refuses_a_size_the_model_cannot_take_before_rendering(ti2v: Path, tmp_path: Path) -> None:
    from disney_train.generate import GenerateError, GenerateRequest, generate

    req = GenerateRequest(model=str(ti2v), out=str(tmp_path / "out"), prompts=["a"], images=[], loras=[], height=48)
    with pytest.raises(GenerateError, match=r"--height 48: .* is a wan-2.2-ti2v-5b-t2v model: multiples of 32"):
        generate(req)
    assert not (tmp_path / "out").exists()


def test_the_validation_pipeline_of_a_low_noise_run_has_its_lora_on_transformer_2(wan22: dict[str, Path]) -> None:
    """What the validation videos render with: the run's LoRA on the expert it trains."""
    from disney_train.config import LoraConfig
    from disney_train.model.load import load_transformer
    from disney_train.model.lora import add_lora
    from disney_train.train.engine import Placement
    from disney_train.train.validation import pipeline_with_lora

    path = wan22["t2v"]
    cfg = _cfg(path, "low")
    cfg.lora = LoraConfig(rank=4, alpha=4)
    spec = run_spec(cfg, path)
    params = add_lora(load_transformer(path, part=spec.transformer_part), cfg.lora)
    weights = {n: torch.full_like(p, 0.05) for n, p in params}
    pipe = pipeline_with_lora(path, spec, cfg, weights, Placement("cpu", "fp32", "gloo"))
    assert pipe.get_list_adapters() == {"transformer_2": ["lora0"]}


@pytest.mark.parametrize(
    ("damage", "message"),
    [("part", r"LoRA 1: metadata disney_train.transformer is 'vae'; a LoRA file is for one of transformer, "),
     ("header", r"LoRA 1: not a safetensors LoRA file")],
)  # fmt: skip
def test_a_lora_file_naming_another_part_or_unreadable_is_refused(
    damage: str, message: str, wan22: dict[str, Path], tmp_path: Path
) -> None:
    """A LoRA file is anyone's: its metadata names a pipeline part, which must be a transformer."""
    from safetensors.torch import save_file

    from disney_train.generate import GenerateError, apply_loras
    from disney_train.model.lora import PART_KEY

    path = tmp_path / "lora.safetensors"
    if damage == "part":
        save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 12)}, str(path), {PART_KEY: "vae"})
    else:
        path.write_bytes(b"\xff" * 64)
    pipe = WanSpec.pipeline_class().from_pretrained(str(wan22["t2v"]))
    with pytest.raises(GenerateError, match=message):
        apply_loras(pipe, [(path.read_bytes(), 1.0)])


def test_a_second_expert_named_but_not_there_is_refused_by_name(wan22: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from disney_train.model.source import ModelError

    path = tmp_path / "half"
    shutil.copytree(wan22["t2v"], path)
    shutil.rmtree(path / "transformer_2")
    with pytest.raises(
        ModelError, match=r"model_index.json names transformer_2, but .*transformer_2/config.json is missing"
    ):
        spec_for(path, "t2v", family="wan")
