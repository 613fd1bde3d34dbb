"""The synthetic source's held-out sets (`thresher synth`), drawn apart from the pool:

    DIR/eval/<name>/...        labelled sets in CLIP_benchmark's WebDataset layout (shapes_kind and
                               shapes_color for classification, shapes_retrieval for retrieval)
    DIR/trusted/NNNNN.tar      clean image-caption pairs (jpg + txt): the trusted set a data-filtering
                               network is trained on

eval_image_bytes reads an evaluation image back (the source of a planted eval_contamination sample).
`cfg` is synth.py's SynthConfig (synth.py imports this module, so it is not named here).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from thresher.synthetic.drawing import _parallel, encode, render
from thresher.synthetic.plan import _rng
from thresher.synthetic.world import CLASS_TEMPLATES, COLOR_TEMPLATES, COLORS, KINDS, english_caption, random_scene

# ---------------------------------------------------------------------------------------------------
# Evaluation sets (CLIP_benchmark WebDataset layout)


def _eval_item(job: tuple) -> tuple[int, bytes, dict]:
    seed, name, i = job
    stream = {"shapes_kind": 10, "shapes_color": 11, "shapes_retrieval": 12}[name]
    rng = _rng(seed, stream, i)
    if name == "shapes_kind":
        scene = random_scene(rng, kind=KINDS[i % len(KINDS)])
    elif name == "shapes_color":
        scene = random_scene(rng, color=list(COLORS)[i % len(COLORS)])
    else:
        scene = random_scene(rng)
    side = int(rng.integers(224, 320))
    img = render(scene, side, side, rng)
    data = encode(img, "jpg", 90)
    meta = {"scene": scene}
    if name == "retrieval" or name == "shapes_retrieval":
        meta["captions"] = [english_caption(scene, rng), english_caption(scene, rng)]
    return i, data, meta


def _write_eval_sets(cfg, eval_dir: Path, ex) -> None:
    sets = {
        "shapes_kind": ("classification", cfg.eval_classification, KINDS, CLASS_TEMPLATES),
        "shapes_color": ("classification", cfg.eval_classification, list(COLORS), COLOR_TEMPLATES),
        "shapes_retrieval": ("retrieval", cfg.eval_retrieval, None, None),
    }
    for name, (task, n, classes, templates) in sets.items():
        root = eval_dir / name
        (root / "test").mkdir(parents=True, exist_ok=True)
        items = sorted(_parallel(ex, _eval_item, [(cfg.seed, name, i) for i in range(n)], 16))
        with tarfile.open(root / "test" / "0.tar", "w") as tar:
            for i, data, meta in items:
                key = f"s{i:06d}"
                members = {"jpg": data}
                if task == "classification":
                    label = meta["scene"]["kind"] if name == "shapes_kind" else meta["scene"]["color"]
                    members["cls"] = str(classes.index(label)).encode()
                else:
                    members["txt"] = "\n".join(meta["captions"]).encode()
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
        (root / "test" / "nshards.txt").write_text("1\n")
        (root / "dataset_type.txt").write_text(task + "\n")
        if classes:
            (root / "classnames.txt").write_text("\n".join(classes) + "\n")
            (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def _trusted_item(job: tuple) -> tuple[int, bytes, str]:
    seed, i = job
    rng = _rng(seed, 13, i)
    scene = random_scene(rng)
    w, h = int(rng.integers(224, 400)), int(rng.integers(224, 400))
    return i, encode(render(scene, w, h, rng), "jpg", 90), english_caption(scene, rng)


def _write_trusted_set(cfg, out: Path, ex, per_shard: int = 1000) -> None:
    """Clean pairs, drawn apart from the pool, as WebDataset shards (jpg + txt) open_clip_train reads."""
    out.mkdir(parents=True, exist_ok=True)
    items = sorted(_parallel(ex, _trusted_item, [(cfg.seed, i) for i in range(cfg.trusted)], 16))
    for shard, start in enumerate(range(0, len(items), per_shard)):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i, data, caption in items[start : start + per_shard]:
                for ext, payload in (("jpg", data), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"t{i:07d}.{ext}")
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))


def eval_image_bytes(eval_dir: Path, name: str, index: int) -> bytes:
    with tarfile.open(eval_dir / name / "test" / "0.tar") as tar:
        return tar.extractfile(f"s{index:06d}.jpg").read()
