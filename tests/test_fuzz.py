"""Fuzzed parsers (issue 25, item 4): generated and mutated input for every parser of outside text.

Each parser is fed the sample snapshot's real-shaped input, mutated (characters deleted, duplicated,
inserted, spliced in from another seed, the text cut short), plus what breaks parsers: templates,
links, tags and JSON nested thousands deep, huge attributes and integers, zero-width characters,
line separators, invalid UTF-8 for the file readers. The property is the same for all: the parser
returns a value of its documented shape, or raises its documented error, within `BOUND_S`; any
other exception, or a hang, fails. A failure found here was a bug; its input stays as an @example.

Runs are reproducible (derandomized) and write nothing into the checkout (no example database).
At the end the number of inputs each parser took is printed (see `_report_counts`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from webvtt.errors import MalformedFileError

from loretune.dataset import evalsets, mix, opensets
from loretune.dataset.evalsets import EvalSetError
from loretune.ingest import markdown, sportskeeda, wikitext, youtube

# Even without an example database hypothesis caches (constants, Unicode tables) under ./.hypothesis:
# in the temp folder instead, so nothing is written into the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "loretune-hypothesis")
settings.register_profile(
    "loretune-fuzz",
    database=None,  # no example database: failures are kept as @example, nothing is saved
    derandomize=True,  # the same inputs every run
    deadline=None,  # timed by `timed` against BOUND_S instead: hypothesis's deadline re-runs and flakes under load
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=False,
)
FUZZ = settings.get_profile("loretune-fuzz")

# Generous for a loaded 2-core CI machine; every pathological input found ran from 6 s to minutes.
BOUND_S = 5.0
SAMPLES = Path(wikitext.__file__).resolve().parents[1] / "loretune" / "samples"
SNAPSHOT = SAMPLES / "snapshot"
CALLS: Counter[str] = Counter()  # inputs per parser
OUTCOMES: dict[str, Counter[str]] = {}  # per parser: "returned", or the exception type's name
SLOWEST: dict[str, float] = {}  # per parser: its slowest input's seconds

ZERO_WIDTH = ["\u200b", "\ufeff", "\u200c", "\u200d", "\u2060", "\u00ad"]
ODD = ZERO_WIDTH + ["\x00", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\t", "\ud7ff",
                    "\U0010ffff", "e\u0301", "\u202e"]
JUNK = st.text(st.characters(codec="utf-8"), max_size=12)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    """Print how many generated inputs each parser took (pytest shows it after the module)."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is not None and capture is not None and CALLS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("fuzzed inputs per parser:")
            for name, count in sorted(CALLS.items()):
                outcomes = ", ".join(f"{kind} {n}" for kind, n in OUTCOMES[name].most_common())
                reporter.write_line(f"  {name}: {count} ({outcomes}; slowest {SLOWEST[name]:.2f} s)")


def timed(name: str, allowed: tuple[type[Exception], ...], call, *args):
    """`call(*args)`, counted under `name` and failed if it took BOUND_S or more; its result, or the
    exception it raised if that is one of the `allowed` (documented) ones. Any other propagates."""
    CALLS[name] += 1
    start = time.perf_counter()
    try:
        result = call(*args)
    except Exception as exc:  # noqa: BLE001 - the property decides which exception types are allowed
        result = exc
    elapsed = time.perf_counter() - start
    SLOWEST[name] = max(SLOWEST.get(name, 0.0), elapsed)
    outcome = type(result).__name__ if isinstance(result, Exception) else "returned"
    OUTCOMES.setdefault(name, Counter())[outcome] += 1
    size = len(args[0]) if isinstance(args[0], (str, bytes)) else Path(args[0]).stat().st_size
    assert elapsed < BOUND_S, f"{name} took {elapsed:.1f} s on a {size}-long input"
    if isinstance(result, Exception) and not isinstance(result, allowed):
        raise result
    return result


# --- input strategies --------------------------------------------------------------------------


@st.composite
def mutated(draw, seeds: list, tokens: list):
    """A seed with up to eight edits: deletions, duplications (up to 50 copies of a span), inserted
    tokens or junk, spans spliced in from another seed, a cut; str or bytes alike."""
    text = draw(st.sampled_from(seeds))
    as_bytes = isinstance(text, bytes)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "insert", "splice", "cut"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 300)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] * draw(st.integers(1, 50)) + text[j:]
        elif op == "insert":
            piece = draw(st.one_of(st.sampled_from(tokens), JUNK))
            if as_bytes:
                piece = piece.encode("utf-8") if isinstance(piece, str) else piece
            text = text[:i] + piece + text[i:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            k = draw(st.integers(0, len(other)))
            text = text[:i] + other[k:k + draw(st.integers(0, 600))] + text[j:]
        else:
            text = text[:i]
    return text


INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xc0\xaf"]


@st.composite
def bytes_mutated(draw, seeds: list[bytes]):
    """Byte-level mutations of encoded seeds, with invalid UTF-8 sequences and a BOM among the inserts."""
    data = draw(mutated(seeds, INVALID_UTF8 + [b"\xef\xbb\xbf", b"\x00"]))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(max_size=16)) + data[i:]
    return data


def nested(open_: str, close: str, inner: str = "x"):
    return st.integers(1, 3000).map(lambda depth: open_ * depth + inner + close * depth)


def read_seeds(folder: Path, pattern: str) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob(pattern))]


# --- wikitext and infoboxes --------------------------------------------------------------------

WIKI_SEEDS = read_seeds(SNAPSHOT / "fandom" / "pages", "*.wiki")
WIKI_TOKENS = ["{{", "}}", "[[", "]]", "|", "=", "{{Infobox character|", "[[File:", "[[Category:", "<ref>", "</ref>",
               "<!--", "-->", "'''", "''", "{|", "|}", "<br />", "&nbsp;", "&#x0;", "&#1114112;", "#REDIRECT [[",
               "<gallery>\nFile:", "</gallery>", "__NOTOC__", "~", "\n*", "{{{", "}}}", "<nowiki>", "[http://", "]",
               "<span style=\"" + "x" * 5000 + "\">"] + ODD

wiki_inputs = st.one_of(
    mutated(WIKI_SEEDS, WIKI_TOKENS),
    nested("{{a|", "}}"),
    nested("{{Infobox character|name=", "}}"),
    nested("[[a|", "]]"),
    nested("<span>", "</span>"),
    nested("{{a|b={{c|", "}}}}", "[[File:X.png]]"),
    st.builds(lambda n, d: "{{Infobox character|image=" + "{{a|" * d + "x" * n + "}}" * d + "|name=y}}",
              st.integers(0, 200_000), st.integers(0, 500)),
    st.lists(st.sampled_from(WIKI_TOKENS + ["a", " ", "\n"]), max_size=200).map("".join),
)


@settings(FUZZ, max_examples=200)
@given(wiki_inputs)
@example("{{a|" * 3000 + "x" + "}}" * 3000)
@example("{{Infobox character|name=\u200b|image=\ufeff[[File:\u200b]]| =x}}\u2028\u2028text")
def test_wikitext_returns_a_parsed_page(text):
    page = timed("wikitext.parse_page", (), wikitext.parse_page, text)
    assert isinstance(page, wikitext.ParsedPage), repr(page)  # no documented error: it always parses
    prose = page.prose
    assert isinstance(prose, str) and prose == prose.strip("\n") and "\n\n\n" not in prose
    for line in prose.split("\n"):  # paragraphs of lines, each line's whitespace collapsed, none debris
        assert line == "" or (line == " ".join(line.split()) and any(ch.isalnum() for ch in line)), repr(line)
    kind = page.infobox_type
    assert kind is None or (isinstance(kind, str) and kind == kind.lower())
    for key, value in page.infobox.items():
        assert isinstance(key, str) and key == key.lower()
        values = value if isinstance(value, list) else [value]
        assert (isinstance(value, str) or len(value) >= 2) and all(isinstance(v, str) and v.strip() for v in values)
    for names in (page.files, page.categories):
        assert all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)
    assert page.redirect is None or isinstance(page.redirect, str)
    assert isinstance(page.is_disambiguation, bool)


# --- YouTube's WebVTT ----------------------------------------------------------------------------

VTT_SEEDS = read_seeds(SNAPSHOT / "youtube" / "subs", "*.vtt")
VTT_TOKENS = ["WEBVTT\n\n", "\n\n", " --> ", "00:00:01.000", "99:59:59.999", "00:01.000", "-00:00:01.000",
              "<00:00:00.500><c>", "</c>", "<b>", "&amp;", "&#0;", "[Music]", "NOTE ", "STYLE\n", "REGION\n",
              "align:start position:0%", "\n \n", "-->", "::", "." + "9" * 400] + ODD


@st.composite
def generated_vtt(draw):
    """A syntactically plausible track: cues with drawn (maybe odd) times and text, sometimes rolling."""
    cues = []
    for _ in range(draw(st.integers(0, 30))):
        start, length = draw(st.floats(0, 400_000, allow_nan=False)), draw(st.floats(0, 10, allow_nan=False))

        def stamp(t):
            return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}"

        lines = draw(st.lists(st.one_of(JUNK, st.sampled_from(VTT_TOKENS)), min_size=0, max_size=4))
        cues.append(f"{stamp(start)} --> {stamp(start + length)}\n" + "\n".join(lines))
    return "WEBVTT\n\n" + "\n\n".join(cues) + "\n"


vtt_inputs = st.one_of(mutated(VTT_SEEDS, VTT_TOKENS), generated_vtt(),
                       st.lists(st.sampled_from(VTT_TOKENS + ["hi", "\n"]), max_size=100).map("".join))


@settings(FUZZ, max_examples=200)
@given(vtt_inputs)
@example("WEBVTT\n\n00:00:05.000 --> 00:00:01.000\nend before start\n")
@example("\ufeffWEBVTT\n\n00:00.000 --> 00:01.000\n\u200b\n")
def test_vtt_gives_clean_cues_or_a_malformed_file_error(text):
    cues = timed("youtube.transcript_cues", (MalformedFileError,), youtube.transcript_cues, text)
    if isinstance(cues, MalformedFileError):  # what webvtt-py documents, and `crawl` skips a video for
        return
    assert isinstance(cues, list), repr(cues)
    for start, lines in cues:
        assert isinstance(start, float) and math.isfinite(start) and start >= 0
        assert lines and all(isinstance(line, str) and line == " ".join(line.split()) and line for line in lines)
    assert youtube.transcript(text) == " ".join(line for _, lines in cues for line in lines)


# --- Sportskeeda pages and their JSON-LD ---------------------------------------------------------

HTML_SEEDS = read_seeds(SNAPSHOT / "sportskeeda" / "anime", "*.html")
HTML_TOKENS = ["<p>", "</p>", "<li>", "<h2>", "</h2>", "<div class=\"ad-slot\">", "</div>", "<article>", "</article>",
               "<script type=\"application/ld+json\">", "</script>", "<!--", "-->", "<![CDATA[", "&amp;", "&#0;",
               "<p class=\"" + "a-" * 20_000 + "\">", "<meta property=\"og:image\" content=\"http://[\">",
               "Also read:", "<h1>", "<time datetime=", "<"] + ODD

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | JUNK
    | st.sampled_from(["NewsArticle", "Article", "http://[", "", "https://x.org/i.png"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["@type", "@graph", "headline", "author", "name", "image", "url", "contentUrl",
                         "datePublished", "x"]), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def json_ld(draw):
    """A JSON-LD block: drawn JSON (often an article), deeply nested, a huge number, or mutated."""
    kind = draw(st.sampled_from(["drawn", "article", "deep", "deep-graph", "bigint", "mutated"]))
    if kind == "drawn":
        text = json.dumps(draw(JSON))
    elif kind == "article":
        fields = st.sampled_from(["headline", "author", "image", "datePublished"])
        text = json.dumps({**draw(st.dictionaries(fields, JSON)),
                           "@type": draw(st.sampled_from(["NewsArticle", ["Thing", "Article"], [{"a": 1}], {"a": 1}]))})
    elif kind == "deep":
        depth = draw(st.integers(1, 5000))
        text = '{"@type": "NewsArticle", "author": ' + "[" * depth + '"a"' + "]" * depth + "}"
    elif kind == "deep-graph":
        depth = draw(st.integers(1, 2000))
        text = '{"@graph": ' * depth + '{"@type": "Article", "headline": "h"}' + "}" * depth
    elif kind == "bigint":
        text = '{"@type": "NewsArticle", "headline": ' + "9" * draw(st.integers(1, 20_000)) + "}"
    else:
        seed = json.dumps({"@type": "NewsArticle", "headline": "A", "image": {"url": "/i.png"},
                           "author": [{"name": "B"}], "datePublished": "2024"})
        text = draw(mutated([seed], ["{", "}", "[", "]", '"', ",", ":"]))
    return f'<script type="application/ld+json">{text}</script>'


html_inputs = st.one_of(
    mutated(HTML_SEEDS, HTML_TOKENS),
    bytes_mutated([s.encode("utf-8") for s in HTML_SEEDS]),
    st.builds(lambda ld, page: page.replace("<head>", "<head>" + ld, 1), json_ld(), st.sampled_from(HTML_SEEDS)),
    st.builds(lambda tag, depth: "<article>" + f"<{tag}>a" * depth + f"</{tag}>" * depth + "</article>",
              st.sampled_from(["div", "li", "p", "span", "blockquote", "aside"]), st.integers(1, 5000)),
    st.builds(lambda n: '<article><p title="' + "x" * n + '">text</p></article>', st.integers(0, 1_000_000)),
)


@settings(FUZZ, max_examples=150)
@given(html_inputs)
@example('<script type="application/ld+json">{"a": ' + "1" * 5000 + "}</script><p>x</p>")  # ValueError
@example('<script type="application/ld+json">' + "[" * 100_000 + "]" * 100_000 + "</script>")  # RecursionError
@example('<script type="application/ld+json">{"@type": [{"a": 1}]}</script>')  # TypeError: unhashable
@example('<script type="application/ld+json">{"@type": "NewsArticle", "image": {"url": 5}}</script>')  # TypeError
@example('<script type="application/ld+json">{"@type": "NewsArticle", "author": '
         + "[" * 900 + "]" * 900 + "}</script>")  # RecursionError
@example('<meta property="og:image" content="http://["><article><p>x</p></article>')  # ValueError: Invalid IPv6 URL
@example("<article>" + "<div>" * 10_000 + "<p>x</p>" + "</div>" * 10_000 + "</article>")  # minutes: quadratic
@example(b"<article><p>\xff\xfe\xc3(\xed\xa0\x80</p></article>")
def test_sportskeeda_page_gives_an_article(page):
    article = timed("sportskeeda.parse_article", (), sportskeeda.parse_article, page,
                    "https://www.sportskeeda.com/anime/x")
    assert isinstance(article, sportskeeda.Article), repr(article)  # no documented error: any page parses
    for value in (article.title, article.author, article.published, article.text):
        assert isinstance(value, str)
    assert article.image is None or (isinstance(article.image, str) and article.image)
    assert isinstance(article.marked_up, bool)
    paragraphs = article.text.split("\n\n") if article.text else []
    assert all(p and p == " ".join(p.split()) for p in paragraphs)
    for section in article.sections:  # every section's paragraphs are the article's own
        assert set(section) == {"heading", "text"} and isinstance(section["heading"], str) and section["text"]
        assert all(p in paragraphs for p in section["text"].split("\n\n"))


# --- Reddit Markdown -----------------------------------------------------------------------------


def _reddit_texts() -> list[str]:
    found: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("selftext", "body") and isinstance(item, str) and item.strip():
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in sorted((SNAPSHOT / "reddit").rglob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    return found


MD_SEEDS = _reddit_texts()
MD_TOKENS = [">!", "!<", "^", "^(", ")", "**", "*", "_", "~~", "[", "](", "http://x", "`", "```\n", "    ", "> ",
             "- ", "1. ", "#", "|", "|---|", "&amp;", "&#0;", "<", "\\", "\n\n"] + ODD
markdown_inputs = st.one_of(
    mutated(MD_SEEDS, MD_TOKENS),
    st.lists(st.sampled_from(MD_TOKENS + ["a", " "]), max_size=300).map("".join),
    st.builds(lambda token, n: token * n, st.sampled_from([">!", "^(", "[a", "*a ", "> ", "- ", "`", "![a"]),
              st.integers(1, 20_000)),
    nested("> ", "", "x"),
)


@settings(FUZZ, max_examples=200)
@given(markdown_inputs)
@example(">!" * 40_000)  # seconds: the lazy spoiler regex rescanned the rest from every opener
@example("^(" * 40_000)  # the same for the superscript's
@example(">!a\u200b!< ^(b\ufeff) c^d ^ e")
def test_reddit_markdown_gives_plain_prose(text):
    prose = timed("markdown.to_text", (), markdown.to_text, text)
    assert isinstance(prose, str), repr(prose)  # no documented error: any Markdown is prose
    assert prose == prose.strip()
    assert all(line == " ".join(line.split()) for line in prose.split("\n"))


# --- user evaluation sets and mix files ------------------------------------------------------------

TEXT = st.one_of(JUNK, st.sampled_from(["Konoha", "Suna", " ", "", "a\u2028b", "a\x85b", "\u200b", "\ufeff"]))
ITEM_VALUE = st.one_of(TEXT, st.integers(-3, 5), st.booleans(), st.none(), st.lists(TEXT, max_size=4), JSON)
EVAL_ITEM = st.one_of(
    st.fixed_dictionaries({"question": TEXT, "choices": st.lists(TEXT, min_size=2, max_size=4),
                           "answer": st.one_of(st.integers(-1, 4), TEXT)}),
    st.dictionaries(st.sampled_from(["question", "choices", "answer", "reference", "answers", "doc_id", "x"]),
                    ITEM_VALUE, max_size=5),
    JSON,
)
OPEN_ITEM = st.one_of(
    st.fixed_dictionaries({"question": TEXT, "reference": TEXT}, optional={"answers": st.lists(TEXT, max_size=3)}),
    EVAL_ITEM,
)

NAME = st.one_of(st.sampled_from(["Konoha", "Suna", "Hidden Leaf", "Uzumaki\u200b", "e\u0301clair", "a\u2028b"]),
                 JUNK.filter(evalsets.normalise))
VALID_EVAL_ITEM = st.fixed_dictionaries({
    "question": NAME,
    "choices": st.lists(NAME, min_size=2, max_size=4, unique=True),
}).flatmap(lambda item: st.integers(0, len(item["choices"]) - 1).map(lambda answer: {**item, "answer": answer}))
VALID_OPEN_ITEM = st.fixed_dictionaries({"question": NAME, "reference": NAME},
                                        optional={"answers": st.lists(NAME, max_size=3), "doc_id": TEXT})


@st.composite
def set_file(draw, items, valid_items):
    """A set file's bytes: valid or drawn items as a JSON list or JSON Lines (any line ends, maybe a
    BOM), a third of them then mutated at the byte level (invalid UTF-8), or deep or huge JSON."""
    kind = draw(st.sampled_from(["valid", "valid", "list", "lines", "deep", "bigint"]))
    if kind == "deep":
        depth = draw(st.integers(1, 100_000))
        text = "[" * depth + "]" * depth if draw(st.booleans()) else '{"question": ' + "[" * depth + "]" * depth + "}"
    elif kind == "bigint":
        text = '[{"question": "q", "choices": ["a", "b"], "answer": ' + "1" * draw(st.integers(1, 10_000)) + "}]"
    else:
        drawn = draw(st.lists(valid_items, min_size=1, max_size=4) if kind == "valid" else st.lists(items, max_size=6))
        ascii_ = draw(st.booleans())
        if kind == "list" or (kind == "valid" and draw(st.booleans())):
            text = json.dumps(drawn, ensure_ascii=ascii_)
        else:
            line_end = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
            text = line_end.join(json.dumps(i, ensure_ascii=ascii_) for i in drawn)
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 2)) == 0:
        data = draw(bytes_mutated([data]))
    return data


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="loretune-fuzz-") as folder:
        yield Path(folder)


def _written(scratch: Path, data: bytes, name: str) -> Path:
    """`data` in a new file named `name` (a folder per input: `datasets` caches by path and time)."""
    path = scratch / str(sum(CALLS.values())) / name
    path.parent.mkdir()
    path.write_bytes(data)
    return path


def _valid_eval_items(items):
    assert isinstance(items, list) and items
    for item in items:
        assert isinstance(item["question"], str) and item["question"].strip()
        choices = item["choices"]
        assert isinstance(choices, list) and len(choices) >= 2 and len(set(choices)) == len(choices)
        assert all(isinstance(c, str) and c.strip() for c in choices)
        assert type(item["answer"]) is int and 0 <= item["answer"] < len(choices)


@settings(FUZZ, max_examples=200)
@given(set_file(EVAL_ITEM, VALID_EVAL_ITEM))
@example(b"[" * 100_000 + b"]" * 100_000)  # RecursionError
@example(b'[{"question": "q", "choices": ["a", "b"], "answer": ' + b"1" * 5000 + b"}]")  # ValueError: digits
@example(b'{"question": "q", "choices": ["a", "b"], "answer": 0}\n\xff\xfe')
def test_user_eval_set_reads_or_says_why(scratch, data):
    items = timed("evalsets.read_set", (EvalSetError,), evalsets.read_set, _written(scratch, data, "user.jsonl"))
    if isinstance(items, EvalSetError):  # documented: the message names the file
        assert "user.jsonl" in str(items)
        return
    _valid_eval_items(items)


@settings(FUZZ, max_examples=100)
@given(st.lists(VALID_EVAL_ITEM, min_size=1, max_size=5), st.booleans())
@example([{"question": "Who\u2028leads?", "choices": ["a\x85", "b\u2029"], "answer": 1}], False)  # split mid-line
@example([{"question": "q", "choices": ["a", "b"], "answer": 0}], True)  # a BOM
def test_a_valid_eval_set_round_trips(scratch, items, bom):
    """What `write_set` writes `read_set` reads back, with a byte-order mark in front or not."""
    path = scratch / "round.jsonl"
    evalsets.write_set(items, path)
    if bom:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    read = timed("evalsets.read_set (round trip)", (), evalsets.read_set, path)
    assert [(i["question"], i["choices"], i["answer"]) for i in read] == \
        [(i["question"], i["choices"], i["answer"]) for i in items]


@settings(FUZZ, max_examples=200)
@given(set_file(OPEN_ITEM, VALID_OPEN_ITEM))
@example(b'[{"question": "q", "reference": "r", "answers": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}]")
@example(b'{"question": "q\xe2\x80\xa8", "reference": "r"}\r{"question": "q", "reference": "\xc2\x85"}')
def test_user_open_set_reads_or_says_why(scratch, data):
    path = _written(scratch, data, "open.jsonl")
    items = timed("opensets.read_open_set", (EvalSetError,), opensets.read_open_set, path)
    if isinstance(items, EvalSetError):
        assert "open.jsonl" in str(items)
        return
    assert isinstance(items, list) and items, repr(items)
    for item in items:
        assert set(item) == {"set", "question", "reference", "answers", "doc_id", "field"}
        assert item["question"].strip() and item["reference"].strip() and isinstance(item["field"], str)
        assert all(isinstance(a, str) and evalsets.normalise(a) for a in item["answers"])


MIX_SEEDS = [(SAMPLES / "mix" / name).read_bytes() for name in ("sharegpt_sample.jsonl", "alpaca_sample.json")]
TURN = st.one_of(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "GPT", "alien", 3]),
                                        "value": st.one_of(TEXT, st.integers(), st.none())}), JSON)
MIX_ROW = st.one_of(
    st.fixed_dictionaries({"conversations": st.one_of(st.lists(TURN, max_size=4), JSON)}),
    st.fixed_dictionaries({"instruction": TEXT, "output": st.one_of(TEXT, st.none())}, optional={"input": TEXT}),
    JSON,
)
VALID_MIX_ROW = st.one_of(
    st.fixed_dictionaries({"conversations": st.tuples(NAME, NAME).map(
        lambda pair: [{"from": "human", "value": pair[0]}, {"from": "gpt", "value": pair[1]}])}),
    st.fixed_dictionaries({"instruction": NAME, "input": TEXT, "output": NAME}),
)
mix_inputs = st.one_of(bytes_mutated(MIX_SEEDS), set_file(MIX_ROW, VALID_MIX_ROW))


@pytest.fixture(scope="module")
def datasets_cache(scratch):
    """`datasets` caches every file it reads; here that cache is the scratch folder, not ~/.cache.
    Its per-load download-count ping to the Hub is off: offline, its name lookup alone can stall
    for seconds, which is the network's time, not the reader's. One file is read first, so the
    imports (seconds) do not count against the first input's time."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", scratch / "hf-cache")
        patch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        mix.load_conversations(mix.describe(str(SAMPLES / "mix" / "sharegpt_sample.jsonl")), "sharegpt")
        yield


@settings(FUZZ, max_examples=60)
@given(mix_inputs, st.sampled_from(["sharegpt", "alpaca"]), st.sampled_from([".jsonl", ".json"]))
@example(b'{"question": ' + b"[" * 62_000 + b"]" * 62_000 + b"}", "sharegpt", ".json")  # pyarrow: segfault
@example(b'{"conversations": [{"from": "human", "value": "\x80hi"}, {"from": "gpt", "value": "yo"}]}\n',
         "sharegpt", ".jsonl")  # UnicodeDecodeError: pyarrow keeps invalid UTF-8 in strings, to_list() finds it
@example(b"\xff\xfe" + MIX_SEEDS[0], "sharegpt", ".jsonl")
@example(b'{"conversations": "hi"}\n', "sharegpt", ".jsonl")
def test_mix_file_gives_conversations_or_a_mix_error(scratch, datasets_cache, data, fmt, suffix):
    path = _written(scratch, data, "mix" + suffix)
    conversations = timed("mix.load_conversations", (mix.MixError,),
                          lambda p: mix.load_conversations(mix.describe(str(p)), fmt), path)
    if isinstance(conversations, mix.MixError):  # documented: the message names the source
        assert str(path) in str(conversations)
        return
    assert isinstance(conversations, list) and conversations, repr(conversations)
    for messages in conversations:
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages)
        assert {m["role"] for m in messages} <= {"system", "user", "assistant"}
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"]
        assert any(m["role"] == "user" for m in messages)
