"""Atomic file writing: every file appears whole or not at all.

A write that fails (disk full, quota, read-only folder, I/O error) raises a :class:`SegDINOError`
(or the subclass the caller names) saying which file could not be written and that the file
already at that path, if any, was left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import SegDINOError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a finished file gets the permissions any
# newly created file would get (0666 less the umask), read once at import, as other threads
# could create files while the umask is being read.
_FILE_MODE = 0o666 & ~_current_umask()


def _kept(path: Path) -> str:
    if path.exists():
        return f"the previous {path.name} is intact"
    return "nothing was written there"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, error: type[SegDINOError] = SegDINOError) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed into place.

    On any error the temporary file is removed and the previous ``path`` (if any) is untouched;
    an ``OSError`` (no space left, quota, I/O error, no permission) is raised again as ``error``
    with a message that names ``path`` and says whether a previous file survives.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise error(f"cannot write {path} ({_reason(e)}); {_kept(path)}") from None
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise error(f"cannot write {path} ({_reason(e)}); {_kept(path)}") from None
        raise


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that :func:`atomic_path` left in ``folder`` (not below it) when its process was
    killed mid-write: ``.<name>.<random>.tmp``. The finished files beside them are whole."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(".") and p.name.endswith(".tmp") and p.name.count(".") >= 3 and p.is_file())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``folder``; returns what was removed.

    Call it only where no other process is writing into ``folder`` (a run folder being resumed).
    """
    removed = []
    for p in stale_temporaries(folder):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, error: type[SegDINOError] = SegDINOError) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, error) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, error: type[SegDINOError] = SegDINOError) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"), error)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None],
                      error: type[SegDINOError] = SegDINOError) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, error) as tmp:
        writer(tmp)


def read_json(path: str | os.PathLike, error: type[SegDINOError] = SegDINOError, what: str = "JSON file"):
    """Parse a JSON file that a user or another program wrote; every failure is one ``error``.

    A missing or unreadable file, bytes that are not UTF-8, invalid JSON and nesting too deep
    for the parser (a few thousand levels: no file we read needs more than five) all raise
    ``error`` naming ``path``.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({_reason(e)})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a {what}: byte {e.start} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: not a {what}: its values are nested too deeply to be one") from None
