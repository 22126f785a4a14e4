"""Reddit's Markdown as the plain prose a reader sees: emphasis, links, quotes and lists lose their
markup (a link keeps its text), spoilers their `>!...!<` tags, entities are decoded.

markdown-it-py (CommonMark) does the parsing; only the spoiler tag, a Reddit extension CommonMark
does not know, is removed before it. Paragraphs, list items and quotes become lines, separated
by a blank line; code keeps its text.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

_PARSER = MarkdownIt("commonmark").enable(["strikethrough", "table"])
# Reddit's spoiler, `>!text!<`, and superscript caret (^word, ^(some words)); a lone caret stays.
# Both are removed by a single left-to-right scan (`_unspoiler`, `_unsuperscript`), not the regexes
# `>!(.+?)!<` (DOTALL) and `\^\((.*?)\)|\^(?=\S)` they match like: a lazy regex rescans the rest of
# the text (or line) from every unclosed opener, so 40,000 characters of `>!` took seconds.
BLOCKS_WITH_TEXT = {"inline", "code_block", "fence"}


def to_text(markdown: str) -> str:
    source = _unsuperscript(_unspoiler(markdown))
    blocks = []
    for token in _PARSER.parse(source):
        if token.type == "inline":
            text = _inline(token.children or [])
        elif token.type in BLOCKS_WITH_TEXT:
            text = token.content
        else:
            continue
        text = "\n".join(" ".join(line.split()) for line in text.splitlines())
        if text.strip():
            blocks.append(text.strip())
    return "\n\n".join(blocks)


def _unspoiler(text: str) -> str:
    """`>!x!<` as `x` (x at least one character, the first `!<` after it closing it)."""
    parts, i = [], 0
    while (start := text.find(">!", i)) >= 0:
        end = text.find("!<", start + 3)
        if end < 0:  # no closer after this opener, so none after any later one either
            break
        parts += [text[i:start], text[start + 2:end]]
        i = end + 2
    parts.append(text[i:])
    return "".join(parts)


def _unsuperscript(text: str) -> str:
    """`^(x)` as `x` when `)` closes it on the same line, else `^` dropped before a non-space."""
    parts, i = [], 0
    close = newline = -1  # the last `)` / newline found, reused while still ahead of the scan
    while (caret := text.find("^", i)) >= 0:
        parts.append(text[i:caret])
        i = caret + 1
        if text.startswith("(", i):
            if close < i + 1:
                close = _find(text, ")", i + 1)
            if newline < i + 1:
                newline = _find(text, "\n", i + 1)
            if close < newline:
                parts.append(text[i + 1:close])
                i = close + 1
                continue
        if i == len(text) or text[i].isspace():
            parts.append("^")
    parts.append(text[i:])
    return "".join(parts)


def _find(text: str, sub: str, start: int) -> int:
    """`text.find`, with "not found" as the end of the text."""
    found = text.find(sub, start)
    return len(text) if found < 0 else found


def _inline(children: list[Token]) -> str:
    """Text a reader sees of one paragraph: link and image text kept, URLs and markup dropped."""
    parts = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(_inline(child.children or []))
    return "".join(parts)
