"""Writing files and directories so that a reader never sees half of one.

A process killed at any instant (`kill -9`, a preempted VM) leaves either the old content or
the new, never a mix: everything is written under a temporary name in the same directory,
flushed to the disk (fsync), and renamed over the final name, which the file system does
atomically. Temporary names hold the final name and `.tmp-`, so a later writer
can tell and remove what a killed one left (`remove_leftovers`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_MARKS = (".tmp-", ".old-", ".del-")


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def atomic_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` into a temporary sibling of `out`, then swap it in with a rename.

    An existing `out` is replaced only once the new one is complete and on disk; on any
    failure the temporary directory is removed and `out` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a preset dir is an ordinary dir
    try:
        write(tmp)
        _fsync_tree(tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
        os.rename(tmp, out)
        _fsync_path(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(out: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` into a temporary sibling file of `out`, fsync it, then rename it to `out`.

    An existing `out` is replaced only once the new file is complete; on any failure (Ctrl-C
    included) the temporary file is removed and `out` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an exported model is an ordinary file
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` with `atomic_file` (see the module docstring)."""
    atomic_file(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_dir(path: Path) -> None:
    """Delete a directory so that no reader sees it half deleted: rename it away first."""
    gone = Path(tempfile.mkdtemp(prefix=f"{path.name}.del-", dir=path.parent))
    os.rename(path, gone / path.name)
    shutil.rmtree(gone, ignore_errors=True)


def remove_leftovers(directory: Path) -> list[Path]:
    """Remove what killed writers left in `directory` (names holding `.tmp-`, `.old-`,
    `.del-`); only one process may write there at a time. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        if any(m in p.name for m in TMP_MARKS):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    continue
            removed.append(p)
    return removed
