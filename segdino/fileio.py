"""Atomic file writing: every file appears whole or not at all.

A write that fails (disk full, quota, read-only folder, I/O error) raises a :class:`SegDINOError`
(or the subclass the caller names) saying which file could not be written and that the file
already at that path, if any, was left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
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
        record_written(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise error(f"cannot write {path} ({_reason(e)}); {_kept(path)}") from None
        raise


# safetensors' own writer (before ours replaced it) staged files as ``.tmpXXXXXX`` beside the target.
_SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is one of our temporaries: ``.<name>.<random>.tmp`` (:func:`atomic_path`), or the
    ``.tmpXXXXXX`` that earlier SegDINO versions left through safetensors' own writer."""
    return bool((name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3)
                or _SAFETENSORS_TMP.fullmatch(name))


def stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Temporary files that :func:`atomic_path` left in ``folder`` (and, with ``recursive``, below it)
    when its process was killed mid-write (see :func:`is_temporary_name`). The finished files beside
    them are whole."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_temporary_name(p.name) and p.is_file())


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``folder``; returns what was removed.

    Call it only where no other process is writing into ``folder`` (a run folder being resumed).
    """
    removed = []
    for p in stale_temporaries(folder, recursive):
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


def read_text(path: str | os.PathLike, error: type[SegDINOError] = SegDINOError, what: str = "text file",
              missing: str = "no such file") -> str:
    """The UTF-8 text of a file a user or another program wrote; every failure is one ``error``.

    The one ladder of read failures, each a one-line ``error`` naming ``path``: ``missing`` when
    the file does not exist, "a folder, not a {what}", "cannot read (why)" for any other
    ``OSError``, and "not a {what}: byte N is not UTF-8 text". A UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, not a {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({_reason(e)})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a {what}: byte {e.start} is not UTF-8 text") from None


def read_json(path: str | os.PathLike, error: type[SegDINOError] = SegDINOError, what: str = "JSON file"):
    """Parse a JSON file that a user or another program wrote; every failure is one ``error``.

    Reading fails as :func:`read_text` says; invalid JSON and nesting too deep for the parser
    (a few thousand levels: no file we read needs more than five) also raise ``error`` naming
    ``path``.
    """
    path = Path(path)
    text = read_text(path, error, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: not a {what}: its values are nested too deeply to be one") from None


# --- which files are ours ------------------------------------------------------------------------

#: In an output folder, the names of the files written there by SegDINO, one relative path a line
#: (a trailing ``/`` marks a folder whose whole content is ours). Append-only: a name is added
#: before its file is renamed into place, so a kill never leaves a file of ours unlisted.
MANIFEST_NAME = ".segdino-files"

_tracked: dict[str, Path] = {}  # resolved output folder -> its manifest
_tracked_lock = threading.Lock()


def track_writes(folder: str | os.PathLike) -> None:
    """List every file that :func:`atomic_path` writes below ``folder`` in its manifest, from now on.

    The deepest tracked folder holding a file lists it; untracked paths are not listed anywhere.
    """
    root = os.path.realpath(folder)
    manifest = Path(root) / MANIFEST_NAME
    if not manifest.exists():
        manifest.touch()
    with _tracked_lock:
        _tracked[root] = manifest


def untrack_writes(folder: str | os.PathLike) -> None:
    """Stop listing writes below ``folder`` (see :func:`track_writes`)."""
    with _tracked_lock:
        _tracked.pop(os.path.realpath(folder), None)


def record_written(path: str | os.PathLike, folder: bool = False) -> None:
    """Add ``path`` (a file, or with ``folder`` a whole folder) to the manifest of the tracked folder
    holding it; nothing when no tracked folder does."""
    if not _tracked:
        return
    full = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
    with _tracked_lock:
        best = None
        for root in _tracked:
            if full.startswith(root + os.sep) and (best is None or len(root) > len(best)):
                best = root
        if best is None:
            return
        rel = Path(os.path.relpath(full, best)).as_posix() + ("/" if folder else "")
        with open(_tracked[best], "a", encoding="utf-8") as f:
            f.write(rel + "\n")


def read_manifest(folder: str | os.PathLike) -> set[str] | None:
    """The relative paths listed in ``folder``'s manifest, or None when it has none."""
    path = Path(folder) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SegDINOError(f"cannot read {path} ({_reason(e)})") from None
    return {line for line in text.splitlines() if line}
