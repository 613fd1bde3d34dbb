"""`thresher browse`: a local web app over a pool, its recipes and its subsets (docs/browse.md).

catalog.py   the one table every query reads (CACHE/catalog-*.parquet), joined from the pool once
query.py     filters pushed down into scans of it, pages, the near-threshold view, duplicate groups
search.py    FAISS indexes of the stored image embeddings (CACHE/features/SCORER/), text queries
server.py    the FastAPI app: the JSON API, thumbnails by (shard, key), the static front end
app.py       the command's server: address, token, uvicorn
static/      the front end: one HTML page, a script and a style sheet, no build step
"""
