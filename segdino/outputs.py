"""Output folders: where a command may write, who holds them, and what in them is ours.

Every command that writes results (``train``, ``predict``, ``evaluate``, ``export``, ``demo``) opens
its output through :func:`open_output`, which

- refuses an output that is, lies inside, or contains one of the command's inputs (a dataset,
  the images given to ``predict``, the model given to ``train --init``), so ground truth is never
  overwritten;
- refuses a folder holding files SegDINO did not write there: a folder it wrote earlier is
  recognised by its manifest (:data:`segdino.fileio.MANIFEST_NAME`, the names of its own files);
- checks that the folder can be written before any work is done;
- takes an exclusive lock on the folder (``.segdino-lock``, holding the PID), released when the
  process ends however it ends, so two processes never write into one folder;
- deletes, when asked to (``train --overwrite``), only the files its manifests list.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import ConfigError
from .fileio import (MANIFEST_NAME, is_temporary_name, read_manifest, record_written, remove_stale_temporaries, track_writes,
                     untrack_writes)

log = logging.getLogger("segdino")

LOCK_NAME = ".segdino-lock"
_OWN_NAMES = (MANIFEST_NAME, LOCK_NAME)


class OutputError(ConfigError):
    """An output path that cannot or must not be written."""


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _check_apart(out: Path, inputs: Iterable[str | os.PathLike | None], option: str) -> None:
    """Outputs and inputs are disjoint trees: neither lies inside the other."""
    o = _resolved(out)
    for raw in inputs:
        if raw is None or not os.path.exists(raw):
            continue
        i = _resolved(raw)
        relation = "is" if o == i else "lies inside" if i in o.parents else "contains" if o in i.parents else None
        if relation:
            raise OutputError(f"{option} {out} {relation} the input {raw}; outputs and inputs never share a "
                              "folder: choose one outside it")


class _Enough(Exception):
    pass


def foreign_files(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Files below ``folder`` that SegDINO did not write there (in walk order; at most ``limit``, so
    that a large foreign folder is refused without listing all of it).

    A file is ours when the manifest of the nearest folder above it that has one (``folder``
    included) lists it or a folder above it, or it is a temporary of an interrupted write, a
    manifest or a lock. Below a folder with no manifest at all, every file is foreign.
    """
    folder = Path(folder)
    out: list[Path] = []

    def walk(d: Path, manifest: set[str] | None, base: Path) -> None:
        here = read_manifest(d)
        if here is not None:
            manifest, base = here, d
        try:
            entries = sorted(d.iterdir())
        except OSError as e:
            raise OutputError(f"cannot list {d} ({e.strerror or e})") from None
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                if is_temporary_name(p.name):
                    continue  # the staging folder of an interrupted multi-file write of ours
                rel = p.relative_to(base).as_posix() + "/" if manifest is not None else None
                if manifest is not None and (rel in manifest or _under_listed(rel, manifest)):
                    continue
                walk(p, manifest, base)
                continue
            if p.name in _OWN_NAMES or is_temporary_name(p.name):
                continue
            rel = p.relative_to(base).as_posix() if manifest is not None else None
            if manifest is None or not (rel in manifest or _under_listed(rel, manifest)):
                out.append(p)
                if limit is not None and len(out) >= limit:
                    raise _Enough

    if folder.is_dir():
        with contextlib.suppress(_Enough):
            walk(folder, None, folder)
    return out


def _under_listed(rel: str, manifest: set[str]) -> bool:
    parts = rel.rstrip("/").split("/")
    return any("/".join(parts[:k]) + "/" in manifest for k in range(1, len(parts)))


class OutputFolder:
    """An output folder held by this process (see :func:`open_output`); a context manager."""

    def __init__(self, path: Path, lock_fd: int | None, created: Path | None = None):
        self.path = path
        self._lock_fd = lock_fd
        self._created = created  # the topmost folder that opening this one created, if any

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop recording writes and release the lock (the lock file stays; it is ours)."""
        untrack_writes(self.path)
        if self._created is not None and self._lock_fd is not None and self._holds_nothing():
            # Nothing was written (the command stopped early): leave no trace of having opened it.
            with contextlib.suppress(OSError):
                (self.path / MANIFEST_NAME).unlink()
                (self.path / LOCK_NAME).unlink()
                d = self.path
                while True:
                    d.rmdir()
                    if d == self._created:
                        break
                    d = d.parent
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)  # a PID left in the file means its process died holding it
            with contextlib.suppress(OSError):
                _unlock(self._lock_fd)
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _holds_nothing(self) -> bool:
        try:
            return (sorted(p.name for p in self.path.iterdir()) == sorted(_OWN_NAMES)
                    and not (read_manifest(self.path) or set()))
        except OSError:
            return False

    def remove_own_files(self) -> list[Path]:
        """Delete every file that the manifests below this folder list (what SegDINO wrote here),
        our temporaries, then the folders left empty; nothing else. Returns what was deleted."""
        removed: list[Path] = []
        for manifest_dir in sorted({p.parent for p in self.path.rglob(MANIFEST_NAME)}, key=lambda p: -len(p.parts)):
            nested_lock = None
            if manifest_dir != self.path and (manifest_dir / LOCK_NAME).exists():
                # A folder of ours inside this one (a report) may be held by a process still writing it.
                nested_lock = _take_lock(manifest_dir, "the folder")
            listed = read_manifest(manifest_dir) or set()
            for rel in sorted(listed, reverse=True):
                p = manifest_dir / rel.rstrip("/")
                if rel.endswith("/") and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                    removed.append(p)
                elif p.is_file() or p.is_symlink():
                    p.unlink()
                    removed.append(p)
            if manifest_dir != self.path:
                (manifest_dir / MANIFEST_NAME).unlink()
            if nested_lock is not None:
                (manifest_dir / LOCK_NAME).unlink()
                _unlock(nested_lock)
                os.close(nested_lock)
        removed += remove_stale_temporaries(self.path, recursive=True)
        for d in [p for p in self.path.rglob("*") if p.is_dir() and is_temporary_name(p.name)]:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        for d in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds on a folder left empty
        (self.path / MANIFEST_NAME).write_text("")
        return removed

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporaries that interrupted writes left anywhere below this folder."""
        return remove_stale_temporaries(self.path, recursive=True)


def _lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # not POSIX: a lock of the first byte through msvcrt
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _take_lock(folder: Path, option: str) -> int:
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"cannot write into {option} {folder} ({e.strerror or e})") from None
    if not _lock(fd):
        holder = _read_pid(fd)
        os.close(fd)
        who = f"PID {holder}" if holder else "another process"
        raise OutputError(f"{option} {folder} is in use by another SegDINO process ({who}); wait for it to end "
                          "or choose another folder")
    # The kernel releases the lock of a process that dies, however it dies: a PID left in the file
    # is that of a process that ended without cleaning up.
    previous = _read_pid(fd)
    if previous and previous != os.getpid():
        state = "no longer running" if not _pid_alive(previous) else "which no longer holds it"
        log.info("%s: taking over the lock of PID %d (%s)", folder, previous, state)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        os.close(fd)
        raise OutputError(f"cannot write into {option} {folder} ({e.strerror or e})") from None
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _check_output_file(path: Path, inputs, option: str, recognise: Callable[[Path], bool] | None) -> None:
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give the path of the file to write")
    _check_apart(path, inputs, option)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {option} {path} ({e.strerror or e})") from None
    if path.exists() and recognise is not None and not recognise(path):
        raise OutputError(f"{option} {path} exists and was not written by SegDINO; remove it or choose another path")


def open_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out",
                file: bool = False, recognise: Callable[[Path], bool] | None = None) -> OutputFolder | None:
    """Check an output before any work is done and, for a folder, hold it.

    Args:
        path: the output folder (or, with ``file``, the output file).
        inputs: what the command reads; the output must not be, lie inside, or contain any of them.
        option: the option's name in messages.
        file: ``path`` is one file: its folder must be writable and an existing file at ``path``
            must pass ``recognise`` (written by us); no lock, no manifest.

    Returns:
        An :class:`OutputFolder` (a context manager: lock released and writes no longer listed on
        exit), or None for a file.

    Raises:
        OutputError: ``path`` is a file where a folder is needed (or the reverse), overlaps an input,
            cannot be written, is held by another live process (the message names its PID), or holds
            files SegDINO did not write there (named).
    """
    p = Path(path)
    if file:
        _check_output_file(p, inputs, option, recognise)
        return None
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {p} is a file, not a folder")
    _check_apart(p, inputs, option)
    _refuse_foreign(p, option)  # before anything is created there
    created = next((d for d in reversed([p, *p.parents]) if not d.exists()), None)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {option} {p} ({e.strerror or e})") from None
    had_lock = (p / LOCK_NAME).exists()
    try:
        fd = _take_lock(p, option)
    except OutputError:
        if created is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(created)
        raise
    held = OutputFolder(p, fd, created)
    try:
        _refuse_foreign(p, option)  # again, now that no other process of ours can write there
        try:
            track_writes(p)
        except OSError as e:
            raise OutputError(f"cannot write into {option} {p} ({e.strerror or e})") from None
    except BaseException:
        if not had_lock:
            with contextlib.suppress(OSError):
                (p / LOCK_NAME).unlink()
        held.close()
        raise
    return held


def _refuse_foreign(p: Path, option: str) -> None:
    foreign = foreign_files(p, limit=4)
    if foreign:
        shown = ", ".join(f.relative_to(p).as_posix() for f in foreign[:3])
        more = " and more" if len(foreign) > 3 else ""
        raise OutputError(f"{option} {p} holds files SegDINO did not write ({shown}{more}); "
                          "choose a new or empty folder")


def record_folder(path: str | os.PathLike) -> None:
    """Mark a folder whose whole content another library writes (TensorBoard's) as ours."""
    record_written(path, folder=True)
