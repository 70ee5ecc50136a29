"""A store in a local folder: atomic writes (a temp file renamed into place, the folder synced)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disney_train.storage.base import NoSuchObjectError, StorageError, TooLargeError, sha256_file


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import: os.umask is process-wide and not thread-safe
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class LocalStore:
    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def url(self, key: str) -> str:
        return str(self.root / key)

    def _path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_capped(self, key: str, limit: int) -> bytes | None:
        """The object, when there is one; TooLargeError when it holds more than `limit` bytes (not read)."""
        try:
            with self._path(key).open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err.strerror or err}") from err
        if len(data) > limit:
            raise TooLargeError(f"{self.url(key)}: more than {limit} bytes")
        return data

    def stored_sha256(self, key: str) -> str | None:
        p = self._path(key)
        return sha256_file(p) if p.is_file() else None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as err:
            raise NoSuchObjectError(f"cannot read {self.url(key)}: no such object") from err
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err.strerror or err}") from err

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as err:
            raise StorageError(f"cannot read {self.url(key)}: {err.strerror or err}") from err
        if len(data) != size:
            raise StorageError(f"{self.url(key)}: wanted {size} bytes at {offset}, the file has {len(data)}")
        return data

    def _atomic_write(self, key: str, write: Any) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as err:
            raise StorageError(f"cannot write {dest}: {err.strerror or err}") from err
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; others may read it
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise StorageError(f"cannot write {dest}: {err.strerror or err}") from err
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write the object only when there is none (False when there is): written aside, then linked into
        place, which fails when the name exists."""
        dest = self._path(key)
        if dest.exists():
            return False
        aside = f".{dest.name}.{uuid.uuid4().hex}.new"
        self.write_bytes(str(Path(key).with_name(aside)), data)
        try:
            os.link(dest.with_name(aside), dest)
        except FileExistsError:
            return False
        except OSError as err:
            raise StorageError(f"cannot write {dest}: {err.strerror or err}") from err
        finally:
            dest.with_name(aside).unlink(missing_ok=True)
        return True

    def write_file(self, key: str, path: Path, sha256: str) -> None:
        def copy(f: Any) -> None:
            with path.open("rb") as src:
                while block := src.read(1 << 20):
                    f.write(block)

        self._atomic_write(key, copy)

    def list_keys(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and str(p.relative_to(self.root)).startswith(prefix)
        )

    def delete(self, keys: list[str]) -> None:
        """Remove the files, then the folders that this leaves empty (S3 has no folders to leave)."""
        parents: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                raise StorageError(f"cannot delete {self.url(key)}: {err.strerror or err}") from err
            parents.update(p for p in path.parents if self.root in p.parents)
        for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty (or gone): keep it
                folder.rmdir()

    def check_access(self, write: bool) -> None:
        if write:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"cannot create {self.root}: {err.strerror or err}") from err
            if not os.access(self.root, os.W_OK):
                raise StorageError(f"{self.root}: not writable")
        elif not self.root.is_dir():
            raise StorageError(f"{self.root}: no such folder")
