#!/usr/bin/env python3
"""Soak test of `fleetd run`: many agents, short schedules, frequent reloads.

Starts the daemon as systemd would (a NOTIFY_SOCKET this script reads),
with `--agents` Null-workflow agents on 1-5 s schedules, and sends SIGHUP
every `--reload-every` seconds. Each reload changes one agent file, and
every third reload adds or removes an agent. The daemon's resident memory
(VmRSS) and open file descriptors are sampled after a warm-up and then
every 10 s; at the end SIGTERM stops it and the script prints the runs done
(from the daemon's STATUS= line), the errors logged, and the samples.

Usage:
    python scripts/soak.py --agents 200 --duration 300 --reload-every 3

Exit status 0 when the daemon exited 0, logged no error, and applied the
reloads (SIGHUPs sent while a reload runs coalesce into one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_EVERY = 10.0


@dataclass
class Sample:
    at: float  # seconds since READY
    rss_kib: int
    fds: int
    runs_done: int
    cpu_s: float  # user plus system time of the daemon process so far


@dataclass
class Soak:
    root: Path
    agents: int
    loop: str = "asyncio"
    process: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    status: str = ""
    ready_count: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf.d"

    def write_config(self) -> None:
        self.conf_dir.mkdir(parents=True)
        (self.conf_dir / "00-daemon.toml").write_text(
            f"""[daemon]
state = "sqlite:///{self.root}/state.db"
interval = "2s"
splay = "1s"
max_concurrency = 64
shutdown_grace = "10s"
safe_path = ["/usr/bin", "/bin"]
log_level = "warning"
loop = "{self.loop}"

[globals]
site = "soak"
"""
        )
        for index in range(self.agents):
            self.write_agent(index, version=1)

    def write_agent(self, index: int, version: int) -> None:
        every = 1 + index % 5
        # One agent in four starts a program; the others only evaluate.
        program = "EXEC_COMMAND true\n" if index % 4 == 0 else ""
        (self.conf_dir / f"soak-{index:03d}.agent").write_text(
            f"""NAME Soak-{index:03d}
MNEMONIC soak{index:03d}
VERSION {version}
SCHEDULE every {every}s
REQUIRE site = "soak"
SET greeting = "hello ${{site}} {index} v{version}"
{program}LOG DEBUG ${{greeting}}
CLEANUP
  LOG DEBUG cleaned up
END
"""
        )

    def start(self) -> None:
        notify_path = self.root / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        environ = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        environ.pop("JOURNAL_STREAM", None)
        with (
            open(self.root / "stdout.txt", "wb") as out,
            open(self.root / "stderr.txt", "wb") as err,
        ):
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetd", "--conf-dir", str(self.conf_dir),
                 "run", "--log-target", "json"],
                stdout=out,
                stderr=err,
                env=environ,
            )  # fmt: skip

    def read_notify(self, timeout: float) -> None:
        """Read sd_notify messages for up to `timeout` seconds."""
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.notify.settimeout(remaining)
            try:
                data = self.notify.recv(65536).decode()
            except TimeoutError:
                return
            for line in data.splitlines():
                key, _, value = line.partition("=")
                if key == "STATUS":
                    self.status = value
                elif key == "READY" and value == "1":
                    self.ready_count += 1

    def runs_done(self) -> int:
        match = re.search(r"(\d+) runs done", self.status)
        return int(match.group(1)) if match else 0

    def sample(self, since: float) -> Sample:
        assert self.process is not None
        proc = Path(f"/proc/{self.process.pid}")
        rss = 0
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        fds = len(os.listdir(proc / "fd"))
        # Fields 14 and 15 of /proc/PID/stat, after the parenthesised name.
        stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        sample = Sample(
            round(time.monotonic() - since, 1), rss, fds, self.runs_done(), cpu_s
        )
        self.samples.append(sample)
        return sample

    def log_events(self) -> list[dict]:
        found = []
        for line in (self.root / "stderr.txt").read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                found.append(
                    {"event": "unparsed", "level": "error", "line": line[:200]}
                )
        return found


def run(args: argparse.Namespace) -> int:
    folder = tempfile.mkdtemp(prefix="fleetd-soak-")
    if args.keep:
        print(f"folder kept: {folder}", flush=True)
    try:
        soak = Soak(Path(folder), args.agents, args.loop)
        soak.write_config()
        soak.start()
        assert soak.process is not None
        started = time.monotonic()
        while soak.ready_count == 0:
            if soak.process.poll() is not None or time.monotonic() - started > 120:
                print("daemon did not become ready", file=sys.stderr)
                return 1
            soak.read_notify(0.5)
        ready_at = time.monotonic()
        load_s = ready_at - started

        # Warm up, then sample; reload all along.
        reloads = 0
        extra_agent = args.agents
        next_reload = ready_at + args.reload_every
        next_sample = ready_at + args.warmup
        end = ready_at + args.duration
        while time.monotonic() < end:
            soak.read_notify(min(next_reload, next_sample, end) - time.monotonic())
            now = time.monotonic()
            if now >= next_sample:
                sample = soak.sample(ready_at)
                print(f"t={sample.at:>6}s rss={sample.rss_kib} KiB fds={sample.fds} "
                      f"runs={sample.runs_done}", flush=True)  # fmt: skip
                next_sample += SAMPLE_EVERY
            if now >= next_reload:
                reloads += 1
                soak.write_agent(reloads % args.agents, version=reloads + 1)
                if reloads % 3 == 0:
                    extra = soak.conf_dir / f"soak-{extra_agent:03d}.agent"
                    if extra.exists():
                        extra.unlink()
                    else:
                        soak.write_agent(extra_agent, version=1)
                soak.process.send_signal(signal.SIGHUP)
                next_reload += args.reload_every
        soak.read_notify(1.0)
        final = soak.sample(ready_at)

        # Stop and collect.
        stop_started = time.monotonic()
        soak.process.send_signal(signal.SIGTERM)
        status = soak.process.wait(60)
        stop_s = time.monotonic() - stop_started
        events = soak.log_events()
        errors = [
            e
            for e in events
            if e.get("level") in ("error", "critical", "alert", "emergency")
        ]
        warnings: dict[str, int] = {}
        for event in events:
            if event.get("level") == "warning":
                warnings[event["event"]] = warnings.get(event["event"], 0) + 1
        # READY=1 follows the start and every applied reload.
        applied = soak.ready_count - 1
        first = soak.samples[0]
        result = {
            "agents": args.agents,
            "duration_s": args.duration,
            "reload_every_s": args.reload_every,
            "load_s": round(load_s, 2),
            "runs_done": final.runs_done,
            "runs_per_s": round(final.runs_done / args.duration, 1),
            "reloads_sent": reloads,
            "reloads_applied": applied,
            "errors_logged": len(errors),
            "warnings_logged": warnings,
            "rss_kib_start": first.rss_kib,
            "rss_kib_end": final.rss_kib,
            "rss_kib_max": max(s.rss_kib for s in soak.samples),
            # A sample taken while programs start counts their pipes too,
            # so the lowest count of the first and last minute is the baseline.
            "fds_start": first.fds,
            "fds_end": final.fds,
            "fds_max": max(s.fds for s in soak.samples),
            "fds_min_first_minute": min(
                s.fds for s in soak.samples if s.at <= first.at + 60
            ),
            "fds_min_last_minute": min(
                s.fds for s in soak.samples if s.at >= final.at - 60
            ),
            "cpu_s_per_1000_runs": round(
                1000
                * (final.cpu_s - first.cpu_s)
                / max(1, final.runs_done - first.runs_done),
                2,
            ),
            "loop": args.loop,
            "stop_s": round(stop_s, 2),
            "exit_status": status,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
        for error in errors[:10]:
            print(json.dumps(error)[:300], file=sys.stderr)
        ok = status == 0 and not errors and applied > 0
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--agents", type=int, default=200, help="agent files (default 200)"
    )
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds to run after READY (default 300)")  # fmt: skip
    parser.add_argument("--reload-every", type=float, default=3.0,
                        help="seconds between SIGHUPs (default 3)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds before the first sample (default 20)")  # fmt: skip
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="daemon.loop setting (default asyncio)")  # fmt: skip
    parser.add_argument("--keep", action="store_true",
                        help="keep the folder (conf.d, state.db, logs) for inspection")  # fmt: skip
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
