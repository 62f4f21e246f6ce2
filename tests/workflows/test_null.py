"""The Null workflow and open_workflow's handling of kinds."""

from __future__ import annotations

import pytest

from fleetd.config.model import WorkflowSettings
from fleetd.workflows import Workflow, WorkflowError, open_workflow


async def test_null_has_one_empty_record() -> None:
    workflow = open_workflow(None)
    assert isinstance(workflow, Workflow)
    assert workflow.name == "Null"
    records = await workflow.records()
    assert len(records) == 1
    assert records[0].id is None
    assert records[0].fields == {}
    assert records[0].invalid is None
    await workflow.commit(records[0], {"x": 1})


def test_unknown_kind_fails() -> None:
    with pytest.raises(WorkflowError, match="unknown kind 'ldap'"):
        open_workflow(WorkflowSettings("x", "ldap", {}))
