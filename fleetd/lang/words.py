"""Split program command lines into words, as a POSIX shell would.

`shlex.split` gives the words, but loses where a `${name}` reference sits
and which characters were quoted, and it reports no positions. This module
scans the line once and keeps each reference as a `Variable` part of its
word, so a value interpolated at run time always stays inside its one
argument, whatever it contains.

Rules: spaces and tabs separate words; `'...'` keeps everything literally; in
`"..."` a backslash escapes only `$`, `` ` ``, `"` and `\\`; outside quotes
a backslash escapes any character; `#` at the start of a word begins a
comment. References are recognised in every quoting, because FleetConf
interpolated the whole line before its shell saw it; `\\$` writes a
literal dollar. Unquoted shell operators (`|`, `&`, `;`, `<`, `>`, `` ` ``,
`$(`) are rejected: no shell runs, so they would reach the program as
plain arguments.
"""

from __future__ import annotations

from fleetd.lang.ast import Template, Variable
from fleetd.lang.templates import REFERENCE_RE, variable_path

# A shell splits words at the characters of its default IFS: space, tab
# and newline, and a command line contains no newline. A form feed or
# vertical tab stays inside its word, as in sh and bash.
_BLANKS = " \t"
_OPERATORS = "|&;<>`"


class WordError(ValueError):
    """A command line that cannot be split; `offset` is where it went wrong."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def split_words(text: str, column: int) -> tuple[Template, ...]:
    """Split `text` into one template per word.

    `column` is where `text` starts in its line; each template gets the
    column of its word.

    Raises:
        WordError: an unterminated quote or an unquoted shell operator.
    """
    words: list[Template] = []
    parts: list[str | Variable] = []
    chunk: list[str] = []
    started = False
    word_start = 0
    index = 0
    length = len(text)

    def flush_chunk() -> None:
        if chunk:
            parts.append("".join(chunk))
            chunk.clear()

    def reference(offset: int) -> int:
        """Add the reference at `offset` if there is one; return where it ends."""
        match = REFERENCE_RE.match(text, offset)
        if match is None:
            return -1
        flush_chunk()
        parts.append(Variable(variable_path(match.group(1)), column + offset))
        return match.end()

    while index < length:
        char = text[index]
        if not started:
            if char in _BLANKS:
                index += 1
                continue
            if char == "#":
                break
            started = True
            word_start = index
        if char in _BLANKS:
            flush_chunk()
            words.append(Template(tuple(parts) or ("",), column + word_start))
            parts = []
            started = False
            index += 1
            continue
        if char == "\\":
            if index + 1 < length:
                chunk.append(text[index + 1])
                index += 2
            else:
                index += 1
            continue
        if char == "'":
            end = text.find("'", index + 1)
            if end < 0:
                raise WordError("unterminated single quote", index)
            position = index + 1
            while position < end:
                if text[position] == "$":
                    after = reference(position)
                    if 0 <= after <= end:
                        position = after
                        continue
                chunk.append(text[position])
                position += 1
            index = end + 1
            continue
        if char == '"':
            position = index + 1
            while True:
                if position >= length:
                    raise WordError("unterminated double quote", index)
                inner = text[position]
                if inner == '"':
                    break
                if (
                    inner == "\\"
                    and position + 1 < length
                    and text[position + 1] in '$`"\\'
                ):
                    chunk.append(text[position + 1])
                    position += 2
                    continue
                if inner == "$":
                    after = reference(position)
                    if after >= 0:
                        position = after
                        continue
                chunk.append(inner)
                position += 1
            index = position + 1
            continue
        if char == "$":
            after = reference(index)
            if after >= 0:
                index = after
                continue
            if text.startswith("$(", index):
                raise WordError(
                    "command substitution $(...) needs a shell, and none runs", index
                )
        if char in _OPERATORS:
            raise WordError(
                f"shell operator {char!r} needs a shell, and none runs; "
                "quote it to pass it as an argument",
                index,
            )
        chunk.append(char)
        index += 1
    if started:
        flush_chunk()
        words.append(Template(tuple(parts) or ("",), column + word_start))
    return tuple(words)
