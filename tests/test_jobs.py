"""`thresher run JOB.yaml`: jobs as lists of commands, resume by completion records, and `--plan`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from thresher.app import cli, jobs, plan
from thresher.core.errors import InputError

REPO = Path(__file__).resolve().parent.parent


def write_job(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_steps_are_the_commands_they_print(tmp_path):
    job = jobs.load(
        str(
            write_job(
                tmp_path,
                """
name: t
out: work
vars: {size: 300, recipe: datacomp-basic}
steps:
  - subset: {pool: pool, recipe: ["{recipe}", dfn], size: "{size}", out: subsets, allow_repeat: true}
  - dedup: {pool: pool, semantic: false, eval_sets: [src/eval/a, src/eval/b]}
  - audit: {action: recheck, subset: s, sample: 10, allow_private_addresses: true}
  - train: {data: trusted, out: run, scale: tiny/w32-2k}
  - features: {pool: pool, model: thresher-tiny, pretrained: run/x/epoch_1.pt, scorer_id: dfn, no_base: true}
""",
            )
        ),
        overrides={"size": 200},
        out=str(tmp_path / "w"),
    )
    w = str(tmp_path / "w")
    assert job.steps[0].argv == [
        "subset",
        f"{w}/pool",
        "--recipe",
        "datacomp-basic",
        "--recipe",
        "dfn",
        "--size",
        "200",
        "--out",
        f"{w}/subsets",
        "--allow-repeat",
    ]
    assert job.steps[1].argv == ["dedup", f"{w}/pool", "--no-semantic", "--eval-sets", f"{w}/src/eval/a,{w}/src/eval/b"]
    assert job.steps[2].argv == ["audit", "recheck", f"{w}/s", "--sample", "10", "--allow-private-addresses"]
    assert job.steps[3].argv[-2:] == ["--scale", "tiny/w32-2k"]  # a preset stays a name
    assert f"{w}/run/x/epoch_1.pt" in job.steps[4].argv  # a checkpoint path is made absolute
    # every argv parses with the real parser, list options into lists
    for step in job.steps:
        cli.build_parser().parse_args(step.argv)
    assert cli.build_parser().parse_args(job.steps[1].argv).eval_sets == [f"{w}/src/eval/a", f"{w}/src/eval/b"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("  - frobnicate: {x: 1}", "unknown command 'frobnicate'"),
        ("  - subset: {pool: p, recipe: r, size: 1, out: o, sise: 2}", "subset has no option 'sise'"),
        ("  - subset: {recipe: r, size: 1, out: o}", "subset needs `pool:`"),
        ("  - subset: {pool: p, recipe: r, size: '{n}', out: o}", "unknown placeholder {n}"),
        ("  - subset: {pool: p, recipe: r, size: 1, out: o, allow_repeat: 'yes'}", "allow_repeat is a flag"),
        ("  - audit: {subset: s}", "audit needs `action:`"),
        ("  - audit: {action: verify, subset: s, sise: 1}", "audit has no option 'sise'; options: ray_address"),
        ("  - subset: {pool: p, recipe: r, out: o}", "subset: --size is required with --out"),
        ("  - subset: {pool: p, recipe: r, size: lots, out: o}", "size: invalid int value: 'lots'"),
        (
            "  - grid: {subset: s, scale: tiny, eval_set: e, out: o, replicates: sideways}",
            "replicates: invalid choice: 'sideways' (choose from crossed, paired)",
        ),
        ("  - serve: {dir: [a, b]}", "`dir` takes one value, not 2"),
    ],
)
def test_bad_steps_name_the_file_the_step_and_the_fix(tmp_path, body, message):
    path = write_job(tmp_path, f"steps:\n{body}\n")
    with pytest.raises(InputError, match=re.escape(message)) as err:
        jobs.load(str(path))
    assert f"{path}: step 1" in str(err.value)


def test_an_unknown_option_lists_the_options_the_command_has(tmp_path):
    path = write_job(
        tmp_path,
        "steps:\n  - filter: {pool: p, recipe: r}\n  - subset: {pool: p, recipe: r, size: 1, out: o, sise: 2}\n",
    )
    with pytest.raises(InputError) as err:
        jobs.load(str(path))
    assert str(err.value) == (
        f"{path}: step 2: subset has no option 'sise'; options: allow_repeat, draws, out, "
        f"ray_address, recipe, samples_per_shard, seed, size, uids_only, var"
    )


# Each step's record (OUT/_job) hashes its argv: a change to how a step is spelled re-runs every existing
# job. These were computed with the argparse-reading jobs.argv_for, before the command registry
# (commit 6526ef2), with out=PINNED_OUT (a directory that does not exist, so presets stay names).
PINNED_OUT = "/thresher-pinned"
DEMO_STEPS = [
    [
        [
            "synth",
            "--out",
            "/thresher-pinned/source",
            "--samples",
            "20000",
            "--trusted",
            "2000",
            "--eval-classification",
            "500",
            "--seed",
            "0",
            "--port",
            "8765",
        ],
        None,
    ],
    [
        ["download", "/thresher-pinned/source/urls.parquet", "--out", "/thresher-pinned/pool", "--config", "demo"],
        "/thresher-pinned/source",
    ],
    [["features", "/thresher-pinned/pool"], None],
    [
        [
            "features",
            "/thresher-pinned/pool",
            "--model",
            "thresher-tiny",
            "--pretrained",
            "none",
            "--scorer-id",
            "clip_tiny",
            "--no-base",
        ],
        None,
    ],
    [
        [
            "train",
            "/thresher-pinned/source/trusted",
            "--out",
            "/thresher-pinned/dfn-run",
            "--name",
            "dfn",
            "--model",
            "thresher-tiny",
            "--epochs",
            "5",
        ],
        None,
    ],
    [
        [
            "features",
            "/thresher-pinned/pool",
            "--model",
            "thresher-tiny",
            "--pretrained",
            "/thresher-pinned/dfn-run/dfn/checkpoints/epoch_5.pt",
            "--scorer-id",
            "dfn",
            "--no-base",
        ],
        None,
    ],
    [
        [
            "dedup",
            "/thresher-pinned/pool",
            "--no-semantic",
            "--eval-sets",
            "/thresher-pinned/source/eval/shapes_kind,/thresher-pinned/source/eval/shapes_color",
        ],
        None,
    ],
    [["filter", "/thresher-pinned/pool", "--recipe", "dfn-dedup"], None],
    [
        [
            "subset",
            "/thresher-pinned/pool",
            "--recipe",
            "dfn-dedup",
            "--size",
            "2000",
            "--out",
            "/thresher-pinned/subset",
            "--seed",
            "0",
            "--samples-per-shard",
            "500",
        ],
        None,
    ],
    [["audit", "verify", "/thresher-pinned/subset"], None],
    [["audit", "report", "/thresher-pinned/subset", "--out", "/thresher-pinned/reports/subset.html"], None],
    [
        [
            "audit",
            "recheck",
            "/thresher-pinned/subset",
            "--sample",
            "200",
            "--out",
            "/thresher-pinned/reports/recheck.json",
            "--allow-private-addresses",
        ],
        "/thresher-pinned/source",
    ],
    [["filter", "/thresher-pinned/pool", "--recipe", "datacomp-none", "--recipe", "dfn-dedup"], None],
    [
        [
            "subset",
            "/thresher-pinned/pool",
            "--recipe",
            "datacomp-none",
            "--recipe",
            "dfn-dedup",
            "--size",
            "2000",
            "--out",
            "/thresher-pinned/subsets",
            "--seed",
            "0",
            "--samples-per-shard",
            "500",
        ],
        None,
    ],
    [
        [
            "grid",
            "--subset",
            "/thresher-pinned/subsets/datacomp-none",
            "--subset",
            "/thresher-pinned/subsets/dfn-dedup",
            "--scale",
            "ab",
            "--eval-set",
            "/thresher-pinned/source/eval/shapes_color",
            "--eval-set",
            "/thresher-pinned/source/eval/shapes_retrieval",
            "--out",
            "/thresher-pinned/grid",
        ],
        None,
    ],
    [
        [
            "compare",
            "/thresher-pinned/grid",
            "--a",
            "datacomp-none",
            "--b",
            "dfn-dedup",
            "--metric",
            "shapes_retrieval/image_retrieval_recall@5",
            "--target-compute",
            "3x",
            "--out",
            "/thresher-pinned/reports/ab",
        ],
        None,
    ],
]
DEMO_LAST_STEP_HASH = "4603df93430dc2e986b1853b54c186cfbd49e03047a89243a850d58dd0a0e8dd"
# sha256 of json.dumps([[argv, serve], ...]) of each shipped job's steps, the same way
SHIPPED_STEPS_SHA256 = {
    "ab_test": "87e8ba72b75c8b9fcbd4843c0f3a19d0e7ff2f9891c5f353103a4b88ee41c12d",
    "audit": "a9641970a3e56d30a3aac7dae0b191354b82e29c854e92b6ae19150ef3aacdc6",
    "build_subset": "20702a0a77b5cccaf63f15b3dcba7216f02bc23df90fa9fb25520922440bbb0b",
    "build_subset_datacomp": "c85dc75309c2d4c65dda1a4a24916d46abee6bdc56d790c3b74921739f5971ea",
    "demo": "4afe3f883b98f8cb4cf3ba5d5c9457db84ee4bbcd15100838738409aeffafe01",
    "pool": "602b1e6bb9dde91f707fda2030208ab1dbb3e9d8dec4beaa44b9de969ebface7",
}


def test_demo_steps_keep_the_argv_their_records_hash():
    job = jobs.load("demo", out=PINNED_OUT)
    assert [[s.argv, s.serve] for s in job.steps] == DEMO_STEPS
    assert jobs.step_hashes(job)[-1] == DEMO_LAST_STEP_HASH


@pytest.mark.parametrize("name", sorted(SHIPPED_STEPS_SHA256))
def test_shipped_jobs_keep_their_steps_argv(name):
    job = jobs.load(name, out=PINNED_OUT)
    steps = json.dumps([[s.argv, s.serve] for s in job.steps])
    assert hashlib.sha256(steps.encode()).hexdigest() == SHIPPED_STEPS_SHA256[name], steps


def test_a_step_runs_what_its_printed_command_line_parses_to():
    """jobs.run calls the registry with the step's bound arguments; they are what `thresher ARGV` would run."""
    for name in sorted(p.stem for p in (REPO / "jobs").glob("*.yaml")):
        for step in jobs.load(name, out=PINNED_OUT).steps:
            assert cli.parse(step.argv) == step.call, (name, step.argv)


def test_include_runs_the_other_jobs_steps_first_with_its_vars_as_defaults(tmp_path):
    (tmp_path / "base.yaml").write_text("vars: {size: 5, seed: 1}\nsteps:\n  - filters: {}\n")
    job = jobs.load(
        str(
            write_job(
                tmp_path,
                "include: [%s]\nvars: {size: 7}\nsteps:\n"
                "  - subset: {pool: p, recipe: r, size: '{size}', out: o, seed: '{seed}'}\n" % (tmp_path / "base.yaml"),
            )
        )
    )
    assert [s.command for s in job.steps] == ["filters", "subset"]
    assert job.steps[1].argv[job.steps[1].argv.index("--size") + 1] == "7"
    assert job.steps[1].argv[job.steps[1].argv.index("--seed") + 1] == "1"


def test_shipped_jobs_load_and_parse():
    names = sorted(p.stem for p in (REPO / "jobs").glob("*.yaml"))
    assert {"build_subset", "build_subset_datacomp", "ab_test", "audit", "pool"} <= set(names)
    for name in names:
        job = jobs.load(name)
        for step in job.steps:
            cli.build_parser().parse_args(step.argv)


def test_run_resumes_and_reruns_from_the_first_changed_step(featured_pool, tmp_path, ray_local, capsys):
    path = write_job(
        tmp_path,
        f"""
name: small
vars: {{size: 300}}
steps:
  - filter: {{pool: {featured_pool}, recipe: datacomp-basic}}
  - subset: {{pool: {featured_pool}, recipe: datacomp-basic, size: "{{size}}", out: "subset-{{size}}", samples_per_shard: 150}}
  - audit: {{action: verify, subset: "subset-{{size}}"}}
""",
    )
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out)]) == 0
    assert json.loads((out / "subset-300" / "manifest.json").read_text())["size"] == 300
    records = sorted(p.name for p in (out / "_job").glob("*.json"))
    assert records == ["01-filter.json", "02-subset.json", "03-audit.json"]
    capsys.readouterr()
    assert cli.main(["run", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("done already") == 3  # nothing re-runs
    # a changed step re-runs, and so does every step after it
    assert cli.main(["run", str(path), "--out", str(out), "--var", "size=200"]) == 0
    printed = capsys.readouterr().out
    assert "step 1/3 done already" in printed and "step 2/3: thresher subset" in printed
    assert "step 3/3: thresher audit verify" in printed
    assert json.loads((out / "subset-200" / "manifest.json").read_text())["size"] == 200


def test_a_failing_step_stops_the_job_and_says_how_to_resume(featured_pool, tmp_path, ray_local, capsys):
    path = write_job(
        tmp_path, f"steps:\n  - subset: {{pool: {featured_pool}, recipe: datacomp-basic, size: 100000000, out: s}}\n"
    )
    assert cli.main(["run", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "step 1 (subset) failed" in err and "resumes at this step" in err
    assert len(err.strip().splitlines()) == 1 and "100000000" in err  # one line, with the step's own error
    assert not list((tmp_path / "o" / "_job").glob("*.json"))


def test_plan_prints_totals_and_traces_every_throughput_to_a_measurement(capsys):
    assert cli.main(["run", "build_subset_datacomp", "--plan"]) == 0
    text = capsys.readouterr().out
    assert "cluster: thresher-datacomp: 73 node(s), 5632 CPUs, 64 GPUs" in text
    assert re.search(r"total: wall [0-9.]+ h, .* CPU-hours, .* GPU-hours, .* TB", text)
    # image-based filtering's k-means is costed (DataComp's 100k clusters: hierarchical), and nothing warns
    assert "image_clusters: k-means with 100,000 clusters, hierarchical (317 coarse x ~315)" in text
    assert "warning" not in text and "left out" in text and "k-means are left out" not in text
    p = plan.plan_job(jobs.load("build_subset_datacomp"))
    assert p["cpu_hours"] > 1e3 and p["gpu_hours"] > 0.1 and p["disk_bytes"] > 1e14
    table = plan.load_throughputs()
    for e in p["steps"]:
        assert e.inputs or e.command == "fit", e  # every step is costed from some measured figure
        for key in e.inputs:
            entry = table[key.split(" ")[0]]
            assert entry["rate"] > 0 and entry["measured"]
            # traceable: a benchmark script in this repository, or a named published figure
            assert re.search(r"benchmarks/\w+\.py", entry["source"]) or entry["measured"] == "published", key
            script = re.search(r"benchmarks/\w+\.py", entry["source"])
            assert script is None or (REPO / script.group(0)).exists(), key


def test_plan_of_the_ab_test_counts_its_training_runs(capsys):
    p = plan.plan_job(jobs.load("ab_test"), cluster="local")
    grid = next(e for e in p["steps"] if e.command == "grid")
    assert "2 subsets x 3 scales x 3 seeds = 18 runs" in grid.what and grid.cpu_s > 0


def test_ab_test_job_runs_end_to_end_with_a_plugin_from_outside(plugin_site, tmp_path):
    """`thresher run jobs/ab_test.yaml` itself, in a fresh process that sees the example plugin package
    only through PYTHONPATH (installed outside the repository), on a small pool and two quick scales."""
    (tmp_path / "scales.yaml").write_text(
        "defaults: {batch_size: 64, lr: 1.0e-3, warmup: 1, schedule: const, checkpoints: 4, precision: fp32,"
        " shard_image_size: 80}\n"
        "scales:\n  - {name: a, model: thresher-w32, samples_seen: 512}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(plugin_site)
    # the job and the plugin's import are this test's point, not where steps run: on the local executor it
    # takes 43 s instead of 63 (no Ray start, no worker importing open_clip per model step). The same
    # steps run on Ray in the demo's job (tests/conftest.py), and a plugin seen by Ray's workers through
    # PYTHONPATH in docs/plugins.md's examples (tests/test_docs.py)
    env["THRESHER_EXECUTOR"] = "local"
    out = tmp_path / "ab"
    args = [
        str(Path(sys.executable).parent / "thresher"),
        "run",
        "ab_test",
        "--out",
        str(out),
        "--var",
        "samples=700",
        "--var",
        "trusted=200",
        "--var",
        "dfn_epochs=1",
        "--var",
        "eval_images=40",
        "--var",
        "size=150",
        "--var",
        f"scales={tmp_path / 'scales.yaml'}",
        "--var",
        f"port={free_port()}",
    ]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    manifest = json.loads((out / "pool" / "decisions" / "example-plugin" / "manifest.json").read_text())
    assert manifest["plugins"]["clip_caption_quality"]["package"] == "thresher-example-filters"
    report = json.loads((out / "reports" / "ab" / "compare.json").read_text())
    # one quick scale gives each recipe 4 points: a verdict, or a report saying the points cannot support one
    assert report["a"] == "datacomp-none" and report["b"] == "example-plugin" and report["verdict"]
    assert len((out / "grid" / "results.csv").read_text().splitlines()) == 1 + 2 * 4
    assert (out / "reports" / "ab" / "compare.html").exists()


def test_plan_warns_when_dedup_in_one_process_outgrows_the_head_node(tmp_path):
    """Dedup without --partitions holds the pool's base columns in one process: at 12.8B that is ~3 TB,
    more than the head node's memory, and the plan says so and names the partitioned path. Partitioned
    SemDeDup spreads its products and its k-means (hierarchical past 16,384 clusters) over tasks."""

    def render(args: str) -> str:
        path = write_job(
            tmp_path,
            "name: t\nplan: {cluster: datacomp-aws, pool_samples: 12800000000}\n"
            f"steps:\n  - dedup: {{pool: pool, {args}}}\n",
        )
        return plan.render(plan.plan_job(jobs.load(str(path), out=str(tmp_path / "o"))))

    text = render("semantic: false")
    assert re.search(r"warning: step 1 \(dedup\) holds 3\.\d+ TB in one process, more than the head node's", text)
    assert "--partitions N" in text and "(in one process)" in text
    text = render("semantic: false, perceptual: false, partitions: 256")
    assert "warning: step 1" not in text and "exact over 256 partitions" in text
    text = render("perceptual: false, probes: 1, partitions: 1024")
    assert "k-means with 12,121,600 clusters, hierarchical (3,482 coarse x ~3,481)" in text
    assert "over 1024 partitions" in text and "warning" not in text  # its k-means is costed, not refused
    assert "warning" not in render("perceptual: false, probes: 1, partitions: 64, clusters: 100000")
