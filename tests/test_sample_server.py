"""The sample server answers in the real MediaWiki API's shapes, and injects faults on demand."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from loretune.samples.server import SNAPSHOT_DIR, SampleSourcesServer, fandom_api_url, sample_overrides

PAGES = SNAPSHOT_DIR / "fandom" / "pages"
IMAGES = SNAPSHOT_DIR / "fandom" / "images"


@pytest.fixture
def server():
    with SampleSourcesServer() as srv:
        yield srv


def api(server: SampleSourcesServer, **params: object) -> requests.Response:
    params = {"action": "query", "format": "json", "formatversion": "2", **params}
    return requests.get(fandom_api_url(server.base_url), params=params, timeout=5)


def snapshot_titles_in(category: str) -> set[str]:
    """Read straight from the files, independently of the server's own parsing."""
    return {
        path.stem.replace("_", " ")
        for path in PAGES.glob("*.wiki")
        if f"[[Category:{category}]]" in path.read_text(encoding="utf-8")
    }


def test_categorymembers_continues_until_every_page_is_listed(server):
    titles, responses, cont = [], 0, {}
    while True:
        data = api(server, list="categorymembers", cmtitle="Category:Characters", cmtype="page", cmlimit=500, **cont).json()
        responses += 1
        members = data["query"]["categorymembers"]
        assert len(members) <= 10
        assert all(set(m) == {"pageid", "ns", "title"} and m["ns"] == 0 for m in members)
        titles += [m["title"] for m in members]
        if "continue" not in data:
            break
        assert re.fullmatch(r"page\|[0-9A-F]+\|\d+", data["continue"]["cmcontinue"])
        assert data["continue"]["continue"] == "-||"
        cont = data["continue"]
    assert len(titles) == len(set(titles))
    assert set(titles) == snapshot_titles_in("Characters")
    assert responses == -(-len(titles) // 10) > 1


def test_revisions_normalise_follow_one_redirect_and_report_missing(server):
    data = api(
        server, prop="revisions", titles="Naruto|naruto_Uzumaki|No such page", rvprop="content|ids|timestamp",
        rvslots="main", redirects=1, maxlag=5,
    ).json()
    query = data["query"]
    assert data["batchcomplete"] is True and "warnings" not in data
    assert {"fromencoded": False, "from": "naruto_Uzumaki", "to": "Naruto Uzumaki"} in query["normalized"]
    assert query["redirects"] == [{"from": "Naruto", "to": "Naruto Uzumaki"}]
    naruto, missing = query["pages"]  # the redirect and the direct title are one page
    assert naruto["title"] == "Naruto Uzumaki" and naruto["ns"] == 0
    revision = naruto["revisions"][0]
    assert revision["revid"] == 1000 + naruto["pageid"] and revision["timestamp"] == "2026-01-01T00:00:00Z"
    assert revision["slots"]["main"]["content"] == (PAGES / "Naruto_Uzumaki.wiki").read_text(encoding="utf-8")
    assert revision["slots"]["main"]["contentmodel"] == "wikitext"
    assert missing == {"ns": 0, "title": "No such page", "missing": True}


def test_page_ids_follow_sorted_titles(server):
    data = api(server, prop="revisions", titles="|".join(sorted(snapshot_titles_in("Jutsu"))), rvprop="ids").json()
    pages = sorted(data["query"]["pages"], key=lambda p: p["title"])
    assert [p["pageid"] for p in pages] == sorted(p["pageid"] for p in pages)
    all_titles = sorted(path.stem.replace("_", " ") for path in PAGES.glob("*.wiki"))
    assert all(p["pageid"] == all_titles.index(p["title"]) + 1 for p in pages)


def test_more_than_50_titles_are_truncated_with_a_warning(server):
    data = api(server, prop="revisions", titles="|".join(f"T{i}" for i in range(60))).json()
    assert len(data["query"]["pages"]) == 50
    assert "The limit is 50" in data["warnings"]["query"]["warnings"]


def test_imageinfo_describes_files_and_their_urls_serve_the_bytes(server):
    data = api(server, prop="imageinfo", titles="File:Naruto_Uzumaki.png|File:Nope.png", iiprop="url|size|mime|sha1").json()
    found, missing = data["query"]["pages"]
    raw = (IMAGES / "Naruto Uzumaki.png").read_bytes()
    info = found["imageinfo"][0]
    assert found["ns"] == 6 and found["imagerepository"] == "local"
    assert info["sha1"] == hashlib.sha1(raw).hexdigest() and info["size"] == len(raw) and info["mime"] == "image/png"
    assert info["width"] > 0 and info["height"] > 0
    assert missing == {"ns": 6, "title": "File:Nope.png", "missing": True, "imagerepository": ""}
    image = requests.get(info["url"], timeout=5)
    assert image.status_code == 200 and image.content == raw
    assert image.headers["Content-Type"] == "image/png" and image.headers["Content-Length"] == str(len(raw))
    assert image.headers["ETag"] == f'"{info["sha1"]}"'
    assert requests.get(info["url"], headers={"If-None-Match": image.headers["ETag"]}, timeout=5).status_code == 304


def test_formatversion_1_keys_pages_by_id_and_uses_star_for_content(server):
    data = api(server, formatversion=1, prop="revisions", titles="Rasengan|Nope", rvprop="content", rvslots="main").json()
    pages = data["query"]["pages"]
    assert data["batchcomplete"] == ""
    assert pages["-1"] == {"ns": 0, "title": "Nope", "missing": ""}
    (pageid,) = [key for key in pages if key != "-1"]
    assert pages[pageid]["revisions"][0]["slots"]["main"]["*"].startswith("{{Infobox jutsu")


@pytest.mark.parametrize(
    "params, code",
    [
        ({"action": "frobnicate"}, "badvalue"),
        ({"list": "allpages"}, "badvalue"),
        ({"list": "categorymembers"}, "invalidparammix"),
        ({"list": "categorymembers", "cmtitle": "Category:Bad|Name"}, "invalidcategory"),
        ({"list": "categorymembers", "cmtitle": "Category:Characters", "cmcontinue": "garbage"}, "badcontinue"),
        ({"maxlag": "soon"}, "badinteger"),
    ],
)
def test_errors_come_back_as_http_200_with_an_error_object(server, params, code):
    response = api(server, **params)
    assert response.status_code == 200
    assert response.json()["error"]["code"] == code
    assert response.headers["MediaWiki-API-Error"] == code


def test_maxlag_is_accepted_and_unknown_parameters_warn(server):
    data = api(server, meta="siteinfo", maxlag=5, colour="blue").json()
    assert data["query"]["general"]["articlepath"] == "/fandom/wiki/$1"
    assert data["warnings"]["main"]["warnings"] == "Unrecognized parameter: colour."


@pytest.mark.parametrize("fault", ["429", "503"])
def test_injected_faults_hit_the_next_matching_requests_only(server, fault):
    server.inject("/fandom/api.php", fault, times=2)
    first, second, third = (api(server, meta="siteinfo") for _ in range(3))
    assert first.status_code == second.status_code == int(fault)
    assert (first.headers.get("Retry-After") == "1") == (fault == "429")
    assert third.status_code == 200 and "query" in third.json()
    log = server.requests
    assert [entry["status"] for entry in log] == [int(fault), int(fault), 200]
    assert [entry["fault"] for entry in log] == [fault, fault, None]
    assert log[0]["params"]["meta"] == "siteinfo"
    server.clear_log()
    assert server.requests == []


def test_fault_path_prefix_limits_where_it_applies(server):
    server.inject("/fandom/images/", "503")
    assert api(server, meta="siteinfo").status_code == 200
    assert requests.get(f"{server.base_url}/fandom/images/Rasengan.png", timeout=5).status_code == 503


def test_binds_to_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        SampleSourcesServer(host="0.0.0.0")


def test_sample_overrides_point_fandom_at_the_server_without_a_politeness_interval():
    overrides = sample_overrides("http://127.0.0.1:9")
    assert overrides["sources.fandom.api_url"] == "http://127.0.0.1:9/fandom/api.php"
    assert overrides["http.min_interval_s"] == 0.0


def test_command_line_prints_the_url_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "loretune.samples.server", "--port", "0"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent,
    )
    try:
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert requests.get(f"{url}/fandom/api.php", params={"action": "query", "meta": "siteinfo", "format": "json"}, timeout=5).ok
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()


def test_recentchanges_lists_edits_in_either_direction_within_the_bounds(server):
    server.wiki.edit("Gaara", "Edited.\n[[Category:Characters]]\n", timestamp="2026-03-01T00:00:00Z")
    server.wiki.edit("Chidori", "Edited.\n[[Category:Jutsu]]\n", timestamp="2026-03-02T00:00:00Z")
    server.wiki.delete("Rasengan", timestamp="2026-03-03T00:00:00Z")
    base = {"list": "recentchanges", "rcprop": "title|ids|timestamp|loginfo", "formatversion": 2}
    newer = api(server, **base, rcdir="newer", rcstart="20260301000001").json()["query"]["recentchanges"]
    assert [(c["title"], c["type"]) for c in newer] == [("Chidori", "edit"), ("Rasengan", "log")]
    assert newer[1]["logtype"] == "delete"
    older = api(server, **base).json()["query"]["recentchanges"]  # rcdir=older: newest first
    assert [c["title"] for c in older] == ["Rasengan", "Chidori", "Gaara"]
    bad = api(server, **base, rccontinue="not-a-continue").json()
    assert bad["error"]["code"] == "badcontinue"


def test_reddit_json_points_its_image_urls_at_the_server_not_the_internet(server):
    token = requests.post(f"{server.base_url}/reddit/www/api/v1/access_token", auth=("id", "secret"),
                          data={"grant_type": "client_credentials"}, timeout=5).json()["access_token"]
    headers = {"Authorization": f"bearer {token}"}
    bodies = [requests.get(f"{server.base_url}/reddit/oauth/r/Naruto/new", params={"limit": 100},
                           headers=headers, timeout=5).text]
    bodies += [requests.get(f"{server.base_url}/reddit/oauth/comments/{post}/", headers=headers, timeout=5).text
               for post in ("1hna03", "1hna04")]
    served = "".join(bodies)
    assert "redd.it/" not in served
    media = f"{server.base_url}/reddit/media/"
    assert f'"{media}leafgate01.png"' in served  # i.redd.it
    # preview.redd.it, the query string as recorded (still `&amp;`: the client unescapes)
    assert f'"{media}sannin01.png?width=1200&amp;format=png&amp;auto=webp&amp;s=222bbb"' in served


def test_reddit_media_are_our_drawings_served_as_static_files_with_an_etag(server):
    from PIL import Image, ImageChops

    from loretune.samples import draw

    media = SNAPSHOT_DIR / "reddit" / "media"
    assert sorted(p.stem for p in media.glob("*.png")) == sorted(draw.REDDIT_PICTURES)
    for name, drawing in draw.REDDIT_PICTURES.items():
        raw = (media / f"{name}.png").read_bytes()
        assert len(raw) < 16_000, "a few KB each"
        with Image.open(media / f"{name}.png") as stored:  # pixels, not bytes: the PNG encoder may vary
            assert ImageChops.difference(stored.convert("RGB"), drawing()).getbbox() is None, name
        url = f"{server.base_url}/reddit/media/{name}.png?width=1200&format=png&auto=webp&s=x"
        image = requests.get(url, timeout=5)
        assert image.status_code == 200 and image.content == raw
        assert image.headers["Content-Type"] == "image/png" and image.headers["ETag"]
        again = requests.get(url, headers={"If-None-Match": image.headers["ETag"]}, timeout=5)
        assert again.status_code == 304
    base = f"{server.base_url}/reddit/media"
    assert requests.get(f"{base}/nope.png", timeout=5).status_code == 404
    assert requests.get(f"{base}/..%2Fr_Naruto%2F1hna03.json", timeout=5).status_code == 404
    assert requests.get(f"{base}/leafgate01.png?width=1&amp;s=x", timeout=5).status_code == 403  # `&amp;` left in
