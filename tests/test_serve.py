"""The pool's HTTP server produces each planted behaviour."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest


def _get(port, path, timeout=5.0):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout)


def _path(g):
    return "/" + g["url"].split("/", 3)[3]


def test_behaviours(server, port, ground_truth):
    first = {}
    for g in ground_truth:
        first.setdefault(g["category"], g)
    with _get(port, _path(first["clean"])) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("image/")
        assert r.headers.get("X-Robots-Tag") is None
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(port, _path(first["http_404"]))
    assert err.value.code == 404
    with _get(port, _path(first["opted_out"])) as r:
        assert "noai" in r.headers["X-Robots-Tag"]
    with _get(port, _path(first["corrupt"])) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and len(r.read()) > 1000
    t0 = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        _get(port, _path(first["timeout"]), timeout=0.5).read()
    assert time.monotonic() - t0 < 3
    for bad in ("/img/../urls.parquet", "/_behaviors.json", "/nothing"):
        with pytest.raises(urllib.error.HTTPError):
            _get(port, bad)


def test_binds_loopback_only(server):
    assert server.server_address[0] == "127.0.0.1"
