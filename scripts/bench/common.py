"""Summaries, machine facts and output shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from typing import Any


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Return the median, min, max and spread of the runs.

    The spread is (max - min) / median, so 0.2 means the runs lay within
    20% of the median.
    """
    median = statistics.median(values)
    low = min(values)
    high = max(values)

    return {
        "median": median,
        "min": low,
        "max": high,
        "spread": (high - low) / median if median else 0.0,
        "runs": len(values),
    }


def ratio_of(measured: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Return the ratio of the medians and the median of the paired ratios.

    Run i of the measurement and run i of its baseline ran next to each
    other, so their ratio cancels most of the noise of other load.
    """
    pairs = [value / base for value, base in zip(measured, baseline, strict=True)]

    return {
        "of_medians": statistics.median(measured) / statistics.median(baseline),
        "paired": statistics.median(pairs),
        "paired_min": min(pairs),
        "paired_max": max(pairs),
    }


def machine() -> dict[str, Any]:
    """Return the facts of this machine that a reader needs to compare runs."""
    facts: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as meminfo:
            total_kb = int(meminfo.readline().split()[1])
            facts["memory_gib"] = round(total_kb / 2**20, 1)
    except OSError:
        pass
    try:
        facts["disk"] = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "--target", "/tmp"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        pass

    return facts


def format_machine(facts: dict[str, Any]) -> str:
    load = " ".join(str(value) for value in facts["load_average"])
    return (
        f"{facts['cpus']} CPUs ({facts.get('cpu', 'unknown')}),"
        f" {facts.get('memory_gib', '?')} GiB, Python {facts['python']},"
        f" {facts['system']}, /tmp on {facts.get('disk') or '?'}, load average {load}"
    )


def print_rows(title: str, rows: list[tuple[str, dict[str, float], str]]) -> None:
    """Print one table: name, median, min, max, spread and runs per row."""
    print(f"\n{title}")
    print(
        f"  {'measurement':52} {'median':>10} {'min':>10} {'max':>10}"
        f" {'spread':>7} {'runs':>4}"
    )
    for name, values, unit in rows:
        print(
            f"  {name:52} {values['median']:10.4g} {values['min']:10.4g}"
            f" {values['max']:10.4g} {values['spread']:7.0%} {values['runs']:4d}"
            f" {unit}"
        )


def print_ratios(rows: list[tuple[str, dict[str, float], str]]) -> None:
    """Print ratios of medians and paired ratios beside their targets."""
    print(f"  {'ratio':52} {'medians':>8} {'paired':>8} {'min':>6} {'max':>6}  target")
    for name, ratio, target in rows:
        print(
            f"  {name:52} {ratio['of_medians']:8.3g} {ratio['paired']:8.3g}"
            f" {ratio['paired_min']:6.3g} {ratio['paired_max']:6.3g}  {target}"
        )
