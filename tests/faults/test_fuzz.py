"""Fuzz the TOML loader and agent loading: errors are reported, never raised.

`load_config` must return a Config or raise ConfigError, and
`AgentLoader.load` must list a bad agent among its errors, whatever the
files contain. Each example has a deadline, so a hang fails the test.
The example counts are kept small so the suite stays fast.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.config import Config, ConfigError, load_config
from fleetd.config.schema import DAEMON_KEYS, WORKFLOW_KINDS
from fleetd.lang import Registry
from fleetd.runtime import AgentLoader

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEY_NAMES = [
    *DAEMON_KEYS, "kind", "path", "table", "id_column", "where", "dsn",
    "list_command", "update_command", "timeout", "home_dir", "x_path", "name",
    "db_password", "", "a.b", "über",
]  # fmt: skip
TOML_TEXT = st.sampled_from(
    [
        "5m", "0s", "-1s", "1e400s", "nan", "inf", "1h30m", "250ms", "sqlite:///x.db",
        "sqlite:////abs/x.db", "postgresql://u:p@127.0.0.1/db", "/bin", "../spool",
        "a\0b", "", " ", "${x}", "$(rm -rf /)", "\n", "spool", "command", "debug",
        "uvloop", "é", "\ud7ff", "\\",
    ]
) | st.text(max_size=20)  # fmt: skip
TOML_SCALARS = (
    TOML_TEXT
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEY_NAMES), inner, max_size=3)
    ),
    max_leaves=8,
)


def toml_key(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_value(value: Any) -> str:
    """Render a Python value as a TOML inline value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        escaped = escaped.replace("\\x", "\\u00")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    items = (f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
    return "{" + ", ".join(items) + "}"


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    """Build a TOML document from fleetd's own tables and keys."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        table = draw(
            st.sampled_from(["daemon", "globals", "workflows.w", "workflows.Null"])
            | st.builds(
                lambda kind: f"workflows.{kind}", st.sampled_from(WORKFLOW_KINDS)
            )
            | st.text(max_size=8).map(toml_key)
        )
        lines.append(f"[{table}]")
        if table.startswith("workflows.") and draw(st.booleans()):
            lines.append(f"kind = {toml_value(draw(st.sampled_from(WORKFLOW_KINDS)))}")
        for _ in range(draw(st.integers(0, 5))):
            key = draw(st.sampled_from(KEY_NAMES))
            lines.append(f"{toml_key(key)} = {toml_value(draw(TOML_VALUES))}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def conf_dir() -> Iterator[Path]:
    # One folder for all examples of a test: hypothesis calls the test
    # function many times within one fixture.
    folder = Path(tempfile.mkdtemp(prefix="fleetd-fuzz-"))
    yield folder
    shutil.rmtree(folder)


def load_or_error(conf_dir: Path) -> Config | None:
    try:
        return load_config(conf_dir)
    except ConfigError as error:
        assert error.errors, "ConfigError without any error"
        for line in error.errors:
            assert line.startswith(str(conf_dir)), line
        return None


def reset(conf_dir: Path) -> None:
    for path in conf_dir.iterdir():
        path.unlink()


@FUZZ
@given(document=toml_documents())
def test_toml_documents_load_or_fail(conf_dir: Path, document: str) -> None:
    reset(conf_dir)
    (conf_dir / "10-fuzz.toml").write_text(document, encoding="utf-8", errors="replace")

    config = load_or_error(conf_dir)

    if config is not None:
        assert config.daemon.max_concurrency >= 1
        assert config.daemon.lease > 0
        for seconds in (config.daemon.interval, config.daemon.shutdown_grace):
            assert 0 <= seconds < float("inf")


@FUZZ
@given(data=st.binary(max_size=300))
def test_toml_bytes_load_or_fail(conf_dir: Path, data: bytes) -> None:
    reset(conf_dir)
    (conf_dir / "10-fuzz.toml").write_bytes(data)

    load_or_error(conf_dir)


@pytest.mark.parametrize(
    "document",
    [
        "a = " + "[" * 5000 + "]" * 5000,
        "a = " + "{b = " * 3000 + "1" + "}" * 3000,
        "[daemon]\nlease = nan\n",
        "[daemon]\nshutdown_grace = inf\n",
        '[daemon]\nstate = "sqlite:///a\\u0000b"\n',
        '[daemon]\nsafe_path = ["/bin\\u0000"]\n',
        '[workflows.w]\nkind = "spool"\npath = "a\\u0000b"\n',
        '[workflows.w]\nkind = "command"\nlist_command = "ls \'"\n',
    ],
)
def test_hostile_toml_rejected(conf_dir: Path, document: str) -> None:
    (conf_dir / "10-fuzz.toml").write_text(document)

    with pytest.raises(ConfigError) as raised:
        load_config(conf_dir)

    assert len(raised.value.errors) == 1, raised.value.errors


AGENT_LINES = st.sampled_from(
    [
        "NAME Fuzz", "MNEMONIC fuzz", "WORKFLOW w", "WORKFLOW Null", "SCHEDULE every 0s",
        "SCHEDULE manual", "CONCURRENCY 0", "CONCURRENCY 99999999999999999999",
        "TIMEOUT 0s", "TIMEOUT 1e400s", "PREREQUISITE 1/0", "PREREQUISITE nosuch",
        'PREREQUISITE_SET x = split(",", "a,b")', "PREREQUISITE x MATCHES /(a+)+$/",
        "REQUIRE this.id", "SET x = [", "ECHO ${x", "WHEN TRUE DO", "END",
        "FOREACH v IN x DO", "PARALLEL", "CLEANUP", 'EXEC_COMMAND "unclosed',
        "EXEC_COMMAND /bin/true ${this.id}", "CALL nosuch()", "LOG bogus x",
        "\0", "\ufeffNAME x", "#!/bin/sh",
    ]
) | st.text(max_size=30)  # fmt: skip


@FUZZ
@given(lines=st.lists(AGENT_LINES, max_size=12), raw=st.binary(max_size=40))
def test_agent_files_load_or_report(
    conf_dir: Path, lines: list[str], raw: bytes
) -> None:
    reset(conf_dir)
    (conf_dir / "00-site.toml").write_text(
        f'[daemon]\nstate = "sqlite:///{conf_dir}/state.db"\n'
        f'[workflows.w]\nkind = "spool"\npath = "{conf_dir}"\n'
    )
    text = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + raw
    (conf_dir / "fuzz.agent").write_bytes(text)
    config = load_config(conf_dir)

    agents = AgentLoader(Registry.default()).load(config)

    for error in agents.errors:
        assert error.startswith(str(conf_dir / "fuzz.agent")), error
    assert len(agents.agents) + len(agents.errors) >= 1
