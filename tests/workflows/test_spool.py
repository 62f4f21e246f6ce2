"""The spool workflow against real folders of JSON files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from fleetd.config.model import WorkflowSettings
from fleetd.workflows import Record, WorkflowError, open_workflow
from fleetd.workflows.spool import SpoolWorkflow, write_atomically


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


async def test_records_in_name_order(spool: Path) -> None:
    (spool / "bob.json").write_text('{"status": "pending"}')
    (spool / "alice.json").write_text('{"status": "approved", "n": 1}')
    (spool / "notes.txt").write_text("ignored")
    (spool / ".alice.json.1234.tmp").write_text("{")
    records = await SpoolWorkflow("req", spool).records()
    assert [r.id for r in records] == ["alice", "bob"]
    assert records[0].fields == {"status": "approved", "n": 1}
    assert records[0].invalid is None


async def test_unreadable_records_are_invalid(spool: Path) -> None:
    (spool / "broken.json").write_text('{"status": ')
    (spool / "array.json").write_text("[1, 2]")
    (spool / "latin.json").write_bytes(b'{"name": "\xe9"}')
    (spool / "good.json").write_text("{}")
    records = {r.id: r for r in await SpoolWorkflow("req", spool).records()}
    assert records["broken"].invalid.startswith("invalid JSON: ")
    assert records["array"].invalid == "expected a JSON object, got a JSON array"
    assert records["latin"].invalid == "invalid JSON: not UTF-8 text"
    assert records["good"].invalid is None


async def test_symlinks_are_invalid_records(spool: Path, tmp_path: Path) -> None:
    secret = tmp_path / "shadow.json"
    secret.write_text('{"root": "x"}')
    (spool / "evil.json").symlink_to(secret)
    (spool / "real.json").write_text('{"a": 1}')
    (spool / "alias.json").symlink_to(spool / "real.json")
    (spool / "relative.json").symlink_to("real.json")
    (spool / "hop.json").symlink_to("alias.json")
    (spool / "sub").mkdir()
    (spool / "sub" / "inner.json").write_text('{"b": 2}')
    (spool / "nested.json").symlink_to(spool / "sub" / "inner.json")
    (spool / "dangling.json").symlink_to(spool / "gone")
    (spool / "loop.json").symlink_to("loop.json")
    records = {r.id: r for r in await SpoolWorkflow("req", spool).records()}
    assert records["evil"].invalid == "symlink pointing outside the spool"
    assert records["evil"].fields == {}
    same_spool = "symlink to record 'real' of the same spool, not a record itself"
    assert records["alias"].invalid == same_spool
    assert records["alias"].fields == {}
    assert records["relative"].invalid == same_spool
    assert records["hop"].invalid == same_spool
    assert records["nested"].invalid == (
        "symlink to sub/inner.json in the spool, not a regular file"
    )
    assert records["dangling"].invalid == "dangling symlink"
    assert records["loop"].invalid in ("symlink loop", "dangling symlink")
    assert records["real"].invalid is None
    assert records["real"].fields == {"a": 1}


async def test_special_files_are_invalid(spool: Path) -> None:
    os.mkfifo(spool / "pipe.json")
    (spool / "folder.json").mkdir()
    records = {r.id: r for r in await SpoolWorkflow("req", spool).records()}
    assert records["pipe"].invalid == "not a regular file"
    assert records["folder"].invalid == "not a regular file"


async def test_commit_merges_fields_atomically(spool: Path) -> None:
    path = spool / "carol.json"
    path.write_text('{"status": "approved", "user": "carol"}')
    path.chmod(0o640)
    inode = path.stat().st_ino
    workflow = SpoolWorkflow("req", spool)
    [record] = await workflow.records()
    await workflow.commit(record, {"status": "done", "uid": 1001})
    assert json.loads(path.read_text()) == {
        "status": "done",
        "user": "carol",
        "uid": 1001,
    }
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(os.listdir(spool)) == ["carol.json"]


async def test_commit_keeps_concurrent_edits(spool: Path) -> None:
    path = spool / "dan.json"
    path.write_text('{"status": "approved"}')
    workflow = SpoolWorkflow("req", spool)
    [record] = await workflow.records()
    path.write_text('{"status": "approved", "note": "added later"}')
    await workflow.commit(record, {"status": "done"})
    assert json.loads(path.read_text()) == {"status": "done", "note": "added later"}


async def test_commit_never_writes_through_symlink(spool: Path) -> None:
    real = spool / "real.json"
    real.write_text('{"a": 1}')
    (spool / "alias.json").symlink_to(real)
    workflow = SpoolWorkflow("req", spool)
    with pytest.raises(WorkflowError, match="is now a symlink"):
        await workflow.commit(Record(id="alias"), {"b": 2})
    assert (spool / "alias.json").is_symlink()
    assert json.loads(real.read_text()) == {"a": 1}


async def test_commit_after_swap_to_symlink_fails(spool: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": true}')
    real = spool / "real.json"
    real.write_text('{"a": 1}')
    (spool / "swapped.json").write_text('{"s": 1}')
    workflow = SpoolWorkflow("req", spool)
    records = {r.id: r for r in await workflow.records()}
    assert records["swapped"].invalid is None
    # Another writer replaces the listed file with links before the commit.
    for target in (real, outside):
        (spool / "swapped.json").unlink()
        (spool / "swapped.json").symlink_to(target)
        with pytest.raises(WorkflowError, match="is now a symlink"):
            await workflow.commit(records["swapped"], {"s": 2})
    assert json.loads(real.read_text()) == {"a": 1}
    assert json.loads(outside.read_text()) == {"secret": True}


async def test_commit_of_special_file_fails(spool: Path) -> None:
    os.mkfifo(spool / "pipe.json")
    workflow = SpoolWorkflow("req", spool)
    with pytest.raises(WorkflowError, match="no longer a regular file"):
        await workflow.commit(Record(id="pipe"), {"s": 2})


def test_atomic_write_replaces_symlink_entry(spool: Path) -> None:
    real = spool / "real.json"
    real.write_text('{"a": 1}')
    real.chmod(0o600)
    alias = spool / "alias.json"
    alias.symlink_to(real)
    write_atomically(alias, b'{"b": 2}\n')
    assert not alias.is_symlink()
    assert json.loads(alias.read_text()) == {"b": 2}
    assert oct(alias.stat().st_mode & 0o777) == oct(0o644)
    assert json.loads(real.read_text()) == {"a": 1}
    assert oct(real.stat().st_mode & 0o777) == oct(0o600)


async def test_commit_through_hard_link_spares_other(spool: Path) -> None:
    real = spool / "real.json"
    real.write_text('{"a": 1}')
    os.link(real, spool / "twin.json")
    workflow = SpoolWorkflow("req", spool)
    await workflow.commit(Record(id="twin"), {"b": 2})
    assert json.loads((spool / "twin.json").read_text()) == {"a": 1, "b": 2}
    assert json.loads(real.read_text()) == {"a": 1}


async def test_commit_of_vanished_file_fails(spool: Path) -> None:
    workflow = SpoolWorkflow("req", spool)
    with pytest.raises(WorkflowError, match="cannot read it back"):
        await workflow.commit(Record(id="ghost"), {"status": "done"})


async def test_missing_spool_folder_fails(tmp_path: Path) -> None:
    workflow = SpoolWorkflow("req", tmp_path / "missing")
    with pytest.raises(WorkflowError, match="cannot list"):
        await workflow.records()


async def test_open_workflow_builds_spool(spool: Path) -> None:
    (spool / "x.json").write_text("{}")
    settings = WorkflowSettings("req", "spool", {"path": str(spool)})
    workflow = open_workflow(settings)
    assert workflow.name == "req"
    assert workflow.kind == "spool"
    assert [r.id for r in await workflow.records()] == ["x"]


async def test_non_finite_numbers_are_invalid(spool: Path) -> None:
    (spool / "nan.json").write_text('{"n": NaN}')
    (spool / "inf.json").write_text('{"n": -Infinity}')
    (spool / "huge.json").write_text('{"n": 1e999}')
    (spool / "fine.json").write_text('{"n": 1.5e3}')
    records = {r.id: r for r in await SpoolWorkflow("req", spool).records()}
    assert records["nan"].invalid == "invalid JSON: NaN is not a JSON value"
    assert records["inf"].invalid == "invalid JSON: -Infinity is not a JSON value"
    assert records["huge"].invalid == "invalid JSON: number 1e999 is out of range"
    assert records["fine"].invalid is None
    assert records["fine"].fields == {"n": 1500.0}


async def test_commit_of_non_finite_value_fails(spool: Path) -> None:
    (spool / "a.json").write_text('{"n": 1}')
    workflow = SpoolWorkflow("req", spool)
    [record] = await workflow.records()
    with pytest.raises(WorkflowError, match="cannot write the changes as JSON"):
        await workflow.commit(record, {"n": float("inf")})
    assert json.loads((spool / "a.json").read_text()) == {"n": 1}


async def test_integer_beyond_digit_limit_is_invalid(spool: Path) -> None:
    limit = sys.get_int_max_str_digits()
    (spool / "long.json").write_text('{"n": ' + "7" * (limit + 1) + "}")
    (spool / "broken.json").write_text('{"n": ')
    records = {r.id: r for r in await SpoolWorkflow("req", spool).records()}

    reason = records["long"].invalid
    assert reason == f"invalid JSON: an integer has more than {limit} digits, the limit"
    assert "set_int_max_str_digits" not in reason
    assert records["broken"].invalid is not None
    assert records["broken"].invalid.startswith("invalid JSON: Expecting value")


async def test_commit_of_long_integer_fails(spool: Path) -> None:
    (spool / "a.json").write_text('{"n": 1}')
    workflow = SpoolWorkflow("req", spool)
    [record] = await workflow.records()
    with pytest.raises(WorkflowError, match="more than .* digits") as raised:
        await workflow.commit(record, {"n": 10 ** (sys.get_int_max_str_digits() + 1)})
    assert "set_int_max_str_digits" not in str(raised.value)
    assert json.loads((spool / "a.json").read_text()) == {"n": 1}
