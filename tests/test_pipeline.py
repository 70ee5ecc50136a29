"""The embedded default's inputs (`disney_train.pipeline`): made once, made again when damaged."""

from __future__ import annotations

import subprocess
from pathlib import Path

from disney_train.pipeline import SAMPLE_SUMS, write_sample_dataset


def test_the_sample_dataset_is_kept_while_intact_and_written_anew_when_not(tmp_path: Path) -> None:
    src, written = write_sample_dataset(tmp_path)
    assert written
    clip = src / "videos" / (src / "videos.txt").read_text().split()[0].split("/")[-1]
    first = clip.read_bytes()
    stamp = clip.stat().st_mtime_ns
    # the sums are sha256sum's format, checkable by hand
    check = subprocess.run(["sha256sum", "-c", SAMPLE_SUMS], cwd=src, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 7, check.stdout

    assert write_sample_dataset(tmp_path) == (src, False)
    assert clip.stat().st_mtime_ns == stamp  # not rewritten

    clip.write_bytes(first[: len(first) // 2])  # a damaged clip: the whole sample is written again
    assert write_sample_dataset(tmp_path) == (src, True)
    assert clip.read_bytes() == first

    (src / "prompt.txt").unlink()  # a missing file: the same
    assert write_sample_dataset(tmp_path) == (src, True)
    assert (src / "prompt.txt").is_file()

    (src / SAMPLE_SUMS).write_text("not a sums line\n")  # sums that do not read: the same
    assert write_sample_dataset(tmp_path) == (src, True)
