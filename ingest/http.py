"""One polite HTTP client for every source: identified, patient with busy servers, and bounded.

Sources are other people's servers, so every request says who we are (User-Agent), asks
robots.txt first (protego: the standard library's parser ignores `*` wildcards), keeps a minimum
interval per host (or the site's Crawl-delay, if longer), backs off when told to (429/5xx,
honouring Retry-After; urllib3's Retry is the one place retries live), gives up after a timeout,
follows redirects only within the same host (or an allowed one), and never reads an unbounded body
into memory. Failures become one exception type, `SourceError`, whose message names the URL but
never a secret that was in its query string.

Given a `cache_dir`, responses are kept in an HTTP cache (CacheControl, on disk), so the next run
asks with If-None-Match / If-Modified-Since wherever the server gave an ETag or Last-Modified, and
an unchanged page costs a 304 with no body. Callers see the cached body as a normal 200: nothing
downstream needs to know, and a lost cache only costs full downloads.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, urljoin, urlsplit, urlunsplit

import requests
from cachecontrol import CacheControlAdapter
from cachecontrol.caches import FileCache
from protego import Protego
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Statuses below 500 that say "not now" rather than "not ever" (every 5xx does too).
TRANSIENT_STATUSES = frozenset({408, 425, 429})
# A query parameter whose name looks like this may carry a credential; such URLs lose their query
# string in messages. Over-matching only costs a less detailed message.
SECRET_PARAM = re.compile(r"token|secret|key|pass(word|wd)?|signature|credential|auth(?!or)", re.IGNORECASE)
HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
CHUNK_BYTES = 64 * 1024
# Cloud instance metadata services: AWS/GCP/Azure/OpenStack, AWS over IPv6, AWS ECS tasks, Alibaba.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class SourceError(RuntimeError):
    """A source could not give us what we asked for; says which URL (secrets removed) and why.

    `transient` says whether the same request may well succeed later: a timeout, a dropped
    connection, a cut-off body, 429 or a 5xx (after this session's own retries). Callers that keep
    results between runs (the images stage) retry those next run and keep the rest as final.
    """

    def __init__(self, url: str, reason: str, transient: bool = False):
        self.url = safe_url(url)
        self.reason = reason
        self.transient = transient
        super().__init__(f"{self.url}: {reason}")


class AddressRefused(SourceError):
    """A host that resolves to an address we never fetch from on content's say-so (see the module
    docstring). Final: the same URL will be refused next time too."""

    def __init__(self, url: str, reason: str):
        super().__init__(url, reason, transient=False)


class SourceSkipped(Exception):
    """A source that cannot run here (e.g. no credentials configured): reported as skipped, not failed."""


class PoliteSession:
    """A `requests.Session` with retries, timeouts, a size cap and request/byte counters.

    Field names match the config's `http` section, so `PoliteSession(**config.http.model_dump())`.
    """

    def __init__(
        self,
        user_agent: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_retries: int,
        backoff_s: float,
        max_response_bytes: int,
        min_interval_s: float = 0.0,
        respect_robots: bool = True,
        max_redirects: int = 5,
        allowed_hosts: Iterable[str] = (),
        cache_dir: str | Path | None = None,
        configured_hosts: Iterable[str] = (),
    ):
        """`configured_hosts`: the hosts in the config's own source URLs. They and `allowed_hosts`
        may resolve to any address (the sample sources server is on loopback); every other host must
        resolve to public addresses only."""
        self.user_agent = user_agent
        self.min_interval_s = min_interval_s
        self.respect_robots = respect_robots
        self.max_redirects = max_redirects
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.configured_hosts = {_host_key(h) for h in (*self.allowed_hosts, *configured_hosts)}
        self._robots: dict[str, Protego | None] = {}
        self._last_request: dict[str, float] = {}
        self._delays: dict[str, float] = {}  # per origin: the interval, or robots.txt's longer Crawl-delay
        self._host_lock = threading.Lock()
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_response_bytes = max_response_bytes
        self._counters = _Counters()
        retry = _CountingRetry(
            total=max_retries,
            backoff_factor=backoff_s,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            respect_retry_after_header=True,
            raise_on_status=False,  # hand back the last 429/503 so the error can say what it was
        )
        retry.counters = self._counters
        retry.min_interval_s = min_interval_s
        adapter = (_CachingAdapter(cache=FileCache(str(cache_dir)), max_retries=retry) if cache_dir
                   else _PinnedAdapter(max_retries=retry))
        adapter.counters = self._counters
        adapter.configured_hosts = self.configured_hosts
        adapter.pace = self._pace
        self._session = requests.Session()
        self._session.headers["User-Agent"] = user_agent
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @property
    def requests_made(self) -> int:
        """Requests that went on the wire, retries included."""
        return self._counters.requests

    @property
    def bytes_received(self) -> int:
        """Response body bytes read off the wire (after content decoding, which is what the size cap
        bounds); bodies served from the HTTP cache are not counted."""
        return self._counters.bytes

    @property
    def cached_responses(self) -> int:
        """Responses served from the HTTP cache: 304 revalidations, or still fresh per Cache-Control."""
        return self._counters.cached

    def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> dict:
        """GET a JSON object; an HTML page, invalid JSON or an HTTP error is a `SourceError`."""
        return self.get_json_with_headers(url, params)[0]

    def get_json_with_headers(self, url: str, params: Mapping[str, Any] | None = None
                              ) -> tuple[dict, Mapping[str, str]]:
        """`get_json`, plus the response headers, for APIs that signal in a 200 (MediaWiki's maxlag)."""
        full_url, response, body = self._get(url, params, accept="application/json")
        _raise_for_status(full_url, response, body)
        content_type = response.headers.get("Content-Type", "").lower()
        if "html" in content_type or body.lstrip()[:1] == b"<":
            raise SourceError(full_url, f"expected JSON, got an HTML page{_html_title(body)}")
        try:
            data = json.loads(body)  # JSON is UTF-8 by definition (RFC 8259), whatever the header says
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(full_url, f"response is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SourceError(full_url, f"expected a JSON object, got {type(data).__name__}")
        return data, response.headers

    def get_bytes(self, url: str, params: Mapping[str, Any] | None = None) -> bytes:
        full_url, response, body = self._get(url, params, accept="*/*")
        _raise_for_status(full_url, response, body)
        return body

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PoliteSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _get(
        self, url: str, params: Mapping[str, Any] | None, accept: str
    ) -> tuple[str, requests.Response, bytes]:
        """(URL with query, response, body) of one GET.

        urllib3 retries failures up to the response headers; a body cut off mid-read happens after
        that, so it is retried here. Both draw on one budget: a cut body is tried again only while
        this GET has made at most `max_retries` attempts so far, so a server alternating 503s and
        cut bodies costs at most about twice `max_retries + 1` attempts, not its square.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise SourceError(url, "only http and https URLs are fetched")
        try:
            full_url = requests.Request("GET", url, params=params).prepare().url or url
        except requests.RequestException as exc:
            raise SourceError(url, _describe(exc, url)) from None
        if self.respect_robots:  # fetched once per origin: on the wire, but not one of this GET's attempts
            self._robots_for(f"{parts.scheme}://{parts.netloc}", full_url)
        before = self.requests_made
        while True:
            try:
                response = self._follow(full_url, accept)
            except requests.RequestException as exc:
                raise SourceError(full_url, _describe(exc, full_url), transient=_is_transient(exc)) from None
            try:
                return full_url, response, self._read_body(full_url, response)
            except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
                attempts = self.requests_made - before
                if attempts > self.max_retries:
                    raise SourceError(full_url, f"response cut off after {attempts} attempts: "
                                                f"{_describe(exc, full_url)}", transient=True) from None
                # urllib3's schedule: the first retry at once, then backoff_s * 2^(n-1).
                time.sleep(self.backoff_s * 2 ** (attempts - 1) if attempts > 1 else 0)
            except requests.RequestException as exc:
                raise SourceError(full_url, _describe(exc, full_url), transient=_is_transient(exc)) from None
            finally:
                response.close()

    def may_follow(self, target: str, origin_host: str) -> bool:
        """Whether a link found on `origin_host` (a redirect, a sitemap index entry) may be fetched:
        http(s), and the same host or one of `allowed_hosts`."""
        parts = urlsplit(target)
        host = (parts.hostname or "").lower()
        return parts.scheme in ("http", "https") and (host == origin_host.lower() or host in self.allowed_hosts)

    def _follow(self, url: str, accept: str) -> requests.Response:
        """GET, following redirects by hand so each hop is checked: same host (or allowed), robots."""
        origin_host = (urlsplit(url).hostname or "").lower()
        for _ in range(self.max_redirects + 1):
            self._before_request(url)
            response = self._session.get(url, headers={"Accept": accept}, timeout=self.timeout,
                                         stream=True, allow_redirects=False)
            location = response.headers.get("Location") if response.is_redirect else None
            if not location:
                return response
            response.close()
            target = urljoin(url, location)
            if not self.may_follow(target, origin_host):
                raise SourceError(url, f"redirect to {safe_url(target)} refused: not {origin_host} or an allowed host")
            url = target
        raise SourceError(url, f"more than {self.max_redirects} redirects")

    def _before_request(self, url: str) -> None:
        """robots.txt first, and the host's interval from it (`_pace` waits it out at send time)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        robots = self._robots_for(origin, url) if self.respect_robots else None
        if robots is not None and not robots.can_fetch(url, self.user_agent):
            raise SourceError(url, f"disallowed by {origin}/robots.txt for {self.user_agent!r}")
        self._delays[origin] = max(self.min_interval_s, (robots.crawl_delay(self.user_agent) or 0) if robots else 0)

    def _pace(self, url: str) -> None:
        """Wait out the host's interval (or robots.txt's Crawl-delay), just before a request goes on
        the wire (the adapter calls this): spacing the calls instead would let a slow step between
        call and send (a busy machine) bring two requests closer at the server than the interval."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        delay = self._delays.get(origin, self.min_interval_s)
        with self._host_lock:
            wait = self._last_request.get(origin, float("-inf")) + delay - time.monotonic()
            self._last_request[origin] = time.monotonic() + max(wait, 0)
        if wait > 0:
            time.sleep(wait)

    def _robots_for(self, origin: str, for_url: str) -> Protego | None:
        """The origin's rules, fetched once. No file (4xx): everything allowed. A server error:
        everything disallowed for now, as RFC 9309 asks. A refused address is reported for
        `for_url`, the URL the caller wanted, not for robots.txt."""
        if origin not in self._robots:
            url = f"{origin}/robots.txt"
            try:
                # requests follows a robots.txt redirect itself; each hop still goes through the adapter's check
                response = self._session.get(url, timeout=self.timeout, stream=True)
                body = self._read_body(url, response)
            except AddressRefused as exc:
                raise AddressRefused(for_url, exc.reason) from None
            except requests.RequestException as exc:
                raise SourceError(url, f"robots.txt unreachable ({_describe(exc, url)}); not crawling",
                                  transient=_is_transient(exc)) from None
            if response.status_code >= 500:
                raise SourceError(url, f"robots.txt answered HTTP {response.status_code}; RFC 9309: assume disallowed",
                                  transient=True)
            self._robots[origin] = (Protego.parse(body.decode("utf-8", "replace"))
                                    if response.status_code < 400 else None)
        return self._robots[origin]

    def _read_body(self, url: str, response: requests.Response) -> bytes:
        """The body, refusing to read past the cap (announced or not) so one page can't fill memory."""
        cap = self.max_response_bytes
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > cap:
            raise SourceError(url, f"response is {int(announced)} bytes, over the {cap}-byte limit")
        from_cache = getattr(response, "from_cache", False)
        if from_cache:
            self._counters.add_cached()
        chunks, size = [], 0
        for chunk in response.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if not from_cache:
                self._counters.add_bytes(len(chunk))
            if size > cap:
                raise SourceError(url, f"response is over the {cap}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)


def safe_url(url: str) -> str:
    """`url` fit for a message: no user:password@, and no query string if it may hold a secret."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "[query redacted]" if _has_secret(parts.query) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def address_class(address: str) -> str | None:
    """Why an address is never fetched from for content ("loopback", "cloud metadata", ...), or
    None for a public one. IPv4 inside IPv6 (mapped, NAT64, 6to4) is judged as the IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is no part of it
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            ip = embedded
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    for name in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    return None if ip.is_global else "non-public"


def checked_addresses(url: str, configured_hosts: Iterable[str] = ()) -> list[str]:
    """The addresses `url`'s host resolves to, looked up once; `AddressRefused` if any is not public
    and the host is not one of `configured_hosts`. A name that does not resolve is a
    `requests.ConnectionError` (transient, as urllib3 would have reported it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise requests.exceptions.ConnectionError(f"cannot resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise requests.exceptions.ConnectionError(f"cannot resolve {host!r}: no addresses")
    if _host_key(host) in {_host_key(h) for h in configured_hosts}:
        return addresses
    for address in addresses:
        why = address_class(address)
        if why:
            raise AddressRefused(url, f"refused: {host} resolves to {address}, a {why} address, and is not "
                                      "a host the config names (a source's URL or http.allowed_hosts)")
    return addresses


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _not_connected(exc: requests.ConnectionError) -> bool:
    """Whether no connection was made at all (so another address may be tried)."""
    reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
    return isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(
        reason, (NewConnectionError, ConnectTimeoutError))


def _has_secret(query: str) -> bool:
    return any(SECRET_PARAM.search(key) for key, _ in parse_qsl(query, keep_blank_values=True))


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.cached = 0

    def add_request(self) -> None:
        with self._lock:
            self.requests += 1

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def add_cached(self) -> None:
        with self._lock:
            self.cached += 1


class _CountingAdapter(HTTPAdapter):
    """Counts each request's first attempt; `_CountingRetry` counts the retries urllib3 makes.

    A requests response hook would only see the final response of a retried request, so retries
    are counted where urllib3 decides on them: each `Retry.increment` that does not give up means
    one more attempt on the wire.
    """

    counters: _Counters

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.counters.add_request()
        return super().send(request, *args, **kwargs)


class _PinnedAdapter(_CountingAdapter):
    """Resolves each request's host once, checks every address, and connects to a checked one.

    requests and urllib3 would resolve the name again when they connect, and a DNS server that
    answers differently the second time (DNS rebinding) could then send a checked URL to
    169.254.169.254. So the connection pool is made for the address itself: the URL, the Host
    header, TLS SNI and certificate verification keep the host name (`server_hostname`), only
    the TCP connection goes to the address. urllib3's retries reuse that pool, so they go to the
    same address. Where a host has several addresses (IPv6 and IPv4), the next checked one is tried
    only if the connection could not be made at all.

    Through an environment proxy (HTTP(S)_PROXY) the proxy connects, and resolves, for us: the
    address is still checked, but the pinning is then the proxy's business.
    """

    configured_hosts: set[str]
    pace: Callable[[str], None] = staticmethod(lambda url: None)  # the session's per-host interval

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        addresses = checked_addresses(request.url or "", self.configured_hosts)
        self.pace(request.url or "")
        pinned = request.copy()
        pinned.headers["Host"] = parts.netloc.rpartition("@")[2]
        for i, address in enumerate(addresses):
            pinned.pinned_address = address  # type: ignore[attr-defined]  # read by the method below
            try:
                return super().send(pinned, *args, **kwargs)
            except requests.ConnectionError as exc:
                if i + 1 == len(addresses) or not _not_connected(exc):
                    raise
        raise AssertionError("unreachable: checked_addresses returns at least one address")

    def get_connection_with_tls_context(self, request: requests.PreparedRequest, verify: Any,
                                        proxies: Mapping[str, str] | None = None, cert: Any = None) -> Any:
        address = getattr(request, "pinned_address", None)
        if address is None or select_proxy(request.url, proxies):
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        try:
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        except ValueError as exc:
            raise requests.exceptions.InvalidURL(exc, request=request) from None
        if host_params["scheme"] == "https":  # SNI and the certificate check are for the name
            pool_kwargs = {**pool_kwargs, "server_hostname": host_params["host"]}
        return self.poolmanager.connection_from_host(**{**host_params, "host": address}, pool_kwargs=pool_kwargs)


class _CachingAdapter(CacheControlAdapter, _PinnedAdapter):
    """CacheControl's adapter over the pinned, counting one: a response served from the cache never
    reaches `_PinnedAdapter.send`, so nothing is resolved for it and `requests_made` still counts
    only what went on the wire; a revalidation (If-None-Match) is checked like any request."""


class _CountingRetry(Retry):
    counters: _Counters
    min_interval_s: float = 0.0

    def new(self, **kw: Any) -> _CountingRetry:
        retry = super().new(**kw)
        retry.counters = self.counters  # urllib3 rebuilds Retry on every increment
        retry.min_interval_s = self.min_interval_s
        return retry

    def get_backoff_time(self) -> float:
        """A retry is a request to the same host like any other: never sooner than its interval.
        (urllib3 retries the first failure at once: a read timed out on a busy machine went back to
        the server 6 ms later, seen in the Dask politeness test.)"""
        return max(super().get_backoff_time(), self.min_interval_s)

    def increment(self, *args: Any, **kwargs: Any) -> _CountingRetry:
        retry = super().increment(*args, **kwargs)  # raises when the budget is spent: no new attempt
        self.counters.add_request()
        return retry


def _raise_for_status(url: str, response: requests.Response, body: bytes) -> None:
    if response.status_code < 400:
        return
    detail = _html_title(body) or _snippet(body)
    raise SourceError(url, f"HTTP {response.status_code} {response.reason or ''}".rstrip() + detail,
                      transient=response.status_code in TRANSIENT_STATUSES or response.status_code >= 500)


def _is_transient(exc: requests.RequestException) -> bool:
    """Timeouts and connection failures may pass; a malformed URL or a bad encoding will not."""
    return isinstance(exc, (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError))


def _html_title(body: bytes) -> str:
    match = HTML_TITLE.search(body[:CHUNK_BYTES])
    if not match:
        return ""
    return f" ({' '.join(match.group(1).decode('utf-8', 'replace').split())[:120]})"


def _snippet(body: bytes) -> str:
    text = " ".join(body[:400].decode("utf-8", "replace").split())
    return f": {text[:200]}" if text else ""


def _describe(exc: Exception, url: str) -> str:
    """The exception's own words, with the query string cut out if it may hold a secret.

    requests and urllib3 put the request path and query into their messages.
    """
    text = f"{type(exc).__name__}: {exc}"
    query = urlsplit(url).query
    return text.replace(query, "[query redacted]") if _has_secret(query) else text
