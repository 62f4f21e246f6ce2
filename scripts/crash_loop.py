"""Kill fleetd with SIGKILL at random moments and check that nothing is lost.

Usage: python scripts/crash_loop.py [--kills 50] [--records 60] [--seed N]
                                    [--mode run|once] [--keep DIR]

A spool of records (with `--mode once`, 3 more before each start) is
worked through by one agent whose Run sleeps a
random fraction of a second in a program that leaves a marker file
`<record>.start.<pid>` when it starts and `<record>.end.<pid>` when it ends.
fleetd (`fleetd run`, or repeated `fleetd once`) is started, killed with
SIGKILL after a random delay, and started again, `--kills` times. A last
`fleetd once` then runs to its end and resolves the abandoned locks.

The checks, printed as a JSON summary (exit status 1 when one fails):

- every record is committed or in error with reason `interrupted`, because
  the last `once` retries every record that was rolled back or never run;
- no record was started twice by the mnemonic (one start marker at most);
- every committed record has its staged field in the spool file, and its
  program ran to its end (an end marker);
- no lock is left (`fleetd status --json`).

tests/faults/test_crash.py runs a short version of this loop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORK_SCRIPT = """#!/bin/sh
# $1: marker folder, $2: record id, $3: seconds to sleep
touch "$1/$2.start.$$"
sleep "$3"
touch "$1/$2.end.$$"
"""

AGENT = """NAME     Crash
MNEMONIC crash
WORKFLOW requests
SCHEDULE every 1s
CONCURRENCY 4

EXEC_COMMAND @ROOT@/work.sh @ROOT@/markers ${this.id} ${this.delay}
SET this.state = "done"
"""


def fleetd_command() -> list[str]:
    """Return the command that starts this checkout's fleetd."""
    script = Path(sys.executable).parent / "fleetd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fleetd"]


@dataclass
class CrashResult:
    """Counts and findings of one crash loop."""

    kills: int = 0
    starts: int = 0
    records: int = 0
    committed: int = 0
    interrupted: int = 0
    other: dict[str, str] = field(default_factory=dict)
    run_twice: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)
    locks_left: list[dict[str, Any]] = field(default_factory=list)
    final_exit: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.other or self.run_twice or self.not_applied or self.locks_left)

    def summary(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


class CrashSite:
    """A conf dir, spool, state store and marker folder under `root`."""

    def __init__(self, root: Path, records: int, rng: random.Random) -> None:
        self.root = root
        self.conf_dir = root / "conf.d"
        self.spool = root / "spool"
        self.markers = root / "markers"
        self.state = root / "state.db"
        for folder in (self.conf_dir, self.spool, self.markers):
            folder.mkdir()
        work = root / "work.sh"
        work.write_text(WORK_SCRIPT)
        work.chmod(0o755)
        (self.conf_dir / "00-site.toml").write_text(
            f'[daemon]\nstate = "sqlite:///{self.state}"\n'
            'safe_path = ["/usr/bin", "/bin"]\n'
            'splay = "0s"\ninterval = "1s"\nshutdown_grace = "2s"\n'
            'lease = "30s"\n'
            '[workflows.requests]\nkind = "spool"\npath = "../spool"\n'
        )
        (self.conf_dir / "crash.agent").write_text(AGENT.replace("@ROOT@", str(root)))
        self.rng = rng
        self.record_ids: list[str] = []
        self.add_records(records)

    def add_records(self, count: int) -> None:
        """Add `count` new records, each with a random Run time."""
        for _ in range(count):
            record = f"r{len(self.record_ids):04d}"
            delay = f"{self.rng.uniform(0.0, 0.4):.3f}"
            (self.spool / f"{record}.json").write_text(json.dumps({"delay": delay}))
            self.record_ids.append(record)

    def command(self, *args: str) -> list[str]:
        return fleetd_command() + ["--conf-dir", str(self.conf_dir), *args]

    def start(self, mode: str) -> subprocess.Popen[bytes]:
        args = ("run", "--log-target", "json") if mode == "run" else ("once",)
        with open(self.root / "fleetd.log", "ab") as log:
            return subprocess.Popen(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.root,
            )

    def marks(self) -> dict[str, tuple[str, str | None]]:
        """Return each marked record's resolution and reason, from the store."""
        connection = sqlite3.connect(self.state)
        try:
            rows = connection.execute(
                "SELECT record, resolution, reason FROM marks WHERE mnemonic = ?",
                ("crash",),
            ).fetchall()
        finally:
            connection.close()
        return {record: (resolution, reason) for record, resolution, reason in rows}

    def locks(self) -> list[dict[str, Any]]:
        done = subprocess.run(
            self.command("status", "--json"),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"fleetd status failed: {done.stderr}")
        return list(json.loads(done.stdout)["locks"])

    def started(self) -> Counter[str]:
        """Count the start markers of each record."""
        return Counter(
            name.split(".")[0] for name in os.listdir(self.markers) if ".start." in name
        )

    def ended(self) -> set[str]:
        return {
            name.split(".")[0] for name in os.listdir(self.markers) if ".end." in name
        }

    def spool_state(self, record: str) -> Any:
        return json.loads((self.spool / f"{record}.json").read_text()).get("state")


def crash_loop(
    root: Path,
    *,
    kills: int,
    records: int,
    seed: int,
    mode: str = "run",
    max_delay: float = 1.5,
    new_per_start: int = 3,
) -> CrashResult:
    """Start and SIGKILL fleetd `kills` times, finish with `once`, check the store."""
    rng = random.Random(seed)
    site = CrashSite(root, records, rng)
    result = CrashResult(records=records)
    started = time.monotonic()
    # A `once` that finished its records before the kill counts as a start
    # only; the loop goes on until `kills` kills or three times as many
    # starts. Each `once` gets new records too, so it has work to be killed in.
    while result.kills < kills and result.starts < 3 * kills:
        if mode == "once" and result.starts:
            site.add_records(new_per_start)
        process = site.start(mode)
        result.starts += 1
        time.sleep(rng.uniform(0.05, max_delay))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            result.kills += 1
        process.wait()

    # Programs of the killed fleetd may still run (they lead their own
    # process groups); let them end so the markers are complete.
    time.sleep(0.6)
    final = subprocess.run(
        site.command("once"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=300,
        cwd=root,
    )
    result.final_exit = final.returncode
    result.seconds = round(time.monotonic() - started, 1)
    result.records = len(site.record_ids)

    marks = site.marks()
    counts = site.started()
    ended = site.ended()
    for record in site.record_ids:
        resolution, reason = marks.get(record, (None, None))
        if resolution == "committed":
            result.committed += 1
            if site.spool_state(record) != "done" or record not in ended:
                result.not_applied.append(record)
        elif resolution == "error" and reason == "interrupted":
            result.interrupted += 1
        else:
            result.other[record] = f"{resolution}: {reason}"
        if counts[record] > 1:
            result.run_twice.append(record)
    result.locks_left = site.locks()

    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs to send")
    parser.add_argument("--records", type=int, default=60, help="records in the spool")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--mode", choices=("run", "once"), default="run")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        result = crash_loop(
            args.keep, kills=args.kills, records=args.records, seed=seed, mode=args.mode
        )
    else:
        with tempfile.TemporaryDirectory(prefix="fleetd-crash-") as folder:
            result = crash_loop(
                Path(folder),
                kills=args.kills,
                records=args.records,
                seed=seed,
                mode=args.mode,
            )
    print(json.dumps({"seed": seed, "mode": args.mode, **result.summary()}, indent=2))

    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
