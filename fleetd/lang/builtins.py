"""The built-in functions: FleetConf 0.01_016's set, with Perl's semantics."""

from __future__ import annotations

import os
import socket
import sys

from fleetd.lang.registry import FunctionSpec
from fleetd.lang.values import Value, render, to_number


def _defined(value: Value = None) -> Value:
    return 1 if value is not None else ""


def _os() -> Value:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def _hostname() -> Value:
    return socket.gethostname()


def _is_path_exists(path: Value) -> Value:
    return 1 if os.path.lexists(render(path)) and os.path.exists(render(path)) else ""


def _lc(value: Value) -> Value:
    return render(value).lower()


def _uc(value: Value) -> Value:
    return render(value).upper()


def _length(value: Value) -> Value:
    return None if value is None else len(render(value))


def _int(value: Value) -> Value:
    number = to_number(value)
    return int(number)


def _size(value: Value = None) -> Value:
    return len(value) if isinstance(value, list) else 0


BUILTIN_FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("defined", 1, 1, _defined),
    FunctionSpec("OS", 0, 0, _os),
    FunctionSpec("hostname", 0, 0, _hostname),
    FunctionSpec("IsPathExists", 1, 1, _is_path_exists),
    FunctionSpec("lc", 1, 1, _lc),
    FunctionSpec("uc", 1, 1, _uc),
    FunctionSpec("length", 1, 1, _length),
    FunctionSpec("int", 1, 1, _int),
    FunctionSpec("size", 0, 1, _size),
)
