"""Hardening (issue 25): `audit recheck` and the download contact only the user's hosts, within a bound.

- finding 7: recheck runs through the execution layer with a deadline, with download's opener and
  checks (`--allow-hosts` included), and `--timeout` bounds a whole fetch, so a server that trickles
  a byte at a time cannot hold it;
- finding 10: a download makes no connection outside its URL list (albumentations' version check);
- finding 12 is `tests/test_hardening.py::test_a_killed_download_leaves_no_ray_process_behind`, which
  now kills the driver alone too.

Each test failed before its fix and passes now. Network tests use 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.audit import audit
from thresher.exec import execute

BODY = b"thresher-recheck-body"


class _Server:
    """A threading HTTP server on 127.0.0.1 whose handler is `handle(request_handler)`; counts requests."""

    def __init__(self, handle):
        self.hits: list[str] = []
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                handle(self, outer)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.srv.shutdown()
        self.srv.server_close()


def _subset(tmp_path: Path, urls: list[str]) -> str:
    """The part of a subset recheck reads: lineage.parquet, every URL's recorded bytes being BODY."""
    out = tmp_path / "subset"
    out.mkdir()
    sha = hashlib.sha256(BODY).hexdigest()
    pq.write_table(
        pa.table(
            {
                "uid": [f"{i:032x}" for i in range(len(urls))],
                "url": urls,
                "source_sha256": [sha] * len(urls),
                "copy": pa.array([0] * len(urls), pa.int32()),
            }
        ),
        out / "lineage.parquet",
    )
    return str(out)


def _trickle(handler, server) -> None:
    """One byte every 0.3 s: each socket read gets an answer well within any timeout; the whole never ends."""
    if handler.path == "/headers":  # the status line, then a header that never ends
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    else:  # prompt headers, then the body a byte at a time
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
    while not server.stop.is_set():
        try:
            handler.wfile.write(b"a")
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.3)


def test_recheck_bounds_each_whole_fetch_and_runs_through_the_execution_layer(tmp_path, monkeypatch):
    """`--timeout 3` bounded each socket read, not the fetch, and recheck ran in a thread pool of its own
    with no deadline: a server that sends one byte every 2 s held it for good (issue 25, finding 7).
    Now the timeout bounds the whole fetch (headers and body alike), and the URLs go through the
    execution layer (`execute.run`) with a deadline per batch."""
    monkeypatch.setenv("THRESHER_EXECUTOR", "local")
    calls = []
    real_run = execute.run

    def recording_run(fn, items, *args, **kw):
        calls.append(kw)
        return real_run(fn, items, *args, **kw)

    monkeypatch.setattr(execute, "run", recording_run)
    srv = _Server(_trickle)
    try:
        subset_dir = _subset(tmp_path, [srv.url("/body"), srv.url("/headers")])
        box: dict = {}

        def go():
            box["res"] = audit.recheck(subset_dir, sample=2, timeout=1.5, allow_private_addresses=True)

        started = time.monotonic()
        t = threading.Thread(target=go, daemon=True)
        t.start()
        t.join(20)
        took = time.monotonic() - started
        assert not t.is_alive(), "recheck is still fetching from a trickling server after 20 s"
    finally:
        srv.close()
    res = box["res"]
    assert res["counts"] == {"gone": 2}, res["samples"]
    assert all("timed out" in s["detail"] for s in res["samples"]), res["samples"]
    assert took < 12, took  # 1.5 s per fetch, both at once, plus the start-up
    assert [c["label"] for c in calls] == ["audit recheck"] and calls[0]["deadline_s"] is not None


def test_recheck_takes_allow_hosts_and_refuses_a_redirect_to_another_private_port(tmp_path):
    """Recheck had no `--allow-hosts`: the only way to recheck a subset from an internal mirror was
    `--allow-private-addresses`, under which its plain opener followed every redirect (10 of 10 to
    another private port). Now it takes `--allow-hosts` as download does, with download's opener: the
    mirror is fetched, a redirect from it to another private port is refused before it is followed, and
    a private host nobody allowed is refused as written."""
    from thresher.app import cli

    other = _Server(lambda h, s: (h.send_response(200), h.end_headers(), h.wfile.write(BODY)))

    def mirror_handle(h, s):
        if h.path == "/redirect":
            h.send_response(302)
            h.send_header("Location", other.url("/secret"))
            h.end_headers()
        else:
            h.send_response(200)
            h.send_header("Content-Length", str(len(BODY)))
            h.end_headers()
            h.wfile.write(BODY)

    mirror = _Server(mirror_handle)
    try:
        urls = [mirror.url("/ok"), mirror.url("/redirect"), other.url("/direct")]
        with execute.using(execute.LocalExecutor()):
            res = audit.recheck(_subset(tmp_path, urls), sample=3, timeout=5, allow_hosts=[f"127.0.0.1:{mirror.port}"])
    finally:
        mirror.close()
        other.close()
    outcome = {s["url"]: s for s in res["samples"]}
    assert outcome[urls[0]]["outcome"] == "ok"
    assert outcome[urls[1]]["outcome"] == "refused" and "redirect" in outcome[urls[1]]["detail"]
    assert outcome[urls[2]]["outcome"] == "refused"
    assert other.hits == [], other.hits  # the private server saw no request, redirected or direct
    call = cli.parse(["audit", "recheck", "S", "--allow-hosts", "mirror:8080", "--allow-hosts", "10.0.0.2"])
    assert call.args.allow_hosts == ["mirror:8080", "10.0.0.2"]


# ---------------------------------------------------------------------------------------------------
# finding 10: no connection outside the URL list

GUARD = """
import json, socket, sys
seen = []
real_gai, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

def _mine(host):
    return host in ("127.0.0.1", b"127.0.0.1")

def gai(host, port, *a, **k):
    if not _mine(host):
        seen.append(f"resolve {host}:{port}")
        raise socket.gaierror(f"the test refuses to resolve {host}")
    return real_gai(host, port, *a, **k)

def check(address):
    if isinstance(address, tuple) and not _mine(address[0]):
        seen.append(f"connect {address[0]}:{address[1]}")
        raise OSError(f"the test refuses to connect to {address}")

def connect(self, address):
    check(address)
    return real_connect(self, address)

def connect_ex(self, address):
    check(address)
    return real_connect_ex(self, address)

socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = gai, connect, connect_ex
from thresher.app import cli
rc = cli.main(sys.argv[1:])
print("GUARD " + json.dumps({"rc": rc, "seen": seen}))
"""


def test_a_download_contacts_no_host_outside_its_url_list(tmp_path):
    """img2dataset's resizer imports albumentations in every download task, and albumentations asked
    pypi.org for its latest version on import unless NO_ALBUMENTATIONS_UPDATE was set: a tool that
    promises to fetch only the user's list contacted a third party from every worker, and waited on
    offline clusters (issue 25, finding 10). A `thresher download` in a fresh interpreter whose every
    name resolution and connection outside 127.0.0.1 is recorded and refused now makes none."""
    from PIL import Image

    www = tmp_path / "www"
    www.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(www / f"{i}.png")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.1:{srv.server_address[1]}/{i}.png" for i in range(3)]
    pq.write_table(pa.table({"url": urls, "text": ["x"] * 3}), tmp_path / "urls.parquet")
    (tmp_path / "guard.py").write_text(GUARD)
    drop = {"NO_ALBUMENTATIONS_UPDATE", "RAY_ADDRESS", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["THRESHER_EXECUTOR"] = "local"  # the task runs in this interpreter, under the guard
    argv = [str(tmp_path / "urls.parquet"), "--out", str(tmp_path / "pool"), "--allow-private-addresses"]
    try:
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "guard.py"), "download", *argv, "--processes", "1", "--threads", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        srv.shutdown()
        srv.server_close()
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("GUARD ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = json.loads(line.removeprefix("GUARD "))
    assert got["seen"] == [], got["seen"]
    assert got["rc"] == 0, proc.stderr[-2000:]
    counts = json.loads((tmp_path / "pool" / "manifest.json").read_text())["counts"]
    assert counts["status"] == {"success": 3}, counts  # the images did arrive


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
