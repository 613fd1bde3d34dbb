"""The plugin's own tests: its filters on a hand-made table, and its registration under their names."""

import numpy as np
import pyarrow as pa
from thresher_example_filters import caption_quality, clip_caption_quality
from thresher_example_filters.filters import CaptionQuality, ClipCaptionQuality

from thresher.filters import api

TABLE = pa.table(
    {
        "caption_lang": ["en", "en", "fr", "en", None],
        "caption_lang_score": [0.9, 0.25, 0.95, 0.8, None],
        "caption_words": [12, 12, 12, 2, None],
        "clip_b32_score": [0.30, 0.30, 0.35, 0.32, 0.40],
    }
)


def test_caption_quality():
    keep, q = caption_quality(TABLE, CaptionQuality())
    assert np.allclose(q, [1.0, 0.5, 0.0, 0.4, 0.0])  # full; unsure language; French; 2 of 5 words; nothing
    assert keep.tolist() == [True, True, False, False, False]


def test_clip_caption_quality_penalises_poor_captions():
    ctx = {"mean": 0.3, "std": 0.05}
    keep, score = clip_caption_quality(TABLE, ClipCaptionQuality(), ctx)
    assert np.allclose(score, [0.0, -1.5, 1.0 - 3.0, 0.4 - 1.8, 2.0 - 3.0])
    assert keep.all()


def test_registered_by_name():
    assert api.get("clip_caption_quality").fn is clip_caption_quality
    assert api.resolve("thresher_example_filters:caption_quality").name == "caption_quality"
