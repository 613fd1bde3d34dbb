"""Example Thresher filter plugin (docs/plugins.md walks through it).

The `thresher.filters` entry point names this package, so importing it registers its filters; a
recipe can also name them as `thresher_example_filters:clip_caption_quality`.
"""

from .filters import caption_quality, clip_caption_quality

__all__ = ["caption_quality", "clip_caption_quality"]
