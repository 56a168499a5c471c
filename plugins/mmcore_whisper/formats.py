"""Transcript files: ``txt``, ``srt``, ``vtt`` and ``json``, as openai-whisper writes them.

``txt``: one line per segment. ``srt``/``vtt``: one cue per segment; with word timestamps
a cue spans its first word's start to its last word's end (openai-whisper's subtitle
writer), else the segment's own times. ``json``: the transcript's dict (segments, and
their ``words`` when asked for).
"""

from __future__ import annotations

import json
from typing import Any

FORMATS = ("txt", "srt", "vtt", "json")
#: formats whose cues need times
TIMED = ("srt", "vtt")


def timestamp(seconds: float, *, comma: bool, always_hours: bool) -> str:
    """Seconds -> ``HH:MM:SS,mmm`` (srt) or ``[HH:]MM:SS.mmm`` (vtt)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{',' if comma else '.'}{millis:03d}"


def _cues(result: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(start, end, text) per segment with text; word times when there are words."""
    cues = []
    for seg in result["segments"]:
        text = seg["text"].strip()
        if not text:
            continue
        words = seg.get("words") or []
        start, end = (words[0]["start"], words[-1]["end"]) if words else \
            (seg["start"], seg["end"])
        cues.append((float(start), float(end), text.replace("-->", "->")))
    return cues


def render(result: dict[str, Any], fmt: str) -> str:
    """One transcript (``Transcript.as_dict()``, plus ``audio``) in format ``fmt``."""
    if fmt == "json":
        return json.dumps(result, ensure_ascii=False, indent=2) + "\n"
    if fmt == "txt":
        return "".join(s["text"].strip() + "\n" for s in result["segments"]
                       if s["text"].strip())
    if fmt == "srt":
        return "".join(f"{i}\n{timestamp(a, comma=True, always_hours=True)} --> "
                       f"{timestamp(b, comma=True, always_hours=True)}\n{text}\n\n"
                       for i, (a, b, text) in enumerate(_cues(result), start=1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(
            f"{timestamp(a, comma=False, always_hours=False)} --> "
            f"{timestamp(b, comma=False, always_hours=False)}\n{text}\n\n"
            for a, b, text in _cues(result))
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
