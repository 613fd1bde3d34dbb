"""A real HTTP server for a synthetic pool: `thresher serve DIR --port P`.

It binds to 127.0.0.1 only and answers each request on its own thread. Files under DIR/www are
served as they are on disk (so a file changed between two downloads is served changed); a missing
file is a 404. DIR/www/_behaviors.json adds the behaviours a plain file server cannot show:

    {"stall": ["/img/00000042.jpg", ...],          # hold the request, send nothing, then close
     "stall_seconds": 120,
     "headers": {"/img/00000007.png": {"X-Robots-Tag": "noai, noimageai"}}}
"""

from __future__ import annotations

import collections
import json
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from thresher.core.errors import InputError

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


class PoolServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stalled handlers must not hold up shutdown
    allow_reuse_address = True
    request_queue_size = 1024  # many downloader threads connect at once; the default backlog of 5 drops SYNs

    def __init__(self, root: Path, port: int):
        self.www = Path(root) / "www"
        if not self.www.is_dir():
            raise InputError(f"{root} is not a synthetic pool: no www/ directory (make one with `thresher synth`)")
        behaviors_path = self.www / "_behaviors.json"
        behaviors = json.loads(behaviors_path.read_text()) if behaviors_path.exists() else {}
        self.stall = set(behaviors.get("stall", []))
        self.stall_seconds = float(behaviors.get("stall_seconds", 120))
        self.headers_for = behaviors.get("headers", {})
        self.hits: collections.Counter[str] = collections.Counter()  # path -> requests, for tests
        self.hits_lock = threading.Lock()
        self.closing = threading.Event()
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as err:
            raise InputError(f"cannot listen on 127.0.0.1:{port}: {err.strerror}; choose another --port") from err

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: PoolServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002 - keep stderr quiet; hits are counted instead
        pass

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        with self.server.hits_lock:
            self.server.hits[path] += 1
        if path in self.server.stall:
            # say nothing until the client gives up (its socket timeout) or the server closes
            self.server.closing.wait(self.server.stall_seconds)
            self.close_connection = True
            return
        rel = path.lstrip("/")
        target = (self.server.www / rel).resolve()
        if ".." in rel.split("/") or not target.is_file() or target.name.startswith("_"):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        data = target.read_bytes()
        self.send_response(HTTPStatus.OK)
        ctype = CONTENT_TYPES.get(target.suffix.lower()) or mimetypes.guess_type(target.name)[0]
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for name, value in self.server.headers_for.get(path, {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def start(root: str | Path, port: int = 8765) -> PoolServer:
    """Start serving in a background thread; call .stop() to end. Port 0 picks a free port."""
    server = PoolServer(Path(root), port)
    threading.Thread(target=server.serve_forever, name="thresher-serve", daemon=True).start()
    return server


def serve_forever(root: str | Path, port: int = 8765, log=print) -> None:
    server = PoolServer(Path(root), port)
    log(f"[serve] serving {root} on http://127.0.0.1:{server.port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.closing.set()
        server.server_close()
