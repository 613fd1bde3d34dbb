"""Layer 2, algorithms: uids and hashes (PDQ and its Hamming search), the exact top-k, k-means on
FAISS (and its share of a `--plan` estimate: `cost`). Imports core and exec."""
