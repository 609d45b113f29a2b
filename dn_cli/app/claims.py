"""Which run translates a slide: a claim file beside its output, created exclusively.

Runs that share an output folder — processes of one machine, containers, or nodes mounting it
over NFS, Lustre or GPFS — divide the slides between them by claiming each before translating
it. A claim is ``.NAME.claim`` beside the output ``NAME``, created with ``O_CREAT | O_EXCL``:
atomic on all of these file systems, where ``flock`` often is not (Lustre and GPFS mounts may
lack it). It holds the claimant's host, boot, pid namespace, pid, a token and when its run
began; while the claim is held a thread touches it every ``HEARTBEAT`` seconds.

A claim is stale, and is taken over, when its run is provably dead (same host, boot and pid
namespace — where its pid means this machine's process — and no such process) or its heartbeat
stopped ``STALE_AFTER`` seconds ago (a run on another node or in another container, or one
stopped for minutes; node clocks agree, as munge and Slurm themselves require). A run that
finds its claim taken over drops its slide, which the run that took it over translates:
publishing never replaces a file anyway, so at worst work is done twice, never lost.

Claims dn cannot use — not a regular file, one it cannot remove when stale (another user's in a
sticky folder, an immutable file), one dated in the future — are named, with what to do.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dn_cli.errors import DnError, OutputError
from dn_cli.outputs import hidden_name, os_reason, writing_beside

HEARTBEAT = 10.0
STALE_AFTER = 120.0
MOST_READ = 1 << 16  # a claim is a line of JSON; more is not one of ours


def _read_link(path: str) -> str:
    try:
        return Path(path).read_text().strip() if path.endswith("boot_id") else os.readlink(path)
    except OSError:
        return ""  # not Linux: a process is then judged by its heartbeat alone


# What makes a pid meaningful: the machine, its boot, and the pid namespace (a container, unshare).
HOST, BOOT, PID_NAMESPACE = (
    socket.gethostname(),
    _read_link("/proc/sys/kernel/random/boot_id"),
    _read_link("/proc/self/ns/pid"),
)


class ClaimHeld(DnError):
    """A live run holds the claim (the message says more when there is more to say)."""


class ClaimLost(DnError):
    """Another run took this run's claim over (this one was stopped too long) and translates the slide."""


def claim_path(final: Path) -> Path:
    return final.with_name(hidden_name(final) + "claim")


@dataclass(frozen=True)
class Found:
    """A claim as found on disk."""

    path: Path
    holder: dict  # what it says: {} if it cannot be read or is not a claim's JSON
    heartbeat: float  # its modification time
    owner: int  # its owner's uid
    kind: str | None  # None for a regular file; else what it is (a directory, a FIFO...)

    def whose(self) -> str:
        """``of user ana, run 4711 on node-7``, as far as it is known."""
        try:
            user = pwd.getpwuid(self.owner).pw_name
        except KeyError:
            user = f"uid {self.owner}"
        run = f", run {self.holder['pid']} on {self.holder.get('host', '?')}" if "pid" in self.holder else ""
        return f"of user {user}{run}"

    def ahead(self) -> float:
        """Seconds its heartbeat is dated ahead of this machine's clock (0 if it is not)."""
        return max(0.0, self.heartbeat - time.time())


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFLNK: "a link", stat.S_IFSOCK: "a socket"}


def _read(path: Path) -> Found | None:
    """The claim at ``path``, or None if there is none. Never blocks: a FIFO is opened without
    waiting for a writer and not read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError:  # a link, or a file this user may not read: judged by what lstat says
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        return Found(path, {}, info.st_mtime, info.st_uid, _kind(info.st_mode))
    try:
        info = os.fstat(fd)
        kind = _kind(info.st_mode)
        data = os.read(fd, MOST_READ) if kind is None else b""
    finally:
        os.close(fd)
    try:
        holder = json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError too: random bytes, or created and not yet filled
        holder = {}
    return Found(path, holder if isinstance(holder, dict) else {}, info.st_mtime, info.st_uid, kind)


def _kind(mode: int) -> str | None:
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _here(holder: dict) -> bool:
    """Whether the claim's pid names a process this one can see: same host, boot and pid namespace."""
    mine = {"host": HOST, "boot": BOOT, "pid_namespace": PID_NAMESPACE}
    return bool(BOOT and PID_NAMESPACE) and all(holder.get(key) == value for key, value in mine.items())


def is_stale(found: Found) -> bool:
    """Whether the run that wrote a claim is gone: dead here, or silent too long."""
    return (_here(found.holder) and not _alive(found.holder.get("pid"))) or (
        time.time() - found.heartbeat > STALE_AFTER
    )


def holder_of(final: Path) -> dict | None:
    """Who holds a live claim on ``final`` (host, pid), or None if no live run does."""
    try:
        found = _read(claim_path(final))
    except OSError:  # a path the file system cannot hold (refused where it would be written)
        return None
    return None if found is None or is_stale(found) else found.holder


def runs_started(folder: Path) -> list[float]:
    """When the runs holding live claims in ``folder`` began (their claims say)."""
    starts = []
    for path in folder.glob(".*.claim") if folder.is_dir() else []:
        found = _read(path)
        if found is not None and found.kind is None and not is_stale(found):
            run = found.holder.get("run")
            if isinstance(run, (int, float)):
                starts.append(float(run))
    return starts


class Claim:
    """A held claim on one output: kept alive by a heartbeat until :meth:`release`."""

    def __init__(self, path: Path, token: str, took_over: bool = False) -> None:
        self.path, self.token = path, token
        self.took_over = took_over  # from a run judged stale, which may yet wake (stopped, not dead)
        self.lost = False  # taken over by another run, which will translate the slide
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="dn-claim", daemon=True)
        self._beat.start()

    def _ours(self) -> bool:
        found = _read(self.path)
        return found is not None and found.holder.get("token") == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                if not self._ours():
                    self.lost = True
                    return
                os.utime(self.path)
            except OSError:
                pass  # a file server's hiccup: the next beat tries again

    def confirm(self) -> None:
        """Raise :class:`ClaimLost` unless the claim is still ours (read now, not at the last beat)."""
        try:
            ours = self._ours()
        except OSError:
            ours = True  # unreadable for a moment: the file server's, not another run's doing
        if self.lost or not ours:
            self.lost = True
            raise ClaimLost()

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, if it is still ours."""
        self._stop.set()
        self._beat.join()
        try:
            if self._ours():
                self.path.unlink()
        except OSError:
            pass  # gone, or the folder went: nothing left to release

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(final: Path, run_started: float | None = None) -> Claim:
    """Claim ``final`` for this run (which began at ``run_started``), taking over a stale claim.

    Raises:
        ClaimHeld: a live run holds it.
        OutputError: a claim that is no claim, or stale and cannot be removed; or one that
            cannot be written (a full disk): named, with what to do.
    """
    path = claim_path(final)
    took_over = False
    for _ in range(3):  # a stale claim removed, then a race for the new one
        try:
            with writing_beside(final):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            found = _read(path)
            took_over |= found is not None and _take_over(found)
            continue
        token = secrets.token_hex(8)
        holder = {
            "host": HOST,
            "boot": BOOT,
            "pid_namespace": PID_NAMESPACE,
            "pid": os.getpid(),
            "token": token,
            "since": time.time(),
            "run": run_started,
        }
        _fill(fd, path, json.dumps(holder).encode())
        return Claim(path, token, took_over)
    raise ClaimHeld("")


def _take_over(found: Found) -> bool:
    """Remove the stale claim ``found`` if it is still the one judged stale (True if removed);
    raise if it is live or cannot be removed."""
    if found.kind is not None:
        raise OutputError(f"{found.path} is {found.kind}, not a claim dn wrote: remove it to translate this slide")
    if not is_stale(found):
        skew = found.ahead()
        if skew > HEARTBEAT:  # its run may be dead: it still holds the slide until its date has passed
            raise ClaimHeld(
                f"its claim {found.path.name} is dated {skew:.0f} s ahead of this machine's clock (a clock "
                f"ahead on {found.holder.get('host', 'another node')}?) and holds the slide until "
                f"{STALE_AFTER:.0f} s after that"
            )
        raise ClaimHeld("")
    if _read(found.path) != found:
        return False  # claimed again since it was judged: judged anew
    try:
        found.path.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OutputError(
            f"{found.path}: a stale claim {found.whose()} that dn cannot remove ({os_reason(e)}): "
            "remove it, or ask its owner to"
        ) from e
    return True


def _fill(fd: int, path: Path, data: bytes) -> None:
    """Write a new claim's content; a claim that cannot be filled (a full disk) is removed, as
    an empty one would hold its slide from every run."""
    try:
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise OutputError(f"cannot claim a slide in {path.parent}: {os_reason(e)}") from e
