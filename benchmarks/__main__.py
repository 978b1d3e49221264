"""Every benchmark, one command: `python -m benchmarks` (DESIGN 6).

    python -m benchmarks [--only append,projections,rights,audit,http]
        [--backends sqlite,postgres] [--quick]

Each benchmark runs in its own process, one after the other (in parallel they would
measure each other on a two-core machine), prints its table and writes its JSON to
`benchmarks/results/NAME.json`. At the end one table sums up every figure that has a
baseline, and `benchmarks/results/summary.json` holds the same rows for programs.
`--quick` runs smaller sizes: a check that everything runs, not figures to quote.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks import common
from benchmarks.common import report

BENCHMARKS = ("append", "projections", "rights", "audit", "http")

# Smaller sizes for --quick, per benchmark.
QUICK: dict[str, list[str]] = {
    "append": ["--commands", "300", "--batches", "2", "--rounds", "2"],
    "projections": ["--events", "5000", "--big", "0", "--repeat", "1"],
    "rights": ["--subjects", "5", "--history", "100", "--scopes", "500"],
    "audit": ["--events", "5000", "--proof-leaves", "10000", "--bundle-events", "5000"],
    "http": ["--seconds", "2", "--commands", "400"],
}

# The names a benchmark gives its figure, its baseline's and their ratio.
FIGURE_KEYS = (
    "ledger_events_per_s",
    "rebuild_events_per_s",
    "commands_per_s",
    "ledger",
    "value",
)
BASELINE_KEYS = ("baseline_events_per_s", "baseline_value", "baseline")
RATIO_KEYS = ("ratio", "ratio_to_baseline")


def run(name: str, backends: str, quick: bool) -> tuple[int, float]:
    """One benchmark in its own process; its exit status and how long it took."""
    command = [sys.executable, "-m", f"benchmarks.bench_{name}", "--backends", backends]
    if quick:
        command += QUICK[name]
    print(f"\n== {name}: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    status = subprocess.run(command, check=False).returncode
    return status, time.monotonic() - started


def summary_rows(names: list[str]) -> list[dict[str, Any]]:
    """Every row with a ratio, from the JSON the benchmarks just wrote."""
    rows: list[dict[str, Any]] = []
    for name in names:
        path = common.RESULTS / f"{name}.json"
        if not path.exists():
            continue
        for row in orjson.loads(path.read_bytes())["rows"]:
            ratio = next((row[k] for k in RATIO_KEYS if row.get(k) is not None), None)
            if ratio is None:
                continue
            rows.append(
                {
                    "benchmark": name,
                    "backend": row.get("backend"),
                    "test": row.get("test") or row.get("mode"),
                    "figure": next((row[k] for k in FIGURE_KEYS if k in row), None),
                    "baseline": next((row[k] for k in BASELINE_KEYS if k in row), None),
                    "ratio": ratio,
                    "goal": row.get("goal"),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="which, comma-separated")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.quick:  # small figures go to a folder of their own, not over the quoted ones
        os.environ["LEDGER_BENCH_RESULTS"] = tempfile.mkdtemp(prefix="ledger-bench-quick-")
        common.RESULTS = Path(os.environ["LEDGER_BENCH_RESULTS"])
        print(f"--quick: results go to {common.RESULTS}")
    failed: list[str] = []
    for name in names:
        status, seconds = run(name, args.backends, args.quick)
        print(f"== {name}: {'done' if status == 0 else f'FAILED ({status})'} in {seconds:.0f} s")
        if status != 0:
            failed.append(name)
    report(
        "summary",
        "Every figure beside its baseline (details in each benchmark's table above)",
        summary_rows([n for n in names if n not in failed]),
        ["benchmark", "backend", "test", "figure", "baseline", "ratio", "goal"],
    )
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
