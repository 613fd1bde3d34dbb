"""Two filters: `caption_quality` (is the caption a real description in the wanted language?) and
`clip_caption_quality` (the CLIP image-text score, ranked with a penalty for poor captions).

A CLIP score alone ranks some poor captions high: a random or weak scorer has no reason to prefer English
or descriptive text (on the synthetic pool the random-init scorer even favours non-English captions), and
language and length are cheap, reliable signals a score can be corrected with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.filters.api import InputError, register  # InputError: a message the CLI prints, no traceback

QUALITY_COLUMNS = ["caption_lang", "caption_lang_score", "caption_words"]  # base features (`thresher features`)


def _column(table: pa.Table, name: str, fill) -> np.ndarray:
    return pc.fill_null(table.column(name), fill).to_numpy(zero_copy_only=False)


def quality(table: pa.Table, p) -> np.ndarray:
    """Caption quality in [0, 1]: the probability that the caption is in `lang` (fastText; counted as
    certain from `confident_lang` up) times its word count (counted as full from `min_words` up)."""
    in_lang = pc.fill_null(pc.equal(table.column("caption_lang"), p.lang), False).to_numpy(zero_copy_only=False)
    lang = np.where(in_lang, _column(table, "caption_lang_score", 0.0), 0.0)
    words = _column(table, "caption_words", 0).astype(np.float64)
    return np.clip(lang / p.confident_lang, 0, 1) * np.clip(words / p.min_words, 0, 1)


def _check_quality(p) -> None:
    # parameters are checked when the recipe is loaded (in `needs`), before any data is read
    if not 0 < p.confident_lang <= 1:
        raise InputError(f"confident_lang must be in (0, 1], not {p.confident_lang}")
    if p.min_words < 1:
        raise InputError(f"min_words must be at least 1, not {p.min_words}")


@dataclass
class CaptionQuality:
    lang: str = "en"  # fastText lid.176 label the captions should have
    confident_lang: float = 0.5  # language probability from which the language counts as certain
    min_words: int = 5  # words from which a caption counts as a full description
    min_quality: float = 0.5  # keep samples whose quality is at least this


def _caption_quality_needs(p: CaptionQuality) -> list[str]:
    _check_quality(p)
    return QUALITY_COLUMNS


@register("caption_quality", CaptionQuality, needs=_caption_quality_needs, scores=True)
def caption_quality(table: pa.Table, p: CaptionQuality):
    """Caption in `lang` and at least `min_words` long, as a quality in [0, 1]; keeps >= min_quality."""
    q = quality(table, p)
    return q >= p.min_quality, q


@dataclass
class ClipCaptionQuality:
    scorer: str = "clip_b32"  # the scorer whose `{scorer}_score` (image-text cosine) is ranked
    lang: str = "en"
    confident_lang: float = 0.5
    min_words: int = 5
    penalty: float = 3.0  # standard deviations of the pool's CLIP score a caption of quality 0 loses
    min_quality: float = 0.0  # also drop samples below this quality outright (0: rank only)
    sample_shards: int = 32  # shards prepare reads for the score's mean and spread


def _clip_caption_quality_needs(p: ClipCaptionQuality) -> list[str]:
    _check_quality(p)
    if p.penalty < 0 or p.sample_shards < 1:
        raise InputError("penalty must be >= 0 and sample_shards >= 1")
    return [f"{p.scorer}_score", *QUALITY_COLUMNS]


def _score_moments(pool: str, p: ClipCaptionQuality) -> dict:
    """Mean and standard deviation of the scorer's CLIP score, from up to `sample_shards` shards spread
    over the pool: once, on the driver, so every shard standardises the same way and the penalty means
    the same for a B/32, an L/14 or a random-init scorer (their cosines spread very differently)."""
    from thresher.core import runtime
    from thresher.core.pool import Pool  # the pool's layout, and which shards are complete

    layout = Pool(pool)
    shards = sorted(layout.completed(p.scorer))
    picked = sorted({shards[int(i)] for i in np.linspace(0, len(shards) - 1, min(len(shards), p.sample_shards))})
    scores = (
        np.concatenate(
            [
                _column(
                    runtime.read_parquet(layout.features(p.scorer, s), columns=["clip_score"]), "clip_score", np.nan
                ).astype(np.float64)
                for s in picked
            ]
        )
        if picked
        else np.zeros(0)
    )
    scores = scores[np.isfinite(scores)]
    if len(scores) < 2:
        raise InputError(f"clip_caption_quality: scorer {p.scorer} has fewer than 2 scores in {pool}")
    mean, std = float(scores.mean()), float(scores.std())
    # what `info` holds goes into the decisions manifest (`prepared`)
    return {
        "mean": mean,
        "std": std if std > 0 else 1.0,
        "info": {
            "scorer": p.scorer,
            "shards_read": len(picked),
            "scores": len(scores),
            "mean": round(mean, 6),
            "std": round(std, 6),
        },
    }


@register(
    "clip_caption_quality", ClipCaptionQuality, needs=_clip_caption_quality_needs, scores=True, prepare=_score_moments
)
def clip_caption_quality(table: pa.Table, p: ClipCaptionQuality, ctx: dict):
    """The CLIP score standardised over the pool, minus `penalty` x (1 - caption quality); for top_fraction.
    Samples without a CLIP score fail (and rank last)."""
    clip = _column(table, f"{p.scorer}_score", np.nan).astype(np.float64)
    q = quality(table, p)
    score = (clip - ctx["mean"]) / ctx["std"] - p.penalty * (1.0 - q)
    keep = np.isfinite(clip) & (q >= p.min_quality)
    return keep, np.where(np.isfinite(clip), score, -np.inf)
