"""`thresher run JOB.yaml [--plan]`: a job is an ordered list of `thresher` commands, run to the end and
resumable.

    name: build-subset-synthetic
    out: thresher-jobs/build-subset     # the job's directory: relative paths in steps are inside it
    vars: {size: 2000}                  # {name} placeholders in steps; `--var name=value` overrides
    plan: {...}                         # what `--plan` sizes the job for (thresher/app/plan.py)
    include: [pool]                     # other jobs' steps run first (their vars and plan are defaults)
    steps:
      - synth: {out: source, samples: 20000}
      - download: {urls: source/urls.parquet, out: pool, config: demo, serve: source}
      - subset: {pool: pool, recipe: [datacomp-none, dfn], size: "{size}", out: subsets}

Each step is one command: its keys are the command's positional arguments and options (`--eval-set`
is `eval_set`; a list repeats a repeatable option or joins a comma-separated one; true/false for
flags), checked when the job loads against the command's arguments in the registry
(thresher/app/commands/), which are what `thresher CMD --help` lists: a step accepts exactly those,
needs the required ones, and its values must parse. `audit` takes `action: verify|report|...`. One key
is the runner's: `serve: DIR` serves that synthetic pool on 127.0.0.1 while the step runs.
Placeholders: `{repo}` (this checkout), `{job_dir}` (the job file's directory), `{out}` and the job's
`vars`. A step identical to one before it (the same command with the same arguments, as when two
included jobs both include the pool job) runs once, so jobs compose: jobs/demo.yaml is build_subset,
audit and ab_test on one pool.

The runner prints each step as the command line it runs, and runs the command with exactly what that
line parses to, so a job can be replayed by hand. After a step succeeds, OUT/_job/NN-COMMAND.json
records a hash of that step and every step before it; a re-run skips the steps whose records match
and runs from the first that changed. The stages resume on their own as well, so a step killed
halfway picks up at its first unfinished shard. `out` may be object storage
(s3://...); the records then live in ./thresher-jobs/NAME/_job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from thresher.app import commands
from thresher.core.config import CONFIG_DIR, check_name, read_yaml, substitute
from thresher.core.errors import InputError, StageError, cause, describe

REPO = CONFIG_DIR.parent
JOB_DIR = REPO / "jobs"
RUNNER_KEYS = ("serve",)
# options whose values are paths: made absolute against the job's directory, since the stages hand
# paths to Ray workers that do not share the driver's working directory
PATH_KEYS = {
    "out",
    "urls",
    "pool",
    "data",
    "subset",
    "uids_only",
    "metadata",
    "run",
    "grid",
    "results",
    "images",
    "eval_set",
    "labels",
    "dir",
    "npz_dir",
    "eval_sets",
    "blocklists",
    "serve",
}
# a preset name or tag, or else a file: a file when it exists already or has a file's suffix
MAYBE_PATH_KEYS = {"config", "recipe", "scale", "pretrained"}
FILE_SUFFIXES = (".yaml", ".yml", ".pt", ".bin", ".safetensors", ".npz", ".npy", ".parquet", ".txt")


@dataclass
class Step:
    index: int
    command: str
    args: dict
    serve: str | None = None
    argv: list[str] = field(default_factory=list)  # what the runner prints, and what its record hashes
    call: commands.Call | None = None  # the command it runs, bound to what argv parses to


@dataclass
class Job:
    path: str
    name: str
    out: str
    vars: dict
    plan: dict
    steps: list[Step]


def resolve_path(spec: str) -> Path:
    """A job file, or a job's name under jobs/ (`build_subset`, `ab_test.yaml`)."""
    for p in (Path(spec), JOB_DIR / spec, JOB_DIR / f"{spec}.yaml"):
        if p.is_file():
            return p
    names = ", ".join(sorted(p.stem for p in JOB_DIR.glob("*.yaml")))
    raise InputError(f"no job file {spec!r}; jobs in {JOB_DIR}: {names}")


def _read(path: Path, seen: tuple = ()) -> dict:
    """The job file with its `include:`s expanded: their steps first, their vars and plan as defaults."""

    if path in seen:
        raise InputError(f"{path}: includes itself (through {' -> '.join(map(str, seen))})")
    data = read_yaml(path, "job") or {}
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: a job is a mapping with name, out, include, vars, plan and steps, not a {type(data).__name__}"
        )
    unknown = set(data) - {"name", "out", "include", "vars", "plan", "steps"}
    if unknown:
        raise InputError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}; a job has name, out, include, vars, plan and steps"
        )
    steps, variables, plan = [], {}, {}
    for inc in data.get("include") or []:
        sub = _read(resolve_path(inc), (*seen, path))
        steps += sub["steps"]
        variables.update(sub["vars"])
        plan.update(sub["plan"])
    if not isinstance(data.get("steps", []), list):
        raise InputError(f"{path}: `steps` must be a list of {{command: {{option: value}}}}")
    return {
        **data,
        "steps": steps + [(str(path), s) for s in data.get("steps") or []],
        "vars": {**variables, **(data.get("vars") or {})},
        "plan": {**plan, **(data.get("plan") or {})},
    }


def load(spec: str, overrides: dict | None = None, out: str | None = None) -> Job:
    path = resolve_path(spec)
    data = _read(path)
    if not data["steps"]:
        raise InputError(f"{path}: no steps (a job lists `steps:`, or `include:`s another job)")
    variables = {**data["vars"], **(overrides or {})}
    out_dir = out or data.get("out") or f"thresher-jobs/{path.stem}"
    out_dir = out_dir.rstrip("/") if "://" in out_dir else os.path.abspath(out_dir)
    subs = {"repo": str(REPO), "job_dir": str(path.parent.resolve()), "out": out_dir, **variables}
    for _ in range(len(variables)):  # vars may use placeholders too ({repo}, {out}, other vars)
        subs.update({k: substitute(v, subs, f"{path}: vars.{k}") for k, v in variables.items()})
    steps, seen = [], set()
    for i, (source, entry) in enumerate(data["steps"], 1):
        where = f"{source}: step {i}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise InputError(f"{where}: a step is one `command: {{option: value, ...}}` mapping, got {entry!r}")
        ((command, args),) = entry.items()
        args = substitute(dict(args or {}), subs, where)
        serve = args.pop("serve", None)
        serve = None if serve in (None, "", "none") else serve  # "none": a real pool, nothing to serve
        step = Step(len(steps) + 1, command, args, serve=_path("serve", serve, out_dir) if serve else None)
        step.argv, step.call = bind_step(command, args, out_dir, where)
        if (key := json.dumps([step.argv, step.serve])) not in seen:  # the same command twice runs once
            seen.add(key)
            steps.append(step)
    name = check_name(str(data.get("name") or path.stem), "job name", f"{path}: field 'name'")
    return Job(str(path), name, out_dir, variables, data["plan"], steps)


def bind_step(command: str, args: dict, out_dir: str, where: str) -> tuple[list[str], commands.Call]:
    """The `thresher` argument list of one step, and the call it makes: the command from the registry,
    bound to what that argument list parses to."""
    cmd = commands.COMMANDS.get(command)
    if cmd is None:
        raise InputError(f"{where}: unknown command {command!r}; commands: {', '.join(sorted(commands.COMMANDS))}")
    argv, args = [command], dict(args)
    if cmd.actions:  # audit ACTION ...
        action = args.pop(commands.ACTION, None)
        if action not in cmd.actions:
            raise InputError(f"{where}: {command} needs `{commands.ACTION}:` one of {', '.join(cmd.actions)}")
        cmd = cmd.actions[action]
        argv.append(action)
    words = _words(command, cmd.args, args, out_dir, where)
    argv += [w for ws in words.values() for w in ws]
    return argv, commands.Call(command, cmd, commands.bind(cmd.args, words, where))


def _words(command: str, cls: type, args: dict, out_dir: str, where: str) -> dict[str, list[str]]:
    """Each given argument's command-line words: the positionals in the command's order, then the options
    in the step's (the order every step record hashes)."""
    by_dest = {a.dest: a for a in commands.arguments(cls)}
    words, args = {}, dict(args)
    for a in (a for a in by_dest.values() if a.kind == commands.POSITIONAL):
        if a.dest not in args:
            if not a.required:
                continue
            raise InputError(f"{where}: {command} needs `{a.dest}:` (see thresher {command} --help)")
        words[a.dest] = a.tokens(args.pop(a.dest), lambda v, k=a.dest: _path(k, v, out_dir, where))
    for key, value in args.items():
        a = by_dest.get(key)
        if a is None:
            options = ", ".join(sorted(d for d, x in by_dest.items() if x.kind != commands.POSITIONAL))
            raise InputError(f"{where}: {command} has no option {key!r}; options: {options}")
        if a.kind == commands.FLAG and not isinstance(value, bool):
            raise InputError(f"{where}: {key} is a flag: true or false, not {value!r}")
        words[key] = a.tokens(value, lambda v, k=key: _path(k, v, out_dir, where))
    missing = [
        a.dest for a in by_dest.values() if a.required and a.kind != commands.POSITIONAL and not words.get(a.dest)
    ]
    if missing:
        raise InputError(f"{where}: {command} needs `{missing[0]}:` (see thresher {command} --help)")
    return words


def _path(key: str, value, out_dir: str, where: str = "job") -> str:
    text = str(value)
    if isinstance(value, str) and "://" not in text and not os.path.isabs(text):
        remote = "://" in out_dir
        inside = f"{out_dir}/{text}" if remote else os.path.normpath(os.path.join(out_dir, text))
        # a job file can come from anyone: its relative outputs stay inside the job's directory
        if key in ("out", "uids_only") and (".." in Path(text).parts):
            raise InputError(
                f"{where}: {key} {text!r} leaves the job's directory {out_dir}; give a path inside it, or an absolute one"
            )
        if key in PATH_KEYS or (
            key in MAYBE_PATH_KEYS and (text.endswith(FILE_SUFFIXES) or (not remote and os.path.exists(inside)))
        ):
            return inside
    return text


def show(argv: list[str]) -> str:
    return "thresher " + " ".join(shlex.quote(a) for a in argv)


def state_dir(job: Job) -> Path:
    """Where the completion records live: OUT/_job, or for a job whose `out` is object storage, a local
    thresher-jobs/NAME/_job (records are small and read before every step)."""
    return Path(os.path.abspath(f"thresher-jobs/{job.name}") if "://" in job.out else job.out) / "_job"


def _marker(job: Job, step: Step) -> Path:
    return state_dir(job) / f"{step.index:02d}-{step.command}.json"


def step_hashes(job: Job) -> list[str]:
    """Each step's hash covers it and every step before it: a changed step re-runs everything after it."""
    out, h = [], ""
    for step in job.steps:
        h = hashlib.sha256((h + json.dumps([step.argv, step.serve])).encode()).hexdigest()
        out.append(h)
    return out


def run(job: Job, ray_address: str | None = None, log=print) -> dict:
    from thresher.synthetic import serve

    os.makedirs(state_dir(job), exist_ok=True)
    log(f"[run] job {job.name} ({job.path}): {len(job.steps)} steps in {job.out}")
    done = []
    for step, h in zip(job.steps, step_hashes(job)):
        marker = _marker(job, step)
        head = f"[run] step {step.index}/{len(job.steps)}"
        if marker.exists() and json.loads(marker.read_text()).get("hash") == h:
            log(f"{head} done already: {show(step.argv)}")
            done.append(step.index)
            continue
        for later in state_dir(job).glob("*.json"):
            if int(later.name[:2]) >= step.index:
                later.unlink()  # this step changed or never finished: what follows it is stale
        argv = step.argv + (["--ray-address", ray_address] if ray_address else [])
        call = step.call.on(ray_address) if ray_address else step.call
        log(f"{head}: {show(argv)}" + (f"   (serving {step.serve} on 127.0.0.1)" if step.serve else ""))
        t0 = time.time()
        server = serve.start(step.serve, _port(step.serve)) if step.serve else None
        try:
            rc = call.run()
        except Exception as raised:  # noqa: BLE001 - one line naming the step, its cause and how to resume
            raise StageError(
                f"job {job.name}: step {step.index} ({step.command}) failed: {describe(cause(raised))}; "
                f"fix it and run `thresher run {job.path}` again: it resumes at this step"
            ) from raised
        finally:
            if server:
                server.stop()
        if rc:
            raise StageError(
                f"job {job.name}: step {step.index} ({step.command}) failed with exit code {rc}; "
                f"fix the cause above and run `thresher run {job.path}` again: it resumes at this step"
            )
        marker.write_text(
            json.dumps(
                {
                    "hash": h,
                    "argv": argv,
                    "seconds": round(time.time() - t0, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=1,
            )
        )
        done.append(step.index)
    log(f"[run] job {job.name} finished: {len(done)} steps; outputs in {job.out}")
    return {"job": job.name, "out": job.out, "steps": len(done)}


def _port(source: str) -> int:
    record = Path(source) / "synth.json"
    if not record.exists():
        raise InputError(f"serve: {source} is not a `thresher synth` output (no synth.json)")
    return int(json.loads(record.read_text())["config"]["port"])


# ---------------------------------------------------------------------------------------------------
# `thresher run`: a command of its own, beside the registry it runs (so the registry never imports jobs)


@commands.args_dataclass
class RunArgs(commands.Common):
    job: str = commands.arg(
        help="job file, or a job name in jobs/ (build_subset, ab_test, audit, ...)", positional=True
    )
    plan: bool = commands.arg(False, "print the estimated wall time, storage, CPU- and GPU-hours instead of running")
    cluster: str | None = commands.arg(
        None,
        "with --plan: cluster to size for (configs/cluster/NAME.yaml or a Ray "
        "cluster YAML; default: the job's plan.cluster)",
    )
    dry_run: bool = commands.arg(False, "print the commands the job would run")
    var: list[str] = commands.arg(help="key=value overriding the job's vars", factory=list)
    out: str | None = commands.arg(None, "job directory (default: the job's `out`)")


def run_job(args: RunArgs) -> None:
    """A job: its plan (--plan), its commands (--dry-run), or its steps run to the end."""
    job = load(args.job, commands.parse_vars(args.var), out=args.out)
    if args.plan:
        from thresher.app.plan import plan_job, render

        print(render(plan_job(job, cluster=args.cluster)))
        return
    if args.dry_run:
        for step in job.steps:
            print(show(step.argv) + (f"   # while serving {step.serve}" if step.serve else ""))
        return
    run(job, ray_address=args.ray_address)


COMMAND = commands.Command(
    "run",
    "Run a job (jobs/*.yaml: a list of thresher commands) end to end; re-running resumes.",
    "thresher run jobs/build_subset.yaml --plan",
    RunArgs,
    run_job,
)
