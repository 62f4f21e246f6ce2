"""File-test built-ins: FleetConf's wrappers of Perl's `-X` operators.

Each returns what Perl returns: undefined when the path cannot be
stat'ed, "" when the test is false, 1 (or a size, or days) when true.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable

from fleetd.lang.values import Value, render

TRUE: Value = 1
FALSE: Value = ""


def _stat(path: Value, *, follow: bool = True) -> os.stat_result | None:
    try:
        return os.stat(render(path), follow_symlinks=follow)
    except (OSError, ValueError):
        return None


def _mode_test(
    predicate: Callable[[int], bool], *, follow: bool = True
) -> Callable[[Value], Value]:
    def test(path: Value) -> Value:
        result = _stat(path, follow=follow)
        if result is None:
            return None
        return TRUE if predicate(result.st_mode) else FALSE

    return test


def _access_test(mode: int, *, effective: bool) -> Callable[[Value], Value]:
    def test(path: Value) -> Value:
        if _stat(path) is None:
            return None
        use_effective = effective and os.access in os.supports_effective_ids
        ok = os.access(render(path), mode, effective_ids=use_effective)
        return TRUE if ok else FALSE

    return test


def _owned(*, effective: bool) -> Callable[[Value], Value]:
    def test(path: Value) -> Value:
        result = _stat(path)
        if result is None:
            return None
        uid = os.geteuid() if effective else os.getuid()
        return TRUE if result.st_uid == uid else FALSE

    return test


def path_exists(path: Value) -> Value:
    """Perl's -e."""
    return None if _stat(path) is None else TRUE


def is_empty(path: Value) -> Value:
    """Perl's -z."""
    result = _stat(path)
    if result is None:
        return None
    return TRUE if result.st_size == 0 else FALSE


def file_size(path: Value) -> Value:
    """Perl's -s: the size in bytes; 0 (false) for an empty file as Perl 5.36 gives."""
    result = _stat(path)
    if result is None:
        return None
    return result.st_size


def _age(field: str) -> Callable[[Value], Value]:
    def days(path: Value) -> Value:
        result = _stat(path)
        if result is None:
            return None
        return (time.time() - getattr(result, field)) / 86400.0

    return days


def is_tty(handle: Value) -> Value:
    """Perl's -t on a handle name: STDIN, STDOUT or STDERR, or a descriptor number."""
    name = render(handle)
    descriptors = {"STDIN": 0, "STDOUT": 1, "STDERR": 2}
    descriptor = descriptors.get(name.upper())
    if descriptor is None and name.isdigit():
        descriptor = int(name)
    if descriptor is None:
        return None
    try:
        return TRUE if os.isatty(descriptor) else FALSE
    except OSError:
        return FALSE


def _text_or_binary(want_text: bool) -> Callable[[Value], Value]:
    """Perl's -T and -B: a guess from the first block of the file."""

    def test(path: Value) -> Value:
        result = _stat(path)
        if result is None:
            return None
        if stat.S_ISDIR(result.st_mode):
            # Perl 5.36: -T is false and -B true for a directory.
            return FALSE if want_text else TRUE
        if stat.S_ISFIFO(result.st_mode) or stat.S_ISSOCK(result.st_mode):
            # Perl would block reading a named pipe; a socket cannot be opened.
            return FALSE
        try:
            with open(render(path), "rb") as handle:
                block = handle.read(512)
        except OSError:
            return None
        if not block:
            return TRUE
        # Perl's pp_fttext: a block with non-ASCII bytes that is all UTF-8 is
        # text, even with a NUL in it. Otherwise a NUL makes it binary, and so
        # does more than a third of odd bytes: all but printable ASCII, the
        # blanks other than VT, backspace and escape.
        if not block.isascii() and _is_utf8(block):
            is_text = True
        elif b"\0" in block:
            is_text = False
        else:
            odd = sum(
                1
                for byte in block
                if not (32 <= byte <= 126 or byte in b"\t\n\r\f\b\x1b")
            )
            is_text = odd * 3 <= len(block)
        return TRUE if is_text == want_text else FALSE

    return test


def _is_utf8(block: bytes) -> bool:
    """Tell whether `block` is UTF-8, allowing a character cut at its end."""
    try:
        block.decode("utf-8")
    except UnicodeDecodeError as error:
        return (
            error.start >= len(block) - 3 and error.reason == "unexpected end of data"
        )

    return True


def newer_than(first: Value, second: Value) -> Value:
    """FleetConf's NewerThan: the first path's mtime (lstat) is later than the second's.

    A path that does not exist counts as time 0, as undef did in Perl.
    """
    times = []
    for path in (first, second):
        result = _stat(path, follow=False)
        times.append(result.st_mtime if result is not None else 0)
    return TRUE if int(times[0]) > int(times[1]) else FALSE


FILE_TESTS: dict[str, tuple[Callable[..., Value], str]] = {
    "IsReadable": (
        _access_test(os.R_OK, effective=True),
        "-r: readable by the effective user",
    ),
    "IsWritable": (
        _access_test(os.W_OK, effective=True),
        "-w: writable by the effective user",
    ),
    "IsExecutable": (
        _access_test(os.X_OK, effective=True),
        "-x: executable by the effective user",
    ),
    "IsOwned": (_owned(effective=True), "-o: owned by the effective user"),
    "IsReallyReadable": (
        _access_test(os.R_OK, effective=False),
        "-R: readable by the real user",
    ),
    "IsReallyWritable": (
        _access_test(os.W_OK, effective=False),
        "-W: writable by the real user",
    ),
    "IsReallyExecutable": (
        _access_test(os.X_OK, effective=False),
        "-X: executable by the real user",
    ),
    "IsReallyOwned": (_owned(effective=False), "-O: owned by the real user"),
    "IsPathExists": (path_exists, "-e: the path exists"),
    "IsEmpty": (is_empty, "-z: the file is empty"),
    "IsNonEmpty": (file_size, "-s: the size when not empty"),
    "FileSize": (file_size, "-s: the size in bytes"),
    "IsFile": (_mode_test(stat.S_ISREG), "-f: a plain file"),
    "IsDir": (_mode_test(stat.S_ISDIR), "-d: a directory"),
    "IsSymLink": (_mode_test(stat.S_ISLNK, follow=False), "-l: a symbolic link"),
    "IsPipe": (_mode_test(stat.S_ISFIFO), "-p: a named pipe"),
    "IsSocket": (_mode_test(stat.S_ISSOCK), "-S: a socket"),
    "IsBlockSpecial": (_mode_test(stat.S_ISBLK), "-b: a block device"),
    "IsCharSpecial": (_mode_test(stat.S_ISCHR), "-c: a character device"),
    "IsTTY": (is_tty, "-t: the handle (STDIN, STDOUT, STDERR) is a terminal"),
    "IsSetUID": (
        _mode_test(lambda mode: bool(mode & stat.S_ISUID)),
        "-u: setuid bit set",
    ),
    "IsSetGID": (
        _mode_test(lambda mode: bool(mode & stat.S_ISGID)),
        "-g: setgid bit set",
    ),
    "IsSticky": (
        _mode_test(lambda mode: bool(mode & stat.S_ISVTX)),
        "-k: sticky bit set",
    ),
    "IsASCII": (_text_or_binary(True), "-T: looks like a text file"),
    "IsBinary": (_text_or_binary(False), "-B: looks like a binary file"),
    "ModificationDays": (_age("st_mtime"), "-M: days since the last modification"),
    "AccessDays": (_age("st_atime"), "-A: days since the last access"),
    "ChangeDays": (_age("st_ctime"), "-C: days since the last inode change"),
}

if sys.platform == "win32":  # pragma: no cover - fleetd runs on POSIX systems
    raise ImportError("file tests need a POSIX system")
