"""Functions and plugin commands that agents can call, and how plugins add them.

A plugin is a Python module that exposes `FLEETD_FUNCTIONS` and/or
`FLEETD_COMMANDS`: sequences of `FunctionSpec` and `CommandSpec`. Plugins
are found two ways:

- installed packages that declare entry points in the groups
  `fleetd.functions` and `fleetd.commands`. Each entry point names a spec,
  a sequence of specs, or a module with the attributes above.
- `*.py` files in the daemon's `plugin_dirs`, loaded in lexical order.

Example plugin file::

    from fleetd.lang import CommandSpec, FunctionSpec

    def shout(text):
        return str(text).upper()

    async def notify(ctx, channel, message):
        ctx.log.info("notify", channel=channel)
        return 1

    FLEETD_FUNCTIONS = [FunctionSpec("shout", 1, 1, shout)]
    FLEETD_COMMANDS = [CommandSpec("notify", 2, 2, notify)]

A function receives evaluated values (`Value`) and returns one. It should
be pure: Requirements and Check call it with no lock held. A command
receives a `CommandContext` first; a false result or an exception fails it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from fleetd.config.trust import untrusted_reasons
from fleetd.lang.values import Value


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function callable in expressions, e.g. `lc(x)`.

    `max_args` None accepts any number of arguments. `pure` declares that the
    function has no side effects, so pretend mode may call it. `patterns`
    lists the positions of arguments that are Perl regular expressions: a
    constant one is compiled at load, so that a malformed one is a load
    error.
    """

    name: str
    min_args: int
    max_args: int | None
    impl: Callable[..., Value]
    pure: bool = True
    doc: str = ""
    patterns: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command callable with `CALL name(args)`.

    `impl` receives the `CommandContext` and the evaluated arguments; it
    may be a coroutine function. `side_effect_free` lets pretend mode call
    it for real.
    """

    name: str
    min_args: int
    max_args: int | None
    impl: Callable[..., Awaitable[Value] | Value]
    side_effect_free: bool = False
    doc: str = ""


class CommandContext(Protocol):
    """Context passed to a plugin command as its first argument; the runtime implements it."""

    agent: str
    mnemonic: str
    workflow: str
    record_id: str | None
    record: Mapping[str, Value]
    pretend: bool
    log: Any

    def on_commit(self, hook: Callable[[], Awaitable[None] | None]) -> None: ...

    def on_rollback(self, hook: Callable[[], Awaitable[None] | None]) -> None: ...

    def on_error(self, hook: Callable[[], Awaitable[None] | None]) -> None: ...


# The entry point groups that plugins declare, in the order they load.
ENTRY_POINT_GROUPS = ("fleetd.functions", "fleetd.commands")


class PluginError(Exception):
    """A plugin that cannot be loaded or that declares an invalid spec."""


def describe_arity(min_args: int, max_args: int | None) -> str:
    """Describe an argument count for messages: "1", "2 or 3", "at least 1"."""
    if max_args is None:
        return f"at least {min_args}" if min_args else "any number of"
    if min_args == max_args:
        return str(min_args)
    if max_args == min_args + 1:
        return f"{min_args} or {max_args}"
    return f"{min_args} to {max_args}"


def arity_error(name: str, spec: FunctionSpec | CommandSpec, count: int) -> str | None:
    """Return the message for a call of `spec` with `count` arguments, if wrong."""
    if count >= spec.min_args and (spec.max_args is None or count <= spec.max_args):
        return None
    arity = describe_arity(spec.min_args, spec.max_args)
    noun = "argument" if arity == "1" else "arguments"
    return f"{name}() takes {arity} {noun}, got {count}"


class Registry:
    """Functions and commands by name.

    `Registry.default()` contains the built-in functions, and `load_plugins` adds
    plugins to a copy of it. A later definition of a name replaces an
    earlier one.
    """

    def __init__(
        self,
        functions: Iterable[FunctionSpec] = (),
        commands: Iterable[CommandSpec] = (),
    ) -> None:
        self.functions: dict[str, FunctionSpec] = {}
        self.commands: dict[str, CommandSpec] = {}
        for spec in functions:
            self.add_function(spec)
        for command in commands:
            self.add_command(command)

    @classmethod
    def default(cls) -> Registry:
        """Return a new registry with the built-in functions."""
        from fleetd.lang.builtins import BUILTIN_FUNCTIONS

        return cls(BUILTIN_FUNCTIONS)

    def copy(self) -> Registry:
        """Return a registry with the same functions and commands."""
        return Registry(self.functions.values(), self.commands.values())

    def add_function(self, spec: FunctionSpec) -> None:
        """Add or replace a function."""
        _check_spec(spec)
        self.functions[spec.name] = spec

    def add_command(self, spec: CommandSpec) -> None:
        """Add or replace a command."""
        _check_spec(spec)
        self.commands[spec.name] = spec

    def function(self, name: str) -> FunctionSpec | None:
        """Return the function called `name`, or None."""
        return self.functions.get(name)

    def command(self, name: str) -> CommandSpec | None:
        """Return the command called `name`, or None."""
        return self.commands.get(name)


def _check_spec(spec: FunctionSpec | CommandSpec) -> None:
    if not spec.name.isidentifier():
        raise PluginError(f"name {spec.name!r} must be an identifier")
    if spec.min_args < 0:
        raise PluginError(f"{spec.name}: min_args must be >= 0")
    if spec.max_args is not None and spec.max_args < spec.min_args:
        raise PluginError(f"{spec.name}: max_args must be >= min_args")
    if not callable(spec.impl):
        raise PluginError(f"{spec.name}: impl must be callable")


def _add_specs(registry: Registry, source: str, item: object) -> None:
    """Add a spec, a sequence of specs, or a module's declared specs."""
    if isinstance(item, FunctionSpec):
        registry.add_function(item)
    elif isinstance(item, CommandSpec):
        registry.add_command(item)
    elif isinstance(item, ModuleType):
        found = False
        for attribute in ("FLEETD_FUNCTIONS", "FLEETD_COMMANDS"):
            specs = getattr(item, attribute, None)
            if specs is not None:
                found = True
                _add_specs(registry, source, list(specs))
        if not found:
            raise PluginError(
                f"{source}: defines neither FLEETD_FUNCTIONS nor FLEETD_COMMANDS"
            )
    elif isinstance(item, (list, tuple)):
        for element in item:
            _add_specs(registry, source, element)
    else:
        raise PluginError(
            f"{source}: expected a FunctionSpec, a CommandSpec, a list of them "
            f"or a module, got {type(item).__name__}"
        )


def _load_file(path: Path) -> ModuleType:
    """Import the plugin file `path` as a new module.

    The source is compiled on every load and no `__pycache__` file is read
    or written, so a bytecode file that someone else wrote never runs in
    place of the source that passed the permission check.
    """
    module_name = f"fleetd_plugin_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - running the plugin is the point
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise PluginError(f"{path}: import failed: {error!r}") from error
    return module


def _plugin_files(plugin_dirs: Sequence[str | Path], problems: list[str]) -> list[Path]:
    """List the `*.py` files of each folder, in lexical order per folder.

    A missing folder is added to `problems`. As root, so is every folder,
    file or symlink that `untrusted_reasons` rejects, and it is left out:
    a rejected folder with all its files.
    """
    files: list[Path] = []
    as_root = os.geteuid() == 0
    for directory in plugin_dirs:
        folder = Path(directory)
        if not folder.is_dir():
            problems.append(f"{folder}: plugin directory not found")
            continue
        if as_root:
            reasons = untrusted_reasons(folder)
            if reasons:
                problems.extend(reasons)
                continue
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("."):
                continue
            if as_root:
                reasons = untrusted_reasons(path)
                if reasons:
                    problems.extend(reasons)
                    continue
            files.append(path)

    return files


def _add_source(
    registry: Registry, source: str, load: Callable[[], object], problems: list[str]
) -> None:
    """Load one plugin and add all of its specs, or none and note why."""
    scratch = Registry()
    try:
        _add_specs(scratch, source, load())
    except PluginError as error:
        problems.append(str(error))
        return
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a plugin may raise anything
        # SystemExit too: a script dropped into a plugin folder may call
        # sys.exit() or argparse at its top level.
        problems.append(f"{source}: import failed: {error!r}")
        return
    registry.functions.update(scratch.functions)
    registry.commands.update(scratch.commands)


def load_plugins(
    plugin_dirs: Sequence[str | Path],
    *,
    entry_points: bool = True,
    problems: list[str] | None = None,
) -> Registry:
    """Return the built-ins plus every plugin found.

    Entry points (groups `fleetd.functions` and `fleetd.commands`) load
    first, then the `*.py` files of each directory of `plugin_dirs` in
    lexical order, so a file can replace an installed function.

    As root, every plugin folder and file, and each folder above them,
    must be owned by root and not writable by others (see
    `fleetd.config.trust`). Entry points are not checked, because they are
    installed packages of the Python environment.

    A plugin that cannot be imported, declares a bad spec, or (as root)
    could be changed by others adds none of its specs. With `problems`,
    each such plugin is described there (naming the entry point, folder or
    file) and the others load, so a bad file stops no agent that does not
    use it. Without it, PluginError is raised naming every problem.
    """
    found: list[str] = []
    registry = Registry.default()
    if entry_points and _may_declare_entry_points():
        from importlib import metadata

        for group in ENTRY_POINT_GROUPS:
            for entry_point in sorted(
                metadata.entry_points(group=group), key=lambda e: e.name
            ):
                source = f"entry point {entry_point.name} ({entry_point.value})"
                _add_source(registry, source, entry_point.load, found)
    for path in _plugin_files(plugin_dirs, found):
        _add_source(registry, str(path), lambda path=path: _load_file(path), found)
    if problems is not None:
        problems.extend(dict.fromkeys(found))
    elif found:
        # Each file repeats the problems of the folders above it.
        raise PluginError("\n".join(dict.fromkeys(found)))

    return registry


def _may_declare_entry_points() -> bool:
    """Tell whether an installed distribution may declare a fleetd entry point.

    Importing importlib.metadata and reading every distribution took about
    20 of the 230 ms of `fleetd once` on an empty agent (2-core AMD EPYC,
    Python 3.11). So this function first reads the `entry_points.txt` files
    itself, in the `*.dist-info` and `*.egg-info` folders of each `sys.path`
    folder, where importlib.metadata finds them. It returns False only
    when none of them names a fleetd group. Where
    importlib.metadata would look somewhere else (a zip file or an egg on
    `sys.path`, or another distribution finder on `sys.meta_path`), it
    returns True, and the caller asks importlib.metadata.
    """
    for finder in sys.meta_path:
        if finder is not importlib.machinery.PathFinder and hasattr(
            finder, "find_distributions"
        ):
            return True
    groups = tuple(group.encode() for group in ENTRY_POINT_GROUPS)
    for entry in sys.path:
        folder = entry or "."
        if folder.lower().endswith(".egg"):
            return True
        try:
            names = os.listdir(folder)
        except NotADirectoryError:
            return True
        except OSError:
            continue
        for name in names:
            lowered = name.lower()
            if lowered.endswith(".egg"):
                return True
            if not lowered.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(folder, name, "entry_points.txt"), "rb") as file:
                    text = file.read()
            except OSError:
                continue
            if any(group in text for group in groups):
                return True

    return False
