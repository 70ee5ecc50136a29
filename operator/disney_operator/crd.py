"""The VideoFineTune CustomResourceDefinition, generated from the pydantic models in `api.py`.

pydantic writes JSON Schema; Kubernetes wants a structural OpenAPI v3 schema. The conversion inlines
`$ref`s, turns `X | None` into an optional X (no `nullable`: a null is pruned), free-form objects
into `x-kubernetes-preserve-unknown-fields`, numeric `exclusiveMinimum` into OpenAPI 3.0's boolean
form, and writes the defaults of `default_factory` fields (sections default to `{}`, so the API
server fills in their own defaults).
The checked-in CRD (`charts/disney-train/crds/`) must equal `crd_yaml()`; a test fails when it drifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema, to_jsonable_python

from disney_operator import api

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
CRD_PATH = Path(__file__).resolve().parents[2] / "charts" / "disney-train" / "crds" / f"{CRD_NAME}.yaml"

# Kept by the conversion; anything else pydantic writes (title, ...) is dropped.
_KEEP = {
    "type",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "required",
    "properties",
    "items",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
}


class _WithFactoryDefaults(GenerateJsonSchema):
    """pydantic leaves `default_factory` defaults out of the schema; the CRD wants them."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().default_schema(schema)
        value = factory()  # type: ignore[call-arg]
        out = self.generate_inner(schema["schema"])
        out["default"] = {} if isinstance(value, BaseModel) else to_jsonable_python(value)
        return out


def _inlined(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The node with its `$ref` inlined and `X | None` as an optional X: not `nullable`, so the API server
    prunes an explicit null (the same as leaving the field out) and CEL rules never meet a null."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {options} in a structural schema")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**_structural(options[0], defs), **rest}
    return node


def _keyword(key: str, value: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON-schema keyword as the structural schema's keyword(s)."""
    if key == "properties":
        return {key: {name: _structural(sub, defs) for name, sub in value.items()}}
    if key == "items":
        return {key: _structural(value, defs)}
    if key == "additionalProperties":
        if value is True:  # a free-form object
            return {"x-kubernetes-preserve-unknown-fields": True}
        # False (extra="forbid"): the API server prunes unknown fields and `kubectl` refuses them
        return {key: _structural(value, defs)} if isinstance(value, dict) else {}
    if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
        return {"minimum" if key == "exclusiveMinimum" else "maximum": value, key: True}
    if key == "default" and value is None:
        return {}
    return {key: value}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _inlined(node, defs).items():
        if key in _KEEP:
            out.update(_keyword(key, value, defs))
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's structural OpenAPI v3 schema, all definitions inlined."""
    raw = model.model_json_schema(schema_generator=_WithFactoryDefaults)
    return _structural(raw, raw.get("$defs", {}))


# Rules on the whole object: they can see metadata.name and the status the operator wrote.
_STARTED = "has(oldSelf.status) && has(oldSelf.status.startTime)"


def _immutable_once_started(path: str, why: str) -> dict[str, str]:
    return {
        "rule": f"!({_STARTED}) || self.{path} == oldSelf.{path}",
        "message": f"{path} cannot change once the run has started: {why}",
        "fieldPath": f".{path}",
    }


ROOT_RULES = {
    "x-kubernetes-validations": [
        {
            "rule": f"self.metadata.name.size() <= {api.MAX_NAME_LENGTH} && "
            f"self.metadata.name.matches('{api.NAME_PATTERN}')",
            "message": f"metadata.name must be at most {api.MAX_NAME_LENGTH} characters of lowercase letters, "
            "digits and '-', starting with a letter (it names the run and its RayJobs)",
        },
        _immutable_once_started("spec.model", "create a new VideoFineTune for another model"),
        _immutable_once_started("spec.dataset", "create a new VideoFineTune for another dataset"),
        _immutable_once_started("spec.output", "the run's checkpoints are there"),
        _immutable_once_started("spec.training.lora", "its checkpoints hold LoRA weights of that shape"),
    ]
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workers.summary", "description": "ready/desired"},
    {"name": "Queue", "type": "string", "jsonPath": ".status.queue.name", "description": "Kueue LocalQueue"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {
        "name": "Checkpoint",
        "type": "date",
        "jsonPath": ".status.progress.lastCheckpointTime",
        "description": "age of the last checkpoint",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJob.name", "priority": 1},
    {
        "name": "Fidelity",
        "type": "number",
        "jsonPath": ".status.evaluation.fineTuned.promptFidelity",
        "description": "the evaluated fine-tuned model's prompt fidelity (CLIP); status.evaluation has the baseline's",
        "priority": 1,
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri", "priority": 1},
]


def crd() -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": "LoRA fine-tuning of a CogVideoX model on a packed video dataset, run as a KubeRay RayJob.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(api.VideoFineTuneSpec),
            "status": openapi_schema(api.VideoFineTuneStatus),
        },
        **ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["disney-train"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.workers.replicas",
                            "statusReplicasPath": ".status.workers.ready",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


HEADER = "# Generated by `disney-train-operator crd` from operator/disney_operator/api.py: do not edit.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)
