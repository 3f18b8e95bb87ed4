"""Cutting text into overlapping chunks of about `size` characters, on word boundaries. Pure."""

from __future__ import annotations

import re

CHUNK_CHARS = 800
OVERLAP_CHARS = 160
_SPACE = re.compile(r"[ \t\f\v\r]+")


def normalise(text: str) -> str:
    """Text with runs of spaces collapsed and at most one blank line between paragraphs."""
    lines = [_SPACE.sub(" ", line).strip() for line in text.replace("\x00", "").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    """Chunks of at most about `size` characters; each starts `overlap` characters (whole words) before the end of
    the one before, so a sentence cut at a boundary is whole in one of them. A chunk prefers to end at a paragraph
    or sentence break in its last third."""
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and less than size.")
    text = normalise(text)
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            end = _break_before(text, start, end)
        chunk = text[start:end].strip()
        if chunk:
            chunks.append(chunk)
        if end >= len(text):
            break
        start = _word_start(text, max(end - overlap, start + 1))
    return chunks


def _break_before(text: str, start: int, end: int) -> int:
    """The best place to end a chunk in text[start:end]: a paragraph, a sentence, then a word break."""
    floor = start + (end - start) * 2 // 3
    for pattern in ("\n\n", ". ", "\n", " "):
        at = text.rfind(pattern, floor, end)
        if at > start:
            return at + len(pattern)
    return end


def _word_start(text: str, at: int) -> int:
    """`at` moved forward to the start of a word."""
    while at < len(text) and not text[at - 1].isspace():
        at += 1
    return at
