"""Filter plugins from outside the repository: the example package (docs/plugin-example) is built and
installed into a temporary directory, and a fresh `thresher filter` process with it on PYTHONPATH runs
recipes that name its filter, by entry-point name and as module:function (docs/plugins.md)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.stages.filter import filter as flt

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "plugin-example"
RECIPE = ROOT / "configs" / "recipes" / "example-plugin.yaml"
THRESHER = str(Path(sys.executable).parent / "thresher")


def thresher(*args, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}  # a local Ray of its own
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)  # Ray's workers inherit it, so they import the plugin too
    return subprocess.run([THRESHER, *args], env=env, capture_output=True, text=True, timeout=300)


def by_module_recipe(path: Path) -> Path:
    """The preset with its step naming the filter as module:function instead of by registered name."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["name"] = "example-plugin-by-module"
    recipe["steps"][0]["filter"] = "thresher_example_filters:clip_caption_quality"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_plugin_recipe_runs_by_name_and_by_module(plugin_site, featured_pool, truth_by_uid, tmp_path):
    by_module = by_module_recipe(tmp_path / "by-module.yaml")
    r = thresher(
        "filter",
        str(featured_pool),
        "--recipe",
        "example-plugin",
        "--recipe",
        str(by_module),
        "--var",
        "scorer=clip_tiny",
        pythonpath=plugin_site,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "filter example-plugin: kept" in r.stdout and "filter example-plugin-by-module: kept" in r.stdout

    manifest = json.loads((featured_pool / "decisions" / "example-plugin" / "manifest.json").read_text())
    assert manifest["funnel"][0]["step"] == manifest["funnel"][0]["filter"] == "clip_caption_quality"
    assert manifest["plugins"]["clip_caption_quality"] == {
        "module": "thresher_example_filters.filters",
        "package": "thresher-example-filters",
        "version": "0.1.0",
    }
    assert manifest["prepared"]["clip_caption_quality"]["scorer"] == "clip_tiny"

    rows = flt.read(str(featured_pool), "example-plugin")
    n = rows.num_rows
    kept = int(np.sum(rows.column("keep").to_numpy(zero_copy_only=False)))
    assert manifest["kept"] == kept and int(n * 0.3) + 1 <= kept <= int(n * 0.3) + 3  # the rank element, few ties

    # the scores are the plugin's rule, recomputed here from the pool's columns
    cols = Pool(str(featured_pool)).available_columns()
    need = {c: cols[c] for c in ("uid", "clip_tiny_score", "caption_lang", "caption_lang_score", "caption_words")}
    table = {c: [] for c in need}
    for s in Pool(str(featured_pool)).shards():
        t = Pool(str(featured_pool)).shard_table(s, need)
        for c in need:
            table[c] += t.column(c).to_pylist()
    clip = np.array(table["clip_tiny_score"], np.float64)
    en = np.array([lang == "en" for lang in table["caption_lang"]])
    quality = np.clip(np.where(en, table["caption_lang_score"], 0) / 0.5, 0, 1) * np.clip(
        np.array(table["caption_words"]) / 5, 0, 1
    )
    expected = (clip - clip.mean()) / clip.std() - 3.0 * (1 - quality)
    assert rows.column("uid").to_pylist() == table["uid"]
    assert np.allclose(rows.column("score").to_numpy(zero_copy_only=False), expected, rtol=1e-4, atol=1e-4)

    # on the synthetic pool: poor captions go, which a CLIP score from the random-init scorer alone keeps
    kept_of = collections.Counter(
        truth_by_uid[u]["category"]
        for u, k in zip(rows.column("uid").to_pylist(), rows.column("keep").to_pylist())
        if k
    )
    total = collections.Counter(truth_by_uid[u]["category"] for u in table["uid"])
    for poor in ("non_english", "short_caption"):
        assert kept_of[poor] <= 0.1 * total[poor], (poor, kept_of[poor], total[poor])
    assert kept_of["clean"] >= 0.25 * total["clean"]

    # module:function resolves to the same registered filter: the same step name and the same decisions
    same = ["uid", "keep", "score", "dropped_by"]
    assert flt.read(str(featured_pool), "example-plugin-by-module").select(same).equals(rows.select(same))


def test_plugin_recipe_without_the_package_names_it(tmp_path):
    if not flt.missing_plugins(str(RECIPE)):
        pytest.skip("thresher-example-filters is installed in this environment")
    r = thresher("filter", str(tmp_path / "pool"), "--recipe", "example-plugin")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(RECIPE) in r.stderr and "thresher-example-filters" in r.stderr and "pip install" in r.stderr


def test_plugins_own_tests_pass(plugin_site):
    """What docs/plugins.md tells a plugin's author to run: its filters on hand-made tables."""
    tests = EXAMPLE / "tests"
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests), str(tests)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests,
    )
    assert r.returncode == 0, r.stdout[-3000:]


# ---------------------------------------------------------------------------------------------------
# module:function and unknown names, in this process (a module on sys.path, as a plugin under development)

PLUGIN_SOURCE = '''
from dataclasses import dataclass
import numpy as np
from thresher.filters.api import register

@dataclass
class Longer:
    chars: int = 10

@register("{name}", Longer, needs=["caption_chars"])
def longer(table, p):
    """Captions longer than `chars`."""
    return table.column("caption_chars").to_numpy() > p.chars, None

def helper(table, p):
    return np.ones(table.num_rows, bool), None
'''


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    name = f"local_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE.replace("{name}", name + "_longer"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def recipe(tmp_path, filter_ref: str, extra: str = "") -> str:
    p = tmp_path / "recipe.yaml"
    p.write_text(f"name: r\n{extra}steps:\n  - {{filter: '{filter_ref}', params: {{chars: 3}}}}\n")
    return str(p)


def test_module_function_step_resolves_to_its_registered_filter(tmp_path, local_module):
    _, steps, _ = flt.load_recipe(recipe(tmp_path, f"{local_module}:longer"))
    assert steps[0].name == steps[0].spec.name == f"{local_module}_longer" and steps[0].params.chars == 3
    assert steps[0].needs == ["caption_chars"]


@pytest.mark.parametrize(
    "ref,needle",
    [
        ("{m}:helper", "{m}.helper is not a registered filter; decorate it with @filters.api.register"),
        ("{m}:missing", "module {m} has no 'missing'"),
        ("no_such_plugin.filters:f", "no module 'no_such_plugin.filters' to import; install the package"),
        ("no_such_filter_anywhere", "known: aspect_ratio,"),
        ("no_such_filter_anywhere", "`pip install PACKAGE`) with a 'thresher.filters' entry point"),
    ],
)
def test_unresolvable_filters_name_file_step_and_fix(tmp_path, local_module, ref, needle):
    ref, needle = ref.replace("{m}", local_module), needle.replace("{m}", local_module)
    path = recipe(tmp_path, ref)
    with pytest.raises(InputError) as err:
        flt.load_recipe(path)
    assert f"{path}: step 1 ({ref}): " in str(err.value) and needle in str(err.value), str(err.value)


def test_listed_plugin_package_is_checked_first(tmp_path):
    path = recipe(tmp_path, "none", extra="plugins: [no-such-thresher-plugin]\n")
    with pytest.raises(InputError, match="needs the filter plugin package.s. no-such-thresher-plugin, not installed"):
        flt.load_recipe(path)
    assert flt.missing_plugins(path) == ["no-such-thresher-plugin"]
