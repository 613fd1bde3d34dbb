"""`thresher eval RUN --eval-set DIR ...`: zero-shot classification and retrieval of a run's checkpoints.

Evaluation sets use CLIP_benchmark's WebDataset layout (what `thresher synth` writes under eval/):

    DIR/dataset_type.txt                         "classification" or "retrieval"
    DIR/test/{i}.tar, DIR/test/nshards.txt       samples: jpg + cls (class index), or jpg + txt (captions, one per line)
    DIR/classnames.txt                           classification: one class name per line
    DIR/zeroshot_classification_templates.txt    classification: prompts with {c}

Metric definitions follow CLIP_benchmark's:
- classification: acc1, acc5 (top-k over the classes' averaged, normalised prompt embeddings) and
  mean_per_class_recall (recall averaged over classes, i.e. balanced accuracy);
- retrieval: image_retrieval_recall@k (for each caption, its image is among the k nearest images) and
  text_retrieval_recall@k (for each image, one of its captions is among the k nearest captions).
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np

from thresher.core import models, runtime
from thresher.core.errors import InputError

RECALL_AT = (1, 5, 10)


def read_set(path: str) -> dict:
    kind_file = os.path.join(path, "dataset_type.txt")
    if not os.path.exists(kind_file):
        raise InputError(f"{path}: not an evaluation set (no dataset_type.txt; CLIP_benchmark's WebDataset layout)")
    kind = open(kind_file).read().strip()
    if kind not in ("classification", "retrieval"):
        raise InputError(f"{kind_file}: dataset type {kind!r}; expected classification or retrieval")
    tars = sorted(glob.glob(os.path.join(path, "test", "*.tar")), key=lambda p: int(os.path.basename(p).split(".")[0]))
    if not tars:
        raise InputError(f"{path}/test has no .tar shards")
    images, labels, captions = [], [], []
    for t in tars:
        samples: dict[str, dict] = {}
        with tarfile.open(t) as tar:
            for m in tar:
                if m.isfile():
                    key, _, ext = m.name.rpartition(".")
                    samples.setdefault(key, {})[ext.lower()] = tar.extractfile(m).read()
        for key in sorted(samples):
            s = samples[key]
            img = next((s[e] for e in ("jpg", "jpeg", "png", "webp") if e in s), None)
            if img is None:
                raise InputError(f"{t}: sample {key} has no image")
            images.append(img)
            if kind == "classification":
                if "cls" not in s:
                    raise InputError(f"{t}: sample {key} has no .cls label")
                labels.append(int(s["cls"].decode().strip()))
            else:
                if "txt" not in s:
                    raise InputError(f"{t}: sample {key} has no .txt captions")
                captions.append([c for c in s["txt"].decode().splitlines() if c.strip()])
    out = {"name": os.path.basename(os.path.normpath(path)), "kind": kind, "images": images}
    if kind == "classification":
        out["labels"] = np.asarray(labels)
        out["classnames"] = [c.strip() for c in open(os.path.join(path, "classnames.txt")) if c.strip()]
        out["templates"] = [
            t.strip() for t in open(os.path.join(path, "zeroshot_classification_templates.txt")) if t.strip()
        ]
    else:
        out["captions"] = captions
    return out


CACHE_BYTES = 512 * 2**20  # preprocessed images evaluate_run keeps across a run's checkpoints, at most


def _pixels(pp_cfg: dict, images: list[bytes], batch: int) -> list[np.ndarray]:
    """The images decoded and resized by open_clip's inference preprocessing, in batches."""
    from PIL import Image

    resize = models.pil_transform(pp_cfg)
    return [
        np.stack([np.asarray(resize(Image.open(io.BytesIO(b)).convert("RGB"))) for b in images[i : i + batch]])
        for i in range(0, len(images), batch)
    ]


def _encode(
    net,
    pp_cfg: dict,
    tokenizer,
    images: list[bytes],
    texts: list[str],
    device: str,
    batch: int = 256,
    pixels: list[np.ndarray] | None = None,
):
    """L2-normalised image and text embeddings (numpy float32), with open_clip's inference preprocessing
    (`pixels`: the images already preprocessed by _pixels with this pp_cfg and batch)."""
    import torch

    img_emb, txt_emb = [], []
    with torch.inference_mode():
        for chunk in pixels if pixels is not None else _pixels(pp_cfg, images, batch):
            img_emb.append(models.encode_images(net, chunk, pp_cfg, device).cpu())
        for i in range(0, len(texts), batch):
            t = tokenizer(texts[i : i + batch]).to(device)
            txt_emb.append(torch.nn.functional.normalize(net.encode_text(t).float(), dim=-1).cpu())
    return torch.cat(img_emb).numpy(), torch.cat(txt_emb).numpy()


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    order = np.argsort(-logits, axis=1)
    acc1 = float(np.mean(order[:, 0] == labels))
    k = min(5, logits.shape[1])
    acc5 = float(np.mean((order[:, :k] == labels[:, None]).any(axis=1)))
    recalls = [np.mean(order[labels == c, 0] == c) for c in np.unique(labels)]
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(recalls))}


def retrieval_metrics(img: np.ndarray, txt: np.ndarray, owner: np.ndarray) -> dict:
    """owner[j]: the image index caption j belongs to."""
    sim = txt @ img.T  # [texts, images]
    out = {}
    rank_img = np.argsort(-sim, axis=1)
    rank_txt = np.argsort(-sim.T, axis=1)
    for k in RECALL_AT:
        out[f"image_retrieval_recall@{k}"] = float(np.mean((rank_img[:, :k] == owner[:, None]).any(axis=1)))
        hits = owner[rank_txt[:, :k]] == np.arange(len(img))[:, None]
        out[f"text_retrieval_recall@{k}"] = float(np.mean(hits.any(axis=1)))
    return out


def evaluate_model(
    model_name: str, checkpoint: str | None, sets: list[dict], device: str = "cpu", cache: dict | None = None
) -> dict:
    """`cache`: a dict kept across calls (one run's checkpoints) holding each set's preprocessed images,
    decoded and resized once per preprocessing configuration instead of once per checkpoint."""
    import torch

    model, tokenizer = models.load(model_name, checkpoint, device)
    pp_cfg = models.preprocess_config(model_name, checkpoint)
    results = {}
    for s in sets:
        pixels = None
        if cache is not None and s["images"]:
            key = (s["name"], json.dumps(pp_cfg, sort_keys=True, default=str))
            if key not in cache:  # kept only where small (an evaluation set of real size streams as before)
                height, width = models.input_size(pp_cfg)
                small = height * width * 3 * len(s["images"]) <= CACHE_BYTES  # uint8 RGB
                cache[key] = _pixels(pp_cfg, s["images"], 256) if small else None
            pixels = cache[key]
        if s["kind"] == "classification":
            prompts = [t.replace("{c}", c) for c in s["classnames"] for t in s["templates"]]
            img, txt = _encode(model, pp_cfg, tokenizer, s["images"], prompts, device, pixels=pixels)
            cls = txt.reshape(len(s["classnames"]), len(s["templates"]), -1).mean(axis=1)
            cls /= np.linalg.norm(cls, axis=1, keepdims=True)
            results[s["name"]] = classification_metrics(img @ cls.T, s["labels"])
        else:
            texts = [c for caps in s["captions"] for c in caps]
            owner = np.asarray([i for i, caps in enumerate(s["captions"]) for _ in caps])
            img, txt = _encode(model, pp_cfg, tokenizer, s["images"], texts, device, pixels=pixels)
            results[s["name"]] = retrieval_metrics(img, txt, owner)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


def evaluate_run(run: str, eval_sets: list[str], device: str | None = None, log=print) -> dict:
    """Evaluate every checkpoint the run's train_manifest.json lists; writes RUN/eval.json."""
    import torch

    manifest_path = os.path.join(run, "train_manifest.json")
    if not os.path.exists(manifest_path):
        raise InputError(f"{run}: no train_manifest.json; train it with `thresher train` first")
    manifest = runtime.read_json(manifest_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sets = [read_set(p) for p in eval_sets]
    out_path = os.path.join(run, "eval.json")
    done = runtime.read_json(out_path) if os.path.exists(out_path) else {"checkpoints": []}
    have = {c["checkpoint_sha256"] for c in done["checkpoints"] if set(c["metrics"]) >= {s["name"] for s in sets}}
    cache: dict = {}  # every checkpoint of the run sees the same images: preprocess them once
    for ck in manifest.get("checkpoints") or [
        {
            "path": manifest["checkpoint"],
            "epoch": manifest["config"].get("epochs"),
            "samples_seen": None,
            "sha256": manifest["checkpoint_sha256"],
        }
    ]:
        if ck["sha256"] in have:
            continue
        log(f"[eval] {ck['path']} on {', '.join(s['name'] for s in sets)}")
        metrics = evaluate_model(manifest.get("model") or manifest["config"]["model"], ck["path"], sets, device, cache)
        done["checkpoints"] = [c for c in done["checkpoints"] if c["checkpoint_sha256"] != ck["sha256"]]
        done["checkpoints"].append(
            {
                "checkpoint": ck["path"],
                "checkpoint_sha256": ck["sha256"],
                "epoch": ck["epoch"],
                "samples_seen": ck["samples_seen"],
                "metrics": metrics,
            }
        )
        runtime.write_json(out_path, done)
    done["checkpoints"].sort(key=lambda c: c["epoch"] or 0)
    runtime.write_json(out_path, done)
    return done
