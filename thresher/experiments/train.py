"""`thresher train`: train an open_clip model with open_clip_train (the fixed training recipe).

Used to train a data-filtering network (DFN) on a trusted set, and by the scaling-law jobs. Data are
WebDataset shards with `jpg` (or png/webp) images and `txt` captions: our pools' shards, or any
img2dataset output. Writes open_clip_train's run directory and, beside it, `train_manifest.json`: the
data (shard paths and their sha256), the configuration, the checkpoint's sha256 and code versions, so a
filter built on the checkpoint can say exactly what it was trained on.

    OUT/<name>/checkpoints/epoch_N.pt     open_clip_train's checkpoint ({"state_dict": ...})
    OUT/train_manifest.json

With `--scale` (configs/scales/), the run follows a fixed recipe per scale: model, samples seen, batch,
learning rate, warm-up, weight decay, schedule, precision and image size. Only the data differ between
the recipes a grid compares. Samples seen are exact: the data are resampled (open_clip_train's
--dataset-resampled) and split into `checkpoints` virtual epochs, each saving a checkpoint; under the
`const` schedule every checkpoint past warm-up is a data point of its own. The manifest records the
forward GFLOPs per image-text pair, measured with torch's FlopCounterMode as open_clip_train's profiler
does, and the total compute: GFLOPs per sample x samples seen (forward only, as the scaling-law papers
we compare with count it). `accum_freq` splits the global batch into accumulated steps (open_clip's
--accum-freq: the contrastive loss still sees the whole batch), so DataComp's 4096 fits one GPU.
`shard_image_size` re-encodes the training images once, shorter side at most that many pixels, into a
cache shared by the runs of a grid: a 64 px model spends more time decoding 512 px JPEGs than training.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
from dataclasses import dataclass

from thresher.core import models, runtime
from thresher.core.config import CONFIG_DIR, check_name, config_hash, from_dict, opt, read_yaml, to_dict
from thresher.core.errors import InputError, StageError
from thresher.core.models import gflops_per_sample


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


@dataclass
class Scale:
    name: str = opt(help="scale name, e.g. tiny-w32-8k or small")
    model: str = opt(help="open_clip model (or project config in configs/models/)")
    samples_seen: int = opt(help="training samples seen, in total")
    batch_size: int = opt(help="global batch size")
    lr: float = opt(help="peak learning rate")
    warmup: int = opt(help="warm-up steps")
    wd: float = opt(0.2, "weight decay")
    accum_freq: int = opt(
        1,
        "gradient accumulation: open_clip_train steps through batch_size/accum_freq samples "
        "at a time and updates once per batch_size (the contrastive loss still sees the "
        "whole batch), so a 4096 batch fits one GPU",
    )
    schedule: str = opt("cosine", "cosine, const or const-cooldown")
    cooldown_fraction: float = opt(0.2, "const-cooldown: the share of checkpoints (epochs) spent cooling down")
    checkpoints: int = opt(1, "virtual epochs, one checkpoint each (data points under const)")
    family: str = opt("clip", "clip (contrastive) or coca (contrastive + captioning)")
    precision: str = opt("auto", "auto (amp on GPU, fp32 on CPU), amp, bf16 or fp32")
    image_size: int | None = opt(None, "force this image size (default: the model's)")
    shard_image_size: int | None = opt(
        None,
        "re-encode the training images once beforehand, shorter side at most "
        "this many pixels (a cache beside the run; for tiny models, where "
        "decoding 512 px images costs more than training on them)",
    )
    workers: int = opt(1, "data-loading processes")
    seed: int = opt(0, "random seed")
    seeds: list[int] | None = opt(
        None,
        "replicates: one run per seed (instead of seed); a grid trains every "
        "(subset, scale, seed), and thresher compare measures the run-to-run "
        "spread from them. Also allowed at the top of a scale file",
    )

    def check(self, where: str) -> None:
        check_name(self.name, "scale name", where)
        if self.schedule not in ("cosine", "const", "const-cooldown"):
            raise InputError(f"{where}: schedule must be cosine, const or const-cooldown, not {self.schedule!r}")
        if self.family not in ("clip", "coca"):
            raise InputError(f"{where}: family must be clip or coca, not {self.family!r}")
        if self.family == "coca" and "coca" not in self.model.lower():
            raise InputError(f"{where}: family coca needs a CoCa model config (e.g. coca_ViT-B-32), not {self.model}")
        if min(self.samples_seen, self.batch_size, self.checkpoints, self.accum_freq) < 1:
            raise InputError(f"{where}: samples_seen, batch_size, checkpoints and accum_freq must be positive")
        if self.batch_size % self.accum_freq:
            raise InputError(f"{where}: batch_size {self.batch_size} is not a multiple of accum_freq {self.accum_freq}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise InputError(f"{where}: seeds must be a non-empty list without repeats, not {self.seeds!r}")

    def replicas(self) -> list[Scale]:
        """One scale per seed of `seeds` (each with that seed and no seeds list), or itself."""
        from dataclasses import replace

        return [replace(self, seed=s, seeds=None) for s in self.seeds] if self.seeds else [self]


SCALE_DIR = CONFIG_DIR / "scales"


def load_scales(spec: str) -> list[Scale]:
    """`NAME` (configs/scales/NAME.yaml: one scale, or a set under `scales:`), `NAME/SCALE` (one of a set),
    or a path to such a YAML file. A scale with `seeds` (its own, its set's `defaults`, or a top-level
    `seeds:` beside `scales:`) comes back once per seed, in seed order."""
    base, _, member = spec.partition("/") if not os.path.exists(spec) else (spec, "", "")
    path = base if os.path.exists(base) else str(SCALE_DIR / f"{base}.yaml")
    if os.path.isdir(path):
        raise InputError(f"scale {spec!r}: {path} is a directory; give a preset name, NAME/SCALE or a YAML file")
    if not os.path.exists(path):
        names = ", ".join(sorted(p.stem for p in SCALE_DIR.glob("*.yaml")))
        raise InputError(f"unknown scale {spec!r}; presets: {names}; or a YAML file")
    data = read_yaml(path, "scale file") or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a scale (a mapping) or `scales:` with a list of them")
    entries = data["scales"] if "scales" in data else [data]
    defaults = (
        {**({"seeds": data["seeds"]} if "seeds" in data else {}), **data.get("defaults", {})}
        if "scales" in data
        else {}
    )
    if not isinstance(entries, list):
        raise InputError(f"{path}: `scales` must be a list of scales")
    scales = []
    for i, entry in enumerate(entries):
        sc = from_dict(
            Scale, {**defaults, **(entry if isinstance(entry, dict) else {"": entry})}, where=f"{path}: scale {i + 1}"
        )
        sc.check(f"{path}: scale {sc.name}")
        scales += sc.replicas()
    if member:
        scales = [sc for sc in scales if sc.name == member]
        if not scales:
            raise InputError(f"{path} has no scale named {member!r}")
    return scales


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


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def resized_shards(shards: list[str], side: int, cache: str, sha256s: list[str] | None = None) -> list[str]:
    """Copies of `shards` whose images have their shorter side at most `side` pixels, everything else
    byte-identical. Cached under `cache` by the source shard's sha256 and `side`, so the runs of a grid
    that share a subset resize it once; each copy is written to a temporary name and renamed, so runs
    building the same copy at once (Ray tasks) or a killed run never leave a partial one."""
    import io
    import tarfile

    os.makedirs(cache, exist_ok=True)
    out = []
    for path, sha in zip(shards, sha256s or [runtime.file_sha256(p) for p in shards]):
        dest = os.path.join(cache, f"{sha[:20]}-{side}.tar")
        out.append(dest)
        if os.path.exists(dest):
            continue
        tmp = f"{dest}.{os.getpid()}.tmp"
        with tarfile.open(path) as src, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as dst:
            for member in src:
                data = src.extractfile(member).read() if member.isfile() else None
                if data is not None and member.name.rpartition(".")[2].lower() in IMAGE_EXTS:
                    data = _shrink(data, side, member.name, path)
                    member.size = len(data)
                dst.addfile(member, io.BytesIO(data) if data is not None else None)
        os.replace(tmp, dest)
    return out


def _shrink(data: bytes, side: int, name: str, shard: str) -> bytes:
    import io

    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        fmt = im.format
        if min(im.size) <= side:
            return data
        im.draft("RGB", (side, side))  # JPEG: decode at 1/2..1/8 scale, never below `side`
        im = im.convert("RGB")
        scale = side / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format=fmt if fmt in ("JPEG", "PNG", "WEBP") else "JPEG", quality=95)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - an undecodable image stays as it is: the training loader skips it
        return data


WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: the key ends at the first dot


def count_samples(shards: list[str]) -> int:
    """Samples open_clip_train will read: grouped by key exactly as webdataset groups them (the key ends
    at the basename's first dot, webdataset's base_plus_ext) and kept only with a caption and an image
    (open_clip_train's filter_no_caption_or_no_image).

    Counting by another rule made training spin forever at 100% CPU: with dotted keys
    (photo.v0000000000.jpg) we counted samples that webdataset reads as extension 'v0000000000.jpg',
    so the resampled loader never filled a batch (issue 15). A member that could escape its folder
    (absolute, or with ..) is refused, naming the shard and the member; none readable is an error that
    says why."""
    import tarfile

    n, dotted = 0, []
    for path in shards:
        samples: dict[str, set] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                name = member.name
                if name.startswith("/") or ".." in name.split("/"):
                    raise InputError(
                        f"training shard {path}: member {name!r} would escape its folder; refusing the shard"
                    )
                if not member.isfile():
                    continue
                m = WDS_KEY.match(name)
                if not m:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if "." in ext and len(dotted) < 3:
                    dotted.append(f"{path}: {name}")
                samples.setdefault(key, set()).add(ext)
        n += sum(1 for exts in samples.values() if "txt" in exts and exts & set(IMAGE_EXTS))
    if n == 0:
        why = (
            f"; webdataset ends a sample's key at the first dot of its name, so {dotted[0]!r} has the "
            f"extension {dotted[0].rsplit('/', 1)[-1].split('.', 1)[1]!r}: rename such keys without dots"
            if dotted
            else ""
        )
        raise InputError(f"training data: no sample has both an image and a txt caption as webdataset reads them{why}")
    return n


def train(data: str, out: str, cfg: TrainConfig, name: str = "run", log=print) -> dict:
    import torch

    shards = shard_list(data)
    samples = count_samples(shards)
    models.register_project_models()
    precision = cfg.precision if cfg.precision != "auto" else ("amp" if torch.cuda.is_available() else "fp32")
    os.makedirs(out, exist_ok=True)
    args = [
        "--train-data",
        "::".join(shards),
        "--dataset-type",
        "webdataset",
        "--train-num-samples",
        str(samples),
        "--model",
        cfg.model,
        "--epochs",
        str(cfg.epochs),
        "--batch-size",
        str(min(cfg.batch_size, samples)),
        "--lr",
        str(cfg.lr),
        "--warmup",
        str(cfg.warmup),
        "--wd",
        str(cfg.wd),
        "--precision",
        precision,
        "--workers",
        str(cfg.workers),
        "--seed",
        str(cfg.seed),
        "--logs",
        out,
        "--name",
        name,
        "--save-frequency",
        str(cfg.epochs),
        "--report-to",
        "",
        "--log-every-n-steps",
        "20",
    ]
    manifest_path = os.path.join(out, "train_manifest.json")
    if os.path.exists(manifest_path):  # resume: a finished run of the same config on the same data is kept
        done = runtime.read_json(manifest_path)
        if (
            done.get("config_hash") == config_hash(cfg)
            and done["data"]["spec"] == data
            and os.path.exists(done["checkpoint"])
        ):
            log(f"[train] {out}: finished already ({done['checkpoint']})")
            return done
        raise InputError(f"{out} holds a run of another configuration or data; choose another --out")
    log(f"[train] {cfg.model} on {samples} samples from {len(shards)} shard(s), {cfg.epochs} epochs ({precision})")
    import shutil

    shutil.rmtree(os.path.join(out, name), ignore_errors=True)  # an unfinished run: open_clip_train will not reuse it
    status = _run_open_clip_train(args)
    if status == -1:
        raise StageError(f"open_clip_train refused the run (see its log in {os.path.join(out, name)})")
    ckpt = os.path.join(out, name, "checkpoints", f"epoch_{cfg.epochs}.pt")
    if not os.path.exists(ckpt):
        raise StageError(f"open_clip_train finished without writing {ckpt}")
    manifest = {
        "kind": "thresher.train",
        "checkpoint": ckpt,
        "checkpoint_sha256": runtime.file_sha256(ckpt),
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "precision": precision,
        "data": {
            "spec": data,
            "samples": samples,
            "shards": [{"path": p, "sha256": runtime.file_sha256(p)} for p in shards],
        },
        "open_clip_train_args": args,
        **runtime.provenance(),
    }
    runtime.write_json(manifest_path, manifest)
    log(f"[train] checkpoint {ckpt}")
    return manifest


@contextlib.contextmanager
def _deterministic(seed: int):
    """What open_clip_train leaves to chance on a CPU, fixed for one run:
    - webdataset 0.2.86's sample shuffle seeds a fresh random.Random from the pid and the time whenever
      it is given no rng (webdataset/filters.py `_shuffle`), and open_clip_train gives it none
      (open_clip_train/data.py, `wds.shuffle(bufsize=..., initial=...)`): the same seed trained on
      another order each time. Here the stage gets a Random(seed), copied into the loader's worker.
    - torch's deterministic algorithms (warn only: a CPU op without one still runs).
    The data-loading workers' seeds already follow torch's seed (ResampledShards2 is deterministic)."""
    import random

    import torch
    import webdataset

    shuffle = webdataset.shuffle

    def seeded(*a, rng=None, **kw):
        return shuffle(*a, rng=rng or random.Random(seed), **kw)

    was = torch.are_deterministic_algorithms_enabled()
    webdataset.shuffle = seeded
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        webdataset.shuffle = shuffle
        torch.use_deterministic_algorithms(was)


# no new log line or checkpoint for this long is a stall (open_clip_train logs every 20-50 steps; the
# slowest tiny scale, CoCa on 2 cores, takes about 2 minutes for 50)
STALL_SECONDS = float(os.environ.get("THRESHER_TRAIN_STALL_S", 900))


def _progress(run_dir: str) -> tuple:
    """What changes while open_clip_train makes progress: its log's size and its checkpoints."""
    log_file = os.path.join(run_dir, "out.log")
    ckpts = glob.glob(os.path.join(run_dir, "checkpoints", "*.pt"))
    return (os.path.getsize(log_file) if os.path.exists(log_file) else -1, len(ckpts))


def _run_open_clip_train(args: list[str]):
    from open_clip_train.main import main as open_clip_train_main

    # open_clip_train sets every logger to INFO and adds handlers to the root logger; undo that after,
    # so the rest of the process (and torch at exit) is as quiet as before
    levels = {n: logging.getLogger(n).level for n in list(logging.root.manager.loggerDict)}
    root_level, root_handlers = logging.root.level, list(logging.root.handlers)
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 0
    run_dir = os.path.join(args[args.index("--logs") + 1], args[args.index("--name") + 1])
    try:
        with (
            _deterministic(seed),
            runtime.watchdog(lambda: _progress(run_dir), STALL_SECONDS, f"training in {run_dir}"),
        ):
            return open_clip_train_main(args)
    finally:
        for handler in [h for h in logging.root.handlers if h not in root_handlers]:
            logging.root.removeHandler(handler)
            handler.close()
        logging.root.setLevel(root_level)
        for n in list(logging.root.manager.loggerDict):
            logging.getLogger(n).setLevel(levels.get(n, logging.NOTSET))


def scale_args(shards: list[str], scale: Scale, out: str, name: str, precision: str) -> tuple[list[str], int]:
    """open_clip_train's arguments for a scale, and the samples per virtual epoch."""
    import math

    per_epoch = math.ceil(scale.samples_seen / scale.checkpoints)
    args = [
        "--train-data",
        "::".join(shards),
        "--dataset-type",
        "webdataset",
        "--dataset-resampled",
        "--train-num-samples",
        str(per_epoch),
        "--model",
        scale.model,
        "--epochs",
        str(scale.checkpoints),
        "--batch-size",
        str(scale.batch_size // scale.accum_freq),
        "--accum-freq",
        str(scale.accum_freq),
        "--lr",
        str(scale.lr),
        "--warmup",
        str(scale.warmup),
        "--wd",
        str(scale.wd),
        "--lr-scheduler",
        scale.schedule,
        "--precision",
        precision,
        "--workers",
        str(scale.workers),
        "--seed",
        str(scale.seed),
        "--logs",
        out,
        "--name",
        name,
        "--save-frequency",
        "1",
        "--report-to",
        "",
        "--log-every-n-steps",
        "50",
    ]
    if scale.schedule == "const-cooldown":
        args += ["--epochs-cooldown", str(max(1, round(scale.checkpoints * scale.cooldown_fraction)))]
    if scale.image_size:
        args += ["--force-image-size", str(scale.image_size)]
    return args, per_epoch


def optimizer_steps(per_epoch: int, scale: Scale) -> int:
    """Optimizer steps per virtual epoch, as open_clip_train counts them: its resampled loader rounds the
    batches up to a whole number per data-loading worker, and one step takes accum_freq batches."""
    import math

    batches = math.ceil(per_epoch / (scale.batch_size // scale.accum_freq))
    workers = max(1, scale.workers)
    return math.ceil(batches / workers) * workers // scale.accum_freq


def train_scale(data: str, scale: Scale, out: str, name: str = "run", log=print, cache: str | None = None) -> dict:
    """Train one scale's fixed recipe on `data` (a subset's shards). Resumes: a finished run is returned.
    `cache` holds the resized shards of scales with `shard_image_size` (default OUT/_shards)."""
    import shutil
    import time

    import torch

    manifest_path = os.path.join(out, "train_manifest.json")
    if os.path.exists(manifest_path):
        m = runtime.read_json(manifest_path)
        if m.get("scale") == to_dict(scale):
            return m
        raise InputError(f"{out} holds a run of another scale; choose another --out")
    shards = shard_list(data)
    count_samples(shards)  # fails fast where webdataset would yield nothing (the loader would spin)
    shas = [runtime.file_sha256(p) for p in shards]
    models.register_project_models()
    precision = scale.precision if scale.precision != "auto" else ("amp" if torch.cuda.is_available() else "fp32")
    os.makedirs(out, exist_ok=True)
    shutil.rmtree(os.path.join(out, name), ignore_errors=True)  # an unfinished run: open_clip_train will not reuse it
    train_shards, t0 = shards, time.time()
    if scale.shard_image_size:
        train_shards = resized_shards(shards, scale.shard_image_size, cache or os.path.join(out, "_shards"), shas)
    resize_seconds = time.time() - t0
    args, per_epoch = scale_args(train_shards, scale, out, name, precision)
    gflops = gflops_per_sample(scale.model, scale.image_size)
    log(
        f"[train] scale {scale.name}: {scale.model}, {scale.samples_seen} samples seen in {scale.checkpoints} "
        f"checkpoint(s), {scale.schedule}, {gflops:.4g} GFLOPs/sample ({precision})"
    )
    # the data-loading processes need cores of their own: on a CPU-only run, torch's threads in this
    # process would otherwise compete with them for every step
    t0 = time.time()
    cpu_threads = None if torch.cuda.is_available() else max(1, torch.get_num_threads() - scale.workers)
    with models.torch_threads(cpu_threads):
        status = _run_open_clip_train(args)
    seconds = time.time() - t0
    if status == -1:
        raise StageError(f"open_clip_train refused the run (see its log in {os.path.join(out, name)})")
    steps_per_epoch = optimizer_steps(per_epoch, scale)
    checkpoints = []
    for e in range(1, scale.checkpoints + 1):
        path = os.path.join(out, name, "checkpoints", f"epoch_{e}.pt")
        if not os.path.exists(path):
            raise StageError(f"open_clip_train finished without writing {path}")
        steps = e * steps_per_epoch
        checkpoints.append(
            {
                "epoch": e,
                "path": path,
                "sha256": runtime.file_sha256(path),
                "steps": steps,
                "samples_seen": steps * scale.batch_size,
                "in_warmup": steps <= scale.warmup,
            }
        )
    samples_seen = checkpoints[-1]["samples_seen"]
    data_record = {"spec": data, "shards": [{"path": p, "sha256": h} for p, h in zip(shards, shas)]}
    if train_shards is not shards:
        data_record["resized"] = {
            "shorter_side": scale.shard_image_size,
            "shards": train_shards,
            "seconds": round(resize_seconds, 2),
        }
    manifest = {
        "kind": "thresher.train",
        "model": scale.model,
        "scale": to_dict(scale),
        "scale_hash": config_hash(scale),
        "precision": precision,
        "checkpoint": checkpoints[-1]["path"],
        "checkpoint_sha256": checkpoints[-1]["sha256"],
        "checkpoints": checkpoints,
        "gflops_per_sample": gflops,
        "samples_seen": samples_seen,
        "gflops_total": gflops * samples_seen,
        "seconds": round(seconds, 2),
        "samples_per_second": round(samples_seen / seconds, 1),
        "data": data_record,
        "open_clip_train_args": args,
        **runtime.provenance(),
    }
    runtime.write_json(manifest_path, manifest)
    log(f"[train] {scale.name}: {samples_seen} samples in {seconds:.1f}s ({samples_seen / seconds:.0f}/s)")
    return manifest
