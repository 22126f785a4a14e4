"""MediaWiki wikitext to training prose plus the page's structured facts.

The prose is what a reader sees as running text, because that is what the model should learn from:
links become their labels, markup disappears, and everything that is not a sentence goes (templates,
<ref>s, comments, tables, file and category links). Section headings are dropped too: each paragraph
must stand alone as training text, and a lone "Background" line would become a meaningless one.

The infobox is kept separately as key/value facts, since it is the most precise statement of them.
Nested templates inside infobox values are dropped whole, {{Translation|Uzumaki|Whirlpool}} included:
a template's output depends on its definition, which we do not have, so guessing which argument a
reader would see would put words in the wiki's mouth. A value that is only a template disappears.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, HTMLEntity, Tag, Template, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

# Tags whose contents are not running text.
DROPPED_TAGS = {
    "ref", "references", "table", "gallery", "math", "chem", "score", "timeline", "syntaxhighlight",
    "source", "includeonly", "imagemap", "inputbox", "categorytree", "templatedata", "mapframe",
    "maplink", "graph", "hr",
}
FILE_NAMESPACES = {"file", "image"}
# Templates that lay out a list (Wikipedia's and most Fandom wikis' names): a reader sees one item
# a line, so they render so, and an infobox value made of one splits into its items.
LIST_TEMPLATES = {"ubl", "unbulleted list", "plainlist", "plain list", "flatlist", "hlist", "bulleted list",
                  "ubil", "collapsible list"}
DISAMBIGUATION_TEMPLATES = {"disambig", "disambiguation", "dab", "disamb"}
REDIRECT = re.compile(r"^\s*#REDIRECT\s*:?\s*\[\[([^\]|]*)(?:\|[^\]]*)?\]\]", re.IGNORECASE)
INFOBOX_NAME = re.compile(r"^(?:infobox[ _/](?P<after>.+)|(?P<before>.+?)[ _/]infobox|infobox)$", re.IGNORECASE)
MAGIC_WORD = re.compile(r"__[A-Z]+__")
QUOTE_MARKUP = re.compile(r"'{2,}")  # bold/italic the parser could not pair up
SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?)])")  # left where a ref or template was dropped
EMPTY_PARENTHESES = re.compile(r"\(\s*[,;]?\s*\)")


@dataclass
class ParsedPage:
    prose: str
    infobox_type: str | None = None
    infobox: dict[str, str | list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    redirect: str | None = None
    is_disambiguation: bool = False


def parse_page(wikitext: str) -> ParsedPage:
    """Split one page's wikitext into prose, infobox facts and the things it points at."""
    redirect = REDIRECT.match(wikitext)
    if redirect:
        wikitext = wikitext[redirect.end():]  # what follows a redirect is never shown as prose
    code = mwparserfromhell.parse(wikitext)
    infobox_type, infobox, infobox_image = _infobox(code)
    return ParsedPage(
        prose=_tidy(_render(code)),
        infobox_type=infobox_type,
        infobox=infobox,
        files=_unique(([infobox_image] if infobox_image else []) + _linked_files(code)),
        categories=_unique(
            normalize_title(_link_target(link)[1])
            for link in code.filter_wikilinks()
            if _link_target(link)[0] == "category"
        ),
        redirect=normalize_title(redirect.group(1).split("#")[0]) if redirect else None,
        is_disambiguation=any(
            _template_name(t).lower() in DISAMBIGUATION_TEMPLATES for t in code.filter_templates()
        ),
    )


def normalize_title(title: str) -> str:
    """MediaWiki's own spelling of a title: underscores are spaces, the first letter is upper case."""
    title = " ".join(title.replace("_", " ").split())
    return title[:1].upper() + title[1:]


# --- prose -------------------------------------------------------------------------------------


def _render(code: Wikicode) -> str:
    return "".join(_render_node(node) for node in code.nodes)


def _render_node(node: object) -> str:
    """What a reader sees of one node; templates, comments, headings and arguments show nothing."""
    if isinstance(node, Text):
        return node.value
    if isinstance(node, Wikilink):
        return _render_link(node)
    if isinstance(node, ExternalLink):
        if node.title is not None:
            return _render(node.title)
        return "" if node.brackets else str(node.url)  # [http://x] shows as "[1]"; a bare URL shows itself
    if isinstance(node, HTMLEntity):
        return node.normalize()
    if isinstance(node, Template) and _template_name(node).lower() in LIST_TEMPLATES:
        return "\n".join(_render(param.value) for param in node.params if not param.showkey)
    if isinstance(node, Tag):
        tag = str(node.tag).strip().lower()
        if tag == "br":
            return "\n"
        if tag in DROPPED_TAGS or node.self_closing or node.contents is None:
            return ""
        return _render(node.contents)
    return ""


def _render_link(link: Wikilink) -> str:
    namespace, target = _link_target(link)
    if namespace in FILE_NAMESPACES or namespace == "category":
        return ""
    label = _render(link.text).strip() if link.text is not None else ""
    return label or str(link.title).strip().lstrip(":")


def _link_target(link: Wikilink) -> tuple[str, str]:
    """(lower-case namespace or "", rest); a leading colon makes [[:Category:X]] an ordinary link."""
    title = str(link.title).strip()
    if title.startswith(":"):
        return "", title[1:]
    namespace, sep, rest = title.partition(":")
    if not sep:
        return "", title
    return namespace.strip().lower(), rest.strip()


def _tidy(text: str) -> str:
    """Paragraphs separated by one blank line, each line's whitespace collapsed."""
    text = QUOTE_MARKUP.sub("", MAGIC_WORD.sub("", text))
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [_tidy_line(line) for line in block.splitlines()]
        # A line with no letter or digit left is debris (a dropped template's punctuation, a table
        # the parser did not recognise), not prose.
        lines = [line for line in lines if any(ch.isalnum() for ch in line)]
        if lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _tidy_line(line: str) -> str:
    line = " ".join(line.split())
    line = EMPTY_PARENTHESES.sub("", line)
    return " ".join(SPACE_BEFORE_PUNCTUATION.sub(r"\1", line).split())


# --- infobox -----------------------------------------------------------------------------------


def _infobox(code: Wikicode) -> tuple[str | None, dict[str, str | list[str]], str | None]:
    """(type, cleaned values, image file name) of the page's first infobox template."""
    for template in code.filter_templates():
        match = INFOBOX_NAME.match(_template_name(template))
        if not match:
            continue
        kind = (match.group("after") or match.group("before") or "").replace("_", " ").strip().lower()
        values: dict[str, str | list[str]] = {}
        image = None
        for param in template.params:
            if not param.showkey:
                continue  # positional arguments carry no field name to key a fact by
            key = str(param.name).strip().lower()
            if key == "image":
                image = _image_name(param.value)
            value = _clean_value(param.value)
            if value:
                values[key] = value
        if image:
            values["image"] = image
        return kind or None, values, image
    return None, {}, None


def _clean_value(value: Wikicode) -> str | list[str] | None:
    """One value, or its items: wikis separate them with `~`, `<br />` (rendered as a line break),
    bulleted lines or a list template (`LIST_TEMPLATES`)."""
    items = [" ".join(item.split()).strip(",;") for item in re.split(r"[~\n]", _render(value))]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        return None
    return items[0] if len(items) == 1 else items


def _image_name(value: Wikicode) -> str | None:
    """The file an infobox `image` names, whether written bare (X.png) or as [[File:X.png|..]]."""
    for link in value.filter_wikilinks():
        namespace, target = _link_target(link)
        if namespace in FILE_NAMESPACES:
            return normalize_title(target)
    text = " ".join(_render(value).split("~")[0].split())
    if not text:
        return None
    namespace, sep, rest = text.partition(":")
    return normalize_title(rest if sep and namespace.strip().lower() in FILE_NAMESPACES else text)


def _template_name(template: object) -> str:
    return " ".join(str(template.name).replace("_", " ").split())


# --- references --------------------------------------------------------------------------------


def _linked_files(code: Wikicode) -> list[str]:
    """Files in [[File:..]]/[[Image:..]] links and <gallery> lines, in page order."""
    files = []
    for node in code.ifilter(forcetype=(Wikilink, Tag)):
        if isinstance(node, Wikilink):
            namespace, target = _link_target(node)
            if namespace in FILE_NAMESPACES:
                files.append(normalize_title(target))
        elif str(node.tag).strip().lower() == "gallery" and node.contents is not None:
            for line in str(node.contents).splitlines():
                name = line.split("|")[0].strip()
                namespace, sep, rest = name.partition(":")
                if sep and namespace.strip().lower() in FILE_NAMESPACES:
                    name = rest
                if name:
                    files.append(normalize_title(name))
    return files


def _unique(items) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)
