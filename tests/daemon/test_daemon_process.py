"""The real daemon as a subprocess: sd_notify, reload, graceful stop, journal.

Each test starts `python -m fleetd ... run` with a NOTIFY_SOCKET that the
test listens on, as systemd would, and drives it with real signals. Agents
report their progress with ECHO lines on the daemon's standard output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")


def parse_notify(data: bytes) -> dict[str, str]:
    message: dict[str, str] = {}
    for line in data.decode().splitlines():
        key, _, value = line.partition("=")
        message[key] = value
    return message


class Daemon:
    """A `fleetd run` subprocess with its notify socket and output files."""

    def __init__(self, root: Path, conf_dir: Path) -> None:
        self.root = root
        self.conf_dir = conf_dir
        self.notify_path = root / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.messages: list[dict[str, str]] = []
        self.stdout_path = root / "stdout.txt"
        self.stderr_path = root / "stderr.txt"
        self.process: subprocess.Popen[bytes] | None = None

    def start(
        self, *, log_target: str = "json", env: dict[str, str] | None = None
    ) -> None:
        environ = dict(os.environ)
        environ.pop("JOURNAL_STREAM", None)
        environ["NOTIFY_SOCKET"] = str(self.notify_path)
        environ.update(env or {})
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetd",
                    "--conf-dir",
                    str(self.conf_dir),
                    "run",
                    "--log-target",
                    log_target,
                ],
                stdout=out,
                stderr=err,
                env=environ,
                cwd=self.root,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_notify(
        self,
        predicate: Callable[[dict[str, str]], bool],
        timeout: float = 20.0,
        after: int = 0,
    ) -> dict[str, str]:
        """Return the first message from index `after` on that matches."""
        for message in self.messages[after:]:
            if predicate(message):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            self.notify.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                message = parse_notify(self.notify.recv(65536))
            except TimeoutError:
                continue
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(
            f"no matching sd_notify message; got {self.messages}\n{self.logs()}"
        )

    def drain_notify(self) -> list[dict[str, str]]:
        self.notify.setblocking(False)
        try:
            while True:
                self.messages.append(parse_notify(self.notify.recv(65536)))
        except BlockingIOError:
            pass
        return self.messages

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines()

    def log_events(self, name: str | None = None) -> list[dict]:
        found = []
        for line in self.stderr_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def logs(self) -> str:
        return f"stdout:\n{self.stdout_path.read_text()}\nstderr:\n{self.stderr_path.read_text()}"

    def wait_line(self, line: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.stdout_lines():
                return
            self._check_alive()
            time.sleep(0.05)
        raise AssertionError(f"no line {line!r} on standard output\n{self.logs()}")

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon still running after {timeout}s\n{self.logs()}"
            ) from None

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.process.returncode}\n{self.logs()}"
            )

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.notify.close()


def fleetd_json(conf_dir: Path, *args: str) -> list:
    """Run a fleetd command with --json and return its JSON lines."""
    result = subprocess.run(
        [sys.executable, "-m", "fleetd", "--conf-dir", str(conf_dir), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def write_settings(conf_dir: Path, root: Path, **daemon: str) -> None:
    settings = {
        "state": f'"sqlite:///{root}/state.db"',
        "interval": '"1s"',
        "splay": '"0s"',
        "shutdown_grace": '"10s"',
        "cleanup_timeout": '"10s"',
        "safe_path": '["/usr/bin", "/bin"]',
    } | daemon
    lines = ["[daemon]", *(f"{key} = {value}" for key, value in settings.items())]
    lines += ["", "[workflows.requests]", 'kind = "spool"', f'path = "{root}/spool"']
    (conf_dir / "00-daemon.toml").write_text("\n".join(lines) + "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    # Unix socket paths are limited to 108 bytes.
    if len(str(tmp_path)) > 80:
        pytest.skip("temporary folder path too long for a unix socket")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "spool").mkdir()
    return tmp_path


@pytest.fixture
def daemon(root: Path) -> Iterator[Daemon]:
    process = Daemon(root, root / "conf.d")
    yield process
    process.close()


def slow_agent(version: str, *, sleep: str = "4") -> str:
    return f"""NAME Slow
MNEMONIC slow
VERSION {version}
SCHEDULE every 1s
ECHO start v{version}
EXEC_COMMAND sleep {sleep}
ECHO end v{version}
CLEANUP
  ECHO cleanup v{version}
END
"""


def test_ready_after_load(root: Path, daemon: Daemon) -> None:
    write_settings(root / "conf.d", root)
    (root / "conf.d" / "env.agent").write_text(
        """NAME Env
MNEMONIC env
SCHEDULE every 1s
EXEC_COMMAND sh -c "test -z \\"$NOTIFY_SOCKET\\""
ECHO notify socket hidden
"""
    )
    daemon.start()
    ready = daemon.wait_notify(lambda m: m.get("READY") == "1")
    assert "1 agents running" in ready["STATUS"]
    loaded = daemon.log_events("agents_loaded")
    assert loaded
    assert loaded[0]["agents"] == 1
    # Programs that agents run do not inherit NOTIFY_SOCKET.
    daemon.wait_line("notify socket hidden")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    assert any(m.get("STOPPING") == "1" for m in daemon.drain_notify())


def test_uvloop_when_configured(root: Path, daemon: Daemon) -> None:
    write_settings(root / "conf.d", root, loop='"uvloop"')
    (root / "conf.d" / "tick.agent").write_text(
        "NAME Tick\nMNEMONIC tick\nSCHEDULE every 1s\nECHO tick\n"
    )
    daemon.start()
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    daemon.wait_line("tick")
    daemon.signal(signal.SIGHUP)
    daemon.wait_notify(lambda m: m.get("RELOADING") == "1")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


def test_invalid_config_at_start_exits_2(root: Path, daemon: Daemon) -> None:
    (root / "conf.d" / "00-daemon.toml").write_text('[daemon]\ninterval = "soon"\n')
    daemon.start()
    assert daemon.wait_exit(30) == 2
    assert "interval" in daemon.stderr_path.read_text()
    assert not any(m.get("READY") == "1" for m in daemon.drain_notify())


def test_sigterm_during_startup_graceful(root: Path, daemon: Daemon) -> None:
    plugins = root / "plugins"
    plugins.mkdir()
    marker = root / "plugin-loading"
    (plugins / "slow.py").write_text(
        f"import pathlib, time\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        f"time.sleep(3)\n"
        f"FLEETD_FUNCTIONS = []\n"
    )
    write_settings(root / "conf.d", root, plugin_dirs=f'["{plugins}"]')
    daemon.start()
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, daemon.logs()
        time.sleep(0.02)
    # The plugin is still loading: the signal must wait, not kill.
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    assert daemon.log_events("stop_requested")
    assert daemon.log_events("daemon_stopped")


def test_broken_plugin_spares_other_agents(root: Path, daemon: Daemon) -> None:
    # A bad file never stops the daemon or other agents: the broken plugin
    # is logged and left out, the agent that calls it is invalid, and the
    # agent that does not runs.
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("raise RuntimeError('no database')\n")
    write_settings(root / "conf.d", root, plugin_dirs=f'["{plugins}"]')
    conf_dir = root / "conf.d"
    (conf_dir / "plain.agent").write_text(
        "NAME Plain\nMNEMONIC plain\nSCHEDULE every 1s\nECHO plain ran\n"
    )
    (conf_dir / "user.agent").write_text(
        "NAME User\nMNEMONIC user\nSET found = lookup(1)\n"
    )
    daemon.start()
    daemon.wait_notify(lambda message: message.get("READY") == "1")
    deadline = time.monotonic() + 20
    while "plain ran" not in daemon.stdout_lines():
        assert time.monotonic() < deadline, daemon.logs()
        time.sleep(0.05)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    (failed,) = daemon.log_events("plugin_invalid")
    assert "no database" in failed["error"]
    assert any(
        "unknown function 'lookup'" in json.dumps(event)
        for event in daemon.log_events("agent_invalid")
    )


def test_plugin_calling_exit_spares_daemon(root: Path, daemon: Daemon) -> None:
    # sys.exit() at import raises SystemExit, which is not an Exception.
    # The daemon must still start and run the agents that do not use it.
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "quit.py").write_text("import sys\nsys.exit(0)\n")
    write_settings(root / "conf.d", root, plugin_dirs=f'["{plugins}"]')
    (root / "conf.d" / "plain.agent").write_text(
        "NAME Plain\nMNEMONIC plain\nSCHEDULE every 1s\nECHO plain ran\n"
    )
    daemon.start()
    daemon.wait_notify(lambda message: message.get("READY") == "1")
    deadline = time.monotonic() + 20
    while "plain ran" not in daemon.stdout_lines():
        assert time.monotonic() < deadline, daemon.logs()
        time.sleep(0.05)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    (failed,) = daemon.log_events("plugin_invalid")
    assert "quit.py" in failed["error"]


def test_reload_keeps_run_on_old_version(root: Path, daemon: Daemon) -> None:
    conf_dir = root / "conf.d"
    write_settings(conf_dir, root)
    agent_file = conf_dir / "slow.agent"
    agent_file.write_text(slow_agent("1"))
    daemon.start()
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    daemon.wait_line("start v1")

    # Change the agent while its run is in Run, then reload.
    agent_file.write_text(slow_agent("2", sleep="1"))
    daemon.signal(signal.SIGHUP)
    reloading = daemon.wait_notify(lambda m: m.get("RELOADING") == "1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    after = daemon.messages.index(reloading) + 1
    daemon.wait_notify(lambda m: m.get("READY") == "1", after=after)

    # The run in flight still holds its lock, owned by the daemon.
    assert "end v1" not in daemon.stdout_lines()
    (status,) = fleetd_json(conf_dir, "status")
    locks = [lock for lock in status["locks"] if lock["mnemonic"] == "slow"]
    assert len(locks) == 1
    assert locks[0]["owner"].endswith(f":{daemon.pid}")

    # It ends on version 1; the next run uses version 2.
    daemon.wait_line("start v2")
    lines = daemon.stdout_lines()
    assert lines.index("end v1") < lines.index("cleanup v1") < lines.index("start v2")
    assert lines.count("start v1") == 1
    finished = daemon.log_events("reload_finished")
    assert finished[0]["changed"] == ["Slow"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0


def test_reload_invalid_dropin_keeps_config(root: Path, daemon: Daemon) -> None:
    conf_dir = root / "conf.d"
    write_settings(conf_dir, root)
    (conf_dir / "tick.agent").write_text(
        "NAME Tick\nMNEMONIC tick\nSCHEDULE every 1s\nECHO tick\n"
    )
    daemon.start()
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    daemon.wait_line("tick")

    # A broken drop-in plus a new agent: neither may take effect.
    (conf_dir / "50-bad.toml").write_text('[daemon]\ninterval = "soon"\n')
    (conf_dir / "new.agent").write_text(
        "NAME New\nMNEMONIC new\nSCHEDULE every 1s\nECHO new agent ran\n"
    )
    daemon.signal(signal.SIGHUP)
    ready = daemon.wait_notify(
        lambda m: m.get("READY") == "1" and "reload failed" in m.get("STATUS", "")
    )
    assert "50-bad.toml" in ready["STATUS"]
    failed = daemon.log_events("reload_failed")
    assert failed
    assert failed[0]["level"] == "error"
    assert "50-bad.toml" in failed[0]["error"]

    # The old configuration runs on: Tick keeps ticking, New never runs.
    ticks = daemon.stdout_lines().count("tick")
    deadline = time.monotonic() + 10
    while (
        daemon.stdout_lines().count("tick") <= ticks + 1 and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert daemon.stdout_lines().count("tick") > ticks + 1
    assert "new agent ran" not in daemon.stdout_lines()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


def test_sigterm_during_run_resolves_lock(root: Path, daemon: Daemon) -> None:
    conf_dir = root / "conf.d"
    grace, cleanup = 1.0, 5.0
    write_settings(conf_dir, root, shutdown_grace='"1s"', cleanup_timeout='"5s"')
    (root / "spool" / "r1.json").write_text('{"status": "new"}')
    (conf_dir / "long.agent").write_text(
        """NAME Long
MNEMONIC long
WORKFLOW requests
SCHEDULE every 1s
ECHO start ${this.id}
EXEC_COMMAND sleep 60
ECHO never
CLEANUP
  ECHO cleanup ${this.id}
END
"""
    )
    daemon.start()
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    daemon.wait_line("start r1")
    stopped_at = time.monotonic()
    daemon.signal(signal.SIGTERM)
    status = daemon.wait_exit(grace + cleanup + 10)
    elapsed = time.monotonic() - stopped_at
    assert status == 0, daemon.logs()
    assert elapsed < grace + cleanup + 5
    assert "cleanup r1" in daemon.stdout_lines()
    assert "never" not in daemon.stdout_lines()
    assert any(m.get("STOPPING") == "1" for m in daemon.drain_notify())

    # No lock is left; the run was resolved (Run failed, Cleanup succeeded).
    (state,) = fleetd_json(conf_dir, "status")
    assert state["locks"] == []
    history = fleetd_json(conf_dir, "history", "r1")
    assert history[0]["resolution"] == "rolled_back"


def test_watchdog_pings_arrive(root: Path, daemon: Daemon) -> None:
    write_settings(root / "conf.d", root)
    daemon.start(env={"WATCHDOG_USEC": "400000"})
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    start = time.monotonic()

    def pings() -> int:
        return sum(1 for message in daemon.messages if message == {"WATCHDOG": "1"})

    daemon.wait_notify(lambda m: pings() >= 5, timeout=10)
    # 5 pings come within about 1 s at WATCHDOG_USEC/2; the bound is generous.
    assert time.monotonic() - start < 5
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


# -- journald ---------------------------------------------------------------


def journal_listening() -> bool:
    """Whether a journald receives on its native socket (the file may be stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(JOURNAL_SOCKET))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def journal() -> Iterator[Path]:
    """A running journald: the system's, or one started here as root."""
    if journal_listening():
        yield JOURNAL_SOCKET
        return
    if not JOURNALD.exists() or shutil.which("journalctl") is None:
        pytest.skip("systemd-journald is not installed (Debian package systemd)")
    if os.geteuid() != 0:
        pytest.skip("starting systemd-journald needs root")
    process = subprocess.Popen(
        [str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not journal_listening():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip("systemd-journald did not start without systemd as PID 1")
            time.sleep(0.05)
        yield JOURNAL_SOCKET
    finally:
        process.terminate()
        process.wait(10)


def read_journal(field: str, value: str) -> list[dict]:
    result = subprocess.run(
        ["journalctl", "-o", "json", "--no-pager", "--all", f"{field}={value}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_journal_fields(root: Path, daemon: Daemon, journal: Path) -> None:
    name = f"Journal-{uuid.uuid4().hex[:12]}"
    conf_dir = root / "conf.d"
    write_settings(conf_dir, root)
    (conf_dir / "journal.agent").write_text(
        f"""NAME {name}
MNEMONIC jtest
SCHEDULE every 10s
LOG NOTICE agent says hello
EXEC_COMMAND printf "first line\\nsecond line\\n"
"""
    )
    daemon.start(log_target="journal")
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    deadline = time.monotonic() + 20
    entries: list[dict] = []
    while time.monotonic() < deadline:
        entries = read_journal("AGENT", name)
        messages = " ".join(entry.get("MESSAGE") or "" for entry in entries)
        if "second line" in messages and "agent says hello" in messages:
            break
        time.sleep(0.2)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0

    notice = [e for e in entries if "agent says hello" in (e.get("MESSAGE") or "")]
    assert notice, entries
    entry = notice[0]
    assert entry["PRIORITY"] == "5"
    assert entry["SYSLOG_IDENTIFIER"] == "fleetd"
    assert entry["AGENT"] == name
    assert entry["MNEMONIC"] == "jtest"
    assert entry["WORKFLOW"] == "Null"
    assert entry["PHASE"] == "run"
    assert len(entry["RUN_ID"]) >= 8
    assert int(entry["_PID"]) == daemon.pid
    # Each line of a program's output is its own entry.
    first = [e for e in entries if "first line" in (e.get("MESSAGE") or "")]
    second = [e for e in entries if "second line" in (e.get("MESSAGE") or "")]
    assert len(first) == 1
    assert len(second) == 1
    assert first[0]["__CURSOR"] != second[0]["__CURSOR"]
    assert first[0]["PRIORITY"] == "6"
    assert first[0]["RUN_ID"] == entry["RUN_ID"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership checks apply to root")
def test_writable_agent_file_rejected_and_logged(root: Path, daemon: Daemon) -> None:
    conf_dir = root / "conf.d"
    write_settings(conf_dir, root)
    (conf_dir / "tick.agent").write_text(
        "NAME Tick\nMNEMONIC tick\nSCHEDULE every 1s\nECHO tick\n"
    )
    loose = conf_dir / "loose.agent"
    loose.write_text("NAME Loose\nMNEMONIC loose\nSCHEDULE every 1s\nECHO loose\n")
    loose.chmod(0o666)
    daemon.start()
    daemon.wait_notify(lambda m: m.get("READY") == "1")
    daemon.wait_line("tick")

    rejected = daemon.log_events("file_rejected")
    assert rejected
    assert "loose.agent" in rejected[0]["error"]
    assert "loose" not in daemon.stdout_lines()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


def test_lifecycle_logged_at_notice(root: Path, daemon: Daemon) -> None:
    # The shipped configuration logs from notice: starts, reloads and stops
    # must still show there.
    write_settings(root / "conf.d", root, log_level='"notice"')
    daemon.start()
    daemon.wait_notify(lambda message: message.get("READY") == "1")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while not daemon.log_events("reload_finished"):
        assert time.monotonic() < deadline, daemon.logs()
        time.sleep(0.05)

    daemon.signal(signal.SIGTERM)

    assert daemon.wait_exit(30) == 0
    for event in ("daemon_started", "reload_finished", "daemon_stopped"):
        [entry] = daemon.log_events(event)
        assert entry["level"] == "notice"
