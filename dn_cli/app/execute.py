"""A request carried out: the model made ready on its device (or devices), every job run."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from dn_cli import compiled
from dn_cli.app.devices import Dealer, Shared
from dn_cli.app.events import Events
from dn_cli.app.model import Model
from dn_cli.app.request import Request
from dn_cli.app.results import SlideResult
from dn_cli.app.run import run_jobs
from dn_cli.app.settings import Run, Settings
from dn_cli.device import autocast_dtype, select_device
from dn_cli.errors import GeometryError
from dn_cli.geometry import check_geometry, default_margin
from dn_cli.pipeline import TileRunner


def resolved(settings: Settings, model: Model) -> Settings:
    """``settings`` with the margin the model needs where none is given, checked against its stride."""
    stride = model.loaded().stride
    if settings.margin is None:
        settings = replace(settings, margin=default_margin(settings.tile_size, stride))
    check_geometry(settings.tile_size, settings.margin, stride)
    if settings.moment_stride == "half" and settings.policy != "dn":
        raise GeometryError(f"--moment-stride half places DN's moments: it needs --norm dn, not {settings.policy}")
    return settings


def precision_on(device: torch.device, precision: str, events: Events) -> torch.dtype | None:
    """The autocast dtype ``precision`` gives on ``device``; said if it is slow there."""
    dtype = autocast_dtype(precision, device)
    if dtype is not None and device.type == "cpu":
        events.warning(f"--precision {precision} on the CPU is many times slower than fp32")
    return dtype


def make_runner(
    model: Model, device: str | torch.device, precision: str, compile_model: str, events: Events
) -> TileRunner:
    """The model converted to DN on ``device``, compiled if ``compile_model`` asks (``auto``: on
    CUDA now; on a CPU slide by slide, where it pays)."""
    torch_device = select_device(device) if isinstance(device, str) else device
    dtype = precision_on(torch_device, precision, events)
    runner = TileRunner(model.loaded(), torch_device, dtype)
    if compiled.wanted(compile_model, torch_device):
        runner.compile(events.warning)
    return runner


def run_request(
    request: Request,
    run: Run,
    events: Events,
    *,
    runner: TileRunner | None = None,
    device: str = "auto",
    devices: list[str] | None = None,
    precision: str = "auto",
    debug: bool = False,
) -> list[SlideResult]:
    """Translate every job of ``request``: on ``runner`` (made on ``device`` if not given), or with
    ``devices``, one worker process each. ``debug``: a slide's failure is raised, not reported."""
    for warning in run.model.loaded().warnings:
        events.warning(warning)
    run = replace(run, settings=resolved(run.settings, run.model))
    if devices is not None and not request.one_file:  # one file: nothing to deal out, run on the first device
        precision_on(select_device(devices[0]), precision, events)
        cpu_workers = sum(select_device(name).type == "cpu" for name in devices)
        threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
        return Dealer(Shared(run, precision, request.jobs, threads), devices, events).run()
    if runner is None:
        runner = make_runner(
            run.model, devices[0] if devices else device, precision, run.settings.compile_model, events
        )
    return run_jobs(request.jobs, runner, run, events, one_file=request.one_file, debug=debug)
