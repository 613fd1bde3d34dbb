"""Recipes and subsets: `thresher filter`, `filters` (the registered filters), `presets` (what ships in
configs/ and jobs/) and `subset`: each one's `args` and `run`. Their cost models are the stages' own
(thresher/stages/filter/cost.py, thresher/stages/subset/cost.py), named in `COMMANDS`.
"""

from __future__ import annotations

from thresher.app.commands.registry import Common, arg, args_dataclass
from thresher.core.config import CONFIG_DIR, parse_vars
from thresher.core.errors import InputError

# ---------------------------------------------------------------------------------------------------
# filter, filters, subset: recipes and subsets


@args_dataclass
class FilterArgs(Common):
    pool: str = arg(help="pool with the features (and dedup results) the recipe reads", positional=True)
    recipe: list[str] = arg(help="preset name in configs/recipes/ or a YAML file; repeat for several")
    var: list[str] = arg(help="key=value for {key} placeholders in the recipe", factory=list)


def run_filter(args: FilterArgs) -> None:
    """Each recipe's per-sample decisions and funnel."""
    from thresher.stages.filter.filter import run

    variables = parse_vars(args.var)
    for recipe in args.recipe:
        manifest = run(args.pool, recipe, variables, ray_address=args.ray_address)
        print(
            f"filter {manifest['recipe']}: kept {manifest['kept']} of {manifest['samples']} -> "
            f"{args.pool}/decisions/{manifest['recipe']} (funnel in {args.pool}/stats/filter-{manifest['recipe']}.json)"
        )


@args_dataclass
class FiltersArgs(Common):
    pass


def run_filters(args: FiltersArgs) -> None:
    """The registered filters, built-in and from plugins, with their one-line docs."""
    from thresher.filters import api

    for name, spec in api.known().items():
        print(f"{name:22s} {spec.doc}")


# what `thresher presets` lists: kind -> (folder under the bundled configs, file suffix)
PRESET_KINDS = {
    "download": ("download", ".yaml"),
    "synth": ("synth", ".yaml"),
    "dedup": ("dedup", ".yaml"),
    "recipes": ("recipes", ".yaml"),
    "scales": ("scales", ".yaml"),
    "models": ("models", ".json"),
    "classes": ("classes", ".txt"),
    "cluster": ("cluster", ".yaml"),
    "jobs": ("../jobs", ".yaml"),
}


@args_dataclass
class PresetsArgs(Common):
    kind: str | None = arg(None, f"one kind: {', '.join(PRESET_KINDS)} (default: all)", positional=True)


def run_presets(args: PresetsArgs) -> None:
    """What ships inside the package: names any --config, --recipe, --scale, --model or job takes."""
    if args.kind is not None and args.kind not in PRESET_KINDS:
        raise InputError(f"no preset kind {args.kind!r}; kinds: {', '.join(PRESET_KINDS)}")
    for kind, (folder, suffix) in PRESET_KINDS.items():
        if args.kind in (None, kind):
            names = sorted(p.name[: -len(suffix)] for p in (CONFIG_DIR / folder).glob(f"*{suffix}"))
            print(f"{kind:9s} {' '.join(names)}")


@args_dataclass
class SubsetArgs(Common):
    pool: str = arg(
        help="pool with the recipes' decisions (the filter runs first where they are missing)", positional=True
    )
    recipe: list[str] = arg(help="preset name or YAML file; repeat for equal-sized subsets of several recipes")
    size: int | None = arg(
        None, "samples in each subset (exactly); required with --out, optional with --uids-only (default: all kept)"
    )
    out: str | None = arg(None, "subset directory (one recipe) or parent of OUT/RECIPE (several)")
    uids_only: str | None = arg(
        None,
        "write the selection as DataComp's uid file (FILE.npy: sorted u8,u8) instead of resharding; "
        "without --size, every sample the recipe keeps",
        metavar="FILE.npy",
    )
    seed: int = arg(0, "seed of the uniform draw and the shuffle (default 0)")
    samples_per_shard: int = arg(10000, "samples per output shard (default 10000)")
    allow_repeat: bool = arg(False, "upsample a recipe that keeps fewer than --size samples instead of failing")
    draws: int = arg(
        1,
        "independent draws per recipe (seeds SEED, SEED+1, ...), each in OUT[/RECIPE]/draw-K: "
        "replicates for an A/B comparison (default 1)",
    )
    var: list[str] = arg(help="key=value for the recipes' {key} placeholders", factory=list)

    def check(self) -> None:
        if bool(self.out) == bool(self.uids_only):
            raise InputError("subset: give --out DIR (a resharded subset) or --uids-only FILE.npy, one of the two")
        if self.out and self.size is None:
            raise InputError("subset: --size is required with --out (a resharded subset holds exactly N samples)")
        if self.uids_only and (len(self.recipe) != 1 or self.draws != 1 or self.allow_repeat):
            raise InputError(
                "subset --uids-only: one --recipe, one draw and no --allow-repeat (a uid file holds a uid once)"
            )


def run_subset(args: SubsetArgs) -> None:
    """Exactly N samples per recipe, resharded, with a manifest and lineage; or, with --uids-only, the
    selection as DataComp's uid file."""
    from thresher.stages.subset.subset import SubsetConfig, run, target_dir, write_uid_file

    if args.uids_only:
        m = write_uid_file(
            args.pool,
            args.recipe[0],
            args.uids_only,
            size=args.size,
            seed=args.seed,
            variables=parse_vars(args.var) or None,
            ray_address=args.ray_address,
        )
        print(
            f"subset {m['plan']['recipe']}: {m['samples']} uids ({m['selection']['mode']} of "
            f"{m['selection']['kept_by_recipe']} kept) -> {args.uids_only}"
        )
        return
    cfg = SubsetConfig(
        size=args.size,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
        allow_repeat=args.allow_repeat,
        draws=args.draws,
    )
    results = run(args.pool, args.recipe, cfg, args.out, parse_vars(args.var) or None, ray_address=args.ray_address)
    for name, m in results.items():
        where = target_dir(args.out, m["recipe"], len(args.recipe), m["draw"]["index"], args.draws)
        rep = f", repeated ({m['selection']['repeat']})" if m["selection"]["repeat"] else ""
        print(
            f"subset {name}: {m['size']} samples ({m['selection']['mode']} of {m['selection']['kept_by_recipe']} "
            f"kept{rep}) in {len(m['shards'])} shards -> {where}"
        )
