"""`thresher train`: train an open_clip model with open_clip_train (the fixed training recipe).

Used to train a data-filtering network (DFN) on a trusted set, and by the scaling-law jobs. Data are
WebDataset shards with `jpg` (or png/webp) images and `txt` captions: our pools' shards, or any
img2dataset output. Writes open_clip_train's run directory and, beside it, `train_manifest.json`: the
data (shard paths and their sha256), the configuration, the checkpoint's sha256 and code versions, so a
filter built on the checkpoint can say exactly what it was trained on.

    OUT/<name>/checkpoints/epoch_N.pt     open_clip_train's checkpoint ({"state_dict": ...})
    OUT/train_manifest.json
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

from . import models, runtime
from .config import config_hash, opt, to_dict
from .errors import InputError, StageError


@dataclass
class TrainConfig:
    model: str = opt("thresher-tiny", "open_clip model name or a project config in configs/models/")
    epochs: int = opt(10, "passes over the data")
    batch_size: int = opt(128, "per step")
    lr: float = opt(1e-3, "peak learning rate (cosine schedule)")
    warmup: int = opt(50, "warm-up steps")
    wd: float = opt(0.1, "weight decay")
    precision: str = opt("auto", "auto (amp on GPU, fp32 on CPU), amp, bf16 or fp32")
    workers: int = opt(1, "data-loading processes")
    seed: int = opt(0, "random seed")


def shard_list(data: str) -> list[str]:
    """A directory of .tar files, a glob, or open_clip's brace pattern / '::'-separated list."""
    if os.path.isdir(data):
        found = sorted(glob.glob(os.path.join(data, "**", "*.tar"), recursive=True))
    elif any(c in data for c in "*?["):
        found = sorted(glob.glob(data))
    else:
        import braceexpand

        found = [p for part in data.split("::") for p in braceexpand.braceexpand(part)]
    missing = [p for p in found if not os.path.exists(p)]
    if not found or missing:
        raise InputError(f"training data {data!r}: " + (f"missing {missing[0]}" if missing else "no .tar files"))
    return found


def count_samples(shards: list[str]) -> int:
    """Samples with an image and a caption, counted from the tars (what open_clip_train needs to know)."""
    import tarfile

    n = 0
    for path in shards:
        keys: dict[str, set] = {}
        with tarfile.open(path) as tar:
            for name in tar.getnames():
                stem, _, ext = name.rpartition(".")
                keys.setdefault(stem, set()).add(ext.lower())
        n += sum(1 for exts in keys.values() if "txt" in exts and exts & {"jpg", "jpeg", "png", "webp"})
    return n


def train(data: str, out: str, cfg: TrainConfig, name: str = "run", log=print) -> dict:
    import torch
    from open_clip_train.main import main as open_clip_train_main

    shards = shard_list(data)
    samples = count_samples(shards)
    if samples == 0:
        raise InputError(f"training data {data!r}: no sample has both an image and a txt caption")
    models.register_project_models()
    precision = cfg.precision if cfg.precision != "auto" else ("amp" if torch.cuda.is_available() else "fp32")
    os.makedirs(out, exist_ok=True)
    args = ["--train-data", "::".join(shards), "--dataset-type", "webdataset", "--train-num-samples", str(samples),
            "--model", cfg.model, "--epochs", str(cfg.epochs), "--batch-size", str(min(cfg.batch_size, samples)),
            "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--wd", str(cfg.wd), "--precision", precision,
            "--workers", str(cfg.workers), "--seed", str(cfg.seed), "--logs", out, "--name", name,
            "--save-frequency", str(cfg.epochs), "--report-to", "", "--log-every-n-steps", "20"]
    log(f"[train] {cfg.model} on {samples} samples from {len(shards)} shard(s), {cfg.epochs} epochs ({precision})")
    if os.path.exists(os.path.join(out, name)):
        raise InputError(f"{os.path.join(out, name)} exists; choose another --name or --out (open_clip_train "
                         f"does not overwrite a run)")
    # open_clip_train sets every logger to INFO and adds handlers to the root logger; undo that after,
    # so the rest of the process (and torch at exit) is as quiet as before
    levels = {n: logging.getLogger(n).level for n in list(logging.root.manager.loggerDict)}
    root_level, root_handlers = logging.root.level, list(logging.root.handlers)
    try:
        status = open_clip_train_main(args)
    finally:
        for handler in [h for h in logging.root.handlers if h not in root_handlers]:
            logging.root.removeHandler(handler)
            handler.close()
        logging.root.setLevel(root_level)
        for n in list(logging.root.manager.loggerDict):
            logging.getLogger(n).setLevel(levels.get(n, logging.NOTSET))
    if status == -1:
        raise StageError(f"open_clip_train refused the run (see its log in {os.path.join(out, name)})")
    ckpt = os.path.join(out, name, "checkpoints", f"epoch_{cfg.epochs}.pt")
    if not os.path.exists(ckpt):
        raise StageError(f"open_clip_train finished without writing {ckpt}")
    manifest = {"kind": "thresher.train", "checkpoint": ckpt, "checkpoint_sha256": runtime.file_sha256(ckpt),
                "config": to_dict(cfg), "config_hash": config_hash(cfg), "precision": precision,
                "data": {"spec": data, "samples": samples,
                         "shards": [{"path": p, "sha256": runtime.file_sha256(p)} for p in shards]},
                "open_clip_train_args": args, **runtime.provenance()}
    runtime.write_json(os.path.join(out, "train_manifest.json"), manifest)
    log(f"[train] checkpoint {ckpt}")
    return manifest


def training_record(checkpoint: str) -> dict | None:
    """The train_manifest.json of the run a checkpoint came from (OUT/<name>/checkpoints/x.pt), if any."""
    run_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))
    path = os.path.join(run_root, "train_manifest.json")
    if not os.path.exists(path):
        return None
    record = runtime.read_json(path)
    return record if os.path.abspath(record.get("checkpoint", "")) == os.path.abspath(checkpoint) else None
