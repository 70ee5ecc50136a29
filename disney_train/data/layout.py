"""Reading a dataset folder in the Disney Video Generation Dataset layout.

    SRC/prompt.txt   (or prompts.txt)  one prompt per line, UTF-8
    SRC/videos.txt                     one video path per line, relative to SRC
    SRC/videos/*.mp4
    SRC/images.txt + SRC/images/*      optional: the first frame for image-to-video

Line N of each list belongs together. Every line that cannot be used becomes a `Reject` naming
the file, the line and the reason; the others become `SourceEntry`s. Nothing is decoded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from disney_train.data.manifest import Reject
from disney_train.errors import UserError

PROMPT_FILES = ("prompt.txt", "prompts.txt")
VIDEOS_FILE = "videos.txt"
IMAGES_FILE = "images.txt"


class LayoutError(UserError, ValueError):
    """The folder is not a dataset at all (a list file missing or unreadable)."""


@dataclass(frozen=True)
class SourceEntry:
    line: int
    video: str  # as written in videos.txt
    video_path: Path
    prompt: str
    image: str | None = None
    image_path: Path | None = None


@dataclass
class SourceListing:
    root: Path
    prompt_file: str
    entries: list[SourceEntry]
    rejects: list[Reject]
    has_images: bool


def _read_lines(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LayoutError(f"{path}: cannot read ({err.strerror or err})") from err
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.splitlines()
    while lines and not lines[-1].strip():  # blank lines at the very end are not entries
        lines.pop()
    return lines


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at position {err.start})"


def _inside(root: Path, rel: str) -> tuple[Path | None, str | None]:
    """Resolve `rel` under `root`; refuse absolute paths and anything that escapes root."""
    if not rel:
        return None, "empty path"
    if Path(rel).is_absolute():
        return None, f"absolute path {rel!r}; paths are relative to the dataset folder"
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root):
        return None, f"path {rel!r} escapes the dataset folder"
    return resolved, None


def _list_file(root: Path, name: str) -> Path:
    """A list file of the dataset folder, resolved; one that leads outside it (a symlink) is refused, never read."""
    path, why = _inside(root, name)
    if path is None:
        raise LayoutError(f"{root / name}: {why} (a symlink to {(root / name).resolve()}); refused")
    return path


def find_prompt_file(root: Path) -> Path:
    present = [p for p in (_list_file(root, n) for n in PROMPT_FILES) if p.is_file()]
    if not present:
        raise LayoutError(f"{root}: no {' or '.join(PROMPT_FILES)} (one prompt per line)")
    return present[0]


@dataclass(frozen=True)
class _Lists:
    """The dataset's list files, read: line N of each belongs together."""

    root: Path
    prompt_file: str
    prompts: list[bytes]
    videos: list[bytes]
    images: list[bytes]
    has_images: bool

    @property
    def paired(self) -> int:
        return min(len(self.prompts), len(self.videos))


def _read_lists(src: Path) -> _Lists:
    root = src.resolve()
    if not root.is_dir():
        raise LayoutError(f"{src}: no such folder")
    prompt_path = find_prompt_file(root)
    videos_path = _list_file(root, VIDEOS_FILE)
    if not videos_path.is_file():
        raise LayoutError(f"{root}: no {VIDEOS_FILE} (one video path per line)")
    images_path = _list_file(root, IMAGES_FILE)
    has_images = images_path.is_file()
    images = _read_lines(images_path) if has_images else []
    return _Lists(root, prompt_path.name, _read_lines(prompt_path), _read_lines(videos_path), images, has_images)


def _unpaired(lists: _Lists) -> list[Reject]:
    """The lines of one list that the others have no line for."""
    pname, vname, iname = lists.prompt_file, VIDEOS_FILE, IMAGES_FILE
    prompts, videos, images = lists.prompts, lists.videos, lists.images
    rejects = [
        Reject(where=f"{pname}:{extra + 1}", reason=f"prompt has no video ({vname} has {len(videos)} lines)")
        for extra in range(len(videos), len(prompts))
    ]
    rejects += [
        Reject(
            where=f"{vname}:{extra + 1}",
            reason=f"video {videos[extra].decode('utf-8', 'replace').strip()!r} has no prompt "
            f"({pname} has {len(prompts)} lines)",
        )
        for extra in range(len(prompts), len(videos))
    ]
    if lists.has_images and len(images) != lists.paired:
        rejects += [
            Reject(where=f"{iname}:{extra + 1}", reason=f"no image for line {extra + 1}")
            for extra in range(len(images), lists.paired)
        ]
        rejects += [
            Reject(where=f"{iname}:{extra + 1}", reason="image has no video and prompt")
            for extra in range(lists.paired, len(images))
        ]
    return rejects


def _image(lists: _Lists, i: int) -> tuple[str, Path] | Reject:
    where = f"{IMAGES_FILE}:{i + 1}"
    image, ierr = _decode(lists.images[i])
    if ierr or not image:
        return Reject(where=where, reason=f"image path {ierr or 'is empty'}")
    ipath, why = _inside(lists.root, image)
    if ipath is None or not ipath.is_file():
        return Reject(where=where, reason=str(why or f"image {image} not found"))
    return image, ipath


def _entry(lists: _Lists, i: int, seen: dict[Path, int]) -> SourceEntry | Reject | None:
    """Line i+1 as an entry, or why it cannot be one (None: its image line is missing, rejected already)."""
    line, pname, vname = i + 1, lists.prompt_file, VIDEOS_FILE
    video, verr = _decode(lists.videos[i])
    if verr or not video:
        return Reject(where=f"{vname}:{line}", reason=f"video path {verr or 'is empty'}")
    prompt, perr = _decode(lists.prompts[i])
    if perr or not prompt:
        return Reject(where=f"{pname}:{line}", reason=f"prompt for {video} is {perr or 'empty'}")
    vpath, why = _inside(lists.root, video)
    if vpath is None:
        return Reject(where=f"{vname}:{line}", reason=str(why))
    if not vpath.is_file():
        return Reject(where=f"{vname}:{line}", reason=f"video {video} not found")
    if vpath in seen:
        return Reject(where=f"{vname}:{line}", reason=f"video {video} is listed again (first on line {seen[vpath]})")
    if not lists.has_images:
        return SourceEntry(line, video, vpath, prompt)
    if i >= len(lists.images):
        return None
    image = _image(lists, i)
    if isinstance(image, Reject):
        return image
    return SourceEntry(line, video, vpath, prompt, *image)


def read_source(src: Path) -> SourceListing:
    lists = _read_lists(src)
    rejects = _unpaired(lists)
    entries: list[SourceEntry] = []
    seen: dict[Path, int] = {}
    for i in range(lists.paired):
        got = _entry(lists, i, seen)
        if isinstance(got, Reject):
            rejects.append(got)
        elif got is not None:
            seen[got.video_path] = got.line
            entries.append(got)
    return SourceListing(lists.root, lists.prompt_file, entries, rejects, lists.has_images)
