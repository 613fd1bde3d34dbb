"""Layer 3, the stages of a pool, in data order: acquire (ingest, download, import), features,
dedup, filter, subset. A stage imports the layers below and earlier stages only. Each stage's `--plan`
cost model is its folder's `cost.py`."""
