"""Parsing agent files: header, commands, blocks, phases and errors."""

from __future__ import annotations

import re

import pytest

from fleetd.lang import (
    AgentError,
    Assign,
    CallCommand,
    CleanupBlock,
    CleanupWhen,
    CommandSpec,
    Condition,
    Echo,
    ExecCommand,
    Foreach,
    Literal,
    Log,
    Match,
    Parallel,
    Phase,
    ProgramExec,
    ProgramOption,
    ProgramStart,
    Registry,
    Template,
    Variable,
    When,
    load_agent,
    parse_agent,
    parse_duration,
)

HEADER = "NAME Test\nMNEMONIC test\n"


def parse(body: str, registry: Registry | None = None):
    return parse_agent(HEADER + body, "t.agent", registry=registry)


def errors(text: str, registry: Registry | None = None) -> list[str]:
    with pytest.raises(AgentError) as caught:
        parse_agent(text, "t.agent", registry=registry)
    return [str(d) for d in caught.value.diagnostics]


def test_header_lines() -> None:
    agent = parse_agent(
        "#!/usr/bin/fleetconf-agent\n"
        "NAME\tCreate-Home\n"
        "DESCRIPTION Create a home # directory\n"
        "VERSION $Rev: 1507 $\n"
        "MNEMONIC homedir\n"
        "WORKFLOW requests\n"
        "SCHEDULE every 5m\n"
        "CONCURRENCY 4\n"
        "TIMEOUT 1m30s # whole run\n",
        "h.agent",
    )
    assert agent.name == "Create-Home"
    assert agent.description == "Create a home # directory"
    assert agent.version == "$Rev: 1507 $"
    assert agent.mnemonic == "homedir"
    assert agent.workflow == "requests"
    assert agent.schedule is not None
    assert agent.schedule.every == 300.0
    assert agent.concurrency == 4
    assert agent.timeout == 90.0
    assert agent.commands == ()
    assert agent.digest


def test_header_defaults() -> None:
    agent = parse("")
    assert agent.workflow == "Null"
    assert agent.schedule is None
    assert agent.concurrency == 1
    assert agent.timeout is None


def test_schedule_manual_and_ms() -> None:
    agent = parse_agent(HEADER + "SCHEDULE manual\nTIMEOUT 250ms\n", "s.agent")
    assert agent.schedule is not None
    assert agent.schedule.manual
    assert agent.timeout == 0.25


def test_cr_only_line_ends_named() -> None:
    # Classic Mac OS line ends: the whole file reads as one line.
    [message] = errors("NAME A\rMNEMONIC a\rECHO hi\r")
    assert message == (
        "t.agent:1:1: missing MNEMONIC line"
        " (the file's lines end in CR only; fleetd splits lines at LF)"
    )


def test_missing_name_and_mnemonic() -> None:
    assert errors("ECHO hi\n") == [
        "t.agent:1:1: missing NAME line",
        "t.agent:1:1: missing MNEMONIC line",
    ]


def test_bad_header_values() -> None:
    found = errors(
        "NAME x\nMNEMONIC bad word\nSCHEDULE hourly\nCONCURRENCY 0\nTIMEOUT 5 minutes\n"
    )
    assert found[0].startswith("t.agent:2:10: invalid MNEMONIC 'bad word'")
    assert found[1].startswith("t.agent:3:10: invalid SCHEDULE 'hourly'")
    assert found[2].startswith("t.agent:4:13: CONCURRENCY must be")
    assert found[3].startswith("t.agent:5:9: TIMEOUT: invalid duration")


def test_zero_durations_rejected() -> None:
    found = errors("NAME x\nMNEMONIC x\nSCHEDULE every 0s\nTIMEOUT 0s\n")
    assert found[0] == "t.agent:3:10: SCHEDULE: the interval must be longer than 0"
    assert found[1] == "t.agent:4:9: TIMEOUT: the limit must be longer than 0"
    assert len(found) == 2


def test_header_after_command() -> None:
    found = errors(HEADER + "ECHO hi\nWORKFLOW late\n")
    assert found == [
        "t.agent:4:1: WORKFLOW is a header line and must come before the first command"
    ]


def test_duplicate_header() -> None:
    found = errors(HEADER + "NAME Again\n")
    assert found == ["t.agent:3:1: duplicate NAME line; the first is at line 1"]


def test_phases_of_commands() -> None:
    agent = parse(
        'PREREQUISITE OS() = "linux"\n'
        'PREREQUISITE_SET base = "/srv"\n'
        'REQUIRE this.status = "approved"\n'
        "REQUIRE_SET user = this.user\n"
        "CHECK TRUE\n"
        'CHECK_SET home = "${base}/${user}"\n'
        'SET this.status = "done"\n'
        "ECHO hello ${user}\n"
        "LOG warn careful\n"
        'EXEC_COMMAND IGNORE_FAILURE touch "/tmp/a b"\n'
    )
    commands = agent.commands
    assert [type(c).__name__ for c in commands] == [
        "Condition", "Assign", "Condition", "Assign", "Condition", "Assign",
        "Assign", "Echo", "Log", "ExecCommand",
    ]  # fmt: skip
    assert [c.phase for c in commands] == [
        Phase.INITIALIZE, Phase.INITIALIZE, Phase.REQUIREMENTS, Phase.REQUIREMENTS,
        Phase.CHECK, Phase.CHECK, Phase.RUN, Phase.RUN, Phase.RUN, Phase.RUN,
    ]  # fmt: skip
    assert agent.phase(Phase.INITIALIZE) == commands[0:2]
    assert agent.phase(Phase.REQUIREMENTS) == commands[2:4]
    assert agent.phase(Phase.CHECK) == commands[4:6]
    assert agent.phase(Phase.RUN) == commands[6:]
    assert agent.phase(Phase.CLEANUP) == ()
    assign = commands[6]
    assert isinstance(assign, Assign)
    assert assign.target == ("this", "status")
    assert assign.source == 'SET this.status = "done"'
    assert assign.loc.line == 9
    log = commands[8]
    assert isinstance(log, Log)
    assert log.level == "warning"
    exec_command = commands[9]
    assert isinstance(exec_command, ExecCommand)
    assert exec_command.ignore_failure
    assert exec_command.argv[1].parts == ("/tmp/a b",)


def test_only_if_undefined_assignment() -> None:
    (command,) = parse('SET color //= "blue"\n').commands
    assert isinstance(command, Assign)
    assert command.only_if_undefined
    assert command.expr == Literal("blue", command.expr.column)


def test_nested_blocks_keep_phases() -> None:
    agent = parse(
        "WHEN x = 1 DO\n"
        "\tFOREACH n IN [1, 2] DO\n"
        "\t\tCHECK n > 0\n"
        "\t\tWHEN TRUE DO\n"
        "\t\t\tECHO ${n}\n"
        "\t\tEND\n"
        "\tEND\n"
        "\tON_FAILURE\n"
        "\t\tECHO undo\n"
        "\tEND\n"
        "END\n"
    )
    (when,) = agent.commands
    assert isinstance(when, When)
    check_tree = agent.phase(Phase.CHECK)
    (check_when,) = check_tree
    assert isinstance(check_when, When)
    (check_foreach,) = check_when.body
    assert isinstance(check_foreach, Foreach)
    assert [type(c) for c in check_foreach.body] == [Condition]
    (run_when,) = agent.phase(Phase.RUN)
    (run_foreach,) = run_when.body
    (inner_when,) = run_foreach.body
    assert isinstance(inner_when.body[0], Echo)
    (cleanup_when,) = agent.phase(Phase.CLEANUP)
    (block,) = cleanup_when.body
    assert isinstance(block, CleanupBlock)
    assert block.when is CleanupWhen.FAILURE
    assert block.body[0].phase is Phase.CLEANUP


def test_cleanup_blocks() -> None:
    agent = parse(
        "EXEC_COMMAND true\n"
        "CLEANUP\n  ECHO always\nEND\n"
        "ON_FAILURE\n  SET x = 1\nEND\n"
        "ON_SUCCESS\n  EXEC_COMMAND true\nEND\n"
    )
    blocks = agent.phase(Phase.CLEANUP)
    assert [b.when for b in blocks] == [
        CleanupWhen.ALWAYS,
        CleanupWhen.FAILURE,
        CleanupWhen.SUCCESS,
    ]
    assert all(c.phase is Phase.CLEANUP for b in blocks for c in b.body)
    assert len(agent.phase(Phase.RUN)) == 1


def test_parallel_block() -> None:
    agent = parse(
        "PARALLEL\n"
        "    EXEC_COMMAND sleep 1\n"
        "    WHEN TRUE DO\n"
        "        COMMAND ls\n"
        "        OPTION -l\n"
        "        EXEC\n"
        "    END\n"
        "END\n"
    )
    (parallel,) = agent.phase(Phase.RUN)
    assert isinstance(parallel, Parallel)
    assert len(parallel.body) == 2


def test_parallel_errors() -> None:
    found = errors(
        HEADER
        + "CLEANUP\n  PARALLEL\n  END\nEND\n"
        + "PARALLEL\n  CHECK TRUE\n  COMMAND ls\n  ON_FAILURE\n  END\nEND\n"
    )
    assert found[0].startswith("t.agent:4:3: PARALLEL is allowed only in Run")
    assert found[1].startswith("t.agent:8:3: CHECK is not allowed inside PARALLEL")
    assert found[2].startswith(
        "t.agent:9:3: COMMAND cannot be a direct part of PARALLEL"
    )
    assert found[3].startswith(
        "t.agent:10:3: ON_FAILURE is not allowed inside PARALLEL"
    )


def test_cleanup_rejects_other_phases() -> None:
    found = errors(HEADER + "CLEANUP\n  REQUIRE TRUE\n  CLEANUP\n  END\nEND\n")
    assert found[0].startswith("t.agent:4:3: REQUIRE is not allowed inside CLEANUP")
    assert found[1].startswith("t.agent:5:3: CLEANUP cannot be nested")


def test_program_commands() -> None:
    agent = parse(
        "COMMAND useradd -m\n"
        'OPTION -s "${shell}"\n'
        "OPTION_IF (defined(uid)) -u ${uid}\n"
        "EXEC_IF_OPTION IGNORE_FAILURE\n"
        "EXEC\n"
    )
    start, option, option_if, exec_if, exec_plain = agent.commands
    assert isinstance(start, ProgramStart)
    assert [w.parts for w in start.argv] == [("useradd",), ("-m",)]
    assert isinstance(option, ProgramOption)
    assert option.condition is None
    assert option.words[1].parts[0] == Variable(
        ("shell",), option.words[1].parts[0].column
    )
    assert isinstance(option_if, ProgramOption)
    assert option_if.condition is not None
    assert [len(w.parts) for w in option_if.words] == [1, 1]
    assert option_if.words[0].column == 26
    assert isinstance(exec_if, ProgramExec)
    assert exec_if.only_if_option
    assert exec_if.ignore_failure
    assert isinstance(exec_plain, ProgramExec)
    assert not exec_plain.only_if_option
    assert not exec_plain.ignore_failure


def test_exec_words_keep_values_in_one_argument() -> None:
    (command,) = parse(
        "EXEC_COMMAND echo ${this.username} \"${this.shell}\" a${x}b 'q ${y}'\n"
    ).commands
    assert isinstance(command, ExecCommand)
    words = command.argv
    assert len(words) == 5
    assert words[1].parts == (Variable(("this", "username"), words[1].parts[0].column),)
    assert words[3].parts[0] == "a"
    assert words[3].parts[2] == "b"
    assert words[4].parts[0] == "q "


def test_exec_word_errors() -> None:
    found = errors(
        HEADER + 'EXEC_COMMAND echo "open\nEXEC_COMMAND ls | wc\nEXEC_COMMAND\n'
    )
    assert found[0] == "t.agent:3:19: unterminated double quote"
    assert found[1].startswith("t.agent:4:17: shell operator '|' needs a shell")
    assert found[2] == "t.agent:5:1: EXEC_COMMAND needs a command line"


def test_exec_without_command() -> None:
    assert errors(HEADER + "EXEC\nOPTION -x\n") == [
        "t.agent:3:1: EXEC without a COMMAND before it",
        "t.agent:4:1: OPTION without a COMMAND before it",
    ]


def test_cleanup_block_needs_its_own_command() -> None:
    # Each cleanup block runs with a program builder of its own, so a
    # COMMAND in Run does not start a program for an OPTION in ON_SUCCESS.
    text = HEADER + "COMMAND touch a\nON_SUCCESS\n    OPTION b\n    EXEC\nEND\nEXEC\n"
    where = "in its cleanup block, which builds its programs on its own"
    assert errors(text) == [
        f"t.agent:5:5: OPTION without a COMMAND before it {where}",
        f"t.agent:6:5: EXEC without a COMMAND before it {where}",
    ]


def test_cleanup_block_with_its_own_command() -> None:
    body = (
        "ON_FAILURE\n    COMMAND rm\n    OPTION -f\n    EXEC\nEND\n"
        "COMMAND ls\nOPTION -l\nEXEC\n"
    )
    agent = parse(body)
    assert len(agent.commands) == 4


def test_call_command_from_registry() -> None:
    registry = Registry.default()
    registry.add_command(CommandSpec("notify", 1, 2, lambda ctx, *a: 1))
    (call,) = parse('CALL notify("ops", this.id)\n', registry).commands
    assert isinstance(call, CallCommand)
    assert call.name == "notify"
    assert len(call.args) == 2
    found = errors(HEADER + "CALL notify()\nCALL missing(1)\n", registry)
    assert found == [
        "t.agent:3:6: notify() takes 1 or 2 arguments, got 0",
        "t.agent:4:6: unknown command 'missing' in CALL",
    ]


def test_match_pattern_compiled() -> None:
    (command,) = parse(
        "REQUIRE this.email MATCHES /^([a-z]+)@example\\.org$/i\n"
    ).commands
    assert isinstance(command, Condition)
    assert isinstance(command.expr, Match)
    assert command.expr.pattern.flags & re.IGNORECASE
    assert command.expr.pattern.search("BOB@example.org")


def test_crlf_tabs_and_comments() -> None:
    text = (
        "#!fleetconf-agent\r\nNAME\tx\r\nMNEMONIC\tx\r\n\r\n# a comment\r\n"
        "\tWHEN TRUE DO # trailing\r\n\t\tECHO a # not a comment\r\n\tEND\r\n"
    )
    agent = parse_agent(text, "crlf.agent")
    (when,) = agent.commands
    (echo,) = when.body
    assert isinstance(echo, Echo)
    assert echo.text.parts == ("a # not a comment",)
    assert echo.loc.line == 7
    assert echo.loc.column == 3


def test_every_error_reported() -> None:
    found = errors(
        "NAME x\n"
        "MNEMONIC y\n"
        "ECHO fine\n"
        "echo lower\n"
        "FROB x\n"
        "CHECK x = \n"
        "SET y = nosuch(1)\n"
        "SET z = size(1, 2)\n"
        "REQUIRE x MATCHES /(/\n"
        "REQUIRE x MATCHES /a/q\n"
        "END\n"
        "FOREACH v IN [1] DO\n"
    )
    assert found == [
        "t.agent:4:1: unknown command 'echo'; keywords are upper case: ECHO",
        "t.agent:5:1: unknown command 'FROB'",
        (
            "t.agent:6:10: unexpected end of the line; expected '(', 'FALSE', "
            "'TRUE', '[', a name, a number, ..."
        ),
        "t.agent:7:9: unknown function 'nosuch'",
        "t.agent:8:9: size() takes 0 or 1 arguments, got 2",
        "t.agent:9:19: invalid regular expression /(/: missing )",
        "t.agent:10:19: unsupported regular expression flag 'q'; use i, m, s or x",
        "t.agent:11:1: END without a block to close",
        "t.agent:12:1: FOREACH block is never closed: END is missing",
    ]


def test_nul_is_an_error() -> None:
    found = errors(HEADER + "ECHO a\0b\n")
    assert found == ["t.agent:3:7: NUL character in the file"]


def test_invalid_utf8(tmp_path) -> None:
    path = tmp_path / "bad.agent"
    path.write_bytes(b"NAME x\nMNEMONIC \xff\n")
    with pytest.raises(AgentError) as caught:
        load_agent(path)
    assert (
        str(caught.value)
        == f"{path}:2:10: invalid UTF-8 byte; agent files must be UTF-8"
    )


def test_reserved_word_is_not_a_variable() -> None:
    found = errors(HEADER + "CHECK AND\n")
    assert found == ["t.agent:3:7: unexpected keyword 'AND'"]


def test_set_this_only_in_run() -> None:
    found = errors(HEADER + "CHECK_SET this.x = 1\nSET this = 1\n")
    assert found[0].startswith("t.agent:3:11: CHECK_SET cannot change a record field")
    assert found[1].startswith("t.agent:4:5: cannot assign to this itself")


def test_string_literals() -> None:
    (command,) = parse('SET s = "a\\"b\\${x}\\n${y}"\n').commands
    assert isinstance(command, Assign)
    template = command.expr
    assert isinstance(template, Template)
    assert template.parts[0] == 'a"b${x}\n'
    assert isinstance(template.parts[1], Variable)


@pytest.mark.parametrize(
    ("word", "level"),
    [
        ("DEBUG", "debug"), ("info", "info"), ("Notice", "notice"),
        ("WARNING", "warning"), ("WARN", "warning"), ("ERROR", "error"),
        ("err", "error"), ("CRITICAL", "critical"), ("CRIT", "critical"),
        ("ALERT", "alert"), ("EMERGENCY", "emergency"), ("EMERG", "emergency"),
    ],
)  # fmt: skip
def test_log_levels(word: str, level: str) -> None:
    (command,) = parse(f"LOG {word} user ${{user}} done\n").commands
    assert isinstance(command, Log)
    assert command.level == level
    assert command.text.parts[0] == "user "


def test_log_level_invalid() -> None:
    found = errors(HEADER + "LOG LOUD hello\nLOG\n")
    assert found[0].startswith("t.agent:3:5: invalid LOG level 'LOUD'")
    assert found[1].startswith("t.agent:4:4: invalid LOG level 'nothing'")


def test_builtin_arity_checked() -> None:
    found = errors(
        HEADER + 'SET a = index("x")\nSET b = index("x", "y", 1, 2)\nSET c = OS(1)\n'
    )
    assert found == [
        "t.agent:3:9: index() takes 2 or 3 arguments, got 1",
        "t.agent:4:9: index() takes 2 or 3 arguments, got 4",
        "t.agent:5:9: OS() takes 0 arguments, got 1",
    ]


def test_byte_order_mark_dropped(tmp_path) -> None:
    path = tmp_path / "bom.agent"
    path.write_bytes(b"\xef\xbb\xbfNAME x\r\nMNEMONIC y\r\n")
    agent = load_agent(path)
    assert agent.name == "x"
    assert agent.path == str(path)


def test_blocks_nested_too_deep() -> None:
    text = HEADER + "WHEN TRUE DO\n" * 101 + "ECHO x\n" + "END\n" * 101
    assert errors(text) == ["t.agent:103:1: blocks nested deeper than 100 levels"]


def test_expression_nested_too_deep() -> None:
    found = errors(HEADER + "CHECK " + "NOT " * 120 + "TRUE\n")
    assert found == [
        "t.agent:3:6: expression nested deeper than 100 levels; split it with SET"
    ]


def test_durations() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("2.5s") == 2.5
    with pytest.raises(ValueError):
        parse_duration("5")
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


def test_unknown_names_suggest_close_ones() -> None:
    found = errors(
        HEADER + 'CHECK isPathExists("/x")\nSET y = lenght("x")\nSET z = qq(1)\n'
    )
    assert found == [
        "t.agent:3:7: unknown function 'isPathExists'; did you mean 'IsPathExists'?",
        "t.agent:4:9: unknown function 'lenght'; did you mean 'length'?",
        "t.agent:5:9: unknown function 'qq'",
    ]


def test_syntax_error_messages() -> None:
    found = errors(
        HEADER
        + 'WHEN x = 1\nEND\nFOREACH x [1] DO\nEND\nCHECK x = "open\n'
        + "REQUIRE x MATCHES /abc\nCALL\nCHECK x = @\n"
    )
    assert found == [
        "t.agent:3:11: unexpected end of the line; expected 'DO'",
        "t.agent:5:11: unexpected '[1]'; expected 'IN'",
        't.agent:7:11: unterminated string: the closing " is missing',
        "t.agent:8:19: unterminated regular expression: the closing / is missing",
        "t.agent:9:5: unexpected end of the line; expected a name",
        "t.agent:10:11: unexpected '@'; expected '(', '[', a name, a number, a string",
    ]


def test_option_if_without_text() -> None:
    # Lark parses the second line, because the recursive-descent parser leaves
    # a form feed after the condition to Lark.
    text = "NAME a\nMNEMONIC a\nCOMMAND ls\nOPTION_IF (x)\nOPTION_IF (y)\f\n"
    for _ in range(2):  # parsed, then from the memo
        assert errors(text) == [
            "t.agent:4:1: OPTION_IF needs text after its condition",
            "t.agent:5:1: OPTION_IF needs text after its condition",
        ]


def test_long_flat_condition_accepted() -> None:
    # A run of one operator is a single level of nesting.
    chain = " OR ".join(f'this.group = "g{number}"' for number in range(500))

    agent = parse("REQUIRE " + chain + "\n")

    assert len(agent.commands) == 1
