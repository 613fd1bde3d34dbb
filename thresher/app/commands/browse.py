"""`thresher browse POOL [--subset DIR ...] [--port P] [--host H] [--cache DIR]`: look at a pool's samples in a
browser (thresher/app/browse/, docs/browse.md). Its `args` and `run`; it costs nothing in a job (a job step
of it would never end), so it has no `plan`.
"""

from __future__ import annotations

from thresher.app.commands.registry import Common, arg, args_dataclass


@args_dataclass
class BrowseArgs(Common):
    pool: str = arg(help="pool directory (local path or s3://, ...)", positional=True)
    subset: list[str] = arg(factory=list, help="a subset made from this pool, to filter by membership (repeatable)")
    port: int = arg(8770, "port to listen on")
    host: str = arg("127.0.0.1", "address to listen on; any other than 127.0.0.1 needs the token it prints")
    cache: str | None = arg(
        None,
        "the browser's own folder (catalog, tar indexes, search indexes); "
        "default ~/.cache/thresher/browse/<hash of the pool path>",
    )


def run_browse(args: BrowseArgs) -> None:
    """Serve the pool's samples on HTTP until interrupted."""
    from thresher.app.browse.app import serve

    serve(args.pool, args.subset, args.port, args.host, args.cache)
