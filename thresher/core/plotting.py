"""What every plot shares: the user's own words drawn as they are.

Matplotlib reads text between two `$` as a mathtext formula, and a name that is not a valid one (a
recipe, metric, filter step or score column called `a$\\b$`) raised ValueError when the figure was
saved, ending `compare`, `fit` and `audit report` in "unexpected ValueError" (issue 25). Every string
from a table, a manifest or the command line that goes into a title, an axis label, a tick label or a
legend passes through `plain`. Our own labels use no mathtext, and the numbers matplotlib writes on log
axes keep theirs.
"""

from __future__ import annotations


def plain(text) -> str:
    """`text` as matplotlib draws it literally: every `$` escaped, so nothing in it is parsed as math."""
    return str(text).replace("$", r"\$")
