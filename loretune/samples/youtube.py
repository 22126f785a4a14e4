"""The YouTube part of the sample sources server: recorded yt-dlp info dicts and their subtitles.

Offline there is no YouTube to extract from, so the snapshot holds what yt-dlp's extractor step
returns (an info dict, as `--write-info-json` records it) and the files those dicts point at. The
ingest code fetches an info dict and hands it to yt-dlp's own processing, exactly as after a real
extraction; everything it then downloads (subtitles, thumbnails) comes from here.

The recorded dicts say `{base}` wherever a URL would name YouTube's servers; it is replaced by this
server's base URL at serve time, so the snapshot works on any port.

    snapshot/youtube/<id>.info.json            the info dict
    snapshot/youtube/subs/<id>.<lang>.vtt      a manual subtitle track
    snapshot/youtube/subs/<id>.<lang>.asr.vtt  an automatic one (YouTube's `kind=asr`)
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from loretune.samples.server import Reply, _html_reply, _json_reply

VIDEO_ID = re.compile(r"[0-9A-Za-z_-]{11}")
LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]+)*")
THUMBNAIL_SIZES = {  # YouTube's thumbnail names and their sizes
    "default": (120, 90), "mqdefault": (320, 180), "hqdefault": (480, 360),
    "sddefault": (640, 480), "maxresdefault": (1280, 720),
}


def overrides(base: str) -> dict[str, Any]:
    """Point loretune's YouTube source at this site, with every recorded video."""
    return {
        "sources.youtube.info_url": f"{base}/youtube/{{id}}.info.json",
        "sources.youtube.videos": video_ids(),
    }


def video_ids(snapshot_dir: Path | None = None) -> list[str]:
    from loretune.samples.server import SNAPSHOT_DIR

    root = Path(snapshot_dir or SNAPSHOT_DIR) / "youtube"
    return sorted(path.name.removesuffix(".info.json") for path in root.glob("*.info.json"))


class Site:
    """Answers /youtube/... requests from the snapshot folder."""

    def __init__(self, snapshot_dir: Path):
        self.root = Path(snapshot_dir) / "youtube"

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str], base_url: str) -> Reply:
        rest = path.removeprefix("/youtube").strip("/")
        if rest.endswith(".info.json"):
            return self._info(rest.removesuffix(".info.json"), base_url)
        if rest == "api/timedtext":
            return self._timedtext(params)
        if rest.startswith("vi/"):
            return self._thumbnail(rest.removeprefix("vi/"))
        if rest == "watch" and self._has(params.get("v", "")):
            return _html_reply(200, f"{params['v']} - YouTube", "A recorded sample video.")
        return _html_reply(404, "404 Not Found", f"No sample YouTube resource at {path}.")

    def _has(self, video_id: str) -> bool:
        return bool(VIDEO_ID.fullmatch(video_id)) and (self.root / f"{video_id}.info.json").is_file()

    def _info(self, video_id: str, base_url: str) -> Reply:
        if not self._has(video_id):
            return _html_reply(404, "404 Not Found", f"Video unavailable: {video_id}")
        text = (self.root / f"{video_id}.info.json").read_text(encoding="utf-8")
        return _json_reply(json.loads(text.replace("{base}", base_url)))

    def _timedtext(self, params: dict[str, str]) -> Reply:
        """YouTube's timedtext endpoint, for the one format the snapshot records (vtt).

        Like the real endpoint, an unknown track is an empty 200, not an error; a format we did
        not record is a 404 so a client asking for it notices.
        """
        video_id, lang = params.get("v", ""), params.get("lang", "")
        if params.get("fmt") != "vtt" or "tlang" in params:
            return _html_reply(404, "404 Not Found", "Only the original vtt tracks are recorded.")
        if not self._has(video_id) or not LANG.fullmatch(lang):
            return Reply(200, b"", "text/vtt; charset=utf-8", {})
        kind = ".asr" if params.get("kind") == "asr" else ""
        track = self.root / "subs" / f"{video_id}.{lang}{kind}.vtt"
        body = track.read_bytes() if track.is_file() else b""
        return Reply(200, body, "text/vtt; charset=utf-8", {})

    def _thumbnail(self, rest: str) -> Reply:
        video_id, _, name = rest.partition("/")
        size = THUMBNAIL_SIZES.get(name.removesuffix(".png"))
        if not self._has(video_id) or size is None or not name.endswith(".png"):
            return _html_reply(404, "404 Not Found", f"No thumbnail {rest}.")
        return Reply(200, _thumbnail_png(video_id, *size), "image/png", {"Cache-Control": "max-age=86400"})


def _thumbnail_png(video_id: str, width: int, height: int) -> bytes:
    """A flat two-band picture in the video's own colours: our own, tiny, and the same every time."""
    digest = hashlib.sha256(video_id.encode()).digest()
    top, bottom = digest[:3], digest[3:6]
    rows = b"".join(b"\x00" + (top if y < height // 2 else bottom) * width for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
