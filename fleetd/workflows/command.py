"""The `command` workflow: records listed by a program, commits sent to one.

`list_command` prints the records on its standard output as a JSON array
of objects or as JSON lines, one object per line. Each object's `id` is the
record id; the other keys are its fields. `update_command` receives one
record with its staged changes applied, as one JSON object on its standard
input, and must exit 0. The `id` in that object keeps its JSON type: a
number listed as `7` is sent back as `7`, not `"7"`.

Both run without a shell, from an argument list, in their own process
group: on timeout the whole group gets SIGTERM, then SIGKILL after 5 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from typing import Any

from fleetd.workflows.base import Record
from fleetd.workflows.errors import WorkflowError
from fleetd.workflows.strict_json import dump_json, load_json
from fleetd.workflows.text import id_problem, printable_text

KILL_GRACE_S = 5.0
STDERR_TAIL = 500


class CommandWorkflow:
    """Records from `list_command`; commits through `update_command`."""

    kind = "command"

    def __init__(
        self,
        name: str,
        list_command: Sequence[str],
        update_command: Sequence[str] | None = None,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.list_command = list(list_command)
        self.update_command = list(update_command) if update_command else None
        self.timeout = timeout
        # Each listed id as list_command printed it (a number stays a number
        # in what update_command receives), by its text, the record id.
        self._listed_ids: dict[str, str | int | float] = {}

    async def records(self) -> list[Record]:
        output = await self._run(self.list_command, b"", "list_command")
        try:
            # A byte that is not UTF-8 becomes a lone surrogate, which makes
            # only the record that contains it invalid.
            items = parse_listing(output.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError) as error:
            raise WorkflowError(
                f"command workflow {self.name}: list_command printed no JSON "
                f"array or JSON lines: {error}"
            ) from error
        if items and all(isinstance(item, UnreadableLine) for item in items):
            # Not one JSON line: the command printed something else entirely.
            first = items[0]
            raise WorkflowError(
                f"command workflow {self.name}: list_command printed no JSON "
                f"array or JSON lines: line {first.line_number}: {first.problem}"
            )
        records = [_record(number, item) for number, item in enumerate(items, 1)]
        for record, item in zip(records, items, strict=True):
            if record.invalid is None and record.id is not None:
                self._listed_ids[record.id] = item["id"]

        return records

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        if self.update_command is None:
            raise WorkflowError(
                f"command workflow {self.name}: no update_command to commit "
                f"changes of record {record.id} ({', '.join(changes)})"
            )
        listed_id = self._listed_ids.get(str(record.id), record.id)
        document = {**record.fields, **changes, "id": listed_id}
        try:
            payload = dump_json(document).encode() + b"\n"
        except ValueError as error:
            raise WorkflowError(
                f"command workflow {self.name}: record {record.id}: cannot "
                f"write the changes as JSON: {error}"
            ) from error
        await self._run(self.update_command, payload, "update_command")

    async def _run(self, argv: list[str], stdin: bytes, key: str) -> bytes:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise WorkflowError(
                f"command workflow {self.name}: {key} {argv[0]} cannot start: "
                f"{error.strerror}"
            ) from error
        try:
            stdout, stderr = await asyncio.wait_for(
                process.communicate(stdin), self.timeout
            )
        except TimeoutError:
            await _terminate(process)
            raise WorkflowError(
                f"command workflow {self.name}: {key} timed out after "
                f"{self.timeout:g} s"
            ) from None
        except asyncio.CancelledError:
            await asyncio.shield(_terminate(process))
            raise
        if process.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
            raise WorkflowError(
                f"command workflow {self.name}: {key} exited with status "
                f"{process.returncode}: {tail}"
            )

        return stdout


def parse_listing(text: str) -> list[Any]:
    """Parse a JSON array, or JSON lines (blank lines skipped).

    A JSON array that cannot be parsed raises ValueError. In JSON lines,
    a line that cannot be parsed becomes an `UnreadableLine` item, which
    its caller reports as an invalid record.
    """
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        items = load_json(stripped)
        if not isinstance(items, list):
            raise ValueError("expected a JSON array")
        return items

    items: list[Any] = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(load_json(line))
        except (ValueError, RecursionError) as error:
            # One unreadable line is one invalid record; the others go on.
            items.append(UnreadableLine(line_number, str(error) or "nested too deeply"))

    return items


class UnreadableLine:
    """A line of JSON lines output that is not JSON."""

    def __init__(self, line_number: int, problem: str) -> None:
        self.line_number = line_number
        self.problem = problem


def _record(number: int, item: Any) -> Record:
    if isinstance(item, UnreadableLine):
        return Record(
            id=f"item {number}",
            invalid=f"invalid JSON on line {item.line_number}: {item.problem}",
        )
    if not isinstance(item, dict):
        return Record(id=f"item {number}", invalid="expected a JSON object")
    fields = dict(item)
    record_id = fields.pop("id", None)
    if record_id is None or isinstance(record_id, (dict, list, bool)):
        return Record(
            id=f"item {number}",
            fields=fields,
            invalid="missing id: expected a string or number in key id",
        )

    text_id = str(record_id)
    problem = id_problem(text_id)
    if problem is not None:
        return Record(id=printable_text(text_id), invalid=problem)

    return Record(id=text_id, fields=fields)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """Send SIGTERM to the process group, then SIGKILL after the grace."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), KILL_GRACE_S)
    except TimeoutError:
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass
