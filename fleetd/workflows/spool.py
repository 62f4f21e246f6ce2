"""The `spool` workflow: a folder of JSON request files, one per record.

Each `*.json` file holding a JSON object is a record; its id is the file
name without `.json`. A commit merges the staged fields into the file as it
is on disk at commit time and replaces it atomically: a temporary file in
the same folder, fsync, rename over the original, fsync of the folder. A
reader thus sees the old or the new content, never a mix, and a crash
leaves one of them.

A record must be a regular file. A symlink is an `invalid` record, and its
reason names where it points, whether to another record of the same spool,
elsewhere inside the spool, outside it, or nowhere. Files are opened with
`O_NOFOLLOW`, and a commit renames over the directory entry itself. A
symlink that appears between the listing and the commit therefore fails
the commit or is replaced, but nothing is written through it. A spool that
others can write thus cannot make fleetd read or rewrite another record or
a file outside the spool.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio.to_thread

from fleetd.workflows.base import Record
from fleetd.workflows.errors import WorkflowError
from fleetd.workflows.strict_json import dump_json, load_json

SUFFIX = ".json"
#: Seconds a commit tries to lock a request file that another process holds.
COMMIT_LOCK_WAIT = 10.0
# O_NONBLOCK keeps the open of a FIFO named like a record from blocking.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SpoolWorkflow:
    """Records from the `*.json` files of the folder `path`."""

    kind = "spool"

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = Path(path)

    async def records(self) -> list[Record]:
        return await anyio.to_thread.run_sync(self._read_all)

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        # The file's lock is taken without blocking a thread, so a program
        # that holds it for long (`flock file sleep 120`) delays a shutdown
        # by COMMIT_LOCK_WAIT at most.
        deadline = time.monotonic() + COMMIT_LOCK_WAIT
        delay = 0.001
        while not await anyio.to_thread.run_sync(self._write, record, changes):
            if time.monotonic() >= deadline:
                raise WorkflowError(
                    f"spool {self.name}: record {record.id}: not committed, because"
                    f" another process kept the file locked for {COMMIT_LOCK_WAIT:g} s"
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- blocking parts, run in a worker thread --------------------------------

    def _read_all(self) -> list[Record]:
        try:
            names = sorted(os.listdir(self.path))
        except OSError as error:
            raise WorkflowError(
                f"spool {self.name}: cannot list {self.path}: {error.strerror}"
            ) from error
        root = self.path.resolve()
        records = []
        for name in names:
            if not name.endswith(SUFFIX) or name.startswith("."):
                continue
            record_id = name[: -len(SUFFIX)]
            if not record_id:
                continue
            if not _is_utf8(record_id):
                # os.listdir decodes undecodable bytes to lone surrogates,
                # which no state store, log or report can encode.
                shown = os.fsencode(record_id).decode("utf-8", "backslashreplace")
                records.append(Record(id=shown, invalid="file name is not valid UTF-8"))
                continue
            records.append(self._read_one(root, record_id))

        return records

    def _read_one(self, root: Path, record_id: str) -> Record:
        path = self.path / (record_id + SUFFIX)
        if path.is_symlink():
            return Record(id=record_id, invalid=_symlink_problem(root, path))
        try:
            _, content = _read_regular_file(path)
            data = load_json(_utf8_text(content))
        except _NotRegularFile:
            return Record(id=record_id, invalid="not a regular file")
        except OSError as error:
            if error.errno == errno.ELOOP:
                # Replaced by a symlink after the is_symlink() check.
                return Record(id=record_id, invalid=_symlink_problem(root, path))
            return Record(id=record_id, invalid=f"cannot read: {error.strerror}")
        except UnicodeDecodeError:
            return Record(id=record_id, invalid="invalid JSON: not UTF-8 text")
        except ValueError as error:
            return Record(id=record_id, invalid=f"invalid JSON: {error}")
        except RecursionError:
            # json's decoder recurses once per nesting level.
            return Record(id=record_id, invalid="invalid JSON: nested too deeply")
        if not isinstance(data, dict):
            return Record(
                id=record_id,
                invalid=f"expected a JSON object, got a JSON {_json_kind(data)}",
            )

        return Record(id=record_id, fields=data)

    def _write(self, record: Record, changes: dict[str, Any]) -> bool:
        """Commit `changes`; return False when another process holds the file's lock."""
        if record.id is None:
            raise WorkflowError(f"spool {self.name}: a record without id")
        where = f"spool {self.name}: record {record.id}"
        path = self.path / (record.id + SUFFIX)
        # The lock keeps another commit to this file (another mnemonic, another
        # process) from reading it before this one has replaced it, which would
        # drop the fields this commit writes.
        try:
            descriptor, info = _lock_regular_file(path)
        except BlockingIOError:
            return False
        except _NotRegularFile as error:
            raise WorkflowError(f"{where}: no longer a regular file") from error
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise WorkflowError(
                    f"{where}: not committed, because the file is now a symlink "
                    "and a commit never writes through a symlink"
                ) from error
            raise WorkflowError(
                f"{where}: cannot read it back before the commit: {error}"
            ) from error
        try:
            current = load_json(_utf8_text(_read_all(descriptor)))
        except (OSError, ValueError, RecursionError) as error:
            raise WorkflowError(
                f"{where}: cannot read it back before the commit: {error}"
            ) from error
        else:
            if not isinstance(current, dict):
                raise WorkflowError(f"{where}: no longer a JSON object")
            current.update(changes)
            try:
                text = dump_json(current, indent=2)
            except ValueError as error:
                raise WorkflowError(
                    f"{where}: cannot write the changes as JSON: {error}"
                ) from error
            write_atomically(
                path,
                (text + "\n").encode(),
                mode=info.st_mode & 0o7777,
                owner=(info.st_uid, info.st_gid),
            )
        finally:
            os.close(descriptor)  # releases the lock

        return True


def _utf8_text(content: bytes) -> str:
    """Decode a request file as UTF-8, dropping a leading byte order mark.

    json.loads would also take UTF-16 and UTF-32 bytes, and a commit would
    then rewrite such a file as UTF-8. RFC 8259 requires UTF-8 and lets a
    parser ignore a byte order mark. Raises UnicodeDecodeError.
    """
    return content.removeprefix(codecs.BOM_UTF8).decode("utf-8")


class _NotRegularFile(Exception):
    """The path names a directory, FIFO, socket or device, not a file."""


def _read_regular_file(path: Path) -> tuple[int, bytes]:
    """Return the permission bits and content of the regular file `path`.

    Raises OSError with errno ELOOP when `path` is a symlink, and
    _NotRegularFile when it is neither a symlink nor a regular file.
    """
    descriptor = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(descriptor)
    except OSError:
        os.close(descriptor)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise _NotRegularFile(path)
    with os.fdopen(descriptor, "rb") as stream:
        return info.st_mode & 0o7777, stream.read()


def _lock_regular_file(path: Path) -> tuple[int, os.stat_result]:
    """Open the regular file `path` and lock it; return the descriptor and its stat.

    A commit replaces the file by a rename, so a lock may end up on a file
    that is no longer at `path`: it is then dropped and the new file is
    locked. Raises BlockingIOError when another process holds the lock,
    else like `_read_regular_file`.
    """
    while True:
        descriptor = os.open(path, _OPEN_FLAGS)
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise _NotRegularFile(path)
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            os.close(descriptor)
            continue  # replaced by a rename between the open and the stat
        except BaseException:
            os.close(descriptor)
            raise
        if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
            return descriptor, info
        os.close(descriptor)


def _read_all(descriptor: int) -> bytes:
    chunks = []
    while chunk := os.read(descriptor, 1 << 20):
        chunks.append(chunk)

    return b"".join(chunks)


def write_atomically(
    target: Path,
    data: bytes,
    *,
    mode: int | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace `target` with `data`: temp file, fsync, rename, fsync folder.

    The rename replaces the directory entry `target`, so a symlink there
    is replaced, never followed. The new file gets `mode`, by default the
    permission bits of the regular file it replaces, else 0o644, and the
    user and group `owner` when this process may give them (root may), so
    a request filed by a user stays that user's, as with `sed -i`.
    """
    folder = target.parent
    if mode is None:
        mode = _regular_file_mode(target)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(stream.fileno(), *owner)
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder_descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_descriptor)
    finally:
        os.close(folder_descriptor)


def _regular_file_mode(path: Path) -> int:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return 0o644
    if not stat.S_ISREG(info.st_mode):
        return 0o644

    return info.st_mode & 0o7777


def _symlink_problem(root: Path, path: Path) -> str:
    """Return why the symlink `path` in the spool `root` is not a record."""
    try:
        target = path.resolve()
    except RuntimeError:
        # Python before 3.13 raises RuntimeError on a symlink loop.
        return "symlink loop"
    if not target.is_relative_to(root):
        return "symlink pointing outside the spool"
    if not target.exists():
        return "dangling symlink"
    name = target.name
    if target.parent == root and name.endswith(SUFFIX) and not name.startswith("."):
        other = name[: -len(SUFFIX)]
        return f"symlink to record {other!r} of the same spool, not a record itself"

    return f"symlink to {target.relative_to(root)} in the spool, not a regular file"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False

    return True


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"

    return "number"
