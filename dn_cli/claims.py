"""Which run translates a slide: a claim file beside its output, created exclusively.

Runs that share an output folder — processes of one machine, or nodes mounting it over NFS,
Lustre or GPFS — divide the slides between them by claiming each before translating it. A claim
is ``.NAME.claim`` beside the output ``NAME``, created with ``O_CREAT | O_EXCL``: atomic on all of
these file systems, where ``flock`` often is not (Lustre and GPFS mounts may lack it). It holds
the claimant's host, boot, pid and a token; while the claim is held a thread touches it every
``HEARTBEAT`` seconds. A claim is stale, and is taken over, when its run is provably dead (same
host and boot, no such process) or its heartbeat stopped ``STALE_AFTER`` seconds ago (a run on
another node; node clocks agree, as munge and Slurm themselves require). A run that finds its
claim taken over (it was stopped for minutes, say) drops its slide: publishing never replaces a
file anyway, so at worst work is lost, never an output.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from dn_cli.outputs import hidden_name, writing_beside

HEARTBEAT = 10.0
STALE_AFTER = 120.0


def _boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""  # not Linux: a process is then judged by its heartbeat alone


HOST, BOOT = socket.gethostname(), _boot()


def claim_path(final: Path) -> Path:
    return final.with_name(hidden_name(final) + "claim")


def _read(path: Path) -> tuple[dict, float] | None:
    """(what the claim says, its last heartbeat) or None if there is no claim."""
    try:
        heartbeat = path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        holder = {}  # being written (created, not yet filled), or foreign: judged by its age
    return (holder if isinstance(holder, dict) else {}), heartbeat


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


def is_stale(holder: dict, heartbeat: float) -> bool:
    """Whether the run that wrote a claim is gone: dead on this machine, or silent too long."""
    here = holder.get("host") == HOST and holder.get("boot") == BOOT
    return (here and not _alive(holder.get("pid"))) or time.time() - heartbeat > STALE_AFTER


def holder_of(final: Path) -> dict | None:
    """Who holds a live claim on ``final`` (host, pid), or None if no live run does."""
    try:
        found = _read(claim_path(final))
    except OSError:  # a path the file system cannot hold (refused where it would be written)
        return None
    return None if found is None or is_stale(*found) else found[0]


class Claim:
    """A held claim on one output: kept alive by a heartbeat until :meth:`release`."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token
        self.lost = False  # taken over by another run, which will translate the slide
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="dn-claim", daemon=True)
        self._beat.start()

    def _ours(self) -> bool:
        found = _read(self.path)
        return found is not None and found[0].get("token") == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                if not self._ours():
                    self.lost = True
                    return
                os.utime(self.path)
            except OSError:
                pass  # a file server's hiccup: the next beat tries again

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


def claim(final: Path) -> Claim | None:
    """Claim ``final`` for this run, taking over a stale claim; None if a live run holds it."""
    path = claim_path(final)
    for _ in range(3):  # a stale claim removed, then a race for the new one
        try:
            with writing_beside(final):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            found = _read(path)
            if found is not None and not is_stale(*found):
                return None
            if found is not None and _read(path) == found:  # still the stale one: not a new claim since
                path.unlink(missing_ok=True)
            continue
        token = secrets.token_hex(8)
        holder = {"host": HOST, "boot": BOOT, "pid": os.getpid(), "token": token, "since": time.time()}
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(holder, f)
        return Claim(path, token)
    return None
