"""``dn bench`` at several commits on one machine, interleaved: did a change keep the speed?

    python scripts/bench_commits.py 932d751 b10ab7e HEAD            # the issue 25 table, 2048², CPU
    python scripts/bench_commits.py HEAD~1 HEAD --size 4096 --rounds 3

Each commit is checked out into a temporary git worktree and its own ``python -m dn_cli bench
--json`` runs there (same Python environment, ``PYTHONPATH`` pointing at the worktree), one
commit after another in every round, so a machine that speeds up or slows down affects all
alike. Reported per commit, the median over rounds: the model's ceiling, ``in`` and ``dn`` end
to end (Mpx/s), and ``dn`` as a fraction of half the ceiling (two forwards per tile; the collect
pass stops after the last norm layer, so above 1 is possible). Run it before and after any change
to the DN layer, the runner, the pipeline or the writer, on an otherwise idle machine.
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
KEYS = ("ceiling_mpx_s", "in_mpx_s", "dn_mpx_s", "null_mpx_s", "write_mpx_s")


def bench_at(tree: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "dn_cli", "bench", "--json", "--size", str(args.size)]
    command += ["--device", args.device, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
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
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still remove the worktrees
    shas = {
        c: subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", c], text=True).strip()
        for c in args.commits
    }
    runs: dict[str, list[dict]] = {sha: [] for sha in shas.values()}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for sha in runs:
            trees[sha] = Path(tmp) / sha
            subprocess.run(
                ["git", "-C", ROOT, "worktree", "add", "--detach", trees[sha], sha], check=True, capture_output=True
            )
        try:
            for round_ in range(args.rounds):
                for sha, tree in trees.items():
                    print(f"round {round_ + 1}/{args.rounds}: {sha}", file=sys.stderr)
                    runs[sha].append(bench_at(tree, args))
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False)
    table = {}
    for sha, results in runs.items():
        row = {key: round(statistics.median(r[key] for r in results), 3) for key in KEYS}
        row["dn_of_half_ceiling"] = round(row["dn_mpx_s"] / (row["ceiling_mpx_s"] / 2), 2)
        row["dn_range"] = [min(r["dn_mpx_s"] for r in results), max(r["dn_mpx_s"] for r in results)]
        table[sha] = row
    if args.json:
        print(json.dumps({"machine": machine(), "size": args.size, "commits": table}))
        return
    print(
        f"{machine()}; dn bench --size {args.size} --device {args.device} --batch-size {args.batch_size}, "
        f"median of {args.rounds} interleaved rounds (Mpx/s)"
    )
    print("| commit | ceiling | `in` | `dn` | `dn` ÷ half ceiling | `null` | writer |")
    print("|---|---|---|---|---|---|---|")
    for sha, row in table.items():
        print(
            f"| {sha} | {row['ceiling_mpx_s']} | {row['in_mpx_s']} | {row['dn_mpx_s']} | "
            f"{row['dn_of_half_ceiling']} | {row['null_mpx_s']} | {row['write_mpx_s']} |"
        )


if __name__ == "__main__":
    main()
