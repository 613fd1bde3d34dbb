"""CLIP scoring of `thresher features POOL --model M [--pretrained P --scorer-id ID ...]` on the execution
layer's model pipeline (`execute.embed`: Ray tasks and actors, in-process under THRESHER_EXECUTOR=local), and
`thresher embed-images` (a target set's image embeddings with the same model). Per pool shard:

    POOL/features/<scorer>/{i:08d}.parquet    schema.CLIP_FEATURES: uid, key, clip_score, error
    POOL/features/<scorer>/{i:08d}.img.npy    float16 [n, d], L2-normalised image embeddings
    POOL/features/<scorer>/{i:08d}.txt.npy    float16 [n, d], L2-normalised text embeddings
    POOL/features/<scorer>/{i:08d}_stats.json completion marker: a shard with one is never redone
    POOL/features/<scorer>/manifest.json      model, weights (tag, checkpoint hash or random-init), device

CPU tasks read and decode shards and apply the resize/crop half of open_clip's preprocessing (or ship the
bytes to be decoded in the actor: thresher/core/decode.py), and model actors hold the model (loaded once
per actor; one GPU each when there are GPUs, with fp16/bf16 autocast). Actors write their batches as
parts; when a shard's parts are all in, a small stage (`FinalizeStage` through `run_stage`, in the command's
own process: retries, failure records, the marker written by the executor) joins them into the shard's files.
No Ray here: thresher/exec/embed.py runs the pipeline. The stage's entry and its other files:
thresher/stages/features/features.py.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.core import decode, models, runtime, schema
from thresher.core.config import check_name, config_hash, opt, to_dict
from thresher.core.cost import embed_dim
from thresher.core.errors import InputError, StageError
from thresher.core.pool import Pool, completed, read_npy
from thresher.exec import execute
from thresher.exec.embed import Pipeline
from thresher.exec.stage import Stage, run_stage
from thresher.stages.features.base import MISSING


@dataclass
class ScorerConfig:
    scorer_id: str = opt("clip_tiny", "name of this scorer's outputs, e.g. clip_b32, clip_l14")
    model: str = opt("thresher-tiny", "open_clip model name, or a project config in configs/models/")
    pretrained: str | None = opt(None, "pretrained tag or checkpoint path; none = random init (tests only)")
    batch_size: int = opt(256, "images per model call")
    device: str = opt("auto", "auto, cpu or cuda")
    precision: str = opt("auto", "auto (fp16 autocast on GPU, fp32 on CPU), fp32, fp16 or bf16")
    actors: int = opt(0, "model actors; 0 = one per GPU, or one on a CPU-only cluster")
    actor_cpus: float = opt(1.0, "CPUs reserved per model actor (its torch threads)")
    decode_batch: int = opt(256, "rows per batch handed from decoding to the model")
    decode_memory_mb: int = opt(1536, "memory reserved per decoding task (it holds one shard's images)")
    decode: str = opt(
        "auto",
        "where JPEGs are decoded and resized: cpu (PIL in the decoding tasks), actor (torchvision's decode_jpeg "
        "in the model actor, on its device: nvJPEG on a GPU), or auto (actor when the actors have a GPU)",
    )


def _device(cfg: ScorerConfig, ex) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if ex.gpus() >= 1 else "cpu"


def _decode_shards(
    batch: dict,
    pool: str,
    scorer_dir: str,
    pp_cfg: dict,
    rows_per_batch: int,
    where: str = "cpu",
    max_pixels: int = decode.MAX_PIXELS,
):
    """The pipeline's producer (a CPU task on Ray): whole shards in, batches of resized uint8 pixels (or, to
    be decoded in the model actor, the images' bytes: thresher/core/decode.py) and captions out. An image
    past `max_pixels` is refused from its header on both paths (its bytes are not shipped either). Captions
    are tokenized in the model actor, so that this task imports neither open_clip nor torch where
    `models.resize_crop` covers the model's preprocessing: its first batch then comes seconds sooner."""
    transform = (models.resize_crop(pp_cfg) or models.pil_transform(pp_cfg)) if where == "cpu" else None
    size = models.input_size(pp_cfg)
    for shard in batch["shard"]:
        shard = int(shard)
        try:
            rows = Pool(pool).successful_rows(shard)
            images = Pool(pool).read_images(shard)
        except Exception as err:  # noqa: BLE001 - recorded for the driver; other shards go on
            runtime.write_json(runtime.join(scorer_dir, f"{shard:08d}_error.json"), {"shard": shard, "error": str(err)})
            continue
        keys, uids = rows.column("key").to_pylist(), rows.column("uid").to_pylist()
        captions = rows.column("caption").to_pylist()
        for start in range(0, len(keys), rows_per_batch):
            sl = slice(start, start + rows_per_batch)
            batch_out = {
                "shard": np.full(len(keys[sl]), shard, np.int64),
                "key": np.array(keys[sl], dtype=object),
                "uid": np.array(uids[sl], dtype=object),
                "caption": np.array(captions[sl], dtype=object),
            }
            if where == "actor":  # the bytes as stored; the model actor decodes them
                errors = [
                    (decode.pixel_refusal(io.BytesIO(images[k]), max_pixels) or "")[:300] if k in images else MISSING
                    for k in keys[sl]
                ]
                batch_out["image"] = np.array([b"" if e else images[k] for k, e in zip(keys[sl], errors)], dtype=object)
                batch_out["error"] = np.array(errors, dtype=object)
                yield batch_out
                continue
            pixels, errors = [], []
            for key in keys[sl]:
                try:
                    data = images[key]
                    img = transform(decode.open_image(data, max_pixels).convert("RGB"))
                    pixels.append(np.asarray(img, dtype=np.uint8))
                    errors.append("")
                except Exception as err:  # noqa: BLE001 - a bad image is recorded, not fatal
                    pixels.append(np.zeros((size[0], size[1], 3), np.uint8))
                    errors.append(MISSING if isinstance(err, KeyError) else decode.failure(err))
            yield {**batch_out, "pixels": np.stack(pixels), "error": np.array(errors, dtype=object)}


class ClipEmbedder:
    """The pipeline's consumer (a model actor on Ray): loads the model once, embeds batches, writes them as parts of their shards."""

    def __init__(self, scorer: dict, scorer_dir: str, pp_cfg: dict, device: str, threads: int):
        import torch

        from thresher.core.config import from_dict

        self.cfg = from_dict(ScorerConfig, scorer)
        self.device, self.pp_cfg, self.dir = device, pp_cfg, scorer_dir
        self.threads_before = torch.get_num_threads()  # put back by close() (the local executor's process)
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.model, self.tokenizer = models.load(self.cfg.model, self.cfg.pretrained, device=device)
        precision = self.cfg.precision
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def set_threads(self, threads: int) -> None:
        """The model pipeline's call once decoding is over: on CPU, the decoding tasks' cores join the model."""
        if self.device == "cpu":
            import torch

            torch.set_num_threads(max(1, threads))

    def close(self) -> None:
        """The pipeline's call once it is done: torch's threads as they were (on the local executor this is
        the command's process, whose later steps, a DFN's training among them, must not inherit them)."""
        import torch

        torch.set_num_threads(self.threads_before)

    def __call__(self, batch: dict) -> dict:
        import contextlib

        import torch

        ctx = (
            torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast)
            if self.autocast
            else contextlib.nullcontext()
        )
        if "image" in batch:  # decoded here, on the model's device (thresher/core/decode.py)
            # max_pixels 0: the decoding task checked each image's header (and shipped no bytes of a bomb)
            pixels, errors = decode.decode_batch(
                list(batch["image"]), list(batch["error"]), self.pp_cfg, self.device, 0
            )
            batch = {**batch, "error": np.array(errors, dtype=object)}
        else:
            pixels = batch["pixels"]
        with torch.inference_mode(), ctx:
            tokens = models.tokenize(self.tokenizer, list(batch["caption"]))
            tokens = torch.as_tensor(tokens.astype(np.int64), device=self.device)
            img = models.encode_images(self.model, pixels, self.pp_cfg, self.device)
            txt = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        img, txt = img.cpu().numpy(), txt.cpu().numpy()
        bad = np.array([bool(e) for e in batch["error"]])
        img[bad], txt[bad] = 0.0, 0.0
        score = (img * txt).sum(axis=1)
        score[bad] = np.nan
        shards_out, rows_out = [], []
        for shard in np.unique(batch["shard"]):
            sel = batch["shard"] == shard
            _write_part(
                self.dir,
                int(shard),
                img[sel].astype(np.float16),
                txt[sel].astype(np.float16),
                pa.table(
                    {
                        "uid": pa.array(list(batch["uid"][sel]), pa.string()),
                        "key": pa.array(list(batch["key"][sel]), pa.string()),
                        "clip_score": pa.array(score[sel], pa.float32(), from_pandas=True),
                        "error": pa.array([e or None for e in batch["error"][sel]], pa.string()),
                    }
                ),
            )
            shards_out.append(int(shard))
            rows_out.append(int(sel.sum()))
        return {"shard": np.array(shards_out, np.int64), "rows": np.array(rows_out, np.int64)}


def _write_part(scorer_dir: str, shard: int, img: np.ndarray, txt: np.ndarray, table: pa.Table) -> None:
    """One batch's rows of a shard, as a part. Ray retries a lost actor's tasks (a node gone mid-task: at
    least once, so a batch whose part was written can be embedded again), so a part is named by its rows'
    keys and written atomically: a batch done twice replaces its part instead of adding a second copy, and
    a killed writer leaves no half file. A shard already joined (its marker is there) gets no part: the
    join removed its folder, and a part written now would be left over."""
    name = hashlib.sha256("\n".join(table.column("key").to_pylist()).encode()).hexdigest()[:32]
    part_dir = runtime.join(scorer_dir, "_parts", f"{shard:08d}")
    marker = runtime.join(scorer_dir, f"{shard:08d}_stats.json")
    if runtime.exists(marker):
        return
    try:
        runtime.makedirs(part_dir)
        part = runtime.join(part_dir, name)
        _write_npy(img, part + ".img.npy", atomic=True)
        _write_npy(txt, part + ".txt.npy", atomic=True)
        with runtime.atomic_writer(part + ".parquet") as f:  # last: a part is whole once its .parquet is there
            pq.write_table(table, f)
    except FileNotFoundError:
        if not runtime.exists(marker):  # the join removed the folder mid-write: the shard is done
            raise


def _write_npy(array: np.ndarray, url: str, atomic: bool = False) -> None:
    if atomic:
        with runtime.atomic_writer(url) as f:
            np.save(f, array)
        return
    fs, path = runtime.fs_path(url)
    with fs.open(path, "wb") as f:
        np.save(f, array)


def finalize_shard(shard: int, scorer_dir: str, expected: int, dim: int = 0) -> dict:
    """Join a shard's parts into its row-aligned parquet and npy files; returns its marker's stats. A row
    in two parts (a retried batch cut differently) is kept once. A shard with no successful row gets
    empty files."""
    part_dir = runtime.join(scorer_dir, "_parts", f"{shard:08d}")
    parts = sorted(p[: -len(".parquet")] for p in runtime.glob(runtime.join(part_dir, "*.parquet")))
    tables = [runtime.read_parquet(p + ".parquet") for p in parts] or [schema.CLIP_FEATURES.empty_table()]
    table = pa.concat_tables(tables)
    nothing = [np.zeros((0, dim), np.float16)]  # a shard with no successful row has no part
    img = np.concatenate([read_npy(p + ".img.npy") for p in parts] or nothing)
    txt = np.concatenate([read_npy(p + ".txt.npy") for p in parts] or nothing)
    # in key order, each key's first copy (keys are unique in a pool's shard)
    keys, order = np.unique(np.array(table.column("key").to_pylist()), return_index=True)
    if len(keys) != expected:
        raise StageError(f"shard {shard:08d}: {len(keys)} rows embedded, {expected} expected")
    table = table.take(pa.array(order)).cast(schema.CLIP_FEATURES)
    name = f"{shard:08d}"
    _write_npy(img[order], runtime.join(scorer_dir, f"{name}.img.npy"))
    _write_npy(txt[order], runtime.join(scorer_dir, f"{name}.txt.npy"))
    runtime.write_parquet(table, runtime.join(scorer_dir, f"{name}.parquet"))
    errors = sum(e is not None for e in table.column("error").to_pylist())
    return {"shard": shard, "count": table.num_rows, "errors": errors, "dim": int(img.shape[1])}


@dataclass
class FinalizeStage(Stage):
    """A scored shard's parts joined into its files, as its parts are all in; the marker last."""

    scorer_dir: str
    expected: dict[int, int]  # rows each shard has
    dim: int  # the model's embedding width (a shard with no row has no part to read it from)

    name: ClassVar[str] = "features:finalize"
    unit: ClassVar[str] = "shards"
    resources: ClassVar[execute.Resources] = execute.Resources(cpus=0.25)
    timed: ClassVar[bool] = False

    def process(self, shard: int) -> dict:
        return finalize_shard(shard, self.scorer_dir, self.expected[shard], self.dim)

    def marker(self, shard: int) -> str:
        return runtime.join(self.scorer_dir, f"{shard:08d}_stats.json")

    def finish(self, shard: int) -> None:
        runtime.remove(runtime.join(self.scorer_dir, "_parts", f"{shard:08d}"), recursive=True)


@runtime.holds(
    lambda pool, cfg, *a, **k: Pool(pool).require().features_dir(check_name(cfg.scorer_id, "scorer id", "--scorer-id")),
    "this scorer's features",
)
def run_scorer(pool: str, cfg: ScorerConfig, ray_address: str | None = None, log=print) -> dict:
    """Embed and score every successful sample of `pool` with one open_clip model. Resumes by shard."""
    check_name(cfg.scorer_id, "scorer id", "--scorer-id")
    shards = Pool(pool).shards()
    if not shards:
        raise InputError(f"{pool} has no downloaded shards; run `thresher download` first")
    Pool(pool).require_images(f"features --scorer-id {cfg.scorer_id} (it embeds the images)")
    scorer_dir = Pool(pool).features_dir(cfg.scorer_id)
    runtime.makedirs(scorer_dir)
    _check_scorer_manifest(scorer_dir, cfg)
    todo = [s for s in shards if s not in completed(scorer_dir)]
    failed: dict[int, str] = {}
    pp_cfg: dict = {}
    # the model's preprocessing (which checks its name and tag) needs open_clip, whose import takes a few
    # seconds of CPU: it runs while Ray starts, not before, and a bad name still fails before any work
    ex = execute.start(
        ray_address, meanwhile=lambda: pp_cfg.update(models.preprocess_config(cfg.model, cfg.pretrained))
    )
    device = _device(cfg, ex)
    where = decode.resolve(cfg.decode, device, pp_cfg)  # where images are decoded: cpu or actor
    if todo:
        for s in todo:  # whatever a killed run left of these shards is redone from scratch
            runtime.remove(runtime.join(scorer_dir, "_parts", f"{s:08d}"), recursive=True)
            runtime.remove(runtime.join(scorer_dir, f"{s:08d}_error.json"))
        expected = {s: Pool(pool).successful_rows(s).num_rows for s in todo}
        failed = _embed(pool, scorer_dir, cfg, pp_cfg, device, where, todo, expected, log, ex)
        done = completed(scorer_dir)
        for part_dir in runtime.glob(runtime.join(scorer_dir, "_parts", "*")):
            if int(part_dir.rstrip("/").rsplit("/", 1)[-1]) in done:  # a retried batch's part, after the join
                runtime.remove(part_dir, recursive=True)
    manifest = _write_scorer_manifest(pool, scorer_dir, cfg, pp_cfg, device, where, shards, failed)
    execute.raise_failures(f"features {cfg.scorer_id}", failed)
    return manifest


def _embed(pool, scorer_dir, cfg, pp_cfg, device, where, todo, expected, log, ex) -> dict[int, str]:
    gpus = ex.gpus() if device.startswith("cuda") else 0
    pipeline = Pipeline(
        produce=_decode_shards,
        consume=ClipEmbedder,
        produce_kwargs=dict(
            pool=pool,
            scorer_dir=scorer_dir,
            pp_cfg=pp_cfg,
            rows_per_batch=cfg.decode_batch,
            where=where,
            max_pixels=decode.max_pixels_of(pool),
        ),
        consume_kwargs=dict(scorer=to_dict(cfg), scorer_dir=scorer_dir, pp_cfg=pp_cfg, device=device),
        threads_arg="threads",
        batch_size=cfg.batch_size,
        produce_rows=cfg.decode_batch,
        actors=cfg.actors or max(1, gpus),
        actor_cpus=cfg.actor_cpus,
        actor_gpus=1 if gpus else 0,
        decode_cpus=1.0,
        decode_memory_mb=cfg.decode_memory_mb,
    )
    got: Counter[int] = Counter()
    finished: set[int] = set()
    failed: dict[int, str] = {}

    def finalize(shards: list[int]) -> None:
        """Through the execution layer (retries, failure records), as shards complete: a killed run keeps them.
        In this process: joining a shard's parts takes milliseconds, and a task would wait for a CPU that
        the producers hold while this loop, which they wait on, waits for it (on 2 cores it never came)."""
        stage = FinalizeStage(scorer_dir, {s: expected[s] for s in shards}, embed_dim(cfg.model))
        out = run_stage(
            stage,
            shards,
            label=f"features:{cfg.scorer_id} finalize",
            retries=1,
            quiet=True,
            executor=execute.LocalExecutor(),
            log=log,
        )
        finished.update(shards)
        failed.update(out.failures)

    outputs = execute.embed(
        [{"shard": s} for s in todo],
        pipeline,
        label=f"features:{cfg.scorer_id}",
        total=sum(expected.values()),
        unit="samples",
        weight=lambda out: int(out["rows"].sum()),
        describe=lambda: f"shards {len(finished)}/{len(todo)}",
        executor=ex,
    )
    for batch in outputs:
        ready = []
        for shard, rows in zip(batch["shard"].tolist(), batch["rows"].tolist()):
            got[shard] += rows
            if got[shard] == expected[shard]:
                ready.append(shard)
        if ready:
            finalize(ready)
    empty = [s for s in todo if s not in finished and expected[s] == 0]  # no row of these arrives
    if empty:
        finalize(empty)
    for s in todo:
        if s in finished:
            continue
        err_path = runtime.join(scorer_dir, f"{s:08d}_error.json")
        failed[s] = (
            runtime.read_json(err_path)["error"]
            if runtime.exists(err_path)
            else f"{got[s]} of {expected[s]} rows embedded"
        )
    for s, why in failed.items():
        log(f"[features:{cfg.scorer_id}] shard {s:08d} failed: {why}")
    return failed


def _check_scorer_manifest(scorer_dir: str, cfg: ScorerConfig) -> None:
    path = runtime.join(scorer_dir, "manifest.json")
    if runtime.exists(path) and completed(scorer_dir):
        before = runtime.read_json(path)
        for key in ("model", "pretrained"):
            if before["scorer"][key] != getattr(cfg, key):
                raise InputError(
                    f"{scorer_dir} holds features from {key}={before['scorer'][key]!r}; this run asks "
                    f"for {getattr(cfg, key)!r}. Use another --scorer-id"
                )


def _write_scorer_manifest(pool, scorer_dir, cfg, pp_cfg, device, where, shards, failed) -> dict:
    weights = {"kind": models.weights_kind(cfg.pretrained), "pretrained": cfg.pretrained}
    if weights["kind"] == "checkpoint":
        weights["sha256"] = runtime.file_sha256(cfg.pretrained)
        weights["training"] = models.training_record(
            cfg.pretrained
        )  # data, config, hashes when `thresher train` made it
    if weights["kind"] == "random-init":
        weights["note"] = "randomly initialised weights: scores are meaningless except for tests and speed"
    manifest = {
        "kind": "thresher.features",
        "scorer": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "weights": weights,
        "preprocess": pp_cfg,
        "device": device,
        "decode": where,
        "source": "computed",
        **runtime.provenance(),
        "shards": {
            "total": len(shards),
            "complete": len(completed(scorer_dir)),
            "failed": {f"{s:08d}": why for s, why in sorted(failed.items())},
        },
        "files": {
            "table": "{shard:08d}.parquet",
            "image_embeddings": "{shard:08d}.img.npy",
            "text_embeddings": "{shard:08d}.txt.npy",
        },
    }
    runtime.write_json(runtime.join(scorer_dir, "manifest.json"), manifest)
    return manifest


def embed_images(
    image_dir: str, model: str, pretrained: str | None, out: str, batch_size: int = 256, device: str = "auto"
) -> np.ndarray:
    """L2-normalised image embeddings of every image in a directory of WebDataset tars (for example a
    CLIP_benchmark set, or ImageNet train as tars), saved as float16 .npy: the target set of DataComp's
    image-based filter. Embed it with the same model and weights as the pool's scorer."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    pp_cfg = models.preprocess_config(model, pretrained)
    transform = models.pil_transform(pp_cfg)
    net, _ = models.load(model, pretrained, device=device)
    tars = sorted(runtime.glob(runtime.join(image_dir, "**", "*.tar")))
    if not tars:
        raise InputError(f"no .tar files under {image_dir}")
    pixels, chunks = [], []

    def flush():
        with torch.inference_mode():
            chunks.append(models.encode_images(net, np.stack(pixels), pp_cfg, device).cpu().numpy())
        pixels.clear()

    for tar_path in tars:
        fs, path = runtime.fs_path(tar_path)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1].lower() not in ("jpg", "jpeg", "png", "webp"):
                    continue
                try:
                    img = decode.open_image(tar.extractfile(member).read()).convert("RGB")
                except Exception as err:  # noqa: BLE001
                    raise InputError(f"{tar_path}: {member.name} is not a readable image: {err}") from err
                pixels.append(np.asarray(transform(img), dtype=np.uint8))
                if len(pixels) == batch_size:
                    flush()
    if pixels:
        flush()
    if not chunks:
        raise InputError(f"no images in the tars under {image_dir}")
    emb = np.concatenate(chunks).astype(np.float16)
    _write_npy(emb, out)
    return emb
