"""Saving a set of files into a folder so that, whatever instant the save stops at, the folder holds
either the complete old set or the complete new one.

Renaming several files one by one is not atomic, so a save is journaled inside the target folder:
the new files are written and fsynced into a staging folder, which is then renamed to
``.hf-masking-pending`` in one step: the commit. Only then are the files moved into place. A
reader (`read_current`) takes each file from the pending folder while it is there, so it sees the
complete new set from the commit on, and the complete old set before it; the next save finishes
an interrupted move and deletes uncommitted staging folders. Staging inside the target folder
(not its parent) keeps every rename on one file system, also when the folder is a mount point or
its parent is read-only.
"""

from __future__ import annotations

import os
import shutil
import tempfile

PENDING = ".hf-masking-pending"
STAGING_PREFIX = ".hf-masking-staging-"


def read_current(directory: str, name: str) -> bytes | None:
    """The current contents of file `name` in `directory`, or None if it has none."""
    for path in (os.path.join(directory, PENDING, name), os.path.join(directory, name)):
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except (FileNotFoundError, NotADirectoryError):
            continue  # moved into place between the two looks, or never there
    return None


def check_target(directory: str) -> str:
    """An absolute folder path to save into, or a clear error for a path that cannot be one."""
    if not isinstance(directory, str) or not directory.strip():
        raise ValueError(f"save_directory must name a folder, not {directory!r}.")
    directory = os.path.abspath(os.path.expanduser(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"Cannot save into {directory}: it is a file, not a folder.")
    return directory


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish_pending(directory: str) -> None:
    pending = os.path.join(directory, PENDING)
    for name in sorted(os.listdir(pending)):
        os.replace(os.path.join(pending, name), os.path.join(directory, name))
    _fsync_dir(directory)
    os.rmdir(pending)


def recover(directory: str) -> None:
    """Finish a save that was interrupted after its commit; delete staging folders of ones before it."""
    if os.path.isdir(os.path.join(directory, PENDING)):
        _finish_pending(directory)
    for entry in os.listdir(directory):
        if entry.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def save_files(directory: str, files: dict[str, bytes]) -> None:
    """Replace `files` (name -> contents) in `directory` as one atomic change; other files are left alone."""
    directory = check_target(directory)
    os.makedirs(directory, exist_ok=True)
    recover(directory)
    umask = os.umask(0)
    os.umask(umask)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory)
    try:
        for name, data in files.items():
            _write_file(os.path.join(staging, name), data, 0o666 & ~umask)  # shareable, like any saved model
        _fsync_dir(staging)
        os.rename(staging, os.path.join(directory, PENDING))  # the commit
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _finish_pending(directory)
