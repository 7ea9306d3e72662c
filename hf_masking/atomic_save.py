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

import errno
import os
import shutil
import stat
import tempfile

PENDING = ".hf-masking-pending"
STAGING_PREFIX = ".hf-masking-staging-"


class LinkError(OSError):
    """A repo file or the save journal is a symbolic link (or not what this package writes there)."""


def _check_journal(directory: str) -> bool:
    """Whether `directory` holds a save journal; refuses one that is a link or not a folder."""
    try:
        mode = os.lstat(os.path.join(directory, PENDING)).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISDIR(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        raise LinkError(
            f"{os.path.join(directory, PENDING)} is {kind}: that name is this package's save journal, and a link "
            "there could move or read files outside the repo. Remove it, then save or load again."
        )
    return True


def _open_no_link(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LinkError(
                f"{path} is a symbolic link; a local mask repo's files are read only as plain files (copy the "
                "file itself into the folder)."
            ) from None
        raise


def read_current(directory: str, name: str, follow_links: bool = False) -> bytes | None:
    """The current contents of file `name` in `directory`, or None if it has none.

    Links are refused unless `follow_links` (the Hub cache, whose snapshot files are links to its blobs).
    """
    paths = [os.path.join(directory, name)]
    if follow_links or _check_journal(directory):
        paths.insert(0, os.path.join(directory, PENDING, name))
    for path in paths:
        try:
            if follow_links:
                with open(path, "rb") as handle:
                    return handle.read()
            fd = _open_no_link(path)
            with os.fdopen(fd, "rb") as handle:
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
    names = sorted(os.listdir(pending))
    for name in names:  # the journal holds the plain files a save wrote, nothing else
        if not stat.S_ISREG(os.lstat(os.path.join(pending, name)).st_mode):
            raise LinkError(f"{os.path.join(pending, name)} is not a plain file; this package never writes one there.")
    for name in names:
        os.replace(os.path.join(pending, name), os.path.join(directory, name))
    _fsync_dir(directory)
    os.rmdir(pending)


def recover(directory: str) -> None:
    """Finish a save that was interrupted after its commit; delete staging folders of ones before it."""
    if _check_journal(directory):
        _finish_pending(directory)
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if entry.startswith(STAGING_PREFIX) and stat.S_ISDIR(os.lstat(path).st_mode):  # never through a link
            shutil.rmtree(path, ignore_errors=True)


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
