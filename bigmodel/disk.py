"""Files that survive a crash: what is renamed into place is on disk first.

A rename is atomic, but without `fsync` a power cut can leave the new name pointing at data the disk
never received: an empty checkpoint where the last good one was. So everything written to a temporary
name and renamed goes through `replace`: the file (or every file of the folder) is flushed to disk,
renamed, and the rename itself made durable by syncing the folder that holds it.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync(path: Path) -> None:
    """Flush a file, or every file below a folder and the folders themselves, to the disk. Links and special
    files (a FIFO would block the open) are left alone: they hold no data of the write."""
    if path.is_symlink():
        return
    if path.is_dir():
        for child in path.iterdir():
            sync(child)
    elif not path.is_file():
        return
    flush(path)


def flush(path: Path) -> None:
    """fsync one file or one folder's own entries (not what is inside its sub-folders)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: Path, path: Path) -> None:
    """Move `tmp` (a file or folder, fully written) to `path`, durably: synced before, its folder's entry after."""
    sync(tmp)
    os.replace(tmp, path)
    flush(path.parent)
