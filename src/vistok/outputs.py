"""Write output files safely: check the path before any work starts, then write a temporary file and rename it.

Every file vistok writes (tokens, pictures, fitted weights) goes through :func:`write_output`, and the CLI
calls :func:`check_output` before it loads a model or reads an image, so a bad ``--out`` fails in a
second with one line instead of after the work. Refused:

* a path that is one of the inputs (``os.path.samefile``): writing it would destroy the input;
* a folder, a device node, a FIFO or a socket: only regular files are written (a rename would replace
  the device node, or the write would block on the FIFO);
* a symbolic link, unless ``follow_symlinks=True`` (CLI: ``--follow-symlinks``): the file it points to
  is then written and the link is kept;
* a place where no file can be created: under a regular file, in ``/proc`` or ``/sys``, or in a folder
  without write permission (checked by creating and removing a temporary file there).

The write itself goes to a hidden temporary file beside the target, which replaces the target with
``os.replace`` only once it is complete, so an interrupted write never leaves half a file. The new file
keeps the mode of the file it replaces, or gets ``0o666`` minus the umask.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["OutputError", "check_output", "file_kind", "write_output"]

_VIRTUAL_ROOTS = ("/proc", "/sys")


class OutputError(ValueError):
    """An output path vistok will not write. ``str(err)`` is ``f"{path}: {reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))


_FILE_KINDS = (
    (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """A short name for the type of file with ``st_mode`` ``mode`` ("a named pipe (FIFO)", ...)."""
    return next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a regular file")


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    follow_symlinks: bool = False,
) -> Path:
    """Check that a file can be written at ``path`` without harm; return the path to write.

    The returned path is ``path`` itself, or the resolved target when ``path`` is a symbolic link and
    ``follow_symlinks`` is true. Nothing is created (the probe file in the folder is removed again).
    Raises :class:`OutputError` naming ``path`` for every case listed in the module docstring.
    """
    name = os.fspath(path)
    if not name:
        raise OutputError("''", "empty output path; give a file name")
    target = Path(name)
    info = _lstat(target, name)
    if info is not None and stat.S_ISLNK(info.st_mode):
        link = os.readlink(target)
        if not follow_symlinks:
            raise OutputError(name, f"is a symbolic link (to {link}); vistok does not replace links: write to "
                                    "the file itself, or pass --follow-symlinks (follow_symlinks=True) to write "
                                    "to the file it points to")
        target = Path(os.path.realpath(target))
        info = _lstat(target, name)
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(name, "is a folder; give the name of a file to write (inside it, or elsewhere)")
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(name, f"is {file_kind(info.st_mode)}, not a regular file; vistok writes only "
                                    "regular files: choose another output path")
        _check_not_input(target, info, inputs, name)
    _check_folder(target.parent, name)
    return target


def write_output(
    path: str | os.PathLike,
    write: Callable[[str], None],
    *,
    inputs: Iterable[str | os.PathLike] = (),
    follow_symlinks: bool = False,
) -> Path:
    """Write a file at ``path`` safely: ``write(tmp)`` fills a temporary file that then replaces ``path``.

    ``path`` is checked with :func:`check_output` first (and its folder created); the temporary file has
    the same suffix, so writers that pick a format from the name (Pillow) still work. Returns the path
    written. Errors from the file system become :class:`OutputError` naming ``path``; the temporary file
    never outlives a failure.
    """
    name = os.fspath(path)
    target = check_output(path, inputs=inputs, follow_symlinks=follow_symlinks)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    except OSError as err:
        raise OutputError(name, f"cannot create a file in {target.parent} ({err.strerror or err})") from err
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(target))
        _check_unchanged(target, name)  # it may have become a link or a device while we worked
        os.replace(tmp, target)
    except OSError as err:
        raise OutputError(name, f"could not be written ({err.strerror or err})") from err
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return target


def _lstat(path: Path, name: str) -> os.stat_result | None:
    """``os.lstat`` of ``path``, None when it does not exist; a file in the way is an OutputError."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        _check_folder(path.parent, name)  # names the file that stands where a folder should be
        raise OutputError(name, "a part of this path is a file, not a folder") from None
    except OSError as err:
        raise OutputError(name, f"cannot be checked ({err.strerror or err})") from err


def _check_not_input(target: Path, info: os.stat_result, inputs: Iterable[str | os.PathLike], name: str) -> None:
    for given in inputs:
        try:
            other = os.stat(given)
        except (OSError, ValueError):
            continue
        if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
            same = os.fspath(given)
            also = "" if os.path.abspath(same) == os.path.abspath(name) else f" ({same})"
            raise OutputError(name, f"is also an input{also}; writing it would overwrite that input: choose "
                                    "another output path")


def _check_folder(folder: Path, name: str) -> None:
    """The folder ``folder`` exists or can be created, and a file can be created in it."""
    existing = Path(os.path.abspath(folder))
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(name, f"{existing} is a file, not a folder; choose an output path in a folder")
    real = os.path.realpath(existing)
    for root in _VIRTUAL_ROOTS:
        if real == root or real.startswith(root + os.sep):
            raise OutputError(name, f"is in {root}, a virtual file system of the kernel; choose a folder on disk")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vistok-write-check.", dir=existing)
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
        raise OutputError(name, f"cannot create files in {existing} ({reason}); choose a writable folder") from err
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _check_unchanged(target: Path, name: str) -> None:
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(name, f"became {file_kind(info.st_mode)} while vistok worked; nothing was written")


def _mode_for(target: Path) -> int:
    """The mode of the file being replaced, else ``0o666`` minus the process umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask
