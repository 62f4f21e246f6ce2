"""A cache of parsed agents, so that a reload parses only changed files."""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Iterable
from pathlib import Path

from fleetd.lang.ast import Agent
from fleetd.lang.errors import AgentError
from fleetd.lang.parser import _parse, decode_agent
from fleetd.lang.registry import Registry


class AgentCache:
    """Parsed agents (or their errors) by path and content digest.

    A file whose bytes are unchanged since the last `load` is not parsed
    again: the same `Agent` object is returned, or the same `AgentError`
    raised. Entries of paths not loaded by the last `prune` call go away.
    The cache belongs to one registry, because validation depends on it.
    Safe to use from several threads.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry.default()
        self._entries: dict[str, tuple[str, Agent | AgentError]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def load(self, path: str | Path) -> Agent:
        """Return the agent in the file at `path`, parsing it only if it changed.

        Raises:
            AgentError: the file has problems, each at file:line:col.
            OSError: the file cannot be read.
        """
        name = str(path)
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and entry[0] == digest:
            self.hits += 1
            result = entry[1]
        else:
            self.misses += 1
            try:
                text = decode_agent(data, name)
                result = _parse(text, name, self.registry, digest)
            except AgentError as error:
                result = error
            with self._lock:
                self._entries[name] = (digest, result)
        if isinstance(result, AgentError):
            raise result
        return result

    def load_many(self, paths: Iterable[str | Path]) -> dict[str, Agent | Exception]:
        """Load several files; return each one's `Agent`, or its error.

        The error is an `AgentError` for an invalid file, or an `OSError` for a
        file that cannot be read. Python's cyclic garbage collector pauses for
        the whole batch, and is re-enabled only if it was enabled: parsing
        creates no reference cycles, but each full collection scans every
        agent already loaded, which took a third of the time of loading
        1,000 files (scripts/bench/parse.py).
        """
        results: dict[str, Agent | Exception] = {}
        collecting = gc.isenabled()
        gc.disable()
        try:
            for path in paths:
                try:
                    results[str(path)] = self.load(path)
                except (AgentError, OSError) as error:
                    results[str(path)] = error
        finally:
            if collecting:
                gc.enable()
        return results

    def prune(self, keep: set[str] | frozenset[str]) -> None:
        """Drop the entries of paths not in `keep` (e.g. files since deleted)."""
        with self._lock:
            for name in list(self._entries):
                if name not in keep:
                    del self._entries[name]

    def __len__(self) -> int:
        return len(self._entries)
