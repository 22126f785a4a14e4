"""YouTube ingest through yt-dlp: metadata, chapters, thumbnails and an English transcript per video.

yt-dlp does the YouTube-specific work (extraction, choosing subtitle tracks, normalising thumbnails
and chapters), so this module never parses YouTube itself. Offline, a recorded info dict fetched
from `info_url` stands in for the extractor step only; it then goes through the same
`YoutubeDL.process_ie_result` that `extract_info` ends with, so subtitle choice (manual over
automatic, per language) is yt-dlp's own in both cases. We download the chosen track with our
polite session, not yt-dlp's, so it is rate limited, size capped and counted like every source.

YouTube's automatic captions are "rolling": each line is typed in word by word with inline
`<00:00:01.234><c> word</c>` tags, then stays on screen as the first line of the next cue. Read
naively, every line would appear two or three times; `transcript()` keeps each once, in order.
`transcript_cues()` is that same cleaning with each kept line's cue start left on, so the text can
also be split by chapter (`chapter_transcripts()`) without a second, drifting copy of the rules.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import webvtt
from webvtt.errors import MalformedFileError
from yt_dlp import YoutubeDL
from yt_dlp.extractor.youtube import YoutubeIE
from yt_dlp.utils import YoutubeDLError

from loretune.ingest.documents import Document
from loretune.ingest.http import PoliteSession, SourceError

WATCH_URL = "https://www.youtube.com/watch?v={id}"
# "[Music]", "[Applause]": sound descriptions, not speech; they carry no lore.
SOUND_ANNOTATION = re.compile(r"\[[^\]]*\]")

Log = Callable[[str], None]
# (start in seconds, the lines this cue adds to the transcript): `transcript_cues()`'s unit.
Cue = tuple[float, list[str]]


@dataclass(frozen=True)
class YouTubeSettings:
    """What a YouTube crawl reads (config: `sources.youtube`)."""

    enabled: bool
    videos: tuple[str, ...]
    info_url: str | None  # a recorded info dict per video stands in for yt-dlp's extractor step
    subtitle_langs: tuple[str, ...]
    license: str


def crawl(cfg: YouTubeSettings, session: PoliteSession, log: Log = print) -> tuple[list[Document], dict]:
    """Every configured video as a Document, plus how they were fetched.

    One video that fails (gone, bad info dict, subtitle download failing) is logged and skipped;
    only when every video fails is that the source failing, a `SourceError`.
    """
    fetched_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ydl = YoutubeDL(ydl_params(cfg, log))
    documents: list[Document] = []
    failures: dict[str, str] = {}
    for video in cfg.videos:
        try:
            documents.append(_video_document(video, cfg, ydl, session, fetched_at))
        except (SourceError, YoutubeDLError, MalformedFileError, ValueError) as exc:
            failures[video] = f"{type(exc).__name__}: {exc}"
            log(f"youtube: skipped {video}: {failures[video]}")
    if failures and not documents:
        first_video, first_error = next(iter(failures.items()))
        raise SourceError(_info_address(first_video, cfg), f"all {len(failures)} videos failed; first: {first_error}")

    kinds = [doc.meta["subtitle_kind"] for doc in documents]
    stats = {
        "requests": session.requests_made,
        "videos": len(documents),
        "subtitles": {kind: kinds.count(kind) for kind in ("manual", "automatic", "none")},
        "failed": failures,
    }
    log(f"youtube: {len(documents)}/{len(cfg.videos)} videos, subtitles {stats['subtitles']}, "
        f"{session.requests_made} requests")
    return documents, stats


def ydl_params(cfg: YouTubeSettings, log: Log) -> dict[str, Any]:
    """What makes yt-dlp pick subtitles for us and nothing else.

    With `writesubtitles` and `writeautomaticsub` both on, `process_subtitles` offers manual tracks
    first and an automatic one only for a language with no manual track; the choice lands in
    `info["requested_subtitles"]`. `download=False` alone already keeps media and subtitle files
    off the disk; the format options stop it from failing or probing for ffmpeg over media
    formats we never download.
    """
    return {
        "skip_download": True,
        "writesubtitles": True,
        "writeautomaticsub": True,
        "subtitleslangs": list(cfg.subtitle_langs),  # yt-dlp reads each as a regex, e.g. "en.*"
        "subtitlesformat": "vtt",
        "format": "best",  # explicit, so yt-dlp does not run ffmpeg to choose a default selector
        "ignore_no_formats_error": True,  # a video with no playable format still has a transcript
        "noplaylist": True,
        "quiet": True,
        "noprogress": True,
        "logger": _YdlLogger(log),
    }


def video_id(video: str) -> str:
    """The 11-character id of a video given as an id or any YouTube URL form yt-dlp knows."""
    if not YoutubeIE.suitable(video):
        raise ValueError(f"{video!r} is not a YouTube video id or URL")
    return YoutubeIE._match_id(video)


def transcript(vtt_text: str) -> str:
    """Clean prose from a WebVTT track: no tags, no sound annotations, each rolling line once."""
    return _joined(transcript_cues(vtt_text))


def transcript_cues(vtt_text: str) -> list[Cue]:
    """The cleaned transcript cue by cue, so chapters can be cut from it with `transcript()`'s rules.

    A cue's leading lines that repeat the previous cue's trailing lines are the rolling repeat
    and are dropped; lines within one cue are kept, so a manual track loses nothing. A cue that
    adds nothing new (blank, only "[Music]", only the carried-over line) is left out.
    """
    cues: list[Cue] = []
    previous: list[str] = []
    for caption in webvtt.from_string(vtt_text).captions:
        lines = _clean_lines(caption.text.split("\n"))
        if not lines:
            continue
        new = lines[_overlap(previous, lines):]
        if new:
            cues.append((_seconds(caption.start), new))
        previous = lines
    return cues


def chapter_transcripts(cues: Sequence[Cue], chapters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`[{title, start_time, text}]` in chapter order: the transcript cut at chapter starts.

    A cue goes to the chapter whose [start_time, end_time) holds its start. yt-dlp's chapters are
    contiguous, so that is the last chapter starting at or before the cue; a cue before the first
    chapter goes to the first and one after the last chapter's end (captions outrunning the
    duration) stays in the last, so the chapter texts joined are always the whole transcript.
    With no chapters there is one untitled chapter; chapters with no speech are left out, so a
    text with no cues (a description) has no chapter transcripts at all.
    """
    spans = list(chapters) or [{"title": None, "start_time": 0.0}]
    starts = [float(span.get("start_time") or 0.0) for span in spans]
    per_chapter: list[list[Cue]] = [[] for _ in spans]
    for cue in cues:
        per_chapter[max(bisect_right(starts, cue[0]) - 1, 0)].append(cue)
    return [
        {"title": span.get("title"), "start_time": start, "text": _joined(chapter_cues)}
        for span, start, chapter_cues in zip(spans, starts, per_chapter)
        if chapter_cues
    ]


# --- one video ---------------------------------------------------------------------------------


def _video_document(video: str, cfg: YouTubeSettings, ydl: YoutubeDL, session: PoliteSession,
                    fetched_at: str) -> Document:
    vid = video_id(video)
    info = _processed_info(vid, cfg, ydl, session)
    kind, text, cues = _text(info, session)
    chapters = _chapters(info)
    return Document(
        source="youtube",
        id=vid,
        url=info.get("webpage_url") or WATCH_URL.format(id=vid),
        title=info.get("title") or vid,
        text=text,
        image_urls=_best_thumbnails(info),
        license=cfg.license,
        attribution=f"{info.get('channel') or info.get('uploader') or 'unknown channel'} on YouTube",
        fetched_at=fetched_at,
        meta={
            "channel": info.get("channel"),
            "channel_url": info.get("channel_url"),
            "upload_date": info.get("upload_date"),
            "duration": info.get("duration"),
            "chapters": chapters,
            "subtitle_kind": kind,
            "transcript_chapters": chapter_transcripts(cues, chapters),
        },
    )


def _processed_info(vid: str, cfg: YouTubeSettings, ydl: YoutubeDL, session: PoliteSession) -> dict[str, Any]:
    """yt-dlp's finished info dict: extracted live, or recorded and then processed the same way."""
    if cfg.info_url:
        return ydl.process_ie_result(session.get_json(cfg.info_url.format(id=vid)), download=False)
    return ydl.extract_info(WATCH_URL.format(id=vid), download=False)


def _text(info: dict[str, Any], session: PoliteSession) -> tuple[str, str, list[Cue]]:
    """(subtitle kind, text, cues): the transcript of yt-dlp's chosen track, else the description.

    A description has no cues, as it has no timing to split it by chapter with.
    """
    chosen = info.get("requested_subtitles") or {}
    if not chosen:
        return "none", (info.get("description") or "").strip(), []
    lang, track = next(iter(chosen.items()))  # subtitleslangs order: the first language wanted
    kind = "manual" if lang in (info.get("subtitles") or {}) else "automatic"
    if track.get("ext") != "vtt":
        raise SourceError(track.get("url", info["webpage_url"]), f"no vtt track for {lang!r}, only {track.get('ext')!r}")
    vtt_text = track["data"] if track.get("data") else session.get_bytes(track["url"]).decode("utf-8")
    cues = transcript_cues(vtt_text)
    if not cues:  # YouTube answers an empty 200 for a track that vanished
        return "none", (info.get("description") or "").strip(), []
    return kind, _joined(cues), cues


def _best_thumbnails(info: dict[str, Any]) -> list[str]:
    """The largest thumbnail: yt-dlp sorts `thumbnails` worst to best."""
    thumbnails = info.get("thumbnails") or []
    best = thumbnails[-1]["url"] if thumbnails else info.get("thumbnail")
    return [best] if best else []


def _chapters(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"title": c.get("title"), "start_time": c.get("start_time"), "end_time": c.get("end_time")}
        for c in info.get("chapters") or []
    ]


def _info_address(video: str, cfg: YouTubeSettings) -> str:
    try:
        vid = video_id(video)
    except ValueError:
        return video
    return cfg.info_url.format(id=vid) if cfg.info_url else WATCH_URL.format(id=vid)


# --- transcript helpers ------------------------------------------------------------------------


def _clean_lines(lines: Iterable[str]) -> list[str]:
    """Tag-free lines (webvtt-py strips tags) with entities decoded, annotations and blanks gone."""
    cleaned = (" ".join(SOUND_ANNOTATION.sub(" ", html.unescape(line)).split()) for line in lines)
    return [line for line in cleaned if line]


def _joined(cues: Iterable[Cue]) -> str:
    return " ".join(line for _, lines in cues for line in lines)


def _seconds(timestamp: str) -> float:
    """A caption's "HH:MM:SS.mmm" in seconds; `start_in_seconds` drops the milliseconds."""
    hours, minutes, seconds = timestamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _overlap(previous: list[str], lines: list[str]) -> int:
    """How many leading `lines` repeat the end of `previous` (the rolling-caption carry-over)."""
    for size in range(min(len(previous), len(lines)), 0, -1):
        if previous[-size:] == lines[:size]:
            return size
    return 0


class _YdlLogger:
    """yt-dlp's messages into our log: warnings and errors only; its progress chatter is debug."""

    def __init__(self, log: Log):
        self.log = log

    def debug(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        self.log(f"youtube: yt-dlp: {message}")

    def error(self, message: str) -> None:
        self.log(f"youtube: yt-dlp: {message}")
