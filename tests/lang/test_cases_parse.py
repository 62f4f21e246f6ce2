"""Agent files of the shipped input cases parse, and the broken one fails."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from fleetd.lang import AgentError, Phase, load_agent

CASES = Path("/work/shared/cases")
AGENT_FILES = sorted(glob.glob(str(CASES / "*" / "conf.d" / "*.agent")))


@pytest.mark.skipif(not AGENT_FILES, reason="no input cases on this machine")
@pytest.mark.parametrize(
    "path", AGENT_FILES, ids=lambda p: "/".join(Path(p).parts[-3:])
)
def test_case_agent_parses(path: str) -> None:
    if path.endswith("bad-agent/conf.d/broken.agent"):
        with pytest.raises(AgentError) as caught:
            load_agent(path)
        assert str(caught.value).startswith(f"{path}:4:1: ")
        return
    agent = load_agent(path)
    assert agent.name
    assert agent.mnemonic
    assert agent.by_phase[Phase.RUN] or agent.by_phase[Phase.CHECK]
