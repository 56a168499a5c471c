"""Zero-shot prompt templates, one ``{}`` each for the class name, selectable by name.

``openai``: the 80 ImageNet prompts of Radford et al. (2021); ``simple``: the 7-prompt
subset of OpenAI's prompt-engineering notebook. Sets live in ``templates/<name>.txt``,
one template per line; a path to such a file works too.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent / "templates"


def template_sets() -> list[str]:
    """The names of the shipped template sets."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def _parse(text: str, where: str) -> list[str]:
    """Non-empty lines that are not ``#`` comments; each must hold exactly one ``{}``."""
    templates = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1 or line.count("{") != 1 or line.count("}") != 1:
            raise ValueError(f"{where}:{number}: a template needs exactly one '{{}}' for the "
                             f"class name and no other braces: {line!r}")
        templates.append(line)
    if not templates:
        raise ValueError(f"{where} holds no templates")
    return templates


def load_templates(name_or_path: str) -> list[str]:
    """A shipped set by name (``openai``, ``simple``) or a text file of templates."""
    shipped = TEMPLATE_DIR / f"{name_or_path}.txt"
    if name_or_path in template_sets():
        return _parse(shipped.read_text(encoding="utf-8"), shipped.name)
    path = Path(name_or_path)
    if path.is_file():
        return _parse(path.read_text(encoding="utf-8"), str(path))
    raise ValueError(f"unknown template set {name_or_path!r}; sets: "
                     f"{', '.join(template_sets())}, or a text file with one template per line")
