"""Measure fleetd with many agents: loading, reloading, idle memory, reload under load.

Four measurements, each beside a baseline in the same script:

- cold load: 1,000 agents of about 55 lines (the parse benchmark's
  template, every kind of command) parsed, validated and initialized by
  `load_config` and a fresh `AgentLoader`, as the daemon does at start.
  Baseline: reading and hashing (SHA-256) the same files, the least any
  load must do. Target: under 2 s.
- reload: the same 1,000 agents with one file changed, through the warm
  `AgentLoader`, as the daemon does on SIGHUP. Same baseline. Target:
  under 100 ms.
- idle memory: `fleetd run` with 10,000 such agents on a 1 h schedule
  and a splay of 1 h (so none runs while measured), against the same daemon with none. The
  resident set (VmRSS) is read once both are ready and settled. Target:
  under 20 KB per agent.
- reload under load: `fleetd run` with 100 agents whose run sleeps 3 s,
  all started together. A SIGHUP that changes every agent file arrives
  while the 100 runs are in flight. Every run must end committed, once,
  and the reload must be applied. Baseline: the same without the reload.

Usage: python -m scripts.bench.scale [--runs N] [--agents N] [--idle N]
       [--only cold,idle,inflight] [--json]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetd.config import load_config
from fleetd.lang import Registry
from fleetd.runtime import AgentLoader
from scripts.bench.common import (
    format_machine,
    machine,
    print_ratios,
    print_rows,
    ratio_of,
    summarize,
)
from scripts.bench.parse import agent_text

COLD_TARGET_S = 2.0
RELOAD_TARGET_S = 0.1
IDLE_TARGET_KB = 20.0


def write_conf(
    folder: Path, agents: int, *, schedule: str = "every 1h", splay: str = "1s"
) -> Path:
    """Write a conf dir with `agents` agents of the parse benchmark's template."""
    conf = folder / "conf.d"
    conf.mkdir()
    spool = folder / "spool"
    spool.mkdir()
    (conf / "00-daemon.toml").write_text(
        f"""[daemon]
state = "sqlite:///{folder}/state.db"
splay = "{splay}"
log_level = "warning"
safe_path = ["/usr/bin", "/bin"]

[workflows.requests]
kind = "spool"
path = "{spool}"
"""
    )
    for index in range(agents):
        text = agent_text(index).replace("SCHEDULE    every 5m", f"SCHEDULE {schedule}")
        (conf / f"bench-{index:05d}.agent").write_text(text)

    return conf


def read_and_hash(conf: Path) -> float:
    """Read and hash every file of `conf`; return the seconds it took."""
    started = time.perf_counter()
    for path in sorted(conf.iterdir()):
        hashlib.sha256(path.read_bytes()).digest()

    return time.perf_counter() - started


def measure_loading(runs: int, agents: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds * 1000)

    registry = Registry.default()
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as name:
        conf = write_conf(Path(name), agents)
        victim = conf / "bench-00000.agent"
        original = victim.read_text()
        for run in range(runs):
            # Cold: a new loader; parsed lines memoized by fleetd.lang stay
            # shared, as they would be in a daemon reading its conf dir.
            started = time.perf_counter()
            config = load_config(conf)
            loader = AgentLoader(registry)
            loaded = loader.load(config)
            add("cold", time.perf_counter() - started)
            add("cold_floor", read_and_hash(conf))
            if loaded.errors or len(loaded.agents) != agents:
                raise RuntimeError(f"load failed: {loaded.errors[:3]}")

            victim.write_text(original.replace("VERSION     1.0", f"VERSION 2.{run}"))
            started = time.perf_counter()
            config = load_config(conf)
            reloaded = loader.load(config, loaded)
            add("reload", time.perf_counter() - started)
            add("reload_floor", read_and_hash(conf))
            if reloaded.agents["Bench-0"].agent is loaded.agents["Bench-0"].agent:
                raise RuntimeError("the changed agent was not parsed again")
            victim.write_text(original)
            del loader, loaded, reloaded
            gc.collect()

    return {
        "agents": agents,
        "results": {key: summarize(values) for key, values in samples.items()},
        "ratios": {
            "cold": ratio_of(samples["cold"], samples["cold_floor"]),
            "reload": ratio_of(samples["reload"], samples["reload_floor"]),
        },
    }


class Daemon:
    """`fleetd run` on a conf dir, with a NOTIFY_SOCKET read by this script."""

    def __init__(self, folder: Path, conf: Path) -> None:
        self.folder = folder
        path = folder / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(path))
        env = dict(os.environ, NOTIFY_SOCKET=str(path))
        env.pop("JOURNAL_STREAM", None)
        self.stderr_path = folder / "stderr.txt"
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetd", "--conf-dir", str(conf), "run",
                 "--log-target", "json"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )  # fmt: skip
        self.ready = 0
        self.status = ""

    def wait_ready(self, count: int, timeout: float) -> float:
        """Wait for the `count`th READY=1; return the seconds waited."""
        started = time.monotonic()
        while self.ready < count:
            remaining = started + timeout - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise RuntimeError(f"daemon not ready: {self.errors()[:3]}")
            self.notify.settimeout(remaining)
            try:
                data = self.notify.recv(65536).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    self.ready += 1
                elif key == "STATUS":
                    self.status = value

        return time.monotonic() - started

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("VmRSS not found")

    def stop(self) -> int:
        self.process.terminate()
        try:
            status = self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("daemon did not stop within 120 s of SIGTERM") from None
        finally:
            self.notify.close()

        return status

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr_path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                found.append({"event": "unparsed", "level": "error", "line": line})
        return found

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("level") in ("error", "critical")]


def idle_rss(agents: int, settle: float) -> tuple[int, float]:
    """Start a daemon with `agents` idle agents; return its VmRSS and load time."""
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as name:
        folder = Path(name)
        # The first cycle of each agent comes after a random splay of up to
        # an hour, so no agent runs while the memory is read.
        conf = write_conf(folder, agents, splay="1h")
        daemon = Daemon(folder, conf)
        try:
            load_s = daemon.wait_ready(1, timeout=600)
            time.sleep(settle)
            rss = daemon.rss_kib()
        finally:
            status = daemon.stop()
        if status != 0 or daemon.errors():
            raise RuntimeError(f"daemon exited {status}: {daemon.errors()[:3]}")

    return rss, load_s


def measure_idle(runs: int, agents: int) -> dict[str, Any]:
    with_agents: list[float] = []
    without: list[float] = []
    per_agent: list[float] = []
    load: list[float] = []
    for _ in range(runs):
        rss, load_s = idle_rss(agents, settle=2.0)
        base, _ = idle_rss(0, settle=2.0)
        with_agents.append(rss / 1024)
        without.append(base / 1024)
        per_agent.append((rss - base) * 1.024 / agents)  # KB (1000 bytes)
        load.append(load_s)

    return {
        "agents": agents,
        "results": {
            "rss_with_agents_mib": summarize(with_agents),
            "rss_without_agents_mib": summarize(without),
            "per_agent_kb": summarize(per_agent),
            "start_until_ready_s": summarize(load),
        },
    }


INFLIGHT_AGENT = """\
NAME        Busy-{index}
MNEMONIC    busy{index}
VERSION     {version}
SCHEDULE    every 1h
SET this.step = "ran"
EXEC_COMMAND sleep 3
CLEANUP
    LOG DEBUG cleaned
END
"""


def inflight_once(agents: int, reload: bool) -> dict[str, Any]:
    """Run `agents` 3 s runs together, with or without a reload in flight."""
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as name:
        folder = Path(name)
        conf = folder / "conf.d"
        conf.mkdir()
        (conf / "00-daemon.toml").write_text(
            f'[daemon]\nstate = "sqlite:///{folder}/state.db"\nsplay = "200ms"\n'
            f'max_concurrency = {agents}\nlog_level = "info"\n'
            'safe_path = ["/usr/bin", "/bin"]\n'
        )
        for index in range(agents):
            text = INFLIGHT_AGENT.format(index=index, version=1)
            (conf / f"busy-{index:03d}.agent").write_text(text)
        daemon = Daemon(folder, conf)
        try:
            daemon.wait_ready(1, timeout=120)
            started = time.monotonic()
            time.sleep(1.5)  # every run started after the splay, none ended
            if reload:
                for index in range(agents):
                    text = INFLIGHT_AGENT.format(index=index, version=2)
                    (conf / f"busy-{index:03d}.agent").write_text(text)
                daemon.process.send_signal(1)  # SIGHUP
                daemon.wait_ready(2, timeout=60)
            reload_s = time.monotonic() - started
            time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
        finally:
            status = daemon.stop()
        events = daemon.events()
    finished = [e for e in events if e.get("event") == "run_finished"]
    committed = [e for e in finished if e.get("outcome") == "committed"]

    return {
        "exit_status": status,
        "runs_finished": len(finished),
        "committed": len(committed),
        "distinct_agents": len({e.get("agent") for e in committed}),
        "reloads_applied": sum(e.get("event") == "reload_finished" for e in events),
        "errors": [e for e in events if e.get("level") in ("error", "critical")],
        "reload_done_after_s": round(reload_s, 3),
        "max_duration_s": max((e.get("duration_s", 0) for e in finished), default=0),
    }


def measure_inflight(runs: int, agents: int) -> dict[str, Any]:
    rounds = []
    for _ in range(runs):
        rounds.append(
            {
                "reload": inflight_once(agents, True),
                "plain": inflight_once(agents, False),
            }
        )
    undisturbed = all(
        r["reload"]["committed"] == agents
        and r["reload"]["runs_finished"] == agents
        and r["reload"]["distinct_agents"] == agents
        and r["reload"]["reloads_applied"] == 1
        and not r["reload"]["errors"]
        and r["reload"]["exit_status"] == 0
        for r in rounds
    )
    durations = [r["reload"]["max_duration_s"] for r in rounds]
    plain = [r["plain"]["max_duration_s"] for r in rounds]

    return {
        "agents": agents,
        "rounds": rounds,
        "undisturbed": undisturbed,
        "results": {
            "longest_run_with_reload_s": summarize(durations),
            "longest_run_without_reload_s": summarize(plain),
        },
        "ratio": ratio_of(durations, plain),
    }


def print_report(data: dict[str, Any]) -> None:
    print(format_machine(data["machine"]))
    if "loading" in data:
        loading = data["loading"]
        results = loading["results"]
        print_rows(
            f"loading {loading['agents']} agents (ms)",
            [
                ("cold: load_config + AgentLoader.load", results["cold"], "ms"),
                ("baseline: read + SHA-256 every file", results["cold_floor"], "ms"),
                ("reload, one file changed", results["reload"], "ms"),
                ("baseline: read + SHA-256 every file", results["reload_floor"], "ms"),
            ],
        )
        print_ratios(
            [
                ("cold / read + hash", loading["ratios"]["cold"], "< 2000 ms"),
                ("reload / read + hash", loading["ratios"]["reload"], "< 100 ms"),
            ]
        )
    if "idle" in data:
        idle = data["idle"]
        results = idle["results"]
        print_rows(
            f"fleetd run with {idle['agents']} idle agents",
            [
                ("VmRSS with the agents", results["rss_with_agents_mib"], "MiB"),
                ("baseline: VmRSS with no agent", results["rss_without_agents_mib"], "MiB"),
                ("per agent", results["per_agent_kb"], "KB"),
                ("start until READY=1", results["start_until_ready_s"], "s"),
            ],
        )  # fmt: skip
        print(f"  target: < {IDLE_TARGET_KB:g} KB per agent")
    if "inflight" in data:
        inflight = data["inflight"]
        print_rows(
            f"reload while {inflight['agents']} runs are in flight",
            [
                ("longest run, SIGHUP in flight (s)", inflight["results"]["longest_run_with_reload_s"], "s"),
                ("baseline: longest run, no SIGHUP (s)", inflight["results"]["longest_run_without_reload_s"], "s"),
            ],
        )  # fmt: skip
        print_ratios([("with reload / without", inflight["ratio"], "")])
        for index, round_ in enumerate(inflight["rounds"]):
            r = round_["reload"]
            print(
                f"  round {index}: {r['committed']}/{inflight['agents']} committed,"
                f" {r['runs_finished']} finished, reloads applied"
                f" {r['reloads_applied']} ({r['reload_done_after_s']} s after"
                f" READY=1), errors {len(r['errors'])}, exit {r['exit_status']}"
            )
        print(f"  no run disturbed: {inflight['undisturbed']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each measurement")
    parser.add_argument(
        "--agents", type=int, default=1000, help="agents loaded and reloaded"
    )
    parser.add_argument("--idle", type=int, default=10000, help="idle daemon agents")
    parser.add_argument(
        "--inflight", type=int, default=100, help="runs in flight during the reload"
    )
    parser.add_argument(
        "--only",
        default="loading,idle,inflight",
        help="comma-separated parts to run: loading, idle, inflight",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    options = parser.parse_args()
    parts = set(options.only.split(","))
    data: dict[str, Any] = {"machine": machine(), "runs": options.runs}
    if "loading" in parts:
        data["loading"] = measure_loading(options.runs, options.agents)
    if "idle" in parts:
        data["idle"] = measure_idle(options.runs, options.idle)
    if "inflight" in parts:
        data["inflight"] = measure_inflight(options.runs, options.inflight)
    if options.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data)

    return 0


if __name__ == "__main__":
    sys.exit(main())
