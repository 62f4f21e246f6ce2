"""Command lines split into words as a POSIX shell splits them."""

from __future__ import annotations

import shlex

import pytest

from fleetd.lang import Scope, Variable, interpolate
from fleetd.lang.words import WordError, split_words

COLUMN = 14


def words(text: str, variables: dict | None = None) -> list[str]:
    scope = Scope(variables or {})
    return [interpolate(word, scope) for word in split_words(text, COLUMN)]


@pytest.mark.parametrize(
    "text",
    [
        "ls -l /tmp",
        "echo 'a b' \"c d\" e\\ f",
        'printf "%s <%s>\\n" x y',
        'a"b c"d \'e\'"f"g',
        "echo \"\" ''",
        'echo "a\\\\b" "q\\"q" \'x\\y\'',
        "  spaced   out\twords  ",
        "echo \\'not quoted\\'",
        'echo "don\'t"',
    ],
)
def test_split_like_posix_shell(text: str) -> None:
    assert words(text) == shlex.split(text, posix=True)


def test_hash_starts_comment_only_at_word_start() -> None:
    assert words("echo a#b # comment") == ["echo", "a#b"]


def test_value_stays_one_argument() -> None:
    hostile = "x; rm -rf / $(id) `id` 'q' \"d\"\nnext -flag"
    result = words(
        'useradd ${name} --comment "${name}" pre${name}post', {"name": hostile}
    )
    assert result == ["useradd", hostile, "--comment", hostile, f"pre{hostile}post"]


def test_references_in_every_quoting() -> None:
    assert words("echo '${x}' \"${x}\" ${x} \\${x}", {"x": "v"}) == [
        "echo",
        "v",
        "v",
        "v",
        "${x}",
    ]


def test_reference_locations() -> None:
    (first, second) = split_words("cp ${this.src}", COLUMN)
    assert first.column == 14
    assert second.column == 17
    assert second.parts == (Variable(("this", "src"), 17),)


def test_undefined_value_is_empty_argument() -> None:
    assert words("touch ${missing}") == ["touch", ""]


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("echo 'open", "unterminated single quote", 5),
        ('echo "open', "unterminated double quote", 5),
        ("cat a > b", "shell operator '>' needs a shell", 6),
        ("a && b", "shell operator '&' needs a shell", 2),
        ("a ; b", "shell operator ';' needs a shell", 2),
        ("echo $(id)", "command substitution $(...) needs a shell", 5),
        ("echo `id`", "shell operator '`' needs a shell", 5),
    ],
)
def test_rejected_command_lines(text: str, message: str, offset: int) -> None:
    with pytest.raises(WordError) as caught:
        split_words(text, COLUMN)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset


def test_quoted_operators_are_arguments() -> None:
    assert words("echo '|' \">\" \\;") == ["echo", "|", ">", ";"]
