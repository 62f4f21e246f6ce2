"""Load the drop-in directory: list, check, parse, merge and validate.

Each TOML file is parsed on its own and its relative paths are resolved
against its own folder. The loader remembers which file set every key, so
an error found in the merged result still names that file. The
files are then merged in lexical order (tables key by key, later files win)
and the merged tree is validated in one pass that collects every error.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from fleetd.config.model import Config, DaemonSettings, WorkflowSettings
from fleetd.config.positions import locate_key
from fleetd.config.schema import (
    DAEMON_KEYS,
    GLOBAL_NAME_PATTERN,
    NAME_PATTERN,
    WORKFLOW_ARGV_KEYS,
    WORKFLOW_DEFAULTS,
    WORKFLOW_KEYS,
    WORKFLOW_KINDS,
    WORKFLOW_PATH_KEYS,
    convert_value,
)
from fleetd.config.secrets import redact_url
from fleetd.config.state import default_state_url, resolve_state_url
from fleetd.config.trust import untrusted_reasons
from fleetd.pgurl import connect_arguments

DEFAULT_CONF_DIR = Path("/etc/fleetd/conf.d")
TOP_LEVEL_TABLES = ("daemon", "globals", "workflows")
PATH_GLOBAL_SUFFIXES = ("_dir", "_path")
POSITIVE_DURATIONS = ("interval", "cleanup_timeout", "lease")
_LEFTOVER_SUFFIXES = ("~", ".swp", ".rpmnew", ".rpmsave")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

KeyPath = tuple[str, ...]


class ConfigError(Exception):
    """The drop-in directory is invalid; `errors` lists every problem found.

    Each error names the file, the key and the expected form.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def default_conf_dir() -> Path:
    """Return `$FLEETD_CONF_DIR`, else `/etc/fleetd/conf.d`."""
    return Path(os.environ.get("FLEETD_CONF_DIR") or DEFAULT_CONF_DIR)


def load_config(conf_dir: str | Path) -> Config:
    """Load and validate the drop-in directory `conf_dir`.

    Raises ConfigError listing every error of every TOML file. When running
    as root, the conf dir, its TOML files and the folders above them must
    pass `untrusted_reasons`. An agent file that fails it is left out of
    `agent_files` and listed in `errors`, and the other agents load.
    """
    directory = Path(conf_dir).absolute()
    errors: list[str] = []
    if not directory.is_dir():
        raise ConfigError([f"{directory}: conf dir not found or not a directory"])
    as_root = os.geteuid() == 0
    if as_root:
        errors.extend(untrusted_reasons(directory))

    try:
        toml_files, agent_files, ignored = _list_drop_ins(directory)
    except OSError as error:
        raise ConfigError([f"{directory}: cannot list the conf dir: {error.strerror}"])
    agent_errors: list[str] = []
    accepted_agents: list[Path] = []
    for path in agent_files:
        problems = untrusted_reasons(path) if as_root else []
        if problems:
            agent_errors.extend(problems)
        else:
            accepted_agents.append(path)

    merged: dict[str, Any] = {}
    origins: dict[KeyPath, Path] = {}
    for path in toml_files:
        if as_root:
            problems = untrusted_reasons(path)
            if problems:
                errors.extend(problems)
                continue
        table = _read_toml(path, errors)
        if table is None:
            continue
        _resolve_paths(table, path, directory, errors)
        _merge(merged, table, (), path, origins)

    config = _validate(merged, origins, directory, errors)
    if errors:
        # Each file repeats the problems of the folders above it.
        raise ConfigError(list(dict.fromkeys(errors)))
    assert config is not None

    # A state file kept in the conf dir (`state = "state.db"` in a drop-in)
    # is fleetd's own, not a stray file to warn about at every load.
    state_files = _state_files(config.daemon.state)
    ignored = [entry for entry in ignored if entry[0] not in state_files]

    return Config(
        conf_dir=config.conf_dir,
        daemon=config.daemon,
        globals=config.globals,
        workflows=config.workflows,
        agent_files=tuple(accepted_agents),
        ignored=tuple(ignored),
        errors=tuple(dict.fromkeys(agent_errors)),
    )


# -- listing and file checks -------------------------------------------------


def _state_files(state: str) -> set[Path]:
    """Return the SQLite state file and its journals, or nothing for others."""
    if not state.startswith("sqlite:////"):
        return set()
    database = Path(state.removeprefix("sqlite:///"))

    return {
        database,
        *(Path(f"{database}{end}") for end in ("-wal", "-shm", "-journal")),
    }


def _list_drop_ins(
    directory: Path,
) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    toml_files: list[Path] = []
    agent_files: list[Path] = []
    ignored: list[tuple[Path, str]] = []
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if _is_leftover(name):
            continue
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except OSError as error:
            # A drop-in symlinked into a folder this user cannot enter is
            # listed, so that reading it reports the error. A dangling or
            # looping symlink is skipped like any other entry that is not
            # a file.
            regular = error.errno in (errno.EACCES, errno.EPERM)
        if not regular:
            ignored.append((path, "not a regular file"))
        elif name.endswith(".toml"):
            toml_files.append(path)
        elif name.endswith(".agent"):
            agent_files.append(path)
        else:
            ignored.append((path, "neither *.toml nor *.agent"))

    return toml_files, agent_files, ignored


def _is_leftover(name: str) -> bool:
    """Tell whether `name` is hidden, or an editor or package manager leftover."""
    return name.startswith(".") or name.endswith(_LEFTOVER_SUFFIXES) or ".dpkg-" in name


def _read_toml(path: Path, errors: list[str]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except OSError as error:
        errors.append(f"{path}: cannot read: {error.strerror}")
    except UnicodeDecodeError as error:
        errors.append(f"{path}: invalid TOML: not UTF-8 text ({error.reason})")
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables.
        errors.append(f"{path}: invalid TOML: values nested too deeply")
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        position = _TOML_POSITION.search(message)
        if position:
            line, column = position.groups()
            message = message[: position.start()]
            errors.append(f"{path}:{line}:{column}: invalid TOML: {message}")
        else:
            errors.append(f"{path}: invalid TOML: {message}")

    return None


# -- per-file path resolution and merging ------------------------------------


def _resolve_paths(
    table: dict[str, Any], path: Path, conf_dir: Path, errors: list[str]
) -> None:
    """Make the relative paths of one file absolute, against its folder.

    The folders are resolved first, as the kernel would resolve them: with
    a conf dir that is a symlink, `../state.db` names the file beside the
    folder it points to, not beside the symlink. The `..` of the value
    itself is then collapsed as text, which keeps the paths readable.
    """
    base = Path(os.path.realpath(path.parent))
    conf_dir = Path(os.path.realpath(conf_dir))
    daemon = table.get("daemon")
    if isinstance(daemon, dict):
        state = daemon.get("state")
        if isinstance(state, str) and state:
            try:
                daemon["state"] = resolve_state_url(state, base)
            except ValueError as error:
                errors.append(f"{at(path, ('daemon', 'state'))}: {error}")
        for key in ("safe_path", "plugin_dirs"):
            value = daemon.get(key)
            if isinstance(value, list):
                daemon[key] = [_absolute(item, conf_dir) for item in value]

    # A global named *_dir or *_path is a path. These are the only globals
    # that fleetd interprets, and they let a drop-in point agents at
    # folders beside it.
    variables = table.get("globals")
    if isinstance(variables, dict):
        for name, value in variables.items():
            if name.endswith(PATH_GLOBAL_SUFFIXES) and isinstance(value, str):
                variables[name] = _absolute(value, base)

    workflows = table.get("workflows")
    if not isinstance(workflows, dict):
        return
    for name, settings in workflows.items():
        if not isinstance(settings, dict):
            continue
        for key in ("path",):
            if isinstance(settings.get(key), str) and settings[key]:
                settings[key] = _absolute(settings[key], base)
        for key in WORKFLOW_ARGV_KEYS:
            words = settings.get(key)
            if isinstance(words, str):
                try:
                    words = settings[key] = shlex.split(words)
                except ValueError:
                    continue  # reported by convert_value with the others
            is_argv = isinstance(words, list) and words and isinstance(words[0], str)
            if is_argv and "/" in words[0]:
                words[0] = _absolute(words[0], base)


def at(path: Path, key_path: KeyPath) -> str:
    """Format "file:line:col: dotted.key", or "file: dotted.key" when not found."""
    key = ".".join(key_path)
    position = locate_key(path, key_path)
    if position is None:
        return f"{path}: {key}"
    line, column = position

    return f"{path}:{line}:{column}: {key}"


def _absolute(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    return os.path.normpath(base / Path(value).expanduser())


def _merge(
    target: dict[str, Any],
    source: dict[str, Any],
    prefix: KeyPath,
    path: Path,
    origins: dict[KeyPath, Path],
) -> None:
    """Merge `source` into `target`: tables key by key, later values win."""
    for key, value in source.items():
        key_path = prefix + (key,)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            origins.setdefault(key_path, path)
            _merge(target[key], value, key_path, path, origins)
            continue
        for stale in [known for known in origins if known[: len(key_path)] == key_path]:
            del origins[stale]
        target[key] = value
        origins[key_path] = path
        if isinstance(value, dict):
            _record_origins(value, key_path, path, origins)


def _record_origins(
    table: dict[str, Any], prefix: KeyPath, path: Path, origins: dict[KeyPath, Path]
) -> None:
    for key, value in table.items():
        origins[prefix + (key,)] = path
        if isinstance(value, dict):
            _record_origins(value, prefix + (key,), path, origins)


# -- validation of the merged tree -------------------------------------------


def _validate(
    merged: dict[str, Any],
    origins: dict[KeyPath, Path],
    conf_dir: Path,
    errors: list[str],
) -> Config | None:
    def where(*key_path: str) -> str:
        origin = origins.get(key_path)
        if origin is None:
            return f"{conf_dir}: {'.'.join(key_path)}"
        return at(origin, key_path)

    for name, value in merged.items():
        if name not in TOP_LEVEL_TABLES:
            errors.append(
                f"{where(name)}: unknown key, expected one of the tables "
                f"[daemon], [globals], [workflows.NAME]"
            )
        elif not isinstance(value, dict):
            errors.append(f"{where(name)}: expected a table [{name}]")

    daemon = _validate_daemon(_table(merged, "daemon"), where, errors)
    global_values = _validate_globals(_table(merged, "globals"), where, errors)
    workflows = _validate_workflows(_table(merged, "workflows"), where, errors)
    if errors:
        return None

    return Config(
        conf_dir=conf_dir, daemon=daemon, globals=global_values, workflows=workflows
    )


def _table(merged: dict[str, Any], name: str) -> dict[str, Any]:
    value = merged.get(name, {})
    return value if isinstance(value, dict) else {}


def _validate_daemon(
    table: dict[str, Any], where: Any, errors: list[str]
) -> DaemonSettings:
    values: dict[str, Any] = {}
    for key, value in table.items():
        spec = DAEMON_KEYS.get(key)
        if spec is None:
            errors.append(
                f"{where('daemon', key)}: unknown key, expected one of "
                + ", ".join(DAEMON_KEYS)
            )
            continue
        try:
            values[key] = convert_value(spec, value)
        except ValueError as error:
            errors.append(f"{where('daemon', key)}: {error}")
    # A zero interval would run cycles back to back, a zero cleanup_timeout
    # would cancel every Cleanup, and a zero lease would expire at once.
    for key in POSITIVE_DURATIONS:
        if values.get(key) == 0:
            errors.append(f"{where('daemon', key)}: expected a duration above 0")
    values.setdefault("state", default_state_url())

    return DaemonSettings(**values)


def _validate_globals(
    table: dict[str, Any], where: Any, errors: list[str]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in table.items():
        if not GLOBAL_NAME_PATTERN.fullmatch(name) or name == "this":
            errors.append(
                f"{where('globals', name)}: invalid variable name, expected letters, "
                "digits and _ not starting with a digit, and not `this`"
            )
            continue
        values[name] = _agent_value(value)

    return values


def _agent_value(value: Any) -> Any:
    """Convert a TOML value to an agent language value.

    Booleans become Perl truth values (1 and ""), dates and times their
    ISO 8601 text.
    """
    if isinstance(value, bool):
        return 1 if value else ""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return [_agent_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _agent_value(item) for key, item in value.items()}

    return value


def _validate_workflows(
    table: dict[str, Any], where: Any, errors: list[str]
) -> dict[str, WorkflowSettings]:
    workflows: dict[str, WorkflowSettings] = {}
    for name, settings in table.items():
        if not NAME_PATTERN.fullmatch(name) or name == "Null":
            errors.append(
                f"{where('workflows', name)}: invalid workflow name, expected "
                "letters, digits, _ and - (Null is built in)"
            )
            continue
        if not isinstance(settings, dict):
            errors.append(f"{where('workflows', name)}: expected a table")
            continue
        workflow = _validate_workflow(name, settings, where, errors)
        if workflow is not None:
            workflows[name] = workflow

    return workflows


def _validate_workflow(
    name: str, settings: dict[str, Any], where: Any, errors: list[str]
) -> WorkflowSettings | None:
    kinds = " | ".join(WORKFLOW_KINDS)
    kind = settings.get("kind")
    if kind is None:
        errors.append(f"{where('workflows', name)}: missing key kind, expected {kinds}")
        return None
    if kind not in WORKFLOW_KINDS:
        errors.append(
            f"{where('workflows', name, 'kind')}: expected {kinds}, got {kind!r}"
        )
        return None

    keys = WORKFLOW_KEYS[kind]
    options: dict[str, Any] = dict(WORKFLOW_DEFAULTS[kind])
    for key, value in settings.items():
        if key == "kind":
            continue
        spec = keys.get(key)
        if spec is None:
            errors.append(
                f"{where('workflows', name, key)}: unknown key for kind {kind}, "
                "expected one of " + ", ".join(keys)
            )
            continue
        try:
            options[key] = convert_value(spec, value)
        except ValueError as error:
            errors.append(f"{where('workflows', name, key)}: {error}")
    for key, spec in keys.items():
        if spec.required and key not in settings:
            errors.append(
                f"{where('workflows', name)}: missing key {key}, expected {spec.form}"
            )
    dsn = options.get("dsn")
    if isinstance(dsn, str) and dsn.startswith(("postgresql://", "postgres://")):
        try:
            connect_arguments(dsn)
        except ValueError as error:
            errors.append(f"{where('workflows', name, 'dsn')}: {error}")
    elif isinstance(dsn, str):
        errors.append(
            f"{where('workflows', name, 'dsn')}: expected a postgresql:// URL, "
            f"got {redact_url(dsn)!r}"
        )
    if options.get("timeout") == 0:
        errors.append(
            f"{where('workflows', name, 'timeout')}: expected a duration above 0"
        )
    for key in WORKFLOW_PATH_KEYS.get(kind, ()):
        if key in options:
            options[key] = os.path.normpath(options[key])

    return WorkflowSettings(name=name, kind=kind, options=options)


def iter_toml_files(conf_dir: Path) -> Iterator[Path]:
    """Yield the TOML drop-ins of `conf_dir` in the order they merge."""
    yield from _list_drop_ins(conf_dir)[0]
