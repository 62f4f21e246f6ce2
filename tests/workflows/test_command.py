"""The command workflow against real programs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from fleetd.config.model import WorkflowSettings
from fleetd.workflows import Record, WorkflowError, open_workflow
from fleetd.workflows.command import CommandWorkflow

PYTHON = sys.executable


def lister(text: str) -> list[str]:
    return [PYTHON, "-c", f"import sys; sys.stdout.write({text!r})"]


async def test_json_array_listing() -> None:
    listing = json.dumps([{"id": "a", "x": 1}, {"id": 7, "x": 2}])
    records = await CommandWorkflow("cmd", lister(listing)).records()
    assert [r.id for r in records] == ["a", "7"]
    assert records[0].fields == {"x": 1}


async def test_json_lines_listing() -> None:
    listing = '{"id": "a"}\n\n{"id": "b", "s": "x y"}\n'
    records = await CommandWorkflow("cmd", lister(listing)).records()
    assert [r.id for r in records] == ["a", "b"]
    assert records[1].fields == {"s": "x y"}


async def test_empty_listing_has_no_records() -> None:
    assert await CommandWorkflow("cmd", lister("")).records() == []


async def test_items_without_id_are_invalid() -> None:
    listing = json.dumps([{"x": 1}, 5, {"id": "ok"}])
    records = await CommandWorkflow("cmd", lister(listing)).records()
    assert records[0].id == "item 1"
    assert records[0].invalid.startswith("missing id")
    assert records[1].invalid == "expected a JSON object"
    assert records[2].invalid is None


async def test_garbage_listing_fails() -> None:
    with pytest.raises(WorkflowError, match="no JSON array or JSON lines"):
        await CommandWorkflow("cmd", lister("hello")).records()


async def test_failing_list_command_fails() -> None:
    argv = [PYTHON, "-c", "import sys; sys.stderr.write('db down'); sys.exit(3)"]
    with pytest.raises(WorkflowError, match="exited with status 3: db down"):
        await CommandWorkflow("cmd", argv).records()


async def test_missing_program_fails(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="cannot start"):
        await CommandWorkflow("cmd", [str(tmp_path / "nope")]).records()


async def test_list_command_timeout_kills_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time;"
        f"p = subprocess.Popen(['sleep', '30']); open({str(marker)!r}, 'w')"
        ".write(str(p.pid)); time.sleep(30)"
    )
    workflow = CommandWorkflow("cmd", [PYTHON, "-c", script], timeout=1.0)
    with pytest.raises(WorkflowError, match="timed out after 1 s"):
        await workflow.records()
    child = int(marker.read_text())
    await anyio.sleep(0.2)
    assert (
        not Path(f"/proc/{child}").exists()
        or "Z" in (Path(f"/proc/{child}/stat").read_text().split()[2])
    )


async def test_update_command_gets_record_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "update.json"
    update = [
        PYTHON,
        "-c",
        f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())",
    ]
    workflow = CommandWorkflow("cmd", lister("[]"), update)
    record = Record(id="a", fields={"status": "approved", "shell": "$(rm -rf /)"})
    await workflow.commit(record, {"status": "done"})
    assert json.loads(out.read_text()) == {
        "id": "a",
        "status": "done",
        "shell": "$(rm -rf /)",
    }


async def test_update_keeps_numeric_id(tmp_path) -> None:
    out = tmp_path / "update.json"
    update = [
        PYTHON,
        "-c",
        f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())",
    ]
    listing = json.dumps([{"id": 7, "x": 1}, {"id": "8", "x": 2}])
    workflow = CommandWorkflow("cmd", lister(listing), update)
    seven, eight = await workflow.records()
    await workflow.commit(seven, {"x": 10})
    assert json.loads(out.read_text()) == {"id": 7, "x": 10}
    await workflow.commit(eight, {"x": 20})
    assert json.loads(out.read_text()) == {"id": "8", "x": 20}


async def test_non_finite_numbers_rejected() -> None:
    workflow = CommandWorkflow("cmd", lister('[{"id": "a", "n": NaN}]'))
    with pytest.raises(WorkflowError, match="NaN is not a JSON value"):
        await workflow.records()
    update = [PYTHON, "-c", "import sys; sys.stdin.read()"]
    workflow = CommandWorkflow("cmd", lister("[]"), update)
    with pytest.raises(WorkflowError, match="cannot write the changes as JSON"):
        await workflow.commit(Record(id="a"), {"n": float("nan")})


async def test_failing_update_command_fails() -> None:
    update = [PYTHON, "-c", "import sys; sys.exit(1)"]
    workflow = CommandWorkflow("cmd", lister("[]"), update)
    with pytest.raises(WorkflowError, match="update_command exited with status 1"):
        await workflow.commit(Record(id="a"), {"x": 1})


async def test_commit_without_update_command_fails() -> None:
    workflow = CommandWorkflow("cmd", lister("[]"))
    with pytest.raises(WorkflowError, match="no update_command"):
        await workflow.commit(Record(id="a"), {"x": 1})


async def test_open_workflow_builds_command() -> None:
    settings = WorkflowSettings(
        "cmd",
        "command",
        {"list_command": lister('{"id": 1}'), "update_command": None, "timeout": 5.0},
    )
    workflow = open_workflow(settings)
    assert workflow.kind == "command"
    assert [r.id for r in await workflow.records()] == ["1"]
