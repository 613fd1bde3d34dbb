"""docs/config-reference.md is generated from the config dataclasses and must match them."""

import dataclasses
from pathlib import Path

from thresher.app import reference

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_up_to_date():
    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == reference.render(), (
        f"docs/config-reference.md is out of date with the config dataclasses; regenerate it from the "
        f"repository root with `{reference.COMMAND}`"
    )


def test_every_config_field_has_help():
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in reference.config_classes()
        for f in dataclasses.fields(cls)
        if not f.metadata.get("help")
    ]
    assert not missing, f"config fields without help text (declare them with config.opt(default, help)): {missing}"
