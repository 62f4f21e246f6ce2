"""The `Null` workflow: one empty record per cycle, stored nowhere."""

from __future__ import annotations

from typing import Any

from fleetd.workflows.base import Record


class NullWorkflow:
    """One record with no id and no fields; commits write nothing."""

    name = "Null"
    kind = "Null"

    async def records(self) -> list[Record]:
        return [Record(id=None)]

    async def commit(self, record: Record, changes: dict[str, Any]) -> None:
        return None
