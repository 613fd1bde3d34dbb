"""Typed configs from YAML: strict fields, clear errors, stable hashes."""

from __future__ import annotations

import pytest

from thresher.core.config import config_hash, load
from thresher.core.errors import InputError
from thresher.stages.acquire.download import DownloadConfig


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("image_size: 256\nextra_columns: [a, b]\ntimeout: 3\n")
    cfg = load(DownloadConfig, path, {"retries": 5, "threads": None})
    assert (cfg.image_size, cfg.extra_columns, cfg.timeout, cfg.retries, cfg.threads) == (256, ["a", "b"], 3.0, 5, 64)


def test_hash_is_stable_across_key_order_and_formatting(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("image_size: 256\ntimeout: 3\n")
    b.write_text("# same settings\ntimeout: 3.0\nimage_size:   256\n")
    assert config_hash(load(DownloadConfig, a)) == config_hash(load(DownloadConfig, b))
    assert config_hash(load(DownloadConfig, a)) != config_hash(load(DownloadConfig, None))
    assert config_hash(DownloadConfig()) == config_hash(DownloadConfig())


def test_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("image_sise: 256\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*unknown field.*image_sise"):
        load(DownloadConfig, path)
    path.write_text("image_size: large\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*'image_size'.*integer"):
        load(DownloadConfig, path)
    path.write_text("honor_robots: 1\n")
    with pytest.raises(InputError, match="honor_robots.*true or false"):
        load(DownloadConfig, path)
    path.write_text("image_size: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load(DownloadConfig, path)
    with pytest.raises(InputError, match="cannot read config"):
        load(DownloadConfig, tmp_path / "none.yaml")


def test_shipped_presets_load():
    from thresher.core.config import CONFIG_DIR
    from thresher.synthetic.synth import SynthConfig

    for path in (CONFIG_DIR / "download").glob("*.yaml"):
        load(DownloadConfig, path).validate()
    load(SynthConfig, CONFIG_DIR / "synth" / "default.yaml").validate()
