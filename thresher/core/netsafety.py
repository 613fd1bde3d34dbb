"""Fetch safety: a URL list (or a page it points to) must not make us fetch from private addresses.

Three checks, each where it can be made exactly:
1. **As written, before fetching** (`host_refusal`, used by ingest for every URL of a list): the host is
   normalised the way the HTTP client will send it to the resolver (Python's `idna` codec: IDNA 2003
   nameprep, which drops a soft hyphen and maps full-width digits and ideographic full stops), then read
   in every numeric form `inet_aton` takes (127.1, 0x7f.0.0.1, 2130706433, 0177.0.0.1) and as IPv6
   (with IPv4-mapped addresses unwrapped).
2. **At connect time** (`safe_opener`, installed for img2dataset's `urlopen` in each download task, and
   used by `audit recheck`): every address the name resolves to is checked before connecting, and the
   address actually connected to is checked after, so a DNS name that resolves to a private address, or
   rebinds between the two lookups, is refused too.
3. **On every redirect**: the redirect target goes through check 1 before it is followed (and then
   through check 2 when it is fetched); img2dataset's `urlopen` follows redirects on its own.

A refused fetch raises `URLError("disallowed_address: ...")`, which the download records with the
failure reason `disallowed_address`. `allow_hosts` ("host" or "host:port") names hosts that may be
fetched although private (an internal mirror); `--allow-private-addresses` turns the address checks
off (local tests only). `opener` is the one rule for which opener a fetch uses, download's and recheck's.

A `deadline` bounds a whole fetch (connect, headers, body and every redirect), where a socket timeout
bounds each read only: a server that sends a byte every two seconds never trips a 3 s timeout.

`no_third_party_traffic` keeps libraries from contacting anyone on their own (albumentations asks a
package index for its latest version when imported, and img2dataset's resizer imports it): every process
Thresher starts calls it first, so the only hosts contacted are those of the user's list.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import os
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

LOCAL_NAMES = {
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
    "metadata",
    "metadata.google.internal",
    "instance-data",
    "instance-data.ec2.internal",
}
METADATA_IPS = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}
REFUSED = "disallowed_address"
# Environment that stops libraries phoning home on import (albumentations' version check, Ray's usage
# statistics): set in every process Thresher starts, and inherited by the processes those start.
NO_PHONE_HOME = {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def no_third_party_traffic() -> None:
    """Set NO_PHONE_HOME in this process's environment (so in every child it starts: Ray's local
    instance and its workers, forked workers). Called by the CLI entry, by Ray's start-up and by the
    download task before it imports img2dataset (a worker of a cluster started elsewhere)."""
    os.environ.update(NO_PHONE_HOME)


def normalise_host(host: str) -> str:
    """The host as the HTTP client hands it to the resolver: IDNA-encoded (nameprep) and lower-cased,
    without brackets or a trailing dot. Raises UnicodeError for a host the client could not send."""
    h = host.strip().strip("[]")
    if "%" in h:  # an IPv6 zone id
        h = h.split("%", 1)[0]
    if not h.isascii():
        h = h.encode("idna").decode("ascii")
    return h.lower().rstrip(".")


def _parse_ip(host: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # inet_aton also takes the forms browsers and urllib accept: 127.1, 0x7f.0.0.1, 2130706433
    if host and all(ch in "0123456789abcdefx." for ch in host) and any(ch.isdigit() for ch in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_refusal(ip) -> str | None:
    """Why an IP address must not be fetched from, or None."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_IPS:
        return "a cloud metadata address"
    for attr, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_private", "private"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return f"a {what} address"
    if not ip.is_global:
        return "not a public address"
    return None


def host_refusal(host: str | None) -> str | None:
    """Why a host, as written in a URL, must not be fetched by default, or None when it may be."""
    if not host:
        return "no host"
    try:
        h = normalise_host(host)
    except UnicodeError:
        return f"host {host!r} is not a valid host name (IDNA)"
    if h in LOCAL_NAMES or h.endswith(".localhost"):
        return f"host {host} is local"
    ip = _parse_ip(h)
    if ip is None:
        return None
    why = address_refusal(ip)
    return f"host {host} is {why}" if why else None


def allowed(host: str, port, allow_hosts) -> bool:
    """`host` (or `host:port`) is one the user allowed although private (`--allow-hosts`)."""
    host = host.strip("[]")
    return bool(allow_hosts) and (host in allow_hosts or f"{host}:{port}" in allow_hosts)


def _check_resolved(host: str, port: int, allow_hosts) -> None:
    """Refuse when any address the host resolves to is disallowed (and not explicitly allowed)."""
    for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        addr = info[4][0]
        why = address_refusal(ipaddress.ip_address(addr.split("%", 1)[0]))
        if why and not allowed(addr, port, allow_hosts):
            raise urllib.error.URLError(f"{REFUSED}: {host} resolves to {addr}, {why}")


def _check_peer(sock, host: str, allow_hosts) -> None:
    addr, port = sock.getpeername()[:2]
    why = address_refusal(ipaddress.ip_address(addr.split("%", 1)[0]))
    if why and not allowed(addr, port, allow_hosts):
        sock.close()
        raise urllib.error.URLError(f"{REFUSED}: {host} connected to {addr}, {why}")


def opener(allow_private: bool = False, allow_hosts=(), deadline: float | None = None):
    """The opener of every fetch (download's, installed for img2dataset's `urlopen`, and recheck's):
    address checks unless `allow_private`; the redirect scheme check and, if given, the `deadline`
    (time.monotonic()) of the whole fetch always."""
    return safe_opener(allow_hosts, deadline=deadline, check_addresses=not allow_private)


def safe_opener(
    allow_hosts=(), deadline: float | None = None, check_addresses: bool = True
) -> urllib.request.OpenerDirector:
    """A urllib opener that refuses private addresses at connect time and on every redirect, and ends a
    fetch that runs past `deadline` (a time.monotonic() value) with TimeoutError."""
    allow = set(allow_hosts or ())

    class Bounded(http.client.HTTPResponse):  # headers and body read through the deadline
        def __init__(self, sock, *args, **kwargs):
            super().__init__(sock, *args, **kwargs)
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineIO(sock, deadline))

    class Checked:  # before http.client's connect: every resolved address; after it: the one connected to
        if deadline is not None:
            response_class = Bounded

        def connect(self):
            if deadline is not None:
                self.timeout = _left(deadline, self.timeout)
            if check_addresses:
                _check_resolved(self.host, self.port, allow)
            super().connect()
            if check_addresses:
                _check_peer(self.sock, self.host, allow)

    class SafeHTTPConnection(Checked, http.client.HTTPConnection):
        pass

    class SafeHTTPSConnection(Checked, http.client.HTTPSConnection):
        pass

    class SafeHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(SafeHTTPConnection, req)

    class SafeHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SafeHTTPSConnection, req, context=self._context)

    class SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            parts = urlsplit(newurl)
            if parts.scheme not in ("http", "https"):
                raise urllib.error.URLError(f"{REFUSED}: redirect to a {parts.scheme or 'relative'} URL {newurl}")
            why = host_refusal(parts.hostname) if check_addresses else None
            if why and not allowed(normalise_host(parts.hostname or ""), parts.port, allow):
                raise urllib.error.URLError(f"{REFUSED}: redirect to {newurl}: {why}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    class NoFile(urllib.request.FileHandler):  # urllib opens file:// and ftp:// URLs by default
        def file_open(self, req):
            raise urllib.error.URLError(f"{REFUSED}: a {req.type} URL, not http or https")

    class NoFTP(urllib.request.FTPHandler):
        ftp_open = NoFile.file_open

    return urllib.request.build_opener(SafeHTTPHandler, SafeHTTPSHandler, SafeRedirectHandler, NoFile, NoFTP)


def _left(deadline: float, timeout) -> float:
    """Seconds left before `deadline`, at most `timeout` (a socket timeout, or None); past it, TimeoutError."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out: the whole fetch ran past its deadline")
    return left if not isinstance(timeout, (int, float)) else min(timeout, left)


class _DeadlineIO(io.RawIOBase):
    """A socket's reads, each given only what is left of the fetch's deadline as its timeout, so the
    reads together end by the deadline (a BufferedReader's readline loops over many of them)."""

    def __init__(self, sock, deadline: float):
        self._sock, self._deadline, self._timeout = sock, deadline, sock.gettimeout()
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open after urllib closes its handle

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int | None:
        self._sock.settimeout(_left(self._deadline, self._timeout))
        return self._raw.readinto(buf)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._raw.close()
        super().close()
