"""Record sources feeding agents: Null, spool, sqlite, postgresql and command.

`open_workflow` builds the workflow of one `[workflows.NAME]` table; the
kind-specific modules are imported only when a workflow of their kind is
opened.
"""

from __future__ import annotations

from fleetd.config.model import WorkflowSettings
from fleetd.workflows.base import Record, Workflow
from fleetd.workflows.errors import WorkflowError
from fleetd.workflows.null import NullWorkflow

__all__ = ["NullWorkflow", "Record", "Workflow", "WorkflowError", "open_workflow"]


def open_workflow(settings: WorkflowSettings | None) -> Workflow:
    """Build the workflow that `settings` describe; None is the Null workflow.

    Raises WorkflowError for a kind this build cannot open.
    """
    if settings is None:
        return NullWorkflow()
    options = settings.options
    if settings.kind == "spool":
        from fleetd.workflows.spool import SpoolWorkflow

        return SpoolWorkflow(settings.name, options["path"])
    if settings.kind == "sqlite":
        from fleetd.workflows.sqlite import SqliteWorkflow

        return SqliteWorkflow(
            settings.name,
            options["path"],
            options["table"],
            id_column=options.get("id_column") or "id",
            where=options.get("where"),
        )
    if settings.kind == "command":
        from fleetd.workflows.command import CommandWorkflow

        return CommandWorkflow(
            settings.name,
            options["list_command"],
            options.get("update_command"),
            timeout=options.get("timeout", 60.0),
        )
    if settings.kind == "postgresql":
        from fleetd.workflows.postgresql import open_postgresql_workflow

        return open_postgresql_workflow(settings)

    raise WorkflowError(f"workflow {settings.name}: unknown kind {settings.kind!r}")
