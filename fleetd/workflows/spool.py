"""The `spool` workflow: a folder of JSON request files, one per record.

Each `*.json` file holding a JSON object is a record; its id is the file
name without `.json`. A commit merges the staged fields into the file as it
is on disk at commit time and replaces it atomically: a temporary file in
the same folder, fsync, rename over the original, fsync of the folder. A
reader thus sees the old or the new content, never a mix, and a crash
leaves one of them.

A symlink in the spool is followed only when its target is a file inside
the spool; one pointing elsewhere is an `invalid` record, so a spool that
others can write cannot make fleetd read or rewrite files outside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio.to_thread

from fleetd.workflows.base import Record
from fleetd.workflows.errors import WorkflowError
from fleetd.workflows.strict_json import dump_json, load_json

SUFFIX = ".json"


class SpoolWorkflow:
    """Records from the `*.json` files of the folder `path`."""

    kind = "spool"

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = Path(path)

    async def records(self) -> list[Record]:
        return await anyio.to_thread.run_sync(self._read_all)

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(self._write, record, changes)

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
        target, problem = _inside(root, path)
        if problem is not None:
            return Record(id=record_id, invalid=problem)
        if not target.is_file():
            return Record(id=record_id, invalid="not a regular file")
        try:
            data = load_json(target.read_bytes())
        except OSError as error:
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

    def _write(self, record: Record, changes: dict[str, Any]) -> None:
        if record.id is None:
            raise WorkflowError(f"spool {self.name}: a record without id")
        root = self.path.resolve()
        target, problem = _inside(root, self.path / (record.id + SUFFIX))
        if problem is not None:
            raise WorkflowError(f"spool {self.name}: record {record.id}: {problem}")
        try:
            current = load_json(target.read_bytes())
        except (OSError, ValueError, RecursionError) as error:
            raise WorkflowError(
                f"spool {self.name}: record {record.id}: cannot read it back "
                f"before the commit: {error}"
            ) from error
        if not isinstance(current, dict):
            raise WorkflowError(
                f"spool {self.name}: record {record.id}: no longer a JSON object"
            )
        current.update(changes)
        try:
            text = dump_json(current, indent=2)
        except ValueError as error:
            raise WorkflowError(
                f"spool {self.name}: record {record.id}: cannot write the "
                f"changes as JSON: {error}"
            ) from error
        write_atomically(target, (text + "\n").encode())


def write_atomically(target: Path, data: bytes) -> None:
    """Replace `target` with `data`: temp file, fsync, rename, fsync folder.

    The new file keeps the permission bits of the one it replaces.
    """
    folder = target.parent
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
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


def _inside(root: Path, path: Path) -> tuple[Path, str | None]:
    """Resolve `path`; report a symlink whose target is outside `root`."""
    if not path.is_symlink():
        return path, None
    target = path.resolve()
    if not target.is_relative_to(root):
        return target, "symlink pointing outside the spool"
    if not target.exists():
        return target, "dangling symlink"

    return target, None


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
