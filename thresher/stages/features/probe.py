"""`thresher train-probe`: a logistic-regression probe on CLIP image embeddings (for example an NSFW
classifier for the safety recipe), trained with scikit-learn on labelled embeddings.

Labels come as a Parquet file with `uid` and `label` (1 = the class to drop, e.g. unsafe) for samples of
a pool; their embeddings are read from the pool's scorer. The probe is saved as a plain .npz (weights,
bias, the scorer's model and weights), never as a pickle, with a JSON record beside it: data, counts,
held-out AUC. The `image_probe` filter applies it, or a user's TorchScript checkpoint.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from thresher.core import runtime
from thresher.core.errors import InputError
from thresher.core.pool import Pool
from thresher.stages.features import features


def labelled_embeddings(pool: str, scorer: str, labels_path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = runtime.read_parquet(labels_path)
    for col in ("uid", "label"):
        if col not in labels.column_names:
            raise InputError(f"{labels_path}: column {col!r} is missing (expected uid, label)")
    table, img, _ = features.read_scorer(pool, scorer, with_embeddings=True, text=False)
    row = {u: i for i, u in enumerate(table.column("uid").to_pylist())}
    uids = labels.column("uid").to_pylist()
    missing = [u for u in uids if u not in row]
    if missing:
        raise InputError(f"{labels_path}: {len(missing)} uid(s) not in {pool} (scorer {scorer}), e.g. {missing[0]}")
    y = np.asarray(labels.column("label").to_pylist(), dtype=np.int64)
    if set(np.unique(y)) - {0, 1} or len(np.unique(y)) < 2:
        raise InputError(f"{labels_path}: `label` must hold both 0 and 1, and nothing else")
    x = img[[row[u] for u in uids]].astype(np.float32)
    return x, y, uids


def train_probe(
    pool: str, scorer: str, labels_path: str, out: str, c: float = 1.0, seed: int = 0, holdout: float = 0.2
) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, y, _ = labelled_embeddings(pool, scorer, labels_path)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_test = int(len(y) * holdout)
    test, train = order[:n_test], order[n_test:]

    def fit(rows):
        return LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x[rows], y[rows])

    auc = None
    if n_test and len(np.unique(y[test])) == 2:
        auc = float(roc_auc_score(y[test], fit(train).predict_proba(x[test])[:, 1]))
    model = fit(order)  # the saved probe uses every label
    scorer_manifest = runtime.read_json(Pool(pool).features_manifest(scorer))
    fs, path = runtime.fs_path(out)
    with fs.open(path, "wb") as f:
        np.savez(
            f,
            weight=model.coef_[0].astype(np.float32),
            bias=np.float32(model.intercept_[0]),
            model=scorer_manifest["scorer"]["model"],
            pretrained=str(scorer_manifest["scorer"]["pretrained"]),
        )
    record = {
        "kind": "thresher.probe",
        "probe": out,
        "probe_sha256": runtime.file_sha256(out),
        "pool": pool,
        "scorer": scorer,
        "scorer_weights": scorer_manifest.get("weights"),
        "labels": labels_path,
        "labels_sha256": runtime.file_sha256(labels_path),
        "samples": int(len(y)),
        "positives": int(y.sum()),
        "holdout_auc": auc,
        "holdout": n_test,
        "C": c,
        **runtime.provenance(),
    }
    runtime.write_json(out + ".json", record)
    return record


def load_probe(path: str):
    """A callable: float32 [n, d] embeddings -> probability [n] of the probe's class. A .npz from
    train_probe, or a TorchScript module (.pt/.ts) that maps embeddings to probabilities."""
    if not runtime.exists(path):
        raise InputError(f"probe {path} does not exist")
    if path.endswith(".npz"):
        with np.load(path) as z:
            w, b = z["weight"].astype(np.float32), float(z["bias"])
        return lambda x: 1.0 / (1.0 + np.exp(-(x @ w + b)))
    import torch

    module = torch.jit.load(path, map_location="cpu").eval()

    def apply(x):
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().reshape(-1).numpy()

    return apply


def labels_table(uids: list[str], labels: list[int]) -> pa.Table:
    return pa.table({"uid": pa.array(uids, pa.string()), "label": pa.array(labels, pa.int8())})
