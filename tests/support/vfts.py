"""VideoFineTune bodies and what the operator renders from them, for the tests of several modules."""

from __future__ import annotations

from typing import Any

from disney_operator import api
from disney_operator.rayjob import desired_rayjob
from disney_operator.settings import Settings

SETTINGS = Settings()
I2V = {"uri": "s3://models/CogVideoX-5b-I2V", "variant": "i2v"}


def vft(name: str = "disney-2b", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "s3://models/CogVideoX-2b"},
        "dataset": {"uri": "s3://data/disney"},
        "output": {"uri": "s3://runs/disney"},
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": "team-a", "uid": "1234-uid", "generation": 1},
        "spec": {**base, **spec},
    }


def evaluation(**settings: Any) -> dict[str, Any]:
    """A VideoFineTune's evaluation block (the run configuration's `evaluation` section): two held-out t2v
    prompts and CLIP on S3, with `settings` on top."""
    return {
        "prompts": ["BW_STYLE a mouse rows a boat past a lighthouse", "BW_STYLE a parrot sings on a ship's mast"],
        "clip_uri": "s3://models/clip-vit-base-patch32",
        **settings,
    }


def render(body: dict[str, Any], attempt: int = 1, settings: Settings = SETTINGS) -> dict[str, Any]:
    """The RayJob the operator builds for `body` at `attempt`."""
    return desired_rayjob(body, api.VideoFineTuneSpec.model_validate(body["spec"]), attempt, settings)


def group(rj: dict[str, Any]) -> dict[str, Any]:
    """A RayJob's (first) worker group."""
    g: dict[str, Any] = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    return g
