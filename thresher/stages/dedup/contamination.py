"""Dedup stage's contamination step (`thresher dedup --eval-set DIR`): the PDQ hashes of every image of
the evaluation sets (CLIP_benchmark WebDataset dirs, DIR/*/N.tar), against which samples within
`pdq_radius` bits are dropped as near-copies of an evaluation image, before any other step (dedup.py's
`run`; partitioned.py's first map round).
"""

from __future__ import annotations

import numpy as np

from thresher.algo import hashes
from thresher.core import runtime
from thresher.core.errors import InputError


def eval_pdq(eval_dir: str) -> list[tuple[str, str]]:
    """PDQ hashes of every image of an evaluation set in CLIP_benchmark's WebDataset layout."""
    import tarfile

    from thresher.algo.hashes import pdq_hash
    from thresher.core import decode

    out = []
    for tar_path in runtime.glob(runtime.join(eval_dir, "*", "*.tar")):
        fs, p = runtime.fs_path(tar_path)
        with fs.open(p, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp"):
                    name = member.name.rsplit(".", 1)[0]
                    try:  # the one pixel-limit check (decode.py): an evaluation set is the user's data too
                        image = decode.open_image(tar.extractfile(member).read())
                    except decode.TooLarge as err:
                        raise InputError(f"{tar_path}: {member.name}: {err}") from None
                    out.append((name, pdq_hash(image)[0]))
    if not out:
        raise InputError(f"no images found in evaluation set {eval_dir} (expected */N.tar)")
    return out


def eval_index(eval_sets: list[str]) -> tuple[np.ndarray, list[str]]:
    """PDQ codes of every image of the evaluation sets, and their names (SET/NAME)."""
    eval_hashes, eval_names = [], []
    for d in eval_sets:
        for name, h in eval_pdq(d):
            eval_hashes.append(h)
            eval_names.append(f"{d.rstrip('/').rsplit('/', 1)[-1]}/{name}")
    return hashes.pdq_codes(eval_hashes)[0], eval_names
