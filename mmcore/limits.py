"""Limits on hostile or absurd input, in one place (docs/reliability.md lists them all).

Each limit has a default and an environment variable that raises (or lowers) it for one
run, e.g. ``MMCORE_LIMIT_SPEC_BYTES=4194304 mmcore validate big.yaml``. Plugins declare
their own limits the same way (``Limit("shard_member_bytes", 1 << 30, "...")``); an error
that hits a limit names the variable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from mmcore.errors import MMCoreError

ENV_PREFIX = "MMCORE_LIMIT_"


@dataclass(frozen=True)
class Limit:
    """One named limit: ``value()`` is the environment's override or the default."""

    name: str
    default: float
    what: str

    @property
    def env(self) -> str:
        """The environment variable that overrides it."""
        return ENV_PREFIX + self.name.upper()

    def value(self) -> float:
        """The limit in force (an int when the default is one)."""
        text = os.environ.get(self.env, "").strip()
        if not text:
            return self.default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise MMCoreError(f"{self.env}={text!r} must be a positive number ({self.what})")
        return int(value) if isinstance(self.default, int) else value

    def hint(self) -> str:
        """How to raise it, for error messages: ``(raise it with MMCORE_LIMIT_X)``."""
        return f"(raise it with {self.env})"
