"""``--devices``: one worker process per device, slides dealt out one at a time, biggest first.

The parent deals: a worker that is ready gets the next slide, so a device never idles while
another has a queue. Each worker runs exactly what a single-device run does for one slide
(``jobs.attempt``, with its claim), so outputs are the same pixels. The parent prints every
line, one progress bar and the summary. A worker that dies (a decoder's crash on a bad slide,
the kernel's OOM killer) costs its slide only: that slide is failed, a new worker takes its
place (each worker's place has its own restarts). Ctrl-C or ``kill`` stops every worker, each
removing what it was writing; a worker whose parent dies (``kill -9``) stops itself the same way.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from tqdm import tqdm

from dn_cli import compiled
from dn_cli.batch import Job
from dn_cli.claims import claim
from dn_cli.cli.jobs import Settings, Tally, attempt, label_of
from dn_cli.device import autocast_dtype, select_device
from dn_cli.errors import DnError, reason
from dn_cli.models import load_generator
from dn_cli.outputs import clear_stale_partials
from dn_cli.pipeline import TileRunner
from dn_cli.stopping import Stop

RESTARTS = 3  # workers started again in one place after crashes, before the place is given up
POLL = 0.2  # seconds between looks at the workers while no message comes


def parse_devices(spec: str) -> list[str]:
    """``cuda:0,cuda:1``, ``cpu,cpu``, ``auto`` (as ``--device auto`` chooses) or ``all`` (every CUDA
    device) → device names, each checked."""
    if spec.strip() == "all":
        if not torch.cuda.is_available():
            raise DnError("--devices all: no CUDA device is available (on CPUs give e.g. --devices cpu,cpu)")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise DnError(f"--devices {spec!r}: give devices, e.g. cuda:0,cuda:1 or all")
    return [str(select_device(name, option="--devices")) for name in names]


@dataclass(frozen=True)
class Shared:
    """What every worker is given: the model, how to run it, and the jobs."""

    model_path: Path
    arch: str | None
    trust_code: bool
    precision: str
    compile_model: str
    settings: Settings
    jobs: list[Job]
    overwrite: bool
    started: float
    threads: int  # torch threads of a CPU worker (the cores shared out)


class QueueBar:
    """A worker's slide progress, sent to the parent's bar (only when it moved)."""

    def __init__(self, outbox, worker: int) -> None:
        self.outbox, self.worker, self.last = outbox, worker, (0, 0)

    def __call__(self, done: int, total: int) -> None:
        Stop.check()
        if (done, total) != self.last:
            self.outbox.put(("tiles", self.worker, done - self.last[0], total - self.last[1]))
            self.last = (done, total)

    def close(self) -> None:
        pass


def stop_when_orphaned(outbox) -> None:
    """SIGTERM to this worker when its parent dies: a parent killed with ``kill -9`` cannot stop it,
    and an orphan would hold its device (and on a GPU its memory) for ever."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # ready once the parent has gone
        # Nobody reads its messages now: exit without waiting for them to be sent. (Only then: a
        # worker that exits while its queue's thread holds the write lock shared with the other
        # workers' would leave them unable to send for ever.)
        outbox.cancel_join_thread()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dn-parent-watch", daemon=True).start()


def work(worker: int, device: str, shared: Shared, inbox, outbox) -> None:
    """A worker process: loads the model on ``device``, then translates the slides it is dealt."""
    try:
        signal.signal(signal.SIGINT, Stop.handle)  # a terminal's Ctrl-C reaches workers too
        signal.signal(signal.SIGTERM, Stop.handle)  # the parent's way to stop them
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while it started: see Pool.start
        stop_when_orphaned(outbox)
        torch_device = torch.device(device)
        if torch_device.type == "cpu":
            torch.set_num_threads(shared.threads)
        generator = load_generator(shared.model_path, arch=shared.arch, trust_code=shared.trust_code)
        runner = TileRunner(generator, torch_device, autocast_dtype(shared.precision, torch_device))
        if compiled.wanted(shared.compile_model, torch_device):
            runner.compile(lambda message: click.echo(f"dn: warning: {device}: {message}", err=True))
    except KeyboardInterrupt:
        return
    except Exception as e:  # the device or the model there: the other workers go on
        outbox.put(("broken", worker, reason(e)))
        return
    try:
        while True:
            outbox.put(("ready", worker))
            index = inbox.get()
            if index is None:
                return
            job = shared.jobs[index]
            label = label_of(job, index + 1, len(shared.jobs))
            options = {"one_file": False, "overwrite": shared.overwrite, "started": shared.started, "debug": False}
            bar = lambda *_: QueueBar(outbox, worker)  # noqa: E731
            with Stop.making_a_slide():
                record = attempt(job, runner, shared.settings, label, bar=bar, **options)
            outbox.put(("done", worker, index, record))
    except KeyboardInterrupt:
        return


class Pool:
    """The worker processes, one per place in ``devices`` (a device given twice has two places),
    started (and started again) by the parent."""

    def __init__(self, devices: list[str], shared: Shared) -> None:
        self.context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.devices, self.shared = devices, shared
        self.outbox = self.context.Queue()
        self.processes: dict[int, multiprocessing.Process] = {}
        self.inboxes: dict[int, object] = {}
        self.place_of: dict[int, int] = {}  # worker → its place in ``devices``
        self.crashes = [0] * len(devices)  # per place: two workers on one device are told apart

    def name(self, worker: int) -> str:
        """``worker 2/2 on cpu (pid 4711)``: which of the workers, as ``ps`` and the kernel's log show it."""
        place = self.place_of[worker]
        return f"worker {place + 1}/{len(self.devices)} on {self.devices[place]} (pid {self.processes[worker].pid})"

    def start(self, place: int) -> int:
        worker, device = len(self.place_of), self.devices[place]
        self.inboxes[worker] = self.context.SimpleQueue()
        process = self.context.Process(
            target=work, args=(worker, device, self.shared, self.inboxes[worker], self.outbox), name=f"dn-{device}"
        )
        # Ctrl-C while a worker starts (imports torch) would print its traceback: the worker
        # starts with SIGINT blocked, and unblocks it once its handler is in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        self.processes[worker], self.place_of[worker] = process, place
        return worker

    def stop(self) -> None:
        """Every worker stopped (asked by SIGTERM, then killed after a minute) and waited for."""
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + 60
        for process in self.processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()  # stuck in a native call: its temporaries are cleared by the next run
                process.join()


def tidy(job: Job) -> None:
    """Remove what a dead worker was writing for ``job`` (its claim is stale, so taken over here)."""
    try:
        held = claim(job.output)
    except DnError:
        return  # another run holds it now, or the claim is not dn's to remove: left as it is
    with held:
        for path in job.files:
            clear_stale_partials(path, time.time())


class Dealer:
    """Deals the jobs of ``shared`` to workers on ``devices`` as each is ready, and reports them."""

    def __init__(self, shared: Shared, devices: list[str], *, fail_fast: bool, as_json: bool) -> None:
        self.jobs, self.fail_fast = shared.jobs, fail_fast
        self.tally = Tally(len(self.jobs), as_json, shared.settings.quiet)
        self.pending = list(range(len(self.jobs)))  # already biggest first
        self.holding: dict[int, int | None] = {}  # live worker → the job it translates
        self.pool = Pool(devices, shared)
        self.bar = tqdm(
            total=0, unit="tile", desc=f"{len(devices)} devices", disable=shared.settings.quiet, leave=False
        )
        self.finished = 0

    def run(self) -> list[str]:
        """Translate every job; returns the failed names."""
        try:
            for place in range(min(len(self.pool.devices), len(self.jobs))):
                self.holding[self.pool.start(place)] = None
            while self.holding:
                try:
                    message = self.pool.outbox.get(timeout=POLL)
                except queue.Empty:
                    self.reap()
                    continue
                self.handle(*message)
        except BaseException:  # Ctrl-C, kill: every worker stops and removes what it was writing
            self.pool.stop()
            raise
        finally:
            self.bar.close()
        for index in self.pending:
            job = self.jobs[index]
            if self.fail_fast and self.tally.failed:
                self.tally.not_attempted(job)
            else:  # every device given up
                self.report({"status": "failed", "error": "no device could run the model"}, index)
        return self.tally.finish()

    def handle(self, kind: str, worker: int, *details) -> None:
        if kind == "ready":
            stop = not self.pending or (self.fail_fast and self.tally.failed)
            self.holding[worker] = None if stop else self.pending.pop(0)
            self.pool.inboxes[worker].put(self.holding[worker])
        elif kind == "tiles":
            self.bar.total += details[1]
            self.bar.update(details[0])
        elif kind == "done":
            self.holding[worker] = None
            self.report(details[1], details[0])
        elif kind == "broken":
            name = self.pool.name(worker)
            click.echo(f"dn: error: {name}: the model could not be started there: {details[0]}", err=True)
            self.pool.crashes[self.pool.place_of[worker]] = RESTARTS  # not started again

    def reap(self) -> None:
        """Workers that ended: done, or dead — then their slide failed and a new worker takes over."""
        for worker, index in list(self.holding.items()):
            code = self.pool.processes[worker].exitcode
            if code is None:
                continue
            del self.holding[worker]
            if code == 0:
                continue
            place = self.pool.place_of[worker]
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            if index is not None:
                tidy(self.jobs[index])
                self.report({"status": "failed", "error": f"{self.pool.name(worker)} died ({how})"}, index)
            self.pool.crashes[place] += 1
            if self.pending and self.pool.crashes[place] <= RESTARTS:
                self.holding[self.pool.start(place)] = None

    def report(self, outcome: dict, index: int) -> None:
        job = self.jobs[index]
        record = {"input": str(job.source), "output": str(job.output)} | outcome
        with tqdm.external_write_mode():
            self.tally.add(record, label_of(job, index + 1, len(self.jobs)))
        self.finished += 1
        self.bar.set_description(f"{len(self.pool.devices)} devices, {self.finished}/{len(self.jobs)} slides")
