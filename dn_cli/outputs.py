"""How files appear: whole, under their final name, never over another run's file.

Every file dn writes is first written to a hidden temporary beside its final name,
``.NAME.<random>.partial<suffix>``, which this process holds an exclusive lock on while it
lives. Publishing links the temporary to the final name, which fails if the name exists (so a
second run can never silently replace the first one's output), or with ``overwrite`` renames it
over the old file. A temporary whose lock is free and that predates this run was left by a
killed run (``kill -9``, a power cut) and is removed; one whose lock is held belongs to a live run.
Where the file system has no locks, the claim on the slide (``claims``) tells live runs from dead ones.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dn_cli.errors import OutputError
from dn_cli.native_paths import printable


def os_reason(error: OSError) -> str:
    """What went wrong with a file, in words (``no space left on device``), without the path."""
    return (error.strerror or str(error)).lower()


def _limit(path: Path, name: str, default: int) -> int:
    """A file system limit (``PC_NAME_MAX``, ``PC_PATH_MAX``) where ``path`` would be (its nearest folder's)."""
    folder = Path(os.path.abspath(path)).parent
    while not os.path.isdir(folder) and folder != folder.parent:  # isdir: never raises on a long path
        folder = folder.parent
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def too_long(path: Path) -> str | None:
    """Why ``path`` cannot exist on its file system (a name or path past its limits), or None."""
    full = len(os.fsencode(os.path.abspath(path)))
    if full >= (most := _limit(path, "PC_PATH_MAX", 4096)):
        return f"a path of {full} bytes, past the system's {most}"
    name = len(os.fsencode(path.name))
    if name > (most := _limit(path, "PC_NAME_MAX", 255)):
        return f"a name of {name} bytes, past the {most} its file system takes"
    return None


def check_name(path: Path) -> None:
    """Refuse, before any work, a name dn could not publish: too long, or a link to nowhere."""
    if reason := too_long(path):
        raise OutputError(f"cannot write {shortened(path)}: {reason}")
    if path.is_symlink() and not path.exists():
        raise OutputError(
            f"{path} is a link to {os.readlink(path)}, which does not exist: "
            "dn does not write through links; remove it or give another name"
        )


def shortened(path: Path) -> str:
    """A path short enough for a message."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:50]}…{text[-50:]}"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


class Partial:
    """A locked, hidden temporary file beside ``final``, to be published under that name or discarded.

    Args:
        final: the name the file is to have once complete.
        suffix: ends the temporary's name, so writers that choose a format by suffix still can.
    """

    def __init__(self, final: Path, suffix: str | None = None) -> None:
        self.final = final
        suffix = final.suffix if suffix is None else suffix
        with writing_beside(final):
            fd, name = tempfile.mkstemp(prefix=hidden_name(final), suffix=f".partial{suffix}", dir=final.parent)
        self.path = Path(name)
        self._fd: int | None = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new and ours: cannot be held by anyone else
        except OSError:
            pass  # a file system without locks: other runs then leave it alone (see _lock)
        os.fchmod(fd, 0o666 & ~_umask())  # what a plain new file would get (mkstemp makes 0600)

    def __repr__(self) -> str:
        return f"Partial({str(self.final)!r})"

    def publish(self, overwrite: bool = False) -> None:
        """Give the temporary its final name: never over an existing file unless ``overwrite``."""
        try:
            if overwrite:
                os.replace(self.path, self.final)
            else:
                _link_new(self.path, self.final)
                self.path.unlink(missing_ok=True)  # the final name keeps the file
        except FileExistsError:
            self.discard()
            raise OutputError(
                f"{self.final} appeared while dn was writing it (another run?): it was kept and this result dropped"
            ) from None
        except OSError as e:
            self.discard()
            raise OutputError(f"cannot write {self.final}: {os_reason(e)}") from e
        self._release()

    def discard(self) -> None:
        """Delete the temporary unless it was published (nothing under the final name is touched)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


@contextmanager
def writing_beside(final: Path):
    """Make ``final``'s folder; errors making it or creating a file in it become one OutputError
    (a file that exists already is the caller's to judge)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot write {final}: a file stands where its folder {final.parent} should be") from None
    except OSError as e:
        raise OutputError(f"cannot write in {final.parent}: {os_reason(e)}") from e
    try:
        yield
    except FileExistsError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write in {final.parent}: {os_reason(e)}") from e


def _link_new(source: Path, target: Path) -> None:
    """``target`` becomes another name of ``source``, atomically, only if it does not exist."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # A file system without hard links: check, then rename (a much smaller race than none).
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(source, target)


def hidden_name(final: Path) -> str:
    """``.NAME.``: how the names of dn's own files beside ``final`` begin (temporaries, claims)."""
    name = final.name
    raw = os.fsencode(name)
    # Near the file system's limit (255 bytes), or not UTF-8 (which libvips cannot be given): cut
    # to a UTF-8 part, kept unique by a hash.
    if len(raw) > 200 or printable(name) != name:
        name = f"{printable(name)[:100].replace(chr(92), '_')}~{hashlib.sha1(raw).hexdigest()[:12]}"
    return f".{name}."


def partials_of(final: Path) -> list[Path]:
    """Temporaries of ``final`` that any run, live or dead, left in its folder."""
    if too_long(final) or not final.parent.is_dir():
        return []
    return sorted(final.parent.glob(f"{glob.escape(hidden_name(final))}*.partial*"))


def _lock(path: Path) -> str:
    """``held`` by a live run, ``free`` (its run is dead), or ``unknown`` (not ours to judge)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "free"  # gone meanwhile
    except OSError:
        return "unknown"  # another user's, say
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "free"
    except BlockingIOError:
        return "held"
    except OSError:
        return "unknown"  # a file system without locks: the claim on the slide decides
    finally:
        os.close(fd)


def is_busy(final: Path) -> bool:
    """Whether a live run is writing ``final`` now."""
    return any(_lock(path) == "held" for path in partials_of(final))


def clear_stale_partials(final: Path, started: float) -> bool:
    """Remove the temporaries of ``final`` that dead runs left (older than ``started``, a time stamp,
    and not locked); True if a live run is writing ``final`` now (its temporary is locked). For the
    holder of ``final``'s claim (``claims``) only: on a file system without locks, its claim is what
    tells that no live run writes these temporaries."""
    busy = False
    for path in partials_of(final):
        state = _lock(path)
        busy |= state == "held"
        if state == "held":
            continue
        try:
            if path.stat().st_mtime < started:
                path.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove
    return busy
