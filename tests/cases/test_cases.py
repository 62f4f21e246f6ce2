"""End-to-end cases: each folder here runs the real `fleetd` command.

A case folder contains `case.toml` and the files it needs (`conf.d/`,
`spool/`...). The folder is copied to a temporary directory, every
`@CASE@` in its files becomes that directory's path, and each `[[step]]`
runs `fleetd --conf-dir <copy>/conf.d ARGS...` there and checks the exit
status, the JSON reports, the files left behind and the output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
CASES = sorted(path.name for path in HERE.iterdir() if (path / "case.toml").exists())


def fleetd_command() -> list[str]:
    """Return the installed `fleetd` script beside this interpreter, else -m."""
    script = Path(sys.executable).parent / "fleetd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fleetd"]


def prepare(root: Path) -> None:
    """Normalize modes and put the copy's path in place of `@CASE@`."""
    os.chmod(root, 0o755)
    for path in root.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o755)
            continue
        os.chmod(path, 0o755 if path.stat().st_mode & 0o111 else 0o644)
        text = path.read_text()
        if "@CASE@" in text:
            path.write_text(text.replace("@CASE@", str(root)))


def reports_of(stdout: str) -> list[dict[str, Any]]:
    reports = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            value = json.loads(line)
            if "outcome" in value:
                reports.append(value)
    return reports


def check_step(root: Path, step: dict[str, Any]) -> None:
    started = time.monotonic()
    result = subprocess.run(
        fleetd_command() + ["--conf-dir", str(root / "conf.d"), *step["args"]],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=step.get("timeout", 120),
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - started
    out, err = result.stdout, result.stderr
    context = f"args {step['args']}\nstdout:\n{out}\nstderr tail:\n{err[-2000:]}"

    if "expect_exit" in step:
        assert result.returncode == step["expect_exit"], context
    reports = reports_of(out)
    for want in step.get("expect", []):
        found = [
            report
            for report in reports
            if report.get("agent") == want.get("agent")
            and report.get("record") == want.get("record")
        ]
        assert len(found) == 1, f"reports for {want}: {found}\n{context}"
        for key, value in want.items():
            assert found[0].get(key) == value, f"{key} of {found[0]}\n{context}"
    for name in step.get("absent", []):
        assert not (root / name).exists(), f"{name} exists\n{context}"
    for name in step.get("present", []):
        assert (root / name).exists(), f"{name} missing\n{context}"
    for name, fields in step.get("json", {}).items():
        data = json.loads((root / name).read_text())
        for key, value in fields.items():
            assert data.get(key) == value, f"{name}: {key}\n{context}"
    for text in step.get("stdout_has", []):
        assert text in out, f"stdout lacks {text!r}\n{context}"
    for text in step.get("stdout_lacks", []):
        assert text not in out, f"stdout contains {text!r}\n{context}"
    for text in step.get("output_has", []):
        assert text in out or text in err, f"output lacks {text!r}\n{context}"
    for text in step.get("output_lacks", []):
        assert text not in out, f"stdout has {text!r}\n{context}"
        assert text not in err, f"stderr has {text!r}\n{context}"
    for agent in step.get("no_report", []):
        assert all(r.get("agent") != agent for r in reports), context
    if "no_process" in step:
        time.sleep(0.5)
        left = subprocess.run(
            ["pgrep", "-f", step["no_process"]],
            check=False,
            capture_output=True,
            text=True,
        ).stdout.split()
        # Only programs of this case count: they run in its folder, while
        # other tests may run the same command line at the same time.
        left = [pid for pid in left if _runs_in(pid, root)]
        assert not left, f"processes left running: {left}"
    if "max_seconds" in step:
        # The limits here are far above a normal run; exceeding one means a
        # program was not cancelled, not that the machine was slow.
        assert elapsed <= step["max_seconds"], f"took {elapsed:.1f} s\n{context}"


@pytest.mark.parametrize("name", CASES)
def test_case(name: str, tmp_path: Path) -> None:
    root = tmp_path / name
    shutil.copytree(HERE / name, root, symlinks=True)
    prepare(root)
    spec = tomllib.loads((root / "case.toml").read_text())
    if spec.get("root_only") and os.geteuid() != 0:
        pytest.skip("the case needs root")
    for step in spec["step"]:
        check_step(root, step)


def _runs_in(pid: str, root: Path) -> bool:
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False  # exited meanwhile, or not ours to inspect

    return cwd == root or root in cwd.parents
