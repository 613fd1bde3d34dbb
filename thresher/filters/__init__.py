"""Filter plugins and built-in filtering recipes (see the filtering-recipes issue)."""
