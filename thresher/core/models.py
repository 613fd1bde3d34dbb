"""open_clip models as data: a model name, and weights from a pretrained tag, a local checkpoint or none.

- `ViT-B-32` + `--pretrained laion2b_s34b_b79k`: real usage; open_clip fetches the tag (hub or cache).
- `ViT-B-32` + `--pretrained /path/epoch_32.pt`: a local checkpoint, e.g. one open_clip_train saved.
- `thresher-tiny` (configs/models/*.json, registered here): tiny configs for tests, the demo and
  benchmarks, where nothing can be downloaded. Without `--pretrained` the weights are random, which
  serves tests and speed benchmarks only; `weights_kind` says so in every manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from functools import lru_cache

import numpy as np

from thresher.core import runtime
from thresher.core.config import CONFIG_DIR
from thresher.core.errors import InputError


@lru_cache(maxsize=1)
def register_project_models() -> None:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR / "models")


def input_size(pp_cfg: dict) -> tuple[int, int]:
    """(height, width) of the model's input: open_clip's preprocessing `size`, an int or a pair."""
    size = pp_cfg["size"]
    return (size, size) if isinstance(size, int) else tuple(size)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads at `n` (unchanged when None) for the block, and as they were after it: the
    local executor runs stages in the command's own process, whose later steps must not inherit them."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weights_kind(pretrained: str | None) -> str:
    if not pretrained:
        return "random-init"
    return "checkpoint" if os.path.exists(pretrained) else "pretrained-tag"


def preprocess_config(model: str, pretrained: str | None) -> dict:
    """The inference preprocessing open_clip would use for (model, pretrained), without building the model."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    register_project_models()
    model_cfg = open_clip.get_model_config(model)
    if model_cfg is None:
        known = ", ".join(sorted(open_clip.list_models())[:12])
        raise InputError(
            f"unknown open_clip model {model!r} (e.g. {known}, ...; project configs: "
            f"{', '.join(p.stem for p in (CONFIG_DIR / 'models').glob('*.json'))})"
        )
    cfg = dataclasses.asdict(PreprocessCfg())
    cfg = merge_preprocess_dict(cfg, model_cfg.get("preprocess_cfg", {}))
    cfg["size"] = model_cfg["vision_cfg"].get("image_size", cfg["size"])
    if weights_kind(pretrained) == "pretrained-tag":
        tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
        if not tag_cfg:
            raise InputError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {model} "
                f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'})"
            )
        cfg = merge_preprocess_dict(cfg, tag_cfg)
    return cfg


def pil_transform(pp_cfg: dict):
    """open_clip's inference transform up to (not including) ToTensor: PIL in, PIL out (resized, cropped).

    Decoding tasks run this and ship uint8 pixels; `normalize` finishes the job next to the model. Split
    this way, the result equals open_clip's own preprocess, at a quarter of the bytes in flight."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.transforms import Compose, ToTensor

    full = image_transform_v2(PreprocessCfg(**pp_cfg), is_train=False)
    steps = []
    for t in full.transforms:
        if isinstance(t, ToTensor):
            break
        steps.append(t)
    return Compose(steps)


def resize_crop(pp_cfg: dict):
    """`pil_transform` in PIL alone, for the preprocessing nearly every model has (resize the shortest side
    and crop the centre to a square, or squash): the same calls torchvision's Resize and CenterCrop make on
    a PIL image, so the pixels are the same (tests/test_features.py). Decoding tasks then import neither
    torch nor open_clip (3-4 s of CPU in each worker, before its first image). None for the rest."""
    from PIL import Image

    interpolation = pp_cfg.get("interpolation") or "bicubic"
    if interpolation not in ("bicubic", "bilinear", "random"):
        return None
    # open_clip's image_transform: bilinear if asked for, else bicubic ('random' too, at inference)
    resample = Image.BILINEAR if interpolation == "bilinear" else Image.BICUBIC
    height, width = input_size(pp_cfg)
    mode = pp_cfg.get("resize_mode") or "shortest"
    if mode == "shortest" and height == width:
        return functools.partial(_shortest_then_crop, size=height, resample=resample)
    if mode == "squash":
        return functools.partial(_squash, size=(width, height), resample=resample)
    return None  # 'longest' (pads) and non-square 'shortest': open_clip's own classes


def _shortest_then_crop(img, size: int, resample):
    """torchvision Resize(size) then CenterCrop(size) on a PIL image (transforms/functional.py)."""
    w, h = img.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return img if img.mode == "RGB" else img.convert("RGB")  # open_clip's MaybeConvertMode


def _squash(img, size: tuple[int, int], resample):
    """torchvision Resize((h, w)) on a PIL image."""
    if img.size != size:
        img = img.resize(size, resample)
    return img if img.mode == "RGB" else img.convert("RGB")


def normalize(pixels_uint8, pp_cfg: dict, device, dtype):
    """uint8 NHWC -> normalised float NCHW on `device`: what ToTensor + Normalize do."""
    import torch

    x = torch.as_tensor(pixels_uint8).to(device=device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(pp_cfg["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(pp_cfg["std"], device=device).view(1, -1, 1, 1)
    return ((x - mean) / std).to(dtype)


def encode_images(net, pixels_uint8, pp_cfg: dict, device):
    """L2-normalised image embeddings (float32 tensor) of uint8 NHWC pixels; call under inference_mode."""
    import torch

    x = normalize(pixels_uint8, pp_cfg, device, torch.float32)
    return torch.nn.functional.normalize(net.encode_image(x).float(), dim=-1)


def load(model: str, pretrained: str | None, device: str = "cpu"):
    """(model in eval mode, tokenizer). Weights from a tag or a checkpoint path, or random."""
    import open_clip

    register_project_models()
    preprocess_config(model, pretrained)  # validates the name and tag with a clear error
    if pretrained and weights_kind(pretrained) == "checkpoint":
        net, _, _ = open_clip.create_model_and_transforms(model, pretrained=None, device=device)
        open_clip.load_checkpoint(net, pretrained, device=device)  # handles open_clip_train's {"state_dict": ...}
    else:
        if not pretrained:  # random init, but the same in every process: target and pool embeddings agree
            import torch

            torch.manual_seed(0)
        net, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained or None, device=device)
    net.eval()
    return net, open_clip.get_tokenizer(model)


def tokenize(tokenizer, texts: list[str]) -> np.ndarray:
    return tokenizer([t or "" for t in texts]).numpy().astype(np.int32)


def training_record(checkpoint: str) -> dict | None:
    """The train_manifest.json of the run a checkpoint came from (OUT/<name>/checkpoints/x.pt), if any:
    what a scorer records of weights `thresher train` made (a DFN)."""
    run_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))
    path = os.path.join(run_root, "train_manifest.json")
    if not os.path.exists(path):
        return None
    record = runtime.read_json(path)
    return record if os.path.abspath(record.get("checkpoint", "")) == os.path.abspath(checkpoint) else None


def gflops_per_sample(model: str, image_size: int | None = None) -> float:
    """Forward GFLOPs of one image-text pair, counted by torch's FlopCounterMode on one all-ones image
    and token sequence, as open_clip_train's profiler.profile_torch counts them (that function prints
    a table that needs `tabulate`; display=False here). Training records it (thresher/experiments/train.py)
    and `--plan`'s cost models scale by it (thresher/core/cost.py `gflops`)."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    register_project_models()
    kwargs = {"force_image_size": image_size} if image_size else {}
    net = open_clip.create_model(model, **kwargs)
    net.eval()
    size = net.visual.image_size if hasattr(net.visual, "image_size") else (image_size or 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    ctx = getattr(net, "context_length", None) or open_clip.get_model_config(model)["text_cfg"].get(
        "context_length", 77
    )
    counter = FlopCounterMode(display=False)
    with counter:  # not under no_grad: MultiheadAttention's inference fast path escapes the counter
        net(torch.ones((1, 3, *size)), torch.ones((1, ctx), dtype=torch.int64))
    return sum(counter.get_flop_counts()["Global"].values()) / 1e9
