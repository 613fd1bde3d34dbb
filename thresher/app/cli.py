"""The `thresher` command line, and only that: the entry point of the console script and of
`python -m thresher.app.cli`.

Every command is a record in the registry (thresher/app/commands/). This module derives the argparse
parser from the records' `args` dataclasses, turns what argparse parsed into the command's `args`,
calls the command's `run`, and ends any error in one line with an exit code: 2 for input the user
can fix, 1 for any other failure, 130 when interrupted. Nothing else in thresher/ imports it.
"""

from __future__ import annotations

import argparse
import os
import sys

from thresher.app import commands
from thresher.app.commands import FLAG, POSITIONAL, REPEAT, TOGGLE, Arg, Call
from thresher.core import __version__, netsafety
from thresher.core.config import CONFIG_DIR  # noqa: F401 - the recipes' directory, as tests and scripts reach it
from thresher.core.errors import InputError, ThresherError, cause, describe

FORMAT = argparse.RawDescriptionHelpFormatter
# `thresher audit ACTION ... --ray-address`: the action's parser takes it too (after its own arguments),
# so `audit --ray-address X verify S` and `audit verify S --ray-address X` both work; SUPPRESS leaves the
# audit parser's value alone when it is not given after the action
ACTION_RAY_HELP = "Ray cluster to run on (default: $RAY_ADDRESS or local)"


def _add_argument(target, a: Arg) -> None:
    """One registry argument as an argparse argument."""
    if a.kind == POSITIONAL:
        optional = (
            {"nargs": "+"} if a.many and a.required else {} if a.required else {"nargs": "?", "default": a.default}
        )
        target.add_argument(a.dest, type=a.type, help=a.help, **optional)
    elif a.kind == FLAG:
        target.add_argument(*a.flags, dest=a.dest, action="store_true", help=a.help)
    elif a.kind == TOGGLE:
        target.add_argument(*a.flags, dest=a.dest, action=argparse.BooleanOptionalAction, default=None, help=a.help)
    else:
        target.add_argument(
            *a.flags,
            dest=a.dest,
            action="append" if a.kind == REPEAT else "store",
            type=a.type,
            default=a.default,
            required=a.required,
            choices=a.choices,
            metavar=a.metavar,
            help=a.help,
        )


def _add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    groups: dict = {}  # help section title -> its argparse group
    for a in commands.arguments(cls):
        if a.dest in skip:
            continue
        if a.group is not None and a.group not in groups:
            groups[a.group] = parser.add_argument_group(a.group)
        _add_argument(groups[a.group] if a.group is not None else parser, a)


def all_commands() -> dict[str, commands.Command]:
    """The workflows (demo, run: built on jobs, which are built on the registry) and the registry's own."""
    from thresher.app import demo, jobs

    return {"demo": demo.COMMAND, "run": jobs.COMMAND, **commands.COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in the registry, in its order, each with its help and example."""
    parser = argparse.ArgumentParser(
        prog="thresher", description="Curate image-text pre-training datasets.", formatter_class=FORMAT
    )
    parser.add_argument("--version", action="version", version=f"thresher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in all_commands().values():
        p = sub.add_parser(
            cmd.name, help=cmd.help, description=cmd.help, formatter_class=FORMAT, epilog=f"example:\n  {cmd.example}"
        )
        _add_arguments(p, cmd.args)
        if cmd.actions:
            actions = p.add_subparsers(dest=commands.ACTION, required=True, metavar="ACTION")
            for action in cmd.actions.values():
                a = actions.add_parser(action.name, help=action.help)
                _add_arguments(a, action.args, skip=("ray_address",))
                a.add_argument("--ray-address", default=argparse.SUPPRESS, help=ACTION_RAY_HELP)
    return parser


def parse(argv: list[str] | None = None) -> Call:
    """The command a command line names, bound to its arguments (argparse exits 2 on a bad one)."""
    values = vars(build_parser().parse_args(argv))
    cmd = all_commands()[values["command"]]
    if cmd.actions:
        cmd = cmd.actions[values[commands.ACTION]]
    return Call(values["command"], cmd, commands.make(cmd.args, values))


def main(argv: list[str] | None = None) -> int:
    netsafety.no_third_party_traffic()  # first: inherited by every process the command starts
    try:
        call = parse(argv)
    except InputError as err:  # a rule across arguments (args.check): a usage error, in one line
        print(f"error: {describe(err)}", file=sys.stderr)
        return 2
    try:
        return call.run()
    except KeyboardInterrupt:
        print("interrupted: completed shards are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as raised:  # noqa: BLE001 - a command ends in one line, never a traceback (issue 15)
        err = cause(raised)
        if os.environ.get("THRESHER_DEBUG"):
            raise
        if isinstance(err, ThresherError):
            print(f"error: {describe(err)}", file=sys.stderr)
            return 2 if isinstance(err, InputError) else 1
        print(f"error: {call.name}: {describe(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
