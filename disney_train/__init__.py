"""disney-train: LoRA fine-tuning of CogVideoX into a Disney-style animation model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("disney-train")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
