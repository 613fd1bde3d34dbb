"""The GPU paths against the CPU ones (issue 19), run where CUDA is available (the lent device machine);
CI has no GPU and skips them with the reason "needs a CUDA GPU" (tests/conftest.py).

- decoding in the model actor on the GPU (nvJPEG through torchvision's decode_jpeg) gives image
  embeddings within a cosine of 0.999 of PIL decoding on the CPU, on the synthetic pool;
- k-means on the GPU (faiss-gpu, `pip install 'thresher[gpu]'`) gives the same image_clusters decisions
  as on the CPU for the same seed, where faiss can use the GPU.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from thresher.stages.features import features
from thresher.stages.filter import filter as filtering

pytestmark = pytest.mark.gpu


def test_gpu_decoding_agrees_with_cpu_decoding(featured_pool, tmp_path, ray_local):
    from test_features import _small_pool

    small = _small_pool(featured_pool, tmp_path)
    for sid, where in (("cpu_decoded", "cpu"), ("gpu_decoded", "actor")):
        cfg = features.ScorerConfig(scorer_id=sid, decode=where, device="cuda")
        m = features.run_scorer(str(small), cfg, log=lambda *_: None)
        assert m["decode"] == where and m["device"] == "cuda"
    a = features.read_scorer(str(small), "cpu_decoded", with_embeddings=True)
    b = features.read_scorer(str(small), "gpu_decoded", with_embeddings=True)
    assert a[0].column("error").to_pylist() == b[0].column("error").to_pylist()
    ok = np.linalg.norm(a[1].astype(np.float32), axis=1) > 0.5
    cos = (a[1][ok].astype(np.float32) * b[1][ok].astype(np.float32)).sum(axis=1)
    print(f"GPU vs CPU decode: cosine min {cos.min():.5f}, mean {cos.mean():.6f} over {ok.sum()} images")
    assert cos.min() >= 0.999


def test_image_clusters_on_the_gpu_keep_what_the_cpu_keeps(featured_pool, tmp_path, ray_local):
    import faiss

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("faiss cannot use the GPU here (install faiss-gpu: pip install 'thresher[gpu]')")
    _, img, _ = features.read_scorer(str(featured_pool), "clip_tiny", with_embeddings=True, text=False)
    np.save(tmp_path / "target.npy", img[:40])
    recipe = "datacomp-image-based"
    kept = {}
    for gpu in (False, True):
        v = {"scorer": "clip_tiny", "target": str(tmp_path / "target.npy"), "clusters": 8}
        path = tmp_path / f"recipe-{gpu}.yaml"
        text = (
            filtering.recipe_path(recipe)
            .read_text()
            .replace('clusters: "{clusters}"', f'clusters: "{{clusters}}", gpu: {str(gpu).lower()}')
        )
        path.write_text(text.replace(f"name: {recipe}", f"name: {recipe}-gpu-{str(gpu).lower()}"))
        filtering.run(str(featured_pool), str(path), v, log=lambda *_: None)
        t = filtering.read(str(featured_pool), f"{recipe}-gpu-{str(gpu).lower()}")
        kept[gpu] = set(t.filter(pc.field("keep")).column("uid").to_pylist())
    assert kept[True] == kept[False] and kept[True]
