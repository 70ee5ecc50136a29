"""Safe on a shared cluster: each finding of the hostile-tenant review (issue 16), a test named after it.

Finding 1: the run configuration (prompts and all, written by a tenant) went into the RayJob's runtime
environment, which KubeRay's submitter pastes, Go-quoted, into its own `bash -c` line: `$(...)`, backticks
and `$` stayed live there, and a long configuration overflowed the line. tests/e2e/test_smoke.py runs
hostile prompts through the real KubeRay and checks that they arrive byte for byte.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from disney_operator import api
from disney_operator.rayjob import (
    CONFIG_FILE,
    ENTRYPOINT,
    EVAL_ENTRYPOINT,
    desired_config_map,
    run_config_of,
)
from disney_operator.reconcile import plan
from disney_train.config import EVALUATION_PROMPTS, PROMPT_CHARS, VALIDATION_PROMPTS
from tests.test_operator_rayjob import I2V, SETTINGS, render, vft

# What a shell would act on, and what quoting gets wrong: command substitution, variables, quotes of
# both kinds, backslashes, line breaks and tabs, and characters beyond ASCII.
HOSTILE = [
    "price $5, $(touch /tmp/pwned) and `id` for ${HOME}",
    'it\'s "quoted" \\ back\\slashed\nand on two lines\ttabbed',
    "ünïcödé, 漢字 and a rabbit 🐰; exit 1 && rm -rf / || true",
]
# The most bytes one character of a valid configuration takes in the YAML file (control characters,
# which YAML would escape to six, are refused).
WIDEST = "🐰"
CONFIGMAP_BYTES = 1024 * 1024  # the API server's limit on a ConfigMap's data


def hostile_job(**more: Any) -> dict[str, Any]:
    return vft(
        training={
            "data": {"id_token": "$(id)`id`"},
            "validation": {"prompts": HOSTILE},
        },
        evaluation={"prompts": HOSTILE, "clip_uri": "s3://models/clip"},
        **more,
    )


def test_finding_1_no_tenant_text_reaches_the_submitters_shell_line() -> None:
    body = hostile_job()
    rj = render(body)
    spec = rj["spec"]
    # KubeRay builds its submitter's `bash -c` line from these: only the operator's constants are in them
    assert spec["entrypoint"] in (ENTRYPOINT, EVAL_ENTRYPOINT)
    assert "runtimeEnvYAML" not in spec and "metadata" not in spec
    text = json.dumps(rj, ensure_ascii=False)
    for hostile in [*HOSTILE, "$(id)"]:
        assert hostile not in text and json.dumps(hostile)[1:-1] not in text, hostile
    # the run configuration goes to the head as a file, byte for byte
    config_map = desired_config_map(body, api.VideoFineTuneSpec.model_validate(body["spec"]), 1)
    cfg = run_config_of(config_map)
    assert cfg.validation.prompts == HOSTILE
    assert cfg.evaluation is not None and cfg.evaluation.prompts == HOSTILE
    assert cfg.data.id_token == "$(id)`id`"


def largest_valid_job() -> dict[str, Any]:
    """Every bounded list full and every text at its longest, in the widest characters."""
    prompt = WIDEST * PROMPT_CHARS
    uri = "s3://bkt/" + WIDEST * (1024 - len("s3://bkt/"))
    return vft(
        model=I2V,
        training={
            "data": {"id_token": WIDEST * 64},
            "lora": {"target_modules": [WIDEST * 128] * 64},
            "validation": {"prompts": [prompt] * VALIDATION_PROMPTS, "images": [uri] * VALIDATION_PROMPTS},
        },
        evaluation={
            "prompts": [prompt] * EVALUATION_PROMPTS,
            "images": [uri] * EVALUATION_PROMPTS,
            "clip_uri": uri,
        },
    )


def test_finding_1_the_largest_valid_configuration_fits_its_configmap() -> None:
    """KubeRay's submitter line held at most 128 KiB (Linux's limit on one argument): 250 prompts of 600
    characters did not fit. The bounds now keep the largest valid configuration inside a ConfigMap."""
    body = largest_valid_job()
    config_map = desired_config_map(body, api.VideoFineTuneSpec.model_validate(body["spec"]), 1)
    size = len(config_map["data"][CONFIG_FILE].encode())
    assert 128 * 1024 < size < CONFIGMAP_BYTES * 0.9, size  # beyond the old limit, inside the new one
    assert run_config_of(config_map).evaluation.prompts[0] == WIDEST * PROMPT_CHARS  # type: ignore[union-attr]


def test_finding_1_control_characters_are_refused_by_field() -> None:
    """Terminal escapes and other control characters would reach logs, reports and YAML: the spec is
    refused (InvalidSpec), naming the field and the character."""
    for body, field, why in (
        (vft(training={"validation": {"prompts": ["red! \x1b[31m"]}}), "training.validation.prompts.0", "U+001B"),
        (vft(training={"data": {"id_token": "BW_\nSTYLE"}}), "training.data.id_token", "line break at position 3"),
        (
            vft(model=I2V, evaluation={"prompts": ["a"], "images": ["s3://bkt/a\x00.png"], "clip_uri": "s3://m/c"}),
            "evaluation.images.0",
            "U+0000",
        ),
    ):
        out = plan(body, [], None, datetime.now(UTC), SETTINGS)
        assert out.apply is None and out.config_map is None
        status = out.status or {}
        assert {c["reason"] for c in status["conditions"] if c["type"] == "Pending"} == {"InvalidSpec"}, status
        assert field in status["message"] and why in status["message"], status["message"]
