"""Benchmark parsing and validating agent files.

Generates 1,000 agents of about 50 lines in a temporary directory. Then it
measures, over several runs, a cold parse and validation of every file
with a fresh `AgentCache`, and a reload through the warm cache after one
file changed, where only that file is parsed again.

Baseline: each cold parse is followed by one with every expression form
parsed by Lark, without the recursive-descent parser (fleetd.lang.descent),
and the pair gives a ratio.

Usage: python scripts/bench/parse.py [--agents N] [--runs N] [--distinct]
       [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fleetd.lang import AgentCache, Registry, expressions, reader


def agent_text(index: int) -> str:
    """Return an agent of about 50 lines that uses every kind of command."""
    return f"""#!/usr/bin/fleetconf-agent
# Generated agent {index} for the parse benchmark.
NAME        Bench-{index}
DESCRIPTION Provision accounts, generated for the benchmark
VERSION     1.{index}
MNEMONIC    bench{index}
WORKFLOW    requests
SCHEDULE    every 5m
CONCURRENCY 2
TIMEOUT     2m

PREREQUISITE OS() = "linux"
PREREQUISITE_SET home_root = "/srv/home"
REQUIRE this.status = "approved" AND this.kind IN ["user", "admin"]
REQUIRE this.email MATCHES /^([a-z0-9._-]+)@example\\.org$/i
REQUIRE_SET user = lc("${{1}}")
REQUIRE NOT IsPathExists("${{home_root}}/${{user}}")
CHECK length(user) <= 32 AND index(user, ".") <> 0
CHECK_SET home = "${{home_root}}/${{user}}"
CHECK_SET shell //= "/bin/bash"

SET this.status = "provisioning"
ECHO creating ${{user}} in ${{home}}
LOG notice creating account ${{user}} for request ${{this.id}}
COMMAND useradd --create-home
OPTION --home-dir "${{home}}"
OPTION_IF (defined(this.uid)) --uid ${{this.uid}}
OPTION_IF (this.kind = "admin") --groups wheel
OPTION --shell "${{shell}}" -- ${{user}}
EXEC
WHEN this.quota > 0 DO
    EXEC_COMMAND setquota -u ${{user}} ${{this.quota}} ${{this.quota}} 0 0 /srv
END
FOREACH group IN split(",", this.groups) DO
    WHEN NOT group IN ["wheel", "root"] DO
        EXEC_COMMAND gpasswd -a ${{user}} ${{group}}
    END
END
PARALLEL
    EXEC_COMMAND install -d -o ${{user}} "${{home}}/mail"
    EXEC_COMMAND install -d -o ${{user}} "${{home}}/www"
END
SET this.status = "provisioned"
SET this.home = home

ON_FAILURE
    EXEC_COMMAND IGNORE_FAILURE userdel --remove ${{user}}
    LOG error provisioning of ${{user}} failed
END
ON_SUCCESS
    ECHO provisioned ${{user}}
END
CLEANUP
    LOG info finished request ${{this.id}}
END
"""


def distinct_text(index: int) -> str:
    """Return `agent_text(index)` with names changed so no line repeats another agent's."""
    text = agent_text(index)
    body_start = text.index("PREREQUISITE ")
    body = (
        text[body_start:]
        .replace("user", f"user{index}")
        .replace("this.", f"this.r{index}_")
    )
    return text[:body_start] + body.replace("home", f"home{index}")


def write_agents(folder: Path, count: int, *, distinct: bool = False) -> list[Path]:
    paths = []
    for index in range(count):
        path = folder / f"bench-{index:04d}.agent"
        path.write_text(distinct_text(index) if distinct else agent_text(index))
        paths.append(path)
    return paths


def cold_parse(
    paths: list[Path], registry: Registry
) -> tuple[float, float, AgentCache]:
    """Load every file with a new cache; return wall and CPU seconds, and the cache."""
    # No parsed form or command line is kept from an earlier run.
    expressions._memo.clear()
    reader.WORDS_MEMO.clear()
    reader.TEMPLATE_MEMO.clear()
    cache = AgentCache(registry)
    start = time.perf_counter()
    cpu_start = time.process_time()
    cache.load_many(paths)
    cpu = time.process_time() - cpu_start
    return time.perf_counter() - start, cpu, cache


@contextlib.contextmanager
def lark_only() -> Iterator[None]:
    """Send every expression form to Lark, as before the recursive-descent parser."""
    original = expressions.try_parse_form
    expressions.try_parse_form = lambda start, line, offset: None
    try:
        yield
    finally:
        expressions.try_parse_form = original


def reload_one_changed(
    paths: list[Path], cache: AgentCache, round_number: int
) -> float:
    changed = paths[round_number % len(paths)]
    changed.write_text(changed.read_text() + f"# change {round_number}\n")
    misses = cache.misses
    start = time.perf_counter()
    cache.load_many(paths)
    elapsed = time.perf_counter() - start
    assert cache.misses == misses + 1, "unchanged files must not be parsed again"
    return elapsed


def paired_ratios(measured: list[float], baseline: list[float]) -> str:
    """Describe the ratios of runs that ran next to each other."""
    pairs = [value / base for value, base in zip(measured, baseline, strict=True)]
    return (
        f"{statistics.median(pairs):.2f} paired"
        f" (min {min(pairs):.2f}, max {max(pairs):.2f})"
    )


def describe(samples: list[float]) -> str:
    median = statistics.median(samples)
    return (
        f"median {median * 1000:.1f} ms, min {min(samples) * 1000:.1f} ms, "
        f"max {max(samples) * 1000:.1f} ms over {len(samples)} runs"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--agents", type=int, default=1000, help="number of agent files"
    )
    parser.add_argument("--runs", type=int, default=7, help="runs of each measurement")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="make every agent's lines differ, so no parsed line is reused",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one cold parse with pyinstrument",
    )
    options = parser.parse_args()

    registry = Registry.default()
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as directory:
        paths = write_agents(Path(directory), options.agents, distinct=options.distinct)
        lines = sum(path.read_text().count("\n") for path in paths)
        if options.profile:
            from pyinstrument import Profiler

            with Profiler() as profiler:
                cold_parse(paths, registry)
            profiler.print()
            return 0
        cold_parse(paths[:10], registry)  # import and compile the grammar first
        cold: list[float] = []
        cold_cpu: list[float] = []
        lark: list[float] = []
        lark_cpu: list[float] = []
        reload: list[float] = []
        cache = None
        for run in range(options.runs):
            elapsed, cpu, cache = cold_parse(paths, registry)
            cold.append(elapsed)
            cold_cpu.append(cpu)
            with lark_only():
                elapsed, cpu, _ = cold_parse(paths, registry)
            lark.append(elapsed)
            lark_cpu.append(cpu)
        assert cache is not None
        for run in range(options.runs):
            reload.append(reload_one_changed(paths, cache, run))

    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
    )
    kind = "distinct" if options.distinct else "from one template"
    print(
        f"{options.agents} agents {kind}, {lines} lines ({lines / options.agents:.0f} per agent)"
    )
    print(
        f"cold parse + validate: {describe(cold)} ({statistics.median(cold) / lines * 1e6:.1f} us per line)"
    )
    print(f"  CPU time of the cold parse: {describe(cold_cpu)}")
    print(f"baseline, cold with Lark only: {describe(lark)}")
    print(f"  CPU time of the baseline: {describe(lark_cpu)}")
    print(f"reload, one file changed: {describe(reload)}")
    print(
        f"cold / Lark only: wall {paired_ratios(cold, lark)},"
        f" CPU {paired_ratios(cold_cpu, lark_cpu)}"
    )
    print(f"load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
