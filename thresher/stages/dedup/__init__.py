"""`thresher dedup`: exact, perceptual and semantic duplicates, and copies of evaluation images."""
