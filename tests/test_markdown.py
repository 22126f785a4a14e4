"""Reddit Markdown becomes the prose a reader sees."""

from loretune.ingest.markdown import to_text


def test_emphasis_links_spoilers_and_entities_lose_their_markup_and_keep_their_text():
    text = to_text("**Naruto** is from [the Leaf](https://naruto.fandom.com/wiki/Konohagakure) &amp; trains "
                   "with _Jiraiya_.\nSpoiler: >!Jiraiya dies!< in the ~~manga~~ story. ^(small print)")
    assert text == "Naruto is from the Leaf & trains with Jiraiya. Spoiler: Jiraiya dies in the manga story. small print"


def test_quotes_lists_and_code_become_lines_of_their_own():
    text = to_text("> a quoted\n> line\n\n* one\n* [two](http://x.example)\n\n    kept code\n")
    assert text.split("\n\n") == ["a quoted line", "one", "two", "kept code"]


def test_plain_text_passes_unchanged_and_nothing_stays_nothing():
    assert to_text("Kakashi copies a thousand techniques.") == "Kakashi copies a thousand techniques."
    assert to_text("") == "" and to_text("   \n\n") == ""
