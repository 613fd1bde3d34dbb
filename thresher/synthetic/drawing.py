"""Drawing the synthetic pool's images (`thresher synth`): DIR/www/img/{index:08d}.{format}.

render draws a scene (thresher/synthetic/world.py) and encode writes it as JPEG, PNG or WebP. In worker
processes (_parallel over the executor, a chunk of calls to an item), _draw_one renders, encodes and
writes one planned image, and _derive_one makes a near duplicate or an evaluation set's contaminated
copy from a source image that already exists (_perturb: re-encoded, rescaled, recoloured, watermarked).
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from thresher.algo.hashes import pdq_hash
from thresher.exec import execute
from thresher.synthetic.plan import _rng
from thresher.synthetic.world import BACKGROUNDS, COLORS, POSITIONS

# ---------------------------------------------------------------------------------------------------
# Drawing


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n, radii, offset=0.0):
        pts = []
        for i in range(n):
            a = angle + offset + 2 * math.pi * i / n
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if kind == "triangle":
        return ring(3, [r], -math.pi / 2)
    if kind == "square":
        return ring(4, [r], math.pi / 4)
    if kind == "diamond":
        pts = ring(4, [r, 0.6 * r])
        return pts
    if kind == "hexagon":
        return ring(6, [r])
    if kind == "star":
        return ring(10, [r, 0.42 * r], -math.pi / 2)
    if kind == "cross":
        w = 0.33 * r
        base = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
    elif kind == "arrow":
        base = [
            (-r, -0.25 * r),
            (0.2 * r, -0.25 * r),
            (0.2 * r, -0.6 * r),
            (r, 0),
            (0.2 * r, 0.6 * r),
            (0.2 * r, 0.25 * r),
            (-r, 0.25 * r),
        ]
    else:
        raise ValueError(kind)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in base]


def _background(w: int, h: int, bg: tuple, texture: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array(bg, dtype=np.int16)
    arr = np.empty((h, w, 3), dtype=np.int16)
    arr[:] = base
    shade = np.where(base > 128, -45, 45).astype(np.int16)
    k = int(rng.integers(10, 28))
    if texture == "striped":
        if rng.random() < 0.5:
            arr[:, (np.arange(w) // k) % 2 == 0] += shade
        else:
            arr[(np.arange(h) // k) % 2 == 0, :] += shade
    elif texture == "checkered":
        yy, xx = np.ogrid[:h, :w]
        arr[((yy // k + xx // k) % 2) == 0] += shade
    elif texture == "dotted":
        yy, xx = np.ogrid[:h, :w]
        rad = max(2, k // 4)
        arr[((yy % k - k // 2) ** 2 + (xx % k - k // 2) ** 2) <= rad * rad] += shade
    elif texture == "grainy":
        arr += rng.integers(-28, 29, size=(h, w, 1), dtype=np.int16)
    elif texture == "faded":
        ramp = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = ramp[None, :, None] if ramp.shape[0] == w else ramp[:, None, None]
        arr = (arr + ramp * shade * 1.6).astype(np.int16)
    # Uneven lighting, different in every image: real photos are never as alike as two renders of one
    # scene description, and without it a crop of one image is closer to another image than to its source.
    grid = rng.uniform(-1, 1, size=(int(rng.integers(5, 9)), int(rng.integers(5, 9))))
    light = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC))
    arr += np.round(light * 60).astype(np.int16)[:, :, None]
    return np.clip(arr, 0, 255).astype(np.uint8)


def render(scene: dict, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene: background with texture, then `count` objects of one kind and colour."""
    img = Image.fromarray(_background(w, h, BACKGROUNDS[scene["bg"]], scene["texture"], rng))
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    scale = (0.10, 0.17) if scene["size"] == "small" else (0.20, 0.30)
    base_rgb = np.array(COLORS[scene["color"]])
    for j in range(scene["count"]):
        r = side * rng.uniform(*scale)
        if scene["count"] == 1:
            px, py = POSITIONS[scene["pos"]]
            cx, cy = px * w + rng.normal(0, side * 0.02), py * h + rng.normal(0, side * 0.02)
        else:  # spread objects over a grid of cells so they rarely overlap
            cols = 2
            cx = ((j % cols) + 0.5) / cols * w + rng.uniform(-0.12, 0.12) * w
            cy = ((j // cols) + 0.5) / 2 * h + rng.uniform(-0.12, 0.12) * h
        rgb = tuple(int(v) for v in np.clip(base_rgb + rng.integers(-18, 19, 3), 0, 255))
        angle = rng.uniform(0, 2 * math.pi) if scene["kind"] not in ("circle", "ring", "crescent") else 0.0
        kind = scene["kind"]
        box = (cx - r, cy - r, cx + r, cy + r)
        if kind == "circle":
            draw.ellipse(box, fill=rgb)
        elif kind == "ring":
            draw.ellipse(box, outline=rgb, width=max(2, int(r * 0.32)))
        elif kind == "crescent":  # a disc minus an offset disc, through a mask so the background shows
            mask = Image.new("L", img.size, 0)
            mdraw = ImageDraw.Draw(mask)
            mdraw.ellipse(box, fill=255)
            off = r * 0.45
            mdraw.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=0)
            img.paste(rgb, mask=mask)
        else:
            draw.polygon(_polygon(kind, cx, cy, r, angle), fill=rgb)
    if scene.get("hazard"):
        # the visual mark of a blocklisted ("unsafe") sample: a hazard-striped band across one corner
        band = max(8, side // 7)
        for t in range(-band, w + h, band // 2 * 2):
            draw.line(
                [(t, 0), (t - band, band)], fill=(250, 200, 0) if (t // band) % 2 else (15, 15, 15), width=band // 2
            )
    return img


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=2)
    else:
        img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _perturb(img: Image.Image, variant: str, rng: np.random.Generator, min_side: int = 205) -> Image.Image:
    """A near-copy, the way re-uploads differ: re-encoded, rescaled, colour-adjusted or stamped with a
    watermark. It keeps the short side >= min_side, so that a near duplicate is not also a tiny image:
    each planted sample should trip exactly one rule. Crops are not planted: see docs/dedup.md."""
    w, h = img.size
    if variant == "resize":
        f = max(rng.uniform(0.6, 0.9), min_side / min(w, h))
        return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BILINEAR)
    if variant == "recolor":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.92, 1.08))
        return ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
    if variant == "watermark":
        mark = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(mark)
        bw, bh = int(w * rng.uniform(0.1, 0.16)), int(h * rng.uniform(0.04, 0.06))
        x0 = int(rng.choice([4, w - bw - 4]))
        y0 = int(rng.choice([4, h - bh - 4]))
        draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=(255, 255, 255, 60))
        draw.text((x0 + 3, y0 + 2), f"(c) site{int(rng.integers(1000))}", fill=(20, 20, 20, 160))
        return Image.alpha_composite(img.convert("RGBA"), mark).convert("RGB")
    return img  # "reencode": the caller re-encodes at another quality


def _draw_one(job: tuple) -> dict:
    """Worker: render, encode and write one planned image; return its hashes and size."""
    cfg_seed, plan, www, eval_dir = job
    rng = _rng(cfg_seed, 3, plan["index"])
    cat = plan["category"]
    out = {"index": plan["index"], "sha256": None, "pdq": None, "width": None, "height": None}
    if cat in ("http_404", "timeout"):
        return out  # nothing is served at that URL
    path = Path(www) / "img" / f"{plan['index']:08d}.{plan['format']}"
    if cat == "corrupt":
        data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.bytes(int(rng.integers(2000, 20000)))
    elif cat == "exact_duplicate":
        return out  # copied from its source after all sources exist
    elif cat in ("near_duplicate", "eval_contamination"):
        return out  # derived after sources exist
    else:
        w, h = plan["size"]
        img = render(plan["scene"], w, h, rng)
        if cat == "blocked_pdq":
            # the list holds the hash of the original; what is served is a perturbed copy
            out["pdq"] = pdq_hash(img)[0]
            img = _perturb(img, plan["variant"], rng)
            data = encode(img, "jpg" if plan["format"] == "jpg" else plan["format"], 70)
        else:
            data = encode(img, plan["format"], plan["quality"])
        out["width"], out["height"] = img.size
    path.write_bytes(data)
    out["sha256"] = hashlib.sha256(data).hexdigest()
    return out


def _derive_one(job: tuple) -> dict:
    """Worker: near duplicates and contamination, made from a source image that already exists."""
    cfg_seed, plan, www, src_path = job
    rng = _rng(cfg_seed, 4, plan["index"])
    img = Image.open(src_path).convert("RGB")
    img = _perturb(img, plan["variant"], rng)
    quality = int(rng.integers(50, 71))  # below any source's quality (75-95): never the same bytes
    data = encode(img, plan["format"], quality)
    path = Path(www) / "img" / f"{plan['index']:08d}.{plan['format']}"
    path.write_bytes(data)
    return {
        "index": plan["index"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "pdq": None,
        "width": img.size[0],
        "height": img.size[1],
    }


def _each(calls: list, fn) -> list:
    return [fn(c) for c in calls]


def _parallel(ex, fn, calls: list, chunk: int) -> list:
    """fn over calls on the executor, `chunk` calls to an item (one sample's work is milliseconds)."""
    chunks = [calls[i : i + chunk] for i in range(0, len(calls), chunk)]
    return [r for part in execute.map(_each, chunks, fn, executor=ex, label="synth", unit="batches") for r in part]
