"""`thresher features`: base features (hashes, PDQ, caption statistics, language) and CLIP scores;
`train-probe` (`probe`)."""
