"""Editable installs: a folder of links to just the packages the wheel ships.

Hatch's exact editable mode installs an import hook that type checkers and IDEs cannot
follow; its path mode would put the repository root on ``sys.path`` and with it a bare
top-level ``plugins`` package. This hook builds ``build/editable/`` holding one symbolic
link per shipped package and points the editable install's ``.pth`` file at it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LINKS = Path("build") / "editable"


class EditableLinks(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version != "editable":
            return
        root = Path(self.root)
        links = root / LINKS
        links.mkdir(parents=True, exist_ok=True)
        for package in self.build_config.target_config.get("packages", []):
            source = root / package
            link = links / source.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(source, links), target_is_directory=True)
