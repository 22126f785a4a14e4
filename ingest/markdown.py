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
SPOILER = re.compile(r">!(.+?)!<", re.DOTALL)
# Reddit's superscript caret (^word, ^(some words)); a lone caret stays.
SUPERSCRIPT = re.compile(r"\^\((.*?)\)|\^(?=\S)")
BLOCKS_WITH_TEXT = {"inline", "code_block", "fence"}


def to_text(markdown: str) -> str:
    source = SUPERSCRIPT.sub(lambda m: m.group(1) or "", SPOILER.sub(r"\1", markdown))
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
