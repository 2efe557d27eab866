"""The fast methods on CUDA agree with the same methods on CPU (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from cases import build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.importance import scoring_problem
from f3ocus.ntk.rows import per_sample_jacobians

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = ["mlp", "cnn_groupnorm_batchnorm", "vit_sdpa", "embedding", "weight_sharing", "mlp_loss"]


METHODS = [
    ("persample", {}),
    ("lanczos", {}),
    ("factored", {"eig": "gram"}),  # chunks of 2**26 elements on a GPU
    ("factored", {"eig": "lanczos"}),
]


@pytest.mark.parametrize("method,options", METHODS, ids=["persample", "lanczos", "factored-gram", "factored-lanczos"])
@pytest.mark.parametrize("name", CASES)
def test_cuda_matches_cpu(name, method, options):
    cpu = build(name, torch.float64, "cpu")
    gpu = build(name, torch.float64, "cuda")
    want = ntk_layer_importance(cpu.model, cpu.batch, method="dense", **cpu.kwargs)
    got = ntk_layer_importance(gpu.model, gpu.batch, method=method, seed=0, **options, **gpu.kwargs)
    assert got.stats["device"].startswith("cuda")
    for layer in want:
        assert got[layer] == pytest.approx(want[layer], rel=1e-6, abs=1e-12 * max(want.values()))


def test_cuda_jacobians_stay_on_device_and_match_cpu():
    cpu = build("vit_sdpa", torch.float64, "cpu")
    gpu = build("vit_sdpa", torch.float64, "cuda")
    with scoring_problem(cpu.model, cpu.batch) as p_cpu, scoring_problem(gpu.model, gpu.batch) as p_gpu:
        j_cpu = per_sample_jacobians(p_cpu)
        j_gpu = per_sample_jacobians(p_gpu, chunk_size=1)
    for layer, j in j_gpu.items():
        assert j.is_cuda
        torch.testing.assert_close(j.cpu(), j_cpu[layer], rtol=1e-10, atol=1e-12)


def test_float32_on_cuda_is_close_to_float64():
    ref = build("vit_sdpa", torch.float64, "cpu")
    gpu = build("vit_sdpa", torch.float32, "cuda")
    want = ntk_layer_importance(ref.model, ref.batch, method="dense")
    got = ntk_layer_importance(gpu.model, gpu.batch, seed=0)
    for layer in want:
        assert got[layer] == pytest.approx(want[layer], rel=1e-3, abs=1e-6 * max(want.values()))
