"""Image decoding for CLIP scoring (`thresher features --model M`): where JPEGs become model input.

Two places, chosen by `ScorerConfig.decode` (pipeline/features.py):

- `cpu`: the decoding tasks open each image with PIL and apply open_clip's resize and crop
  (`models.pil_transform`), shipping uint8 pixels to the model actors. The default without a GPU.
- `actor`: the decoding tasks ship the image bytes as they are in the tar, and the model actor decodes
  a batch on its own device with `torchvision.io.decode_jpeg` (nvJPEG on a GPU: no extra package, it
  ships in the pinned torchvision) and applies the same torchvision Resize and CenterCrop to the
  tensors there. What decode_jpeg cannot take (PNG, WebP, a corrupt JPEG) goes through PIL on the
  actor's CPU, one image at a time; what PIL cannot open either is recorded as `decode_error` with a
  zero embedding, as on the CPU path. `auto` picks `actor` when the actors have a GPU, else `cpu`.

The two paths resize with different kernels (PIL's and torchvision's tensor bicubic), so their pixels
differ by a level or two and their embeddings agree to a cosine close to 1, not bit for bit
(tests/test_features.py measures it on the synthetic pool; the GPU figure needs the device).
"""

from __future__ import annotations

import io

import numpy as np

from . import models
from .errors import InputError

JPEG_MAGIC = b"\xff\xd8\xff"


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


def decode_batch(blobs: list[bytes], errors: list[str], pp_cfg: dict, device: str):
    """uint8 NHWC pixels on `device` for a batch of encoded images, and each row's error ("" when it
    decoded). A row that already has an error (missing from the tar) stays zeros."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    size = pp_cfg["size"] if isinstance(pp_cfg["size"], (list, tuple)) else (pp_cfg["size"], pp_cfg["size"])
    out = torch.zeros((len(blobs), size[0], size[1], 3), dtype=torch.uint8, device=device)
    errors = list(errors)
    transform = tensor_transform(pp_cfg)
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
            pixels = np.asarray(cpu(Image.open(io.BytesIO(bytes(blobs[i]))).convert("RGB")), dtype=np.uint8)
            out[i] = torch.as_tensor(pixels, device=device)
        except Exception as err:  # noqa: BLE001 - a bad image is recorded, not fatal
            errors[i] = f"decode_error: {err}"[:300]
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
