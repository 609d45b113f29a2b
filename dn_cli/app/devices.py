"""``--devices``: one worker process per device, slides dealt out one at a time, biggest first.

The parent deals: a worker that is ready gets the next slide, so a device never idles while
another has a queue. Each worker runs exactly what a single-device run does for one slide
(``run.attempt``, with its claim), so outputs are the same pixels. Workers report through the
parent: their warnings, progress and outcomes reach the parent's ``Events``. A worker that dies
(a decoder's crash on a bad slide, the kernel's OOM killer) costs its slide only: that slide is
failed, a new worker takes its place (each worker's place has its own restarts). Ctrl-C or
``kill`` stops every worker, each removing what it was writing; a worker whose parent dies
(``kill -9``) stops itself the same way.
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

import torch

from dn_cli import compiled
from dn_cli.app.batch import Job
from dn_cli.app.claims import claim
from dn_cli.app.events import Events
from dn_cli.app.results import SlideResult, Status
from dn_cli.app.run import attempt, label_of, not_attempted
from dn_cli.app.settings import Run
from dn_cli.app.slide import Slide
from dn_cli.device import autocast_dtype, select_device
from dn_cli.errors import DnError, reason
from dn_cli.handover import POLL
from dn_cli.outputs import clear_stale_partials
from dn_cli.pipeline import TileRunner
from dn_cli.stopping import Stop

RESTARTS = 3  # workers started again in one place after crashes, before the place is given up
STOP_GRACE = 60  # seconds a worker has to remove what it was writing once asked to stop


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
    """What every worker is given: the run (its model loads in the worker), how to run the
    model, and the jobs."""

    run: Run
    precision: str
    jobs: list[Job]
    threads: int  # torch threads of a CPU worker (the cores shared out)


class QueueBar:
    """A worker's slide progress, sent to the parent (only when it moved)."""

    def __init__(self, outbox, worker: int) -> None:
        self.outbox, self.worker, self.last = outbox, worker, (0, 0)

    def __call__(self, done: int, total: int) -> None:
        if (done, total) != self.last:
            self.outbox.put(("tiles", self.worker, done - self.last[0], total - self.last[1]))
            self.last = (done, total)

    def close(self) -> None:
        pass


class QueueEvents:
    """A worker's events, sent to the parent, which reports them (the outcome is sent by ``work``)."""

    def __init__(self, outbox, worker: int, device: str) -> None:
        self.outbox, self.worker, self.device = outbox, worker, device

    def warning(self, message: str) -> None:
        self.outbox.put(("warning", self.worker, message))

    def error(self, message: str) -> None:
        self.outbox.put(("error", self.worker, message))

    def note(self, message: str) -> None:
        self.outbox.put(("note", self.worker, message))

    def progress(self, label: str) -> QueueBar:
        return QueueBar(self.outbox, self.worker)

    def finished(self, result: SlideResult, label: str) -> None:
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
        events = QueueEvents(outbox, worker, device)
        generator = shared.run.model.loaded()
        runner = TileRunner(generator, torch_device, autocast_dtype(shared.precision, torch_device))
        if compiled.wanted(shared.run.settings.compile_model, torch_device):
            runner.compile(lambda message: events.warning(f"{device}: {message}"))
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
            result = attempt(Slide(job, runner, shared.run, label, events), one_file=False)
            outbox.put(("done", worker, index, result))
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
        """Every worker stopped (asked by SIGTERM, then killed after ``STOP_GRACE``) and waited for."""
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE
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

    def __init__(self, shared: Shared, devices: list[str], events: Events) -> None:
        self.jobs, self.fail_fast, self.events = shared.jobs, shared.run.fail_fast, events
        self.results: dict[int, SlideResult] = {}
        self.pending = list(range(len(self.jobs)))  # already biggest first
        self.holding: dict[int, int | None] = {}  # live worker → the job it translates
        self.pool = Pool(devices, shared)
        self.progress = events.progress(f"{len(devices)} devices")
        self.tiles = [0, 0]  # done, total: over every slide begun

    def run(self) -> list[SlideResult]:
        """Translate every job; returns the results in the jobs' order."""
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
            self.progress.close()
        for index in self.pending:
            if self.failed:
                self.report(not_attempted(self.jobs[index]), index)
            else:  # every device given up
                self.report(self.failure(index, "no device could run the model"), index)
        return [self.results[i] for i in range(len(self.jobs))]

    @property
    def failed(self) -> bool:
        return self.fail_fast and any(r.status == Status.FAILED for r in self.results.values())

    def failure(self, index: int, error: str) -> SlideResult:
        job = self.jobs[index]
        return SlideResult(job.source, job.output, Status.FAILED, error=error)

    def handle(self, kind: str, worker: int, *details) -> None:
        if kind == "ready":
            stop = not self.pending or self.failed
            self.holding[worker] = None if stop else self.pending.pop(0)
            self.pool.inboxes[worker].put(self.holding[worker])
        elif kind == "tiles":
            self.tiles = [self.tiles[0] + details[0], self.tiles[1] + details[1]]
            self.progress(*self.tiles)
        elif kind == "done":
            self.holding[worker] = None
            self.report(details[1], details[0])
        elif kind == "warning":
            self.events.warning(details[0])
        elif kind == "note":
            self.events.note(details[0])
        elif kind == "error":
            self.events.error(details[0])
        elif kind == "broken":
            name = self.pool.name(worker)
            self.events.error(f"{name}: the model could not be started there: {details[0]}")
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
                self.report(self.failure(index, f"{self.pool.name(worker)} died ({how})"), index)
            self.pool.crashes[place] += 1
            if self.pending and self.pool.crashes[place] <= RESTARTS:
                self.holding[self.pool.start(place)] = None

    def report(self, result: SlideResult, index: int) -> None:
        self.results[index] = result
        self.events.finished(result, label_of(self.jobs[index], index + 1, len(self.jobs)))
