"""LoRA adapters on a video diffusion transformer (peft), saved in the diffusers LoRA format.

The saved file is `pytorch_lora_weights.safetensors` as the model's pipeline's `save_lora_weights`
writes it (`CogVideoXPipeline`, `WanPipeline`: keys `transformer.<module>.lora_A.weight`, the
adapter's rank and alpha in the safetensors metadata), so that pipeline's `load_lora_weights(folder)`
loads it as it is. A LoRA of Wan 2.2's low-noise expert (`transformer_2`) has the same keys, as diffusers
expects them, and says so in its metadata (`PART_KEY`): the pipeline loads it with
`load_lora_weights(folder, load_into_transformer_2=True)`, which `lora_part` tells.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from disney_train.config import LoraConfig
from disney_train.errors import UserError
from disney_train.model.base import ModelSpec
from disney_train.runs import LORA_FILE

ADAPTER = "default"
PART_KEY = "disney_train.transformer"  # safetensors metadata: the pipeline part the LoRA is for


def peft_config(cfg: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights=True, target_modules=list(cfg.target_modules)
    )


def add_lora(transformer: Any, cfg: LoraConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze the transformer, add the adapter; return its trainable (name, parameter) pairs."""
    transformer.requires_grad_(False)
    transformer.add_adapter(peft_config(cfg), adapter_name=ADAPTER)
    params = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"lora.target_modules {cfg.target_modules} matched no module of the transformer "
            "(CogVideoX and Wan attention use to_q, to_k, to_v, to_out.0; Wan's FFN ffn.net.0.proj, ffn.net.2)"
        )
    return params


def peft_key(param_name: str) -> str:
    """`transformer_blocks.0.attn1.to_q.lora_A.default.weight` -> `…to_q.lora_A.weight`."""
    return param_name.replace(f".{ADAPTER}.", ".")


def lora_file_bytes(state: dict[str, torch.Tensor], cfg: LoraConfig, pipeline: Any, part: str = "transformer") -> bytes:
    """The diffusers LoRA file for a peft-keyed state dict (keys as `peft_key` gives them), as the
    model's `pipeline` class saves it; for the pipeline's `part` (Wan 2.2's `transformer_2`: marked)."""
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.save_lora_weights(
            tmp,
            transformer_lora_layers={k: v.detach().to("cpu").contiguous() for k, v in state.items()},
            transformer_lora_adapter_metadata=peft_config(cfg).to_dict(),
        )
        path = Path(tmp) / LORA_FILE
        if part != "transformer":
            _mark(path, part)
        return path.read_bytes()


def spec_lora_file(weights: dict[str, torch.Tensor], cfg: LoraConfig, spec: ModelSpec) -> bytes:
    """The LoRA file of a run's trained weights (keyed by parameter name), for the part of the pipeline
    `spec` trains: what the final output, the checkpoints and the validation videos all load."""
    state = {peft_key(n): w for n, w in weights.items()}
    return lora_file_bytes(state, cfg, spec.pipeline_class(), spec.transformer_part)


def _mark(path: Path, part: str) -> None:
    """Add the pipeline part to the file's metadata, keeping diffusers' own."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    save_file(tensors, str(path), metadata={**metadata, PART_KEY: part})


PARTS = ("transformer", "transformer_2")  # the pipeline parts a LoRA file may name


class LoraFileError(UserError, ValueError):
    """A LoRA file that cannot be read, or names a part no pipeline here has."""


def lora_part(path: Path) -> str:
    """The pipeline part the LoRA file at `path` is for: `transformer` unless marked (`transformer_2`).
    The file may be anyone's: its header is checked, and the part must be one of PARTS."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            part = (f.metadata() or {}).get(PART_KEY, "transformer")
    except (SafetensorError, OSError) as err:
        raise LoraFileError(f"not a safetensors LoRA file ({err})") from None
    if part not in PARTS:
        raise LoraFileError(f"metadata {PART_KEY} is {part!r}; a LoRA file is for one of {', '.join(PARTS)}")
    return str(part)


def read_lora_file(data: bytes) -> dict[str, torch.Tensor]:
    """A diffusers LoRA file -> peft-keyed state (the `transformer.` prefix removed)."""
    from safetensors.torch import load

    return {k.removeprefix("transformer."): v for k, v in load(data).items()}
