"""A one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd with a
configuration written in a temporary folder, on free ports. The node offers 4 CPUs and 4 "GPUs"
(``/dev/null`` stands in for each device file: jobs that ask ``--gres=gpu:1`` are scheduled,
get ``CUDA_VISIBLE_DEVICES``, and find no CUDA, so dn runs on the CPU)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class Unavailable(Exception):
    """Why no cluster could be started here."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path, host: str) -> str:
    return f"""ClusterName=dntest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
GresTypes=gpu
NodeName=dn-node NodeHostname={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=8000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=dn-node Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """Started by :meth:`start`, stopped by :meth:`stop`; ``env`` points Slurm's commands at it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"))

    def start(self) -> None:
        missing = [name for name in (*DAEMONS, "sbatch") if shutil.which(name) is None]
        if missing:
            raise Unavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise Unavailable("slurmd must run as root to start jobs, and these tests are not root")
        f = self.folder
        for sub in ("state", "spool", "dev"):
            (f / sub).mkdir(parents=True)
        f.chmod(0o700)  # munged refuses a key others can read
        (f / "munge.key").write_bytes(os.urandom(128))
        (f / "munge.key").chmod(0o400)
        host = socket.gethostname().split(".")[0]
        for i in range(4):
            (f / "dev" / f"gpu{i}").symlink_to("/dev/null")  # gres/gpu wants device files
        (f / "gres.conf").write_text(f"NodeName=dn-node Name=gpu File={f}/dev/gpu[0-3]\n")
        (f / "slurm.conf").write_text(config(f, host))
        munge = [f"--socket={f}/munge.sock", f"--key-file={f}/munge.key", f"--pid-file={f}/munged.pid"]
        self._run(["munged", "--force", *munge, f"--log-file={f}/munged.log", f"--seed-file={f}/munged.seed"])
        self._run(["slurmctld", "-f", str(f / "slurm.conf")])
        self._run(["slurmd", "-f", str(f / "slurm.conf"), "-N", "dn-node"])
        deadline = time.monotonic() + 60
        while self.slurm("sinfo", "-h", "-o", "%t").stdout.strip() != "idle":
            if time.monotonic() > deadline:
                raise Unavailable(f"the node never became idle: {self.log_tail()}")
            time.sleep(0.5)

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise Unavailable(f"{command[0]} did not start: {(done.stderr or done.stdout).strip()} {self.log_tail()}")

    def log_tail(self) -> str:
        lines = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.folder / name
            if path.exists():
                lines += [f"{name}: {line}" for line in path.read_text(errors="replace").splitlines()[-3:]]
        return " | ".join(lines)

    def slurm(self, *command: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=cwd, check=check, timeout=900)

    def jobs(self) -> list[str]:
        """The jobs Slurm still holds (array tasks one by one)."""
        return self.slurm("squeue", "-h", "-r", "-o", "%i").stdout.split()

    def wait(self, seconds: float = 600) -> None:
        """Until Slurm holds no job (polled often: ``sbatch --wait`` polls at growing intervals)."""
        deadline = time.monotonic() + seconds
        while self.jobs():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued or running after {seconds} s: {self.jobs()}")
            time.sleep(0.3)

    def stop(self) -> None:
        for name in reversed(DAEMONS):
            pid_file = self.folder / f"{name}.pid"
            try:
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
