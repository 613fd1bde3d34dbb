"""Image decoding: the pixel limit every decoder checks first, and, for CLIP scoring (`thresher features
--model M`), where JPEGs become model input.

Two places, chosen by `ScorerConfig.decode` (thresher/stages/features/clip.py):

- `cpu`: the decoding tasks open each image with PIL and apply open_clip's resize and crop
  (`models.pil_transform`), shipping uint8 pixels to the model actors. The default without a GPU.
- `actor`: the decoding tasks ship the image bytes as they are in the tar, and the model actor decodes
  a batch on its own device with `torchvision.io.decode_jpeg` (nvJPEG on a GPU: no extra package, it
  ships in the pinned torchvision) and applies the same torchvision Resize and CenterCrop to the
  tensors there. What decode_jpeg cannot take (PNG, WebP, a corrupt JPEG) goes through PIL on the
  actor's CPU, one image at a time; what PIL cannot open either is recorded as `decode_error` with a
  zero embedding, as on the CPU path. `auto` picks `actor` when the actors have a GPU, else `cpu`.

Every image Thresher decodes goes through one pixel-limit check first (`_checked_open`, through
`open_image` or `pixel_refusal`): the width and height its header declares, read without decoding,
against `max_pixels` (download's limit, Pillow's own by default). Pillow itself refuses only past twice its limit, so a
13000 x 13000 PNG of 1.7 MB in an adopted tar used to be decoded in full (5 GB in base features); now it
is the row's error, `too_large: ...`, as the download records it.

The two paths resize with different kernels (PIL's and torchvision's tensor bicubic), so their pixels
differ by a level or two and their embeddings agree to a cosine close to 1, not bit for bit
(tests/test_features.py measures it on the synthetic pool; the GPU figure needs the device).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from thresher.core import models, runtime
from thresher.core.errors import InputError

JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS = 89_478_485  # Pillow's own limit (Image.MAX_IMAGE_PIXELS): download's max_pixels by default


class TooLarge(ValueError):
    """An image whose header declares more pixels than the limit: refused before decoding."""


def _checked_open(stream, max_pixels: int):
    """The one pixel-limit check: a PIL image of `stream` (its header read, nothing decoded), or TooLarge
    when the header declares more than `max_pixels` pixels (0: no limit but Pillow's own, twice its limit)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
            image = Image.open(stream)
    except Image.DecompressionBombError as err:  # Pillow's own refusal, past twice its limit
        raise TooLarge(f"too_large: {err} (read from the header, not decoded)") from None
    width, height = image.size
    if max_pixels and width * height > max_pixels:
        raise TooLarge(
            f"too_large: {width}x{height} = {width * height} pixels, over max_pixels {max_pixels} "
            "(read from the header, not decoded)"
        )
    return image


def pixel_refusal(stream, max_pixels: int) -> str | None:
    """`too_large: ...` when the image in `stream` fails the pixel-limit check (`max_pixels` 0: not
    checked at all), else None, also when Pillow cannot read the header (the decoder that follows says
    why). Leaves the stream at its start. For callers that decode elsewhere (img2dataset, nvJPEG)."""
    if not max_pixels:
        return None
    try:
        _checked_open(stream, max_pixels)
    except TooLarge as err:
        return str(err)
    except Exception:  # noqa: BLE001 - not identifiable here: the decoder decides
        return None
    finally:
        stream.seek(0)
    return None


def open_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """A PIL image of encoded bytes, past the pixel-limit check (TooLarge if it fails); decoded lazily."""
    return _checked_open(io.BytesIO(bytes(data)), max_pixels)


def failure(err: Exception) -> str:
    """A row's error for an image that did not decode: `too_large: ...` as download records it, else
    `decode_error: ...`."""
    return (str(err) if isinstance(err, TooLarge) else f"decode_error: {err}")[:300]


def max_pixels_of(pool: str) -> int:
    """The pixel limit for a pool's images: its download's `max_pixels` (0: none), or the default for a
    pool whose images no download checked (import-pool)."""
    from thresher.core.pool import Pool

    manifest = Pool(pool).manifest
    config = (runtime.read_json(manifest).get("config") or {}) if runtime.exists(manifest) else {}
    return int(config.get("max_pixels", MAX_PIXELS))


def tensor_transform(pp_cfg: dict):
    """open_clip's resize and crop as torchvision transforms that take uint8 CHW tensors (on any
    device); None when the preprocessing has a step only PIL can run (then decoding stays on the CPU)."""
    from torchvision.transforms import CenterCrop, Compose, Resize

    steps = []
    for t in models.pil_transform(pp_cfg).transforms:
        if isinstance(t, (Resize, CenterCrop)):
            steps.append(t)
        elif type(t).__name__ != "MaybeConvertMode":  # decode_jpeg's RGB mode does its job
            return None
    return Compose(steps)


def resolve(decode: str, device: str, pp_cfg: dict) -> str:
    """`cpu` or `actor` for a scorer's `decode` setting, its model device and preprocessing."""
    if decode not in ("auto", "cpu", "actor"):
        raise InputError(f"decode must be auto, cpu or actor, not {decode!r}")
    if decode == "auto":
        decode = "actor" if device.startswith("cuda") else "cpu"
    return "actor" if decode == "actor" and tensor_transform(pp_cfg) is not None else "cpu"


def decode_batch(blobs: list[bytes], errors: list[str], pp_cfg: dict, device: str, max_pixels: int = MAX_PIXELS):
    """uint8 NHWC pixels on `device` for a batch of encoded images, and each row's error ("" when it
    decoded). A row that already has an error (missing from the tar) stays zeros; so does one past the
    pixel limit, checked from its header before nvJPEG or PIL decodes anything (`max_pixels` 0: rows
    the caller checked already, as the decoding tasks do, off the model actor)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    size = pp_cfg["size"] if isinstance(pp_cfg["size"], (list, tuple)) else (pp_cfg["size"], pp_cfg["size"])
    out = torch.zeros((len(blobs), size[0], size[1], 3), dtype=torch.uint8, device=device)
    errors = list(errors)
    transform = tensor_transform(pp_cfg)
    for i, b in enumerate(blobs):
        if not errors[i]:
            errors[i] = (pixel_refusal(io.BytesIO(bytes(b)), max_pixels) or "")[:300]
    jpegs = [i for i, b in enumerate(blobs) if not errors[i] and bytes(b[:3]) == JPEG_MAGIC]
    decoded = _decode_jpegs([blobs[i] for i in jpegs], device, decode_jpeg, ImageReadMode.RGB)
    is_jpeg = set(jpegs)
    rest = [i for i in range(len(blobs)) if not errors[i] and i not in is_jpeg]
    for i, img in zip(jpegs, decoded):
        if img is None:
            rest.append(i)  # decode_jpeg refused it: PIL may still read it
        else:
            out[i] = transform(img).permute(1, 2, 0)
    cpu = models.pil_transform(pp_cfg)
    for i in sorted(rest):  # not JPEG, or a JPEG nvJPEG could not decode: PIL, one at a time
        try:
            pixels = np.asarray(cpu(open_image(blobs[i], max_pixels).convert("RGB")), dtype=np.uint8)
            out[i] = torch.as_tensor(pixels, device=device)
        except Exception as err:  # noqa: BLE001 - a bad image is recorded, not fatal
            errors[i] = failure(err)
    return out, errors


def _decode_jpegs(blobs: list[bytes], device: str, decode_jpeg, mode) -> list:
    """CHW uint8 tensors on `device` (None for one decode_jpeg refuses): the whole list in one call
    (nvJPEG's batched decode), or one by one when the batch fails, to find the bad ones."""
    import torch

    if not blobs:
        return []
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    try:
        return list(decode_jpeg(data, mode=mode, device=device))
    except RuntimeError:
        pass
    found = []
    for d in data:
        try:
            found.append(decode_jpeg(d, mode=mode, device=device))
        except RuntimeError:
            found.append(None)
    return found
