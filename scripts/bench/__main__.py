"""Run fleetd's benchmarks: all of them, or the ones named.

Each benchmark runs in its own Python process, so that one benchmark's
imports, caches and memory do not change the next one's numbers. Every
benchmark measures fleetd beside its baseline and prints median, min, max
and spread of the runs and the ratio to the baseline.

Usage: python -m scripts.bench [NAME ...] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# Name -> (module, option that sets the number of runs, extra arguments).
BENCHMARKS: dict[str, tuple[str, str, list[str]]] = {
    "startup": ("scripts.bench.startup", "--runs", []),
    "engine": ("scripts.bench.engine", "--repeat", ["--only", "engine"]),
    "exec": ("scripts.bench.engine", "--repeat", ["--only", "exec"]),
    "parse": ("scripts.bench.parse", "--runs", []),
    "scale": ("scripts.bench.scale", "--runs", []),
    "peers": ("scripts.bench.peers", "--runs", []),
    "fleet": ("scripts.bench.fleet", "--repeat", []),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs of each measurement (at least 5)"
    )
    options = parser.parse_args()
    unknown = [name for name in options.names if name not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark {unknown[0]!r}; choose from {list(BENCHMARKS)}"
        )
    if options.runs < 5:
        parser.error("--runs must be at least 5")
    names = options.names or list(BENCHMARKS)

    failed = []
    for name in names:
        module, runs_option, extra = BENCHMARKS[name]
        print(f"== {name}", flush=True)
        if name == "fleet" and not os.environ.get("FLEETD_TEST_PG_DSN"):
            print("skipped: set FLEETD_TEST_PG_DSN to a PostgreSQL URL to run it")
            continue
        command = [sys.executable, "-m", module, runs_option, str(options.runs)]
        status = subprocess.run([*command, *extra], check=False).returncode
        if status != 0:
            failed.append(name)
            print(f"{name} failed with exit status {status}", flush=True)

    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
