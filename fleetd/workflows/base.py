"""Record sources: the interface every workflow kind implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec


class Record(msgspec.Struct):
    """One item of a workflow, seen by agents as `this`.

    `id` is None only in the `Null` workflow. `invalid` holds the reason
    when the record could not be read; such a record is reported with
    outcome `invalid` and never run.
    """

    id: str | None
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    invalid: str | None = None


@runtime_checkable
class Workflow(Protocol):
    """A named source of records and the place their commits go."""

    name: str
    kind: str

    async def records(self) -> list[Record]:
        """List the records of one cycle, in a stable order."""
        ...

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        """Write the staged `this.*` changes of one record durably.

        Called only when there are changes, before the lock's resolution
        is written. Raises on failure; the run is then resolved as error.
        """
        ...
