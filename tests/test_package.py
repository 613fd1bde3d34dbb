"""Thresher as a real package (issue 16's names, issue 17's package data): the wheel holds only the
`thresher` namespace, with every preset, recipe, scale, model config, class list and job inside it,
and an installed wheel (not editable) works from a directory far from any checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import free_port, pip

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what the build reads, so it writes nothing into the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for d in ("thresher", "configs", "jobs"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(tmp / "out"), str(src))
    (built,) = (tmp / "out").glob("thresher-*.whl")
    return built


def test_pyproject_lists_every_package_folder():
    """[tool.setuptools] packages is written out (configs/ and jobs/ are mapped in from the top): a new
    package folder missing there installs from a checkout but not from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "thresher").rglob("__init__.py")}
    assert folders - listed == set(), folders - listed


def test_the_wheel_holds_one_namespace_and_every_bundled_file(wheel):
    """thresher/'s layers install as thresher.core, thresher.exec, ..., never as top-level packages
    that would collide with other projects'; configs/ and jobs/ ship
    beside them, where the code looks for them."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"thresher"}, tops
    assert "thresher/exec/execute.py" in names and "thresher/filters/builtin.py" in names
    assert not any(n.startswith("thresher/__init__") for n in names)  # a namespace: room for thresher.* plugins
    bundled = sorted(
        f"thresher/{p}"
        for p in subprocess.run(
            ["git", "ls-files", "configs", "jobs"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
    )
    assert bundled and [n for n in bundled if n not in names] == []
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "thresher = thresher.app.cli:main" in text and "builtin = thresher.filters.builtin" in text


@pytest.mark.slow
def test_an_installed_wheel_runs_a_job_from_any_directory(wheel, tmp_path):
    """The wheel installed (not editable) into a fresh environment whose only other packages are this
    environment's dependencies: from a directory outside the checkout it lists its presets, finds a
    bundled job by name, and runs a small job that reads a download preset, a model config and a recipe
    from inside the package."""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the dependencies, by path only: a .pth line is not a site dir, so the editable install's finder
    # in that directory is never run, and `thresher` can only come from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip("install", "--no-compile", "--target", str(site), str(wheel))
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}

    def thresher(*args, timeout=600):
        return subprocess.run(
            [str(python), "-m", "thresher.app.cli", *args],
            capture_output=True,
            text=True,
            cwd=away,
            env=env,
            timeout=timeout,
        )

    where = subprocess.run(
        [str(python), "-c", "import thresher.core as p; print(p.__file__)"],
        capture_output=True,
        text=True,
        cwd=away,
        env=env,
        check=True,
    ).stdout
    assert where.startswith(str(site)), where
    presets = thresher("presets")
    assert presets.returncode == 0 and "datacomp-basic" in presets.stdout and "build_subset" in presets.stdout
    dry = thresher("run", "build_subset", "--dry-run")
    assert dry.returncode == 0 and "thresher subset" in dry.stdout, dry.stderr
    job = away / "small.yaml"
    job.write_text(f"""name: wheel-check
out: out
steps:
  - synth: {{out: source, samples: 300, trusted: 0, eval_classification: 20, eval_retrieval: 20, port: {free_port()}}}
  - download: {{urls: source/urls.parquet, out: pool, config: demo, serve: source}}
  - features: {{pool: pool, model: thresher-tiny, pretrained: none, scorer_id: clip_b32}}
  - subset: {{pool: pool, recipe: datacomp-clip-b32-30pct, size: 40, out: subset}}
""")
    run = thresher("run", str(job))
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = (away / "out" / "subset" / "manifest.json").read_text()
    assert '"size": 40' in manifest and "datacomp-clip-b32-30pct" in manifest
