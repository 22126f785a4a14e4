"""YouTube ingest against the sample server: yt-dlp's own subtitle choice, clean transcripts."""

from __future__ import annotations

import re

import pytest
from yt_dlp import YoutubeDL

from loretune.config import YouTubeSource
from loretune.ingest import sources, youtube
from loretune.ingest.http import PoliteSession, SourceError
from loretune.samples.server import SampleSourcesServer
from loretune.samples.youtube import overrides

MANUAL, AUTOMATIC, NO_SUBS = "kR9mTlFx3aQ", "Uc7hMnq2LsE", "Pz4wQe8RtYk"
# What the rolling automatic track of AUTOMATIC says, each line once, "[Music]" left out.
AUTOMATIC_TRANSCRIPT = (
    "so the uchiha clan was one of the two founding clans of the hidden leaf village alongside the senju "
    "after the nine tails attacked konoha a lot of villagers blamed the uchiha "
    "and the clan was moved to the edge of the village that distrust grew into a plan for a coup "
    "and itachi was ordered to stop it he wiped out his own clan in a single night "
    "and left only his little brother sasuke alive that is why sasuke spent years chasing revenge"
)


@pytest.fixture(scope="module")
def server():
    with SampleSourcesServer(port=0) as server:
        yield server


def session() -> PoliteSession:
    return PoliteSession(user_agent="loretune-tests/0", connect_timeout_s=2.0, read_timeout_s=5.0,
                         max_retries=0, backoff_s=0.01, max_response_bytes=5_000_000,
                         configured_hosts=["127.0.0.1"])  # the sample server is configured


def source(server: SampleSourcesServer, videos: list[str] | None = None) -> youtube.YouTubeSettings:
    """The settings the ingest task gives YouTube for this config section."""
    settings = overrides(server.base_url)
    section = YouTubeSource(info_url=settings["sources.youtube.info_url"],
                            videos=videos if videos is not None else settings["sources.youtube.videos"])
    return sources.settings({"youtube": section.model_dump()})["youtube"]


def crawl(server: SampleSourcesServer, videos: list[str] | None = None):
    docs, stats = youtube.crawl(source(server, videos), session(), log=lambda _: None)
    return {doc.id: doc for doc in docs}, stats


def test_sample_overrides_list_every_recorded_video(server):
    assert sorted(overrides(server.base_url)["sources.youtube.videos"]) == sorted([MANUAL, AUTOMATIC, NO_SUBS])


def test_manual_subtitles_are_preferred_over_automatic(server):
    docs, stats = crawl(server, [MANUAL])
    doc = docs[MANUAL]
    assert doc.meta["subtitle_kind"] == "manual"
    # The manual track is punctuated and capitalised; the automatic one of the same video is not.
    assert doc.text.startswith("Kurama is the strongest of the nine tailed beasts: a fox made of pure chakra,")
    assert "nine tail beasts" not in doc.text
    assert "<i>" not in doc.text and "&amp;" not in doc.text and "the Nine-Tails & never" in doc.text
    assert stats["subtitles"] == {"manual": 1, "automatic": 0, "none": 0}
    fetched = [r["params"] for r in server.requests if r["path"] == "/youtube/api/timedtext"
               and r["params"].get("v") == MANUAL]
    assert fetched and all(p.get("kind") != "asr" and p["fmt"] == "vtt" for p in fetched)


def test_automatic_captions_are_cleaned(server):
    docs, _ = crawl(server, [AUTOMATIC])
    doc = docs[AUTOMATIC]
    assert doc.meta["subtitle_kind"] == "automatic"
    assert doc.text == AUTOMATIC_TRANSCRIPT  # each rolling line once, words in spoken order
    assert not re.search(r"<|>|\d\d:\d\d|\[Music\]", doc.text)


def test_transcript_drops_rolling_repeats_but_keeps_a_cues_own_lines():
    vtt = (
        "WEBVTT\nKind: captions\nLanguage: en\n\n"
        "00:00:00.000 --> 00:00:01.000 align:start position:0%\n \n"
        "one<00:00:00.500><c> two</c>\n\n"
        "00:00:01.000 --> 00:00:01.010 align:start position:0%\none two\n \n\n"
        "00:00:01.010 --> 00:00:02.000 align:start position:0%\none two\n"
        "three<00:00:01.500><c> four</c>\n\n"
        "00:00:02.000 --> 00:00:03.000\nfive\nfive\n"
    )
    assert youtube.transcript(vtt) == "one two three four five five"


def test_video_without_subtitles_keeps_its_description(server):
    docs, stats = crawl(server, [NO_SUBS])
    doc = docs[NO_SUBS]
    assert doc.meta["subtitle_kind"] == "none"
    assert doc.text.startswith("A ranking of the Hokage of the Hidden Leaf")
    assert "Naruto Uzumaki became the Seventh." in doc.text
    assert stats["subtitles"]["none"] == 1
    assert not any(r["params"].get("v") == NO_SUBS for r in server.requests if r["path"] == "/youtube/api/timedtext")


def test_metadata_chapters_and_thumbnails(server):
    docs, _ = crawl(server, [MANUAL])
    doc = docs[MANUAL]
    assert doc.source == "youtube" and doc.title == "The Nine-Tailed Fox, Explained: Kurama's Whole Story"
    assert doc.url == f"{server.base_url}/youtube/watch?v={MANUAL}"
    assert doc.meta["channel"] == "Scroll of Lore" and doc.attribution == "Scroll of Lore on YouTube"
    assert doc.meta["duration"] == 372 and doc.meta["upload_date"] == "20250314"
    assert [c["title"] for c in doc.meta["chapters"]] == ["Who Kurama is", "Sealed inside Naruto", "From prisoner to partner"]
    assert doc.meta["chapters"][-1]["end_time"] == 372
    assert doc.image_urls == [f"{server.base_url}/youtube/vi/{MANUAL}/maxresdefault.png"]  # the largest one
    assert session().get_bytes(doc.image_urls[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_video_urls_are_accepted_as_well_as_ids(server):
    urls = [f"https://www.youtube.com/watch?v={MANUAL}&t=42s", f"https://youtu.be/{AUTOMATIC}",
            f"https://www.youtube.com/shorts/{NO_SUBS}"]
    docs, stats = crawl(server, urls)
    assert sorted(docs) == sorted([MANUAL, AUTOMATIC, NO_SUBS])
    assert stats["videos"] == 3


def test_a_missing_video_is_skipped_while_the_others_succeed(server):
    logged: list[str] = []
    docs, stats = youtube.crawl(source(server, ["zzzzzzzzzzz", MANUAL, "not a video url"]), session(), log=logged.append)
    assert list(docs_ids := [d.id for d in docs]) == [MANUAL], docs_ids
    assert set(stats["failed"]) == {"zzzzzzzzzzz", "not a video url"}
    assert "404" in stats["failed"]["zzzzzzzzzzz"] and "zzzzzzzzzzz.info.json" in stats["failed"]["zzzzzzzzzzz"]
    assert any("skipped zzzzzzzzzzz" in line for line in logged)


def test_bad_json_is_skipped_and_all_failing_raises(server):
    server.inject("/youtube/kR9mTlFx3aQ.info.json", "badjson")
    docs, stats = crawl(server, [MANUAL, AUTOMATIC])
    assert [d for d in docs] == [AUTOMATIC] and "not valid JSON" in stats["failed"][MANUAL]
    with pytest.raises(SourceError, match=r"zzzzzzzzzzz\.info\.json.*all 2 videos failed"):
        crawl(server, ["zzzzzzzzzzz", "zzzzzzzzzz2"])


def test_yt_dlps_own_processing_chooses_the_subtitles(server, monkeypatch):
    seen: list[dict] = []
    original = YoutubeDL.process_ie_result

    def spy(self, ie_result, download=True, extra_info=None):
        assert download is False
        result = original(self, ie_result, download=download, extra_info=extra_info)
        seen.append(result)
        return result

    monkeypatch.setattr(YoutubeDL, "process_ie_result", spy)
    crawl(server, [MANUAL, AUTOMATIC, NO_SUBS])
    assert [info["id"] for info in seen] == [MANUAL, AUTOMATIC, NO_SUBS]
    chosen = {info["id"]: info["requested_subtitles"] for info in seen}
    assert "kind=asr" not in chosen[MANUAL]["en"]["url"] and chosen[MANUAL]["en"]["ext"] == "vtt"
    assert "kind=asr" in chosen[AUTOMATIC]["en"]["url"]
    assert chosen[NO_SUBS] is None


def test_requests_for_the_sample_videos(server):
    polite = session()
    server.clear_log()
    docs, stats = youtube.crawl(source(server), polite, log=lambda _: None)
    youtube_paths = [r["path"] for r in server.requests if r["path"].startswith("/youtube/")]
    # One info dict per video, one subtitle track per video that has one, and nothing else:
    # thumbnails and media are left to later stages.
    assert len(docs) == 3 and len(youtube_paths) == 3 + 2, youtube_paths
    assert stats["requests"] == polite.requests_made == len(server.requests)  # robots.txt, if fetched, counts


# --- the transcript split by chapter -----------------------------------------------------------


def recorded_info_changed(monkeypatch, **changes) -> None:
    """Every recorded info dict with `changes` applied before yt-dlp processes it."""
    original = YoutubeDL.process_ie_result

    def changed(self, ie_result, download=True, extra_info=None):
        return original(self, {**ie_result, **changes}, download=download, extra_info=extra_info)

    monkeypatch.setattr(YoutubeDL, "process_ie_result", changed)


def words(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


def test_transcript_chapters_follow_the_videos_chapters(server):
    docs, _ = crawl(server, [MANUAL])
    doc = docs[MANUAL]
    chapters = doc.meta["transcript_chapters"]
    assert [(c["title"], c["start_time"]) for c in chapters] == [
        ("Who Kurama is", 0.0), ("Sealed inside Naruto", 95.0), ("From prisoner to partner", 240.0)]
    who, sealed, partner = (c["text"] for c in chapters)
    assert who.startswith("Kurama is the strongest of the nine tailed beasts: a fox made of pure chakra,")
    assert who.endswith("call it the Nine-Tails & never use its name.")  # cleaned the same way as the text
    assert sealed.startswith("Its attack on the village killed the Fourth Hokage,")  # the cue at exactly 95s
    assert "sealed half of its chakra inside his newborn son, Naruto." in sealed
    assert sealed.endswith("whenever Naruto is angry or close to death.")
    assert partner == ("During the Fourth Shinobi World War, Naruto stops fighting the fox "
                       "and learns its real name, and the two become partners.")
    assert "Fourth Hokage" not in who + partner and "Shinobi World War" not in who + sealed
    assert words([c["text"] for c in chapters]) == doc.text.split()


def test_rolling_captions_are_split_without_repeats(server):
    docs, _ = crawl(server, [AUTOMATIC])
    chapters = docs[AUTOMATIC].meta["transcript_chapters"]
    assert [c["title"] for c in chapters] == ["A founding clan", "The massacre"]
    # The cue typing "after the nine tails attacked konoha" starts at 10.56s, before "The massacre" (10.6s).
    assert chapters[0]["text"].endswith("alongside the senju after the nine tails attacked konoha")
    assert chapters[1]["text"].startswith("a lot of villagers blamed the uchiha")
    assert " ".join(c["text"] for c in chapters) == AUTOMATIC_TRANSCRIPT


def test_a_video_without_chapters_has_one_untitled_transcript_chapter(server, monkeypatch):
    recorded_info_changed(monkeypatch, chapters=None)
    docs, _ = crawl(server, [AUTOMATIC])
    doc = docs[AUTOMATIC]
    assert doc.meta["chapters"] == []
    assert doc.meta["transcript_chapters"] == [{"title": None, "start_time": 0.0, "text": AUTOMATIC_TRANSCRIPT}]


def test_a_description_has_no_transcript_chapters(server, monkeypatch):
    docs, _ = crawl(server, [NO_SUBS])
    assert docs[NO_SUBS].meta["subtitle_kind"] == "none" and docs[NO_SUBS].meta["transcript_chapters"] == []
    # Not even when the video has chapters: a description has no timing to cut it by.
    recorded_info_changed(monkeypatch, chapters=[{"title": "Intro", "start_time": 0.0, "end_time": 10.0},
                                                 {"title": "Ranking", "start_time": 10.0, "end_time": 100.0}])
    docs, _ = crawl(server, [NO_SUBS])
    doc = docs[NO_SUBS]
    assert [c["title"] for c in doc.meta["chapters"]] == ["Intro", "Ranking"]
    assert doc.text.startswith("A ranking of the Hokage") and doc.meta["transcript_chapters"] == []


def test_chapter_transcripts_place_every_cue_once():
    vtt = (
        "WEBVTT\n\n"
        "00:00:01.000 --> 00:00:02.000\nbefore the first chapter\n\n"
        "00:00:05.000 --> 00:00:06.000\n[Music]\n\n"
        "00:00:09.999 --> 00:00:10.500\nend of one\n\n"
        "00:00:10.500 --> 00:00:12.000\nend of one\nstart of two\n\n"
        "00:00:30.250 --> 00:00:31.000\nafter the last end\n"
    )
    cues = youtube.transcript_cues(vtt)
    # Milliseconds kept; a cue adding nothing new (only "[Music]", only the carried-over line) is gone.
    assert cues == [(1.0, ["before the first chapter"]), (9.999, ["end of one"]), (10.5, ["start of two"]),
                    (30.25, ["after the last end"])]
    assert " ".join(line for _, lines in cues for line in lines) == youtube.transcript(vtt)
    chapters = [{"title": "one", "start_time": 2.0, "end_time": 10.5},
                {"title": "silent", "start_time": 10.5, "end_time": 10.5},
                {"title": "two", "start_time": 10.5, "end_time": 20.0},
                {"title": "three", "start_time": 20.0, "end_time": 30.0}]
    assert youtube.chapter_transcripts(cues, chapters) == [
        {"title": "one", "start_time": 2.0, "text": "before the first chapter end of one"},
        {"title": "two", "start_time": 10.5, "text": "start of two"},  # [10.5, 10.5) holds nothing
        {"title": "three", "start_time": 20.0, "text": "after the last end"},  # past 30s: stays in the last
    ]
    assert youtube.chapter_transcripts(cues, []) == [
        {"title": None, "start_time": 0.0, "text": youtube.transcript(vtt)}]
    assert youtube.chapter_transcripts([], chapters) == []
