"""Variable scopes of one run of an agent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from fleetd.lang.errors import EvaluationError
from fleetd.lang.values import Value

#: Position of a block's scope in an agent: the (line, column) of each
#: enclosing WHEN or FOREACH and of the block itself, with the iteration
#: number after a FOREACH's position.
BlockKey: TypeAlias = tuple[tuple[int, ...], ...]


class Scope:
    """A frame of variables with an optional parent frame.

    `WHEN` and `FOREACH` bodies run in a block scope (`block`): a name
    defined there disappears when the block ends, while assigning to a
    name that an outer scope defines changes the outer variable.

    The phases of a run walk the same blocks one after another, each with
    its own commands. A block's variables are kept from one phase to the
    next, so a `REQUIRE_SET` inside a WHEN is still set when Run enters
    that WHEN. The scopes of one run share one table of block variables,
    `blocks`, keyed by `BlockKey`.
    """

    __slots__ = ("_key", "_variables", "blocks", "parent")

    def __init__(
        self,
        variables: Mapping[str, Value] | None = None,
        parent: Scope | None = None,
        *,
        blocks: dict[BlockKey, dict[str, Value]] | None = None,
    ) -> None:
        self._variables: dict[str, Value] = dict(variables or {})
        self.parent = parent
        self._key: BlockKey = () if parent is None else parent._key
        if blocks is None:
            blocks = {} if parent is None else parent.blocks
        self.blocks = blocks

    def _owner(self, name: str) -> Scope | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope._variables:
                return scope
            scope = scope.parent
        return None

    def lookup(self, path: tuple[str, ...]) -> Value:
        """Return the value at `path`, or None when it is undefined.

        The first name is looked up from this scope outwards; the other
        names walk into dicts.
        """
        owner = self._owner(path[0])
        if owner is None:
            return None
        value = owner._variables[path[0]]
        for key in path[1:]:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    def assign(self, path: tuple[str, ...], value: Value) -> None:
        """Set the variable at `path`.

        A one-name path updates the nearest scope that defines the name, or
        defines it in this scope. A longer path sets the key inside the dict
        found at `path[:-1]`, which must exist.

        Raises:
            EvaluationError: `path[:-1]` does not name a dict.
        """
        if len(path) == 1:
            owner = self._owner(path[0]) or self
            owner._variables[path[0]] = value
            return
        container = self.lookup(path[:-1])
        if not isinstance(container, dict):
            dotted = ".".join(path[:-1])
            raise EvaluationError(
                f"cannot set {'.'.join(path)}: {dotted} is not a record"
            )
        container[path[-1]] = value

    def define(self, name: str, value: Value) -> None:
        """Define `name` in this scope, hiding any outer variable of that name."""
        self._variables[name] = value

    def child(self) -> Scope:
        """Return a new scope nested in this one, whose variables last as long as it does."""
        return Scope(parent=self)

    def block(self, *position: int) -> Scope:
        """Return the scope of the block at `position` (line, column, ...) in this one.

        It starts with the variables the same block held when an earlier
        phase of the run left it.
        """
        key = (*self._key, position)
        scope = Scope(parent=self)
        scope._key = key
        scope._variables = self.blocks.setdefault(key, {})

        return scope

    def flatten(self) -> dict[str, Value]:
        """Return every visible variable; an inner scope wins over an outer one."""
        chain: list[Scope] = []
        scope: Scope | None = self
        while scope is not None:
            chain.append(scope)
            scope = scope.parent
        merged: dict[str, Value] = {}
        for frame in reversed(chain):
            merged.update(frame._variables)
        return merged

    def __repr__(self) -> str:
        return f"Scope({self.flatten()!r})"
