"""``dn bench`` at several commits on one machine, interleaved: did a change keep the speed?

    python scripts/bench_commits.py 932d751 b10ab7e HEAD            # the issue 25 table, 2048², CPU
    python scripts/bench_commits.py HEAD~1 HEAD --size 4096 --rounds 3
    python scripts/bench_commits.py 49ef19e HEAD --cores 1 2 --host-only  # the host stages, 1 core then 2

Each commit is checked out into a temporary git worktree and its own ``python -m dn_cli bench
--json`` runs there (same Python environment, ``PYTHONPATH`` pointing at the worktree), one
commit after another in every round, so a machine that speeds up or slows down affects all
alike. Reported per commit, the median over rounds: the model's ceiling, ``in`` and ``dn`` end
to end (Mpx/s), and ``dn`` as a fraction of half the ceiling (two forwards per tile; the collect
pass stops after the last norm layer, so above 1 is possible). Run it before and after any change
to the DN layer, the runner, the pipeline or the writer, on an otherwise idle machine.

``--cores 1 2`` runs each commit on the first core, then the first two (``taskset``), and adds
how each stage scales; ``--host-only`` measures the stages without the model (reads, writer,
``null``), with ``null`` as a fraction of what reads and writer allow together,
1 / (1/reads + 1/writer). Commits from before ``dn bench --host-only`` run every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_dn_overhead import machine

ROOT = Path(__file__).resolve().parent.parent
MODEL_KEYS = ("ceiling_mpx_s", "in_mpx_s", "dn_mpx_s")
HOST_KEYS = ("read_mpx_s", "write_mpx_s", "null_mpx_s")


def bench_at(tree: Path, args: argparse.Namespace, cores: int | None) -> dict:
    command = [sys.executable, "-m", "dn_cli", "bench", "--json", "--size", str(args.size)]
    command += ["--device", args.device, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    if args.host_only and "--host-only" in (tree / "dn_cli" / "cli" / "bench.py").read_text():
        command.append("--host-only")
    if cores is not None:
        command = ["taskset", "-c", f"0-{cores - 1}", *command]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"dn bench failed at {tree.name}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commits", nargs="+", help="commits to compare (anything git rev-parse takes)")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="dn bench's own repeats per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every commit, interleaved")
    parser.add_argument("--cores", type=int, nargs="+", help="run on the first N cores (taskset), for each N")
    parser.add_argument("--host-only", action="store_true", help="only the stages without the model")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still remove the worktrees
    shas = {
        c: subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", c], text=True).strip()
        for c in args.commits
    }
    unique = list(dict.fromkeys(shas.values()))  # HEAD and its sha are one commit
    settings = [(sha, cores) for sha in unique for cores in (args.cores or [None])]
    runs: dict[tuple, list[dict]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        try:
            for sha in unique:
                trees[sha] = Path(tmp) / sha
                subprocess.run(
                    ["git", "-C", ROOT, "worktree", "add", "--detach", trees[sha], sha], check=True, capture_output=True
                )
            for round_ in range(args.rounds):
                for sha, cores in settings:
                    on = "" if cores is None else f" on {cores} core(s)"
                    print(f"round {round_ + 1}/{args.rounds}: {sha}{on}", file=sys.stderr)
                    runs[sha, cores].append(bench_at(trees[sha], args, cores))
        finally:
            for tree in trees.values():  # one that failed to be made is pruned
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False)
            subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=False)
    keys = HOST_KEYS if args.host_only else (*MODEL_KEYS, "null_mpx_s", "write_mpx_s")
    table = {}
    for (sha, cores), results in runs.items():
        row = {key: round(statistics.median(r[key] for r in results), 3) for key in keys}
        if not args.host_only:
            row["dn_of_half_ceiling"] = round(row["dn_mpx_s"] / (row["ceiling_mpx_s"] / 2), 2)
            row["dn_range"] = [min(r["dn_mpx_s"] for r in results), max(r["dn_mpx_s"] for r in results)]
        else:
            fed = 1 / (1 / row["read_mpx_s"] + 1 / row["write_mpx_s"])
            row["null_of_reads_and_writer"] = round(row["null_mpx_s"] / fed, 2)
        table[sha if cores is None else f"{sha} {cores} core(s)"] = row
    scaling = {}
    if args.cores and len(args.cores) > 1:
        least = min(args.cores)
        for sha, cores in settings:
            if cores != least:
                more, fewer = table[f"{sha} {cores} core(s)"], table[f"{sha} {least} core(s)"]
                scaling[f"{sha} {cores} ÷ {least} cores"] = {k: round(more[k] / fewer[k], 2) for k in keys}
    if args.json:
        print(json.dumps({"machine": machine(), "size": args.size, "commits": table, "scaling": scaling}))
        return
    print(
        f"{machine()}; dn bench --size {args.size} --device {args.device} --batch-size {args.batch_size}, "
        f"median of {args.rounds} interleaved rounds (Mpx/s)"
    )
    columns = [*keys, *(k for k in next(iter(table.values())) if k not in keys and k != "dn_range")]
    print("| run | " + " | ".join(c.removesuffix("_mpx_s") for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(str(row[c]) for c in columns) + " |")
    for name, ratio in scaling.items():
        print(f"| {name} | " + " | ".join(f"{ratio[c]}×" if c in ratio else "" for c in columns) + " |")


if __name__ == "__main__":
    main()
