"""The manifest of a packed dataset: written last, so a dataset with a manifest is complete.

It lists every shard (key, sha256, size) and every sample with where its members sit inside its
shard, so readers fetch one clip with one ranged GET and never list the bucket.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from disney_train.errors import UserError

MANIFEST_KEY = "manifest.json"


class ManifestError(UserError, ValueError):
    """manifest.json is not a disney-train manifest (or not one this version reads)."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemberRef(_Record):
    """Where a member's bytes lie inside its shard (tar data offset and size)."""

    name: str
    offset: int = Field(ge=0)
    size: int = Field(ge=0)


class ClipInfo(_Record):
    """What the check measured of a clip by decoding it."""

    frames: int
    fps: float
    width: int
    height: int
    duration: float


class SampleRecord(_Record):
    key: str
    line: int = Field(description="1-based line in videos.txt / prompt.txt")
    source: str = Field(description="Video path relative to the source folder")
    prompt: str
    sha256: str
    bytes: int
    clip: ClipInfo
    shard: int
    video: MemberRef
    image: MemberRef | None = None
    image_source: str | None = None
    image_sha256: str | None = None


class ShardRecord(_Record):
    index: int
    key: str
    sha256: str
    bytes: int
    samples: int


class Reject(_Record):
    where: str = Field(description="file:line or path that was refused")
    reason: str


class Totals(_Record):
    clips: int
    frames: int
    seconds: float
    bytes: int
    shards: int
    rejects: int


class Manifest(_Record):
    format: Literal["disney-train-shards"] = "disney-train-shards"
    format_version: Literal[1] = 1
    tool_version: str
    source: str
    prompt_file: str
    shard_target_bytes: int
    min_frames: int
    has_images: bool
    shards: list[ShardRecord]
    samples: list[SampleRecord]
    rejects: list[Reject]
    totals: Totals

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        from pydantic import ValidationError

        try:
            return cls.model_validate_json(data)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ManifestError(f"{where}: not a disney-train manifest ({loc}: {first['msg']})") from None
