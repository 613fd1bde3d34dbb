"""The server of `thresher browse`: where it listens, its token, and uvicorn running the app."""

from __future__ import annotations

import secrets

from thresher.core.errors import InputError

LOOPBACK = ("127.0.0.1", "localhost")


def serve(pool: str, subsets: list[str], port: int, host: str = "127.0.0.1", cache: str | None = None) -> None:
    """Build (or reuse) the catalog, start the search indexes in the background, and serve until Ctrl-C.
    On 127.0.0.1 only Host headers naming this machine are served; on any other address every request
    needs the printed token."""
    import uvicorn

    from thresher.app.browse.server import Browser, make_app

    if not 0 < port < 65536:
        raise InputError(f"--port must be 1-65535, not {port}")
    local = host in LOOPBACK
    token = None if local else secrets.token_urlsafe(24)
    browser = Browser(pool, cache, subsets)
    browser.build_indexes()
    hosts = ["127.0.0.1", "localhost"] if local else None  # Starlette compares the Host header without its port
    app = make_app(browser, token, hosts)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"thresher browse: {browser.catalog.rows:,} samples of {pool}")
    print(f"open {url}" + ("" if local else "  (the token is needed by every browser that opens it)"))
    uvicorn.run(app, host=host, port=port, log_level="warning")
