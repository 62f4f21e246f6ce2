"""The shipped systemd unit: required settings and `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.config.durations import parse_duration
from fleetd.config.model import DaemonSettings

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "fleetd.service"


@pytest.fixture(scope="module")
def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive in unit files
    parser.read(UNIT)
    return parser["Service"]


def test_unit_type_notify(service) -> None:
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"


def test_unit_reload_sends_sighup(service) -> None:
    assert service["ExecReload"] == "kill -HUP $MAINPID"


def test_unit_runs_daemon(service) -> None:
    assert service["ExecStart"].split()[-1] == "run"


def test_unit_restart_and_watchdog(service) -> None:
    assert service["Restart"] == "on-failure"
    assert parse_duration(service["WatchdogSec"]) > 0


def test_unit_directories(service) -> None:
    assert service["StateDirectory"] == "fleetd"
    assert service["ConfigurationDirectory"] == "fleetd"


def test_unit_stop_timeout_covers_grace_and_cleanup(service) -> None:
    defaults = DaemonSettings(state="sqlite:////var/lib/fleetd/state.db")
    needed = defaults.shutdown_grace + defaults.cleanup_timeout
    assert parse_duration(service["TimeoutStopSec"]) > needed


def test_unit_signals_main_process_only(service) -> None:
    # control-group would send SIGTERM to agents' programs before fleetd's grace.
    assert service["KillMode"] == "mixed"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists, so point it at the fleetd installed
    # for this interpreter when /usr/local/bin/fleetd is absent.
    text = UNIT.read_text()
    installed = Path("/usr/local/bin/fleetd")
    if not installed.exists():
        candidate = Path(sys.executable).parent / "fleetd"
        if not candidate.exists():
            pytest.skip("no fleetd console script installed for this interpreter")
        text = text.replace(str(installed), str(candidate))
    copy = tmp_path / "fleetd.service"
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings: any output is a finding.
    assert result.stderr.strip() == ""
    assert result.stdout.strip() == ""
