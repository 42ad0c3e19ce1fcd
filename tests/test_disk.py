"""Durable renames: what is renamed into place was flushed first, and nothing beside it is touched."""

import os
import threading

from bigmodel import disk


def test_a_durable_rename_moves_the_folder_and_leaves_its_neighbours_alone(tmp_path):
    """The folder's own files are synced, and its parent's entry; a FIFO or a link beside it (a test's, a
    user's) is never opened: opening a FIFO would block until someone writes to it."""
    os.mkfifo(tmp_path / "a_pipe")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big.bin").write_bytes(b"x")
    new = tmp_path / "ckpt.tmp"
    (new / "inner").mkdir(parents=True)
    (new / "model.safetensors").write_bytes(b"weights")
    (new / "inner" / "note.txt").write_text("kept")
    os.mkfifo(new / "inner" / "its_pipe")
    os.symlink(tmp_path / "a_pipe", new / "link_to_pipe")
    done = threading.Event()
    threading.Thread(target=lambda: (disk.replace(new, tmp_path / "ckpt"), done.set()), daemon=True).start()
    assert done.wait(20), "the durable rename blocked"
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == b"weights" and not new.exists()
    assert (tmp_path / "ckpt" / "inner" / "note.txt").read_text() == "kept"
