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


def read_source(src: Path) -> SourceListing:
    root = src.resolve()
    if not root.is_dir():
        raise LayoutError(f"{src}: no such folder")
    prompt_path = find_prompt_file(root)
    videos_path = _list_file(root, VIDEOS_FILE)
    if not videos_path.is_file():
        raise LayoutError(f"{root}: no {VIDEOS_FILE} (one video path per line)")
    images_path = _list_file(root, IMAGES_FILE)
    has_images = images_path.is_file()

    prompts = _read_lines(prompt_path)
    videos = _read_lines(videos_path)
    images = _read_lines(images_path) if has_images else []
    pname, vname, iname = prompt_path.name, VIDEOS_FILE, IMAGES_FILE

    rejects: list[Reject] = []
    entries: list[SourceEntry] = []
    seen: dict[Path, int] = {}

    for extra in range(len(videos), len(prompts)):
        rejects.append(
            Reject(where=f"{pname}:{extra + 1}", reason=f"prompt has no video ({vname} has {len(videos)} lines)")
        )
    for extra in range(len(prompts), len(videos)):
        rejects.append(
            Reject(
                where=f"{vname}:{extra + 1}",
                reason=f"video {videos[extra].decode('utf-8', 'replace').strip()!r} has no prompt "
                f"({pname} has {len(prompts)} lines)",
            )
        )
    if has_images and len(images) != min(len(prompts), len(videos)):
        for extra in range(len(images), min(len(prompts), len(videos))):
            rejects.append(Reject(where=f"{iname}:{extra + 1}", reason=f"no image for line {extra + 1}"))
        for extra in range(min(len(prompts), len(videos)), len(images)):
            rejects.append(Reject(where=f"{iname}:{extra + 1}", reason="image has no video and prompt"))

    for i in range(min(len(prompts), len(videos))):
        line = i + 1
        video, verr = _decode(videos[i])
        if verr or not video:
            rejects.append(Reject(where=f"{vname}:{line}", reason=f"video path {verr or 'is empty'}"))
            continue
        prompt, perr = _decode(prompts[i])
        if perr:
            rejects.append(Reject(where=f"{pname}:{line}", reason=f"prompt for {video} is {perr}"))
            continue
        if not prompt:
            rejects.append(Reject(where=f"{pname}:{line}", reason=f"prompt for {video} is empty"))
            continue
        vpath, why = _inside(root, video)
        if vpath is None:
            rejects.append(Reject(where=f"{vname}:{line}", reason=str(why)))
            continue
        if not vpath.is_file():
            rejects.append(Reject(where=f"{vname}:{line}", reason=f"video {video} not found"))
            continue
        if vpath in seen:
            rejects.append(
                Reject(
                    where=f"{vname}:{line}",
                    reason=f"video {video} is listed again (first on line {seen[vpath]})",
                )
            )
            continue
        image = ipath = None
        if has_images:
            if i >= len(images):
                continue  # already rejected above
            image, ierr = _decode(images[i])
            if ierr or not image:
                rejects.append(Reject(where=f"{iname}:{line}", reason=f"image path {ierr or 'is empty'}"))
                continue
            ipath, why = _inside(root, image)
            if ipath is None or not ipath.is_file():
                rejects.append(Reject(where=f"{iname}:{line}", reason=str(why or f"image {image} not found")))
                continue
        seen[vpath] = line
        entries.append(SourceEntry(line, video, vpath, prompt, image, ipath))
    return SourceListing(root, pname, entries, rejects, has_images)
