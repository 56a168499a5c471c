"""Errors mmcore raises on bad input. Each names the problem and where it is."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class MMCoreError(Exception):
    """Base class of every error mmcore raises on purpose."""


class RegistryError(MMCoreError):
    """An unknown name, or two plugins claiming one name."""


class CheckpointError(MMCoreError):
    """A checkpoint that is missing, corrupt, truncated or does not fit the model."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where (dotted key path, YAML line) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "<spec>"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class SpecError(MMCoreError):
    """A spec with one or more problems; all of them are reported together."""

    def __init__(self, issues: Sequence[SpecIssue], source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        head = f"invalid spec {source}" if source else "invalid spec"
        body = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{head} ({len(self.issues)} problem(s)):\n{body}")


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ``did you mean ...?`` phrase for the registered names nearest to ``name``."""
    matches = difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + ", ".join(repr(m) for m in matches) + "?"
