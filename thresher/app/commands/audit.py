"""`thresher audit`'s nested commands: verify, trace, explain, report, remove and recheck, each with its
`args` and `run` (a call to thresher/audit/), as `AUDIT_ACTIONS`; their cost models are in
thresher/audit/cost.py.
"""

from __future__ import annotations

from pathlib import Path

from thresher.app.commands.registry import Command, Common, _print_json, arg, args_dataclass
from thresher.audit.cost import plan_explain, plan_recheck, plan_remove, plan_report, plan_trace, plan_verify
from thresher.core.errors import InputError

# ---------------------------------------------------------------------------------------------------
# audit: nested commands (audit verify|trace|explain|report|remove|recheck)


@args_dataclass
class AuditArgs(Common):
    pass


@args_dataclass
class VerifyArgs(Common):
    subset: str = arg(positional=True)


def run_verify(args: VerifyArgs) -> int:
    """Re-hash every shard and sample; exit code 1 when anything differs from the manifest and lineage."""
    from thresher.audit import audit

    res = audit.verify(args.subset, ray_address=args.ray_address)
    for p in res["problems"]:
        print(p)
    print(
        f"verify {args.subset}: {'OK' if res['ok'] else 'FAILED'} ({res['shards']} shards, "
        f"{res['samples']} samples, {len(res['problems'])} problem(s))"
    )
    return 0 if res["ok"] else 1


@args_dataclass
class TraceArgs(Common):
    subset: str = arg(positional=True)
    uid: str = arg(positional=True)


def run_trace(args: TraceArgs) -> None:
    """A subset sample's whole history, as JSON."""
    from thresher.audit import audit

    _print_json(audit.trace(args.subset, args.uid))


@args_dataclass
class ExplainArgs(Common):
    pool: str = arg(positional=True)
    uid: str = arg(positional=True)
    recipe: list[str] = arg(help="recipe(s) to explain (default: every recipe with decisions)", factory=list)


def run_explain(args: ExplainArgs) -> None:
    """Why a pool sample was dropped, per recipe: the step, its score and threshold."""
    from thresher.audit import audit

    res = audit.explain(args.pool, args.uid, args.recipe or None)
    _print_json(res)
    for name, r in res.get("recipes", {}).items():
        print(f"{name}: {r['verdict']}")
    if "verdict" in res:
        print(res["verdict"])


@args_dataclass
class ReportArgs(Common):
    subset: str = arg(positional=True)
    out: str = arg(help="HTML file to write (outside the subset directory)")
    gallery: int = arg(
        8, "samples shown as thumbnails per funnel step: kept, and dropped by each filter step (0: none)"
    )


def run_report(args: ReportArgs) -> None:
    """One HTML page about a subset: funnel with sample galleries, domains, languages, sizes, scores, opt-outs."""
    from thresher.audit import report

    res = report.build_report(args.subset, args.out, gallery=args.gallery)
    shown = res["gallery"]
    samples = f"; samples shown: {shown['kept'] + sum(shown['dropped'].values())}" if shown else ""
    print(
        f"report: {res['out']} (plots: {', '.join(res['plots'])}{samples}; "
        f"opt-out compliant: {res['compliance']['compliant']})"
    )


@args_dataclass
class RemoveArgs(Common):
    subset: str = arg(positional=True)
    urls: str | None = arg(None, "file of URLs to remove, one per line")
    domains: str | None = arg(None, "file of domains to remove (with their subdomains), one per line")
    out: str = arg(help="directory of the new version")
    refill: bool = arg(False, "top back up to N from the next-ranked candidates")


def run_remove(args: RemoveArgs) -> None:
    """A new version of a subset without the samples takedown or opt-out requests name."""
    from thresher.audit import audit

    if not (args.urls or args.domains):
        raise InputError("give --urls FILE and/or --domains FILE")
    m = audit.remove(args.subset, args.out, args.urls, args.domains, refill=args.refill, ray_address=args.ray_address)
    print(
        f"new version: {args.out} ({m['size']} samples; removed {m['previous']['removed']}"
        f"{', refilled' if args.refill else ''}; previous {args.subset})"
    )


@args_dataclass
class RecheckArgs(Common):
    subset: str = arg(positional=True)
    sample: int = arg(1000, "URLs to re-download (default 1000)")
    seed: int = arg(0)
    timeout: float = arg(10.0, "seconds a whole fetch may take, redirects included (default 10)")
    allow_private_addresses: bool = arg(False, "fetch loopback/private hosts (tests)")
    allow_hosts: list[str] = arg(
        help="HOST or HOST:PORT fetched although private (an internal mirror), as at download", factory=list
    )
    out: str | None = arg(None, "JSON file for the per-URL results")


def run_recheck(args: RecheckArgs) -> None:
    """Re-download a random sample of a subset's URLs: link rot, content drift, new opt-outs."""
    from thresher.audit import audit

    res = audit.recheck(
        args.subset,
        args.sample,
        seed=args.seed,
        timeout=args.timeout,
        allow_private_addresses=args.allow_private_addresses,
        allow_hosts=args.allow_hosts,
        ray_address=args.ray_address,
    )
    if args.out:
        import json

        Path(args.out).write_text(json.dumps(res, indent=2))
    print(
        f"recheck {args.subset}: {res['checked']} URLs; gone {res['gone_rate']:.1%}, drifted "
        f"{res['drifted_rate']:.1%}, opted out {res['opted_out_rate']:.1%}, refused {res['refused_rate']:.1%}"
    )


AUDIT_ACTIONS = {
    "verify": Command(
        "verify",
        "re-hash every shard and sample against the manifest and lineage",
        "",
        VerifyArgs,
        run_verify,
        plan_verify,
    ),
    "trace": Command("trace", "the whole history of a sample in a subset", "", TraceArgs, run_trace, plan_trace),
    "explain": Command(
        "explain",
        "why a pool sample was dropped: the step, its score and threshold",
        "",
        ExplainArgs,
        run_explain,
        plan_explain,
    ),
    "report": Command(
        "report",
        "an HTML report: funnel with sample galleries, domains, languages, sizes, scores, opt-outs",
        "",
        ReportArgs,
        run_report,
        plan_report,
    ),
    "remove": Command(
        "remove",
        "a new version without the samples of takedown/opt-out requests",
        "",
        RemoveArgs,
        run_remove,
        plan_remove,
    ),
    "recheck": Command(
        "recheck",
        "re-download a random sample of URLs: link rot and content drift",
        "",
        RecheckArgs,
        run_recheck,
        plan_recheck,
    ),
}
