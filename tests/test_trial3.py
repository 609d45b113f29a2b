"""The third hostile trial (issue 24): slides never made with every run exiting 0, claims that
trap a folder, workers that outlive their parent, stops slower than Slurm's grace period, and
what was wrong or unclear besides. Numbers follow the issue's."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dn_cli.app import claims
from dn_cli.app.claims import ClaimHeld, claim, claim_path, holder_of
from dn_cli.app.devices import parse_devices
from dn_cli.errors import OutputError
from dn_cli.images import ArrayImage, Canvas
from dn_cli.models import Generator
from dn_cli.pipeline import TileRunner, translate
from dn_cli.stopping import Stop, stopped_by_signals

from .test_devices import HANG, descendants, wait_for
from .test_reliability import dn, files_in, one_error_line, png
from .test_reliability_cases import reliability
from .test_sharing import start_dn


def dead_pid() -> int:
    """A pid no process has now (one that just ended)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def write_claim(final: Path, age: float = 0, **holder) -> Path:
    """A claim on ``final`` as another run would have left it, its heartbeat ``age`` seconds old."""
    path = claim_path(final)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "theirs", **holder}))
    os.utime(path, (time.time() - age,) * 2)
    return path


def here(**holder) -> dict:
    """What a run on this machine, in this pid namespace, writes in its claim."""
    return {"host": claims.HOST, "boot": claims.BOOT, "pid_namespace": claims.PID_NAMESPACE, **holder}


@pytest.fixture
def slide(tmp_path, tissue) -> Path:
    """A tissue picture big enough to be mid-translation when a test acts (64-pixel tiles, one a batch)."""
    return png(tmp_path / "in" / "big.png", tissue)


SLOW = ["--tile-size", 64, "--batch-size", 1, "-q", "--json"]


def partial_appears(folder: Path, run: subprocess.Popen) -> None:
    wait_for(lambda: list(folder.glob(".big.tif.*.partial.tif")) or run.poll() is not None)
    assert run.poll() is None, run.communicate()


def outcome(run: subprocess.Popen) -> tuple[list[dict], str]:
    stdout, stderr = run.communicate(timeout=HANG)
    assert run.returncode == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()], stderr


# 1. A live run's claim judged stale -------------------------------------------------------------


def test_a_claim_from_another_pid_namespace_is_judged_by_its_heartbeat(tmp_path):
    """Its pid means nothing here: a container's run 17 is not this machine's process 17."""
    final = tmp_path / "o.tif"
    write_claim(final, **here(pid=dead_pid(), pid_namespace="pid:[4026531000]"))
    assert holder_of(final) is not None  # its heartbeat is fresh: alive, wherever it runs
    write_claim(final, **here(pid=dead_pid()))
    assert holder_of(final) is None  # this namespace's, and no such process: dead at once
    write_claim(final, **here(pid=os.getpid()))
    assert holder_of(final) is not None
    write_claim(final, host="node-7", boot=claims.BOOT, pid_namespace=claims.PID_NAMESPACE, pid=dead_pid())
    assert holder_of(final) is not None  # another node: no pid of its is ours to look up
    os.utime(claim_path(final), (time.time() - claims.STALE_AFTER - 1,) * 2)
    assert holder_of(final) is None  # silent too long


def unshare_works() -> str | None:
    try:
        done = subprocess.run(["unshare", "-pf", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else done.stderr.strip() or f"exit {done.returncode}"


def test_runs_in_two_pid_namespaces_make_the_slide_once(tmp_path, slide, checkpoint):
    """One run on the host, one in a new pid namespace (as a container that keeps the host's name):
    before, the second judged the first's live claim dead by its pid, took it over, found its
    temporary locked and left; the first then found its claim gone and dropped the slide too."""
    if why := unshare_works():
        pytest.skip(f"no pid namespace can be made here (unshare -pf: {why})")
    out = tmp_path / "out"
    args = [slide.parent, "-o", out, "--model", checkpoint, *SLOW]
    first = start_dn(*args, env=dict(os.environ))
    partial_appears(out, first)
    first.send_signal(signal.SIGSTOP)  # holds still while the other decides
    try:
        command = ["unshare", "-pf", sys.executable, "-m", "dn_cli", "translate", *map(str, args)]
        second = subprocess.run(command, capture_output=True, text=True, timeout=HANG)
        assert holder_of(out / "big.tif")["pid"] == first.pid  # its claim left to it, not taken and dropped
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 0, second.stderr
    assert [r["reason"] for r in map(json.loads, second.stdout.splitlines())] == ["another dn run is translating it"]
    records, _ = outcome(first)
    assert [r["status"] for r in records] == ["done"]
    assert sorted(p.name for p in out.iterdir()) == ["big.tif", "big.tif.json"]


def test_a_run_stopped_past_the_stale_limit_leaves_the_slide_to_the_run_that_took_it_over(tmp_path, slide, checkpoint):
    """SIGSTOP (or ``scontrol suspend``) past 120 s: the claim is rightly taken over. Before, the
    run that took it found the stopped run's temporary locked and left the slide to nobody."""
    out = tmp_path / "out"
    args = [slide.parent, "-o", out, "--model", checkpoint, *SLOW]
    stalled = start_dn(*args, env=dict(os.environ))
    partial_appears(out, stalled)
    stalled.send_signal(signal.SIGSTOP)
    try:
        os.utime(claim_path(out / "big.tif"), (time.time() - claims.STALE_AFTER - 1,) * 2)  # 120 s of silence
        taker, _ = outcome(start_dn(*args, env=dict(os.environ)))
    finally:
        stalled.send_signal(signal.SIGCONT)
    assert [r["status"] for r in taker] == ["done"]
    woken, stderr = outcome(stalled)
    assert [r["reason"] for r in woken] == ["done by another run (this one stalled and its claim was taken over)"]
    assert sorted(p.name for p in out.iterdir()) == ["big.tif", "big.tif.json"]  # its temporary gone too


# 2. A full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own (tmpfs), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"no small file system can be mounted here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_leaves_no_empty_claim_and_names_the_folder(tmp_path, tissue, checkpoint, small_disk):
    png(tmp_path / "in" / "a.png", tissue[:64, :64])
    out = small_disk / "out"
    out.mkdir()
    filler = small_disk / "filler"
    reliability.fill_up(filler)
    full = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q")
    assert full.exit_code == 1
    assert f"cannot claim a slide in {out}: no space left on device" in full.stderr, full.stderr
    assert list(out.iterdir()) == []  # no empty claim holding the slide from every run for 120 s
    filler.unlink()
    again = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["status"] == "done", again.output


# 3, 4. Runs with other settings, previews, and --overwrite over time ----------------------------


def published_meanwhile(path: Path) -> None:
    """As if another run published ``path`` while this one runs (after it started)."""
    later = time.time() + 30
    os.utime(path, (later, later))


def test_an_output_another_run_made_meanwhile_with_another_model_is_not_done(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    assert dn("translate", tmp_path / "in", "-o", out, "-q").exit_code == 0  # the bundled model
    published_meanwhile(out / "a.tif")
    before = files_in(out)
    mine = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert mine.exit_code == 0
    assert json.loads(mine.stdout)["reason"] == "made meanwhile by another run, with another model"
    assert "was made meanwhile by another run with another model" in mine.stderr
    assert files_in(out) == before


def test_an_output_made_with_other_options_is_said_to_be(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    assert dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "--tile-size", 32, "-q").exit_code == 0
    again = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert json.loads(again.stdout)["reason"] == "exists, made with other settings"
    assert "was made with other settings (--tile-size 32): kept; --overwrite replaces it" in again.stderr
    one = dn("translate", tmp_path / "in" / "a.png", "-o", out / "a.tif", "--model", checkpoint, "-q")
    line = one_error_line(one)
    assert line.endswith("a.tif exists, made with other settings (--tile-size 32); use --overwrite to replace it")
    published_meanwhile(out / "a.tif")
    meanwhile = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert json.loads(meanwhile.stdout)["reason"] == "made meanwhile by another run, with other settings"


def test_pictures_another_run_was_not_asked_for_are_still_made(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    assert dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q").exit_code == 0
    published_meanwhile(out / "a.tif")
    output = (out / "a.tif").read_bytes()
    mine = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "--preview", out, "-q", "--json")
    assert mine.exit_code == 0 and json.loads(mine.stdout)["status"] == "completed", mine.output
    assert (out / "a_preview.png").exists() and (out / "a.tif").read_bytes() == output


def test_overwrite_by_runs_started_at_different_times_replaces_each_old_output_once(tmp_path, tissue, checkpoint):
    """A run with --overwrite that starts while another one is still at it leaves alone what that
    run has already made with the same model and settings; older outputs it replaces."""
    for name in "abc":
        png(tmp_path / "in" / f"{name}.png", tissue[:40, :40])
    out = tmp_path / "out"
    options = ["--model", checkpoint, "-q", "--json"]
    assert dn("translate", tmp_path / "in", "-o", out, *options).exit_code == 0
    first_began = time.time() - 600  # a run with --overwrite that began ten minutes ago, and is at c now
    os.utime(out / "a.tif", (first_began - 60,) * 2)  # before it began: an old output
    os.utime(out / "b.tif", (first_began + 60,) * 2)  # made by it
    (out / "c.tif").unlink()
    with claim(out / "c.tif", run_started=first_began):
        second = dn("translate", tmp_path / "in", "-o", out, "--overwrite", *options)
    assert second.exit_code == 0, second.output
    said = {Path(r["input"]).stem: r.get("reason", r["status"]) for r in map(json.loads, second.stdout.splitlines())}
    assert said == {"a": "done", "b": "done by another run", "c": "another dn run is translating it"}


# 5, 6, 7. Claims dn cannot use ------------------------------------------------------------------


def test_a_claim_of_random_bytes_is_judged_by_its_age(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    garbage = claim_path(out / "a.tif")
    garbage.parent.mkdir()
    garbage.write_bytes(bytes(range(256)))
    fresh = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert fresh.exit_code == 0 and json.loads(fresh.stdout)["reason"] == "another dn run is translating it"
    os.utime(garbage, (time.time() - claims.STALE_AFTER - 1,) * 2)
    old = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert old.exit_code == 0 and json.loads(old.stdout)["status"] == "done", old.output
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "a.tif.json"]


@pytest.mark.parametrize("kind", ["a folder", "a FIFO", "a link"])
def test_a_claim_that_is_no_file_is_named_and_does_not_block(tmp_path, tissue, checkpoint, kind):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    out.mkdir()
    path = claim_path(out / "a.tif")
    {"a folder": path.mkdir, "a FIFO": lambda: os.mkfifo(path), "a link": lambda: path.symlink_to("/dev/zero")}[kind]()
    run = subprocess.run(
        [sys.executable, "-m", "dn_cli", "translate", str(tmp_path / "in" / "a.png"), "-o", str(out / "a.tif")]
        + ["--model", str(checkpoint), "-q"],
        capture_output=True,
        text=True,
        timeout=120,  # a FIFO opened for reading used to wait for a writer for ever
    )
    assert run.returncode == 1
    assert run.stderr.strip() == f"dn: error: {path} is {kind}, not a claim dn wrote: remove it to translate this slide"


def test_a_stale_claim_that_cannot_be_removed_is_named(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    path = write_claim(out / "a.tif", age=claims.STALE_AFTER + 1, host="node-7", pid=4711)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable files (chattr +i)")
    try:
        line = one_error_line(dn("translate", tmp_path / "in" / "a.png", "-o", out / "a.tif", "--model", checkpoint))
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    assert f"{path}: a stale claim of user {user}, run 4711 on node-7 that dn cannot remove" in line
    assert "remove it, or ask its owner to" in line


def test_another_users_stale_claim_in_a_sticky_folder_names_its_owner(tissue):
    """As on a shared scratch folder (mode 1777): only its owner may remove it."""
    if os.getuid() != 0:
        pytest.skip("acting as two users needs root")
    nobody = pwd.getpwnam("nobody")
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o1777)
        write_claim(folder / "o.tif", age=claims.STALE_AFTER + 1, host="node-7", pid=4711)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the other user, in a process of its own
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                claim(folder / "o.tif")
                message = "claimed"
            except OutputError as e:
                message = str(e)
            except BaseException as e:  # noqa: BLE001 - anything else is the test's to show
                message = repr(e)
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        with os.fdopen(read) as f:
            message = f.read()
    finally:
        shutil.rmtree(folder)
    assert message.startswith(f"{claim_path(folder / 'o.tif')}: a stale claim of user root, run 4711 on node-7")
    assert "operation not permitted" in message and "remove it, or ask its owner to" in message


def test_a_claim_dated_in_the_future_is_said_to_be(tmp_path, tissue, checkpoint):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    path = write_claim(out / "a.tif", host="node-7", pid=4711)
    os.utime(path, (time.time() + 3600,) * 2)  # a node whose clock is an hour ahead
    result = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    reason = json.loads(result.stdout)["reason"]
    assert re.match(r"another dn run is translating it: its claim \.a\.tif\.claim is dated 3[56]\d\d s ahead", reason)
    assert "(a clock ahead on node-7?) and holds the slide until 120 s after that" in reason
    with pytest.raises(ClaimHeld, match=r"dated 3[56]\d\d s ahead"):
        claim(out / "a.tif")


# 8, 9, 10. Workers ------------------------------------------------------------------------------


def workers_of(pid: int) -> set[int]:
    """The worker processes below ``pid`` (multiprocessing's helpers, such as its resource tracker, aside)."""
    found = set()
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(child)
    return found


def with_devices(slide: Path, out: Path, checkpoint: Path, devices: str, smaller: int) -> subprocess.Popen:
    """``dn translate --devices`` over ``slide`` and ``smaller`` small slides beside it, once it
    writes the big slide's temporary."""
    for i in range(smaller):
        png(slide.parent / f"s{i}.png", np.zeros((64, 64, 3), np.uint8) + 200)
    run = start_dn(slide.parent, "-o", out, "--model", checkpoint, *SLOW, "--devices", devices, env=dict(os.environ))
    partial_appears(out, run)
    return run


def test_workers_of_a_parent_killed_with_sigkill_stop_and_clean_up(tmp_path, slide, checkpoint):
    out = tmp_path / "out"
    run = with_devices(slide, out, checkpoint, "cpu,cpu", smaller=3)
    workers = workers_of(run.pid)
    assert len(workers) == 2  # one per device given, not one
    run.send_signal(signal.SIGKILL)
    run.wait()  # not its pipes: the workers hold them open while they live
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))  # not for ever
    run.communicate()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary, no claim


def test_devices_auto_is_the_device_auto_picks_and_every_list_is_checked_before_a_dry_run(tmp_path, slide):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert parse_devices("auto") == [expected] and parse_devices("auto,cpu") == [expected, "cpu"]
    dry = dn("translate", slide, "-o", tmp_path / "o", "--devices", "cpu,tpu", "--dry-run")
    assert "unknown device 'tpu'" in one_error_line(dry)
    if not torch.cuda.is_available():
        cuda = dn("translate", slide, "-o", tmp_path / "o", "--devices", "cuda", "--dry-run")
        assert "--devices cuda: no CUDA device is available" in one_error_line(cuda)


def test_a_lone_worker_that_dies_is_replaced_and_named(tmp_path, slide, checkpoint):
    run = with_devices(slide, tmp_path / "out", checkpoint, "cpu", smaller=2)
    (worker,) = workers_of(run.pid)
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=HANG)
    status = {Path(r["input"]).name: (r["status"], r.get("error")) for r in map(json.loads, stdout.splitlines())}
    assert status == {
        "big.png": ("failed", f"worker 1/1 on cpu (pid {worker}) died (signal SIGKILL)"),
        "s0.png": ("done", None),  # by the worker started in its place
        "s1.png": ("done", None),
    }, stderr


# 11. A stop within a layer's forward ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["dn", "in"])
def test_a_stop_acts_within_the_forward_not_after_the_batch(tissue, policy):
    """Counted by what ran after the signal, not by the clock: before, the rest of the batch's
    forward ran (and, in a slide, the stop waited for the batch's end)."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU()]
    module = nn.Sequential(*layers, nn.Conv2d(8, 3, 1), nn.Tanh()).eval()
    runner = TileRunner(Generator(module, "test", {}, 1), torch.device("cpu"))
    convs = [m for m in runner.module.modules() if isinstance(m, nn.Conv2d)]
    events = []
    for conv in convs:
        conv.register_forward_hook(lambda *_: events.append("layer"))

    def scancel(module, inputs) -> None:  # SIGTERM from outside, mid-forward of the third batch
        if events.count("layer before the signal") == 2:
            events.append("signal")
            os.kill(os.getpid(), signal.SIGTERM)
        elif "signal" not in events:
            events.append("layer before the signal")

    convs[1].register_forward_pre_hook(scancel)
    with stopped_by_signals(), pytest.raises(KeyboardInterrupt), Stop.making_a_slide():
        translate(ArrayImage(tissue[:256, :256]), Canvas(256, 256), runner, policy=policy, tile_size=64, batch_size=2)
    assert "signal" in events and events[events.index("signal") + 1 :] == []  # not one layer more


# 12. A compile cache that cannot be written -----------------------------------------------------


def test_compile_with_an_unwritable_cache_folder_warns_and_compiles(tmp_path, tissue, checkpoint):
    image = png(tmp_path / "a.png", tissue[:64, :64])
    (tmp_path / "cache").write_text("a file, not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR", "TRITON"))}
    code = (  # the CLI as users run it, with torch.compile's eager backend (no inductor build)
        "import sys; from dn_cli.pipeline import TileRunner; TileRunner.compile.__defaults__ = ('eager',); "
        "from dn_cli.cli import main; main()"
    )
    args = ["translate", image, "-o", tmp_path / "o.tif", "--model", checkpoint, "--compile", "on", "-q"]
    run = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env | {"XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == (
        f"dn: warning: compiled kernels cannot be kept in {tmp_path / 'cache' / 'dn' / 'inductor'} "
        "(not a directory): this run compiles without a disk cache"
    )
    assert json.loads((tmp_path / "o.tif.json").read_text())["compiled"] is True


# 13, 14, 15. Smaller ----------------------------------------------------------------------------


def test_nul_separated_paths_without_dash_0_say_so(tmp_path, slide):
    result = dn("translate", "-", "-o", tmp_path / "o", stdin=f"{slide}\0{slide}\0")
    assert result.exit_code == 2 and "NUL bytes (find -print0): -0 reads them" in result.stderr


def test_help_says_what_is_measured_and_huge_sizes_are_short(tmp_path, slide):
    text = dn("translate", "--help").output
    assert "without tiling artifacts" not in text and "seam score" in text
    from dn_cli.levels import pixels

    assert pixels(256000) == "256,000" and pixels(2.56e302) == "2.6e+302"


def test_a_slide_published_while_the_model_loads_is_done_by_another_run(tmp_path, tissue, checkpoint, monkeypatch):
    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    made = tmp_path / "made"
    assert dn("translate", tmp_path / "in", "-o", made, "--model", checkpoint, "-q").exit_code == 0
    out = tmp_path / "out"
    command = sys.modules["dn_cli.cli.translate"]  # the module (its name in dn_cli.cli is the command)
    load = command.load_model

    def another_run_publishes_meanwhile(*args, **kwargs):
        shutil.copytree(made, out, copy_function=shutil.copy)  # new files, as publishing makes
        return load(*args, **kwargs)

    monkeypatch.setattr(command, "load_model", another_run_publishes_meanwhile)
    result = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert json.loads(result.stdout)["reason"] == "done by another run"


# Tests that see time and concurrency (the audit's survivors) ------------------------------------


def test_a_stale_claim_is_read_again_before_it_is_removed(tmp_path, monkeypatch):
    """Between judging a claim stale and removing it, another run may have claimed anew: kept."""
    final = tmp_path / "o.tif"
    write_claim(final, age=claims.STALE_AFTER + 1, host="node-7", pid=4711)
    read = claims._read

    def another_run_claims_meanwhile(path):
        found = read(path)
        if found is not None and found.holder.get("token") == "theirs":  # the stale one, being judged
            write_claim(final, host="node-8", pid=4712, token="fresh")
        return found

    monkeypatch.setattr(claims, "_read", another_run_claims_meanwhile)
    with pytest.raises(ClaimHeld):
        claim(final)
    assert json.loads(claim_path(final).read_text())["token"] == "fresh"


def test_the_heartbeat_keeps_a_claim_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT", 0.02)
    final = tmp_path / "o.tif"
    with claim(final):
        os.utime(claim_path(final), (time.time() - 1000,) * 2)
        wait_for(lambda: time.time() - claim_path(final).stat().st_mtime < 100)


def test_a_claim_taken_over_just_before_publishing_publishes_nothing(tmp_path, tissue, checkpoint, monkeypatch):
    """The heartbeat may not have noticed yet (it looks every 10 s): the claim is read again."""
    from dn_cli.app import slide as jobs

    png(tmp_path / "in" / "a.png", tissue[:40, :40])
    out = tmp_path / "out"
    write = jobs.write_sidecar

    def taken_over_meanwhile(path, record):
        write_claim(out / "a.tif", host="node-7", pid=4711)  # as the run that took it over writes it
        write(path, record)

    monkeypatch.setattr(jobs, "write_sidecar", taken_over_meanwhile)
    result = dn("translate", tmp_path / "in", "-o", out, "--model", checkpoint, "-q", "--json")
    assert json.loads(result.stdout)["reason"] == "done by another run (this one stalled and its claim was taken over)"
    assert [p.name for p in out.iterdir()] == [".a.tif.claim"]  # the other run's claim only


def test_only_old_unlocked_temporaries_are_cleared(tmp_path):
    from dn_cli.outputs import clear_stale_partials, hidden_name

    final = tmp_path / "o.tif"
    started = time.time()
    old, new = (tmp_path / f"{hidden_name(final)}{tag}.partial.tif" for tag in ("old", "new"))
    old.write_bytes(b"a killed run's")
    os.utime(old, (started - 100,) * 2)
    new.write_bytes(b"a run's on a file system without locks, begun after this one")
    os.utime(new, (started + 1,) * 2)
    clear_stale_partials(final, started)
    assert not old.exists() and new.exists()


def test_a_dry_run_reports_a_live_claim(tmp_path, tissue):
    image = png(tmp_path / "a.png", tissue[:40, :40])
    with claim(tmp_path / "out" / "a.tif"):
        result = dn("translate", image, "-o", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0 and "skip (another dn run is writing it)" in result.stderr


def test_feature_pixels_centred_on_an_edge_count_inside_only_at_its_start():
    """Four feature pixels over an 8-pixel padded tile are centred at 1, 3, 5 and 7 pixels: a
    part [3, 8) holds the centre at 3 (its start), a part [0, 5) not the one at 5 (its stop)."""
    from dn_cli.dense_norm import _centred_in

    parts = torch.tensor([[3, 8], [0, 5], [2, 3], [6, 7]])
    inside = _centred_in(parts, 4, 8).tolist()
    assert inside[0] == [False, True, True, True] and inside[1] == [True, True, False, False]
    # Slivers thinner than a feature pixel hold no centre: the one nearest their middle stands in.
    assert inside[2] == [False, True, False, False] and inside[3] == [False, False, False, True]


def test_a_tile_is_flat_only_if_every_channel_is():
    from dn_cli.policies import is_flat

    rng = np.random.default_rng(0)
    tile = np.full((64, 64, 3), 240, np.uint8)
    assert is_flat(tile, 0, 64)
    tile[..., 1:] = rng.integers(0, 256, (64, 64, 2))  # red constant, the stain in green and blue
    assert not is_flat(tile, 0, 64)


def test_a_utf8_name_in_a_latin1_folder_is_reached_through_a_link_to_the_folder(tmp_path):
    """So a slide's companions beside it (an MRXS data folder) stay reachable by their names."""
    from dn_cli.native_paths import native

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    (folder / "a.svs").write_bytes(b"slide")
    path = native(folder / "a.svs")
    assert os.path.basename(path) == "a.svs" and Path(os.path.dirname(path)).is_symlink()
    assert os.path.realpath(os.path.dirname(path)) == os.path.realpath(folder)


def test_a_tiff_whose_level_ends_one_byte_past_the_file_is_cut(tmp_path):
    import tifffile

    from dn_cli.tiff_image import incomplete

    path = tmp_path / "levels.tif"
    tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint8) + 200, tile=(64, 64), photometric="rgb")
    assert incomplete(path) is None
    with tifffile.TiffFile(path) as tif:  # its directory first, then the tiles: the last byte is a tile's
        end = max(o + n for o, n in zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts, strict=True))
    assert end == path.stat().st_size
    os.truncate(path, end - 1)
    assert incomplete(path) == "its 256 × 256 level ends past the end of the file"


def test_mpp_override_never_replaces_a_size_a_tiff_records(tmp_path):
    """Read through tifffile (a TIFF OpenSlide leaves out: stripped, not tiled)."""
    import tifffile

    from dn_cli.tiff_image import TiffImage

    path = tmp_path / "strips.tif"
    tifffile.imwrite(
        path, np.zeros((64, 64, 3), np.uint8), photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER"
    )
    with TiffImage(path, mpp_override=0.25) as image:
        assert image.mpp == pytest.approx(0.5)


def test_dicom_slides_are_named_after_their_label_before_their_series_description(tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from dn_cli.dicom import series

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.77.1.6", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SeriesInstanceUID, ds.ContainerIdentifier, ds.SeriesDescription = generate_uid(), "S-1234", "Whole slide"
    ds.save_as(tmp_path / "level0.dcm", enforce_file_format=True)
    assert [name for _, name in series([tmp_path / "level0.dcm"])] == ["S-1234"]


def test_bf16_is_recorded_as_bf16(tmp_path, tissue, checkpoint):
    image = png(tmp_path / "a.png", tissue[:32, :32])
    result = dn("translate", image, "-o", tmp_path / "o.tif", "--model", checkpoint, "--precision", "bf16", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o.tif.json").read_text())["precision"] == "bf16"


def test_compile_auto_runs_eagerly_on_a_cpu(tmp_path, tissue, checkpoint):
    from dn_cli import compiled

    assert not compiled.wanted("auto", torch.device("cpu")) and compiled.wanted("auto", torch.device("cuda"))
    image = png(tmp_path / "a.png", tissue[:32, :32])
    assert dn("translate", image, "-o", tmp_path / "o.tif", "--model", checkpoint, "-q").exit_code == 0
    assert json.loads((tmp_path / "o.tif.json").read_text())["compiled"] is False


def test_upsampling_stops_at_four_times():
    from dn_cli.errors import InputError
    from dn_cli.levels import choose_resolution

    assert choose_resolution("s", (100, 100), [1.0], 0.5, mpp=0.125, allow_upsampling=True).width == 400
    with pytest.raises(InputError, match="4× at most"):
        choose_resolution("s", (100, 100), [1.0], 0.5, mpp=0.12, allow_upsampling=True)


def skipped_below(above: np.ndarray) -> np.ndarray:
    """The fill of a skipped tile under a translated tile ``above`` (64², grid of 1 × 2 rows)."""
    from dn_cli.geometry import TileGrid
    from dn_cli.output_stage import OutputStage

    canvas = Canvas(64, 128)
    stage = OutputStage(canvas, TileGrid(64, 128, 64, 16), np.array([240, 238, 245], np.uint8), skipping=True)
    stage.put(range(0, 1), [0], lambda: above[None])
    stage.put(range(1, 2), [], None)
    stage.close()
    return canvas.pixels[64:].astype(int)


def test_a_skipped_tile_takes_the_glass_of_the_near_strip_of_the_tile_above():
    above = np.full((64, 64, 3), 236, np.uint8)
    above[-16:] = 244  # the strip along the skipped tile
    fill = skipped_below(above)
    assert np.abs(fill[0, 16:48] - 244).max() <= 1  # not the far strip's 236


def test_tissue_in_the_strip_beside_a_skipped_tile_stays_out_of_its_glass():
    above = np.full((64, 64, 3), 243, np.uint8)
    above[-16:, :24] = (120, 60, 90)  # stained tissue reaching the edge over a third of it
    fill = skipped_below(above)
    assert np.abs(fill[0, 32:48] - 243).max() <= 1  # the glass beside it, not averaged with the stain
