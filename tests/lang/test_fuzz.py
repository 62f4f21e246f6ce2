"""Property: any text gives an Agent or an AgentError with locations.

Random lines built from the language's own pieces, and valid agents with
random edits, go through `parse_agent`. Nothing else may be raised, every
diagnostic points into the file, and each example has a deadline so a
hang fails the test.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.lang import Agent, AgentError, Registry, Scope, evaluate, parse_agent
from fleetd.lang.ast import Assign, Condition
from fleetd.lang.perlformat import perl_sprintf
from fleetd.lang.perlre import PatternError, compile_perl

PATH = "fuzz.agent"
KEYWORDS = [
    "NAME", "MNEMONIC", "DESCRIPTION", "VERSION", "WORKFLOW", "SCHEDULE",
    "CONCURRENCY", "TIMEOUT", "PREREQUISITE", "PREREQUISITE_SET", "REQUIRE",
    "REQUIRE_SET", "CHECK", "CHECK_SET", "SET", "ECHO", "LOG", "EXEC_COMMAND",
    "COMMAND", "OPTION", "OPTION_IF", "EXEC", "EXEC_IF_OPTION", "CALL", "WHEN",
    "FOREACH", "PARALLEL", "CLEANUP", "ON_FAILURE", "ON_SUCCESS", "END",
]  # fmt: skip
PIECES = [
    *KEYWORDS, "DO", "IN", "NOT", "AND", "OR", "MATCHES", "TRUE", "FALSE",
    "IGNORE_FAILURE", "x", "this.id", "this.a.b", "1", "-2", "3.5", '"s"',
    '"${x}"', "${this.id}", "${", "}", "$", "(", ")", "[", "]", ",", "=", "//=",
    "<>", "<", ">=", "/a(b)/i", "/(/", "/x/q", "'", '"', "\\", "#", "#!", "\t",
    " ", "|", ";", "lc(x)", "size(1, 2)", "nosuch()", "every 5m", "manual",
    "\r", "\0", "é", "\u2028", "\x01", "\x05",
]  # fmt: skip
SAMPLE = """#!/usr/bin/fleetconf-agent
NAME        Sample
MNEMONIC    sample
WORKFLOW    requests
SCHEDULE    every 5m
TIMEOUT     30s
PREREQUISITE OS() = "linux"
REQUIRE this.email MATCHES /^([a-z]+)@example\\.org$/
REQUIRE_SET user = "${1}"
CHECK NOT IsPathExists("/home/${user}") AND size(this.groups) >= 0
COMMAND useradd -m
OPTION_IF (defined(this.uid)) --uid ${this.uid}
EXEC_IF_OPTION IGNORE_FAILURE
FOREACH g IN this.groups DO
    WHEN NOT g IN ["root"] DO
        EXEC_COMMAND gpasswd -a "${user}" ${g}
    END
END
PARALLEL
    ECHO one
    LOG info two ${user}
END
SET this.status //= "done"
ON_FAILURE
    ECHO failed
END
"""
CASE_FILES = sorted(Path("/work/shared/cases").glob("*/conf.d/*.agent"))
SEEDS = [SAMPLE] + [path.read_text() for path in CASE_FILES]


def check_parse(text: str) -> Agent | None:
    try:
        agent = parse_agent(text, PATH)
    except AgentError as error:
        assert error.diagnostics
        line_count = max(len(text.split("\n")), 1)
        for diagnostic in error.diagnostics:
            assert diagnostic.loc.file == PATH
            assert 1 <= diagnostic.loc.line <= line_count
            assert diagnostic.loc.column >= 1
            assert diagnostic.message
            assert str(diagnostic).startswith(f"{PATH}:{diagnostic.loc.line}:")
        return None
    assert isinstance(agent, Agent)
    return agent


line_strategy = st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join)
file_strategy = st.lists(line_strategy, max_size=25).map("\n".join)


@st.composite
def mutated_agent(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
        if action == "insert":
            text = text[:position] + draw(st.sampled_from(PIECES)) + text[position:]
        elif action == "delete":
            length = draw(st.integers(min_value=1, max_value=20))
            text = text[:position] + text[position + length :]
        elif action == "replace":
            text = text[:position] + draw(st.text(max_size=3)) + text[position + 1 :]
        else:
            lines = text.split("\n")
            first = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            second = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[first], lines[second] = lines[second], lines[first]
            text = "\n".join(lines)
    return text


# FLEETD_FUZZ_EXAMPLES raises the number of examples for a longer search.
FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("FLEETD_FUZZ_EXAMPLES", "300")),
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ_SETTINGS
@given(file_strategy)
def test_random_lines_parse_or_fail_cleanly(text: str) -> None:
    check_parse("NAME f\nMNEMONIC f\n" + text)


@FUZZ_SETTINGS
@given(st.text(max_size=300))
def test_random_text_parses_or_fails_cleanly(text: str) -> None:
    check_parse(text)


@FUZZ_SETTINGS
@given(mutated_agent())
def test_mutated_agents_parse_or_fail_cleanly(text: str) -> None:
    agent = check_parse(text)
    if agent is None:
        return
    # What parses also evaluates without crashing: errors are EvaluationError.
    registry = Registry.default()
    for command in agent.commands:
        if isinstance(command, (Condition, Assign)):
            try:
                evaluate(command.expr, Scope({"this": {"groups": []}}), registry)
            except Exception as error:  # noqa: BLE001 - the type is the check
                assert type(error).__name__ == "EvaluationError", repr(error)


def test_sample_parses() -> None:
    assert check_parse(SAMPLE) is not None


@FUZZ_SETTINGS
@given(
    st.text(alphabet="\\/()[]{}<>?*+|^$.:=!#'\"aAzZ09-_ kQEhGR\n", max_size=40),
    st.text("imsxqg", max_size=3),
)
def test_regex_translation_fails_cleanly(pattern: str, flags: str) -> None:
    try:
        compile_perl(pattern, flags)
    except PatternError:
        pass


@FUZZ_SETTINGS
@given(
    st.text(alphabet="%-+ 0#*.$123456789sdifFeEgGxXobBcuv", max_size=20),
    st.lists(
        st.one_of(
            st.none(), st.integers(-(10**6), 10**6), st.text(max_size=5), st.floats()
        ),
        max_size=4,
    ),
)
def test_sprintf_fails_cleanly(template: str, args: list) -> None:
    try:
        perl_sprintf(template, *args)
    except ValueError:
        pass
