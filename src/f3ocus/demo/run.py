"""The demo's federated task: for one seed, every strategy from the same data, warm start and minibatches.

Per seed:

1. Data (:func:`f3ocus.demo.data.load_easy_vqa`): a non-IID Dirichlet split over $K$ clients, a test split
   of about 1,100 questions.
2. Model (:func:`f3ocus.demo.model.build_model`): pretrained encoders, fusion head initialized from the seed.
3. Warm start, shared by all strategies: ``warmup_rounds`` FedAvg rounds in which every client trains only the
   fusion head on frozen-encoder features (linear probing before fine-tuning, LP-FT: Kumar et al.,
   ICLR 2022). Features are computed once because no trained parameter precedes them.
4. For each strategy (:mod:`f3ocus.demo.strategies`), from the warm start: ``rounds`` rounds of
   plan -> local training (:func:`f3ocus.fl.run_round`: :func:`f3ocus.fl.train_only`, masked FedAvg) ->
   test accuracy, overall and on yes/no and other answers.

**The head.** The fusion head is new (randomly initialized), so it is a *required* layer: every client
trains it in every round, outside the budget, and it is averaged over all clients (as is usual for a new
task head; Sun et al.'s "common layers" in partial-model federated learning). The strategies choose only
among the $L = 21$ encoder layers and spend the budgets $b_k$ there. Without this, the head would be
averaged over the few clients that happened to train it in a round, and under label skew it would lurch
between their majority answers.

**Pairing.** The split and the head initialization depend only on the seed, local minibatches only on
(seed, round, client), so every strategy of a seed sees the same data in the same order; each record keeps
digests of the split, the warm start and the minibatch draws so that this can be checked
(:func:`f3ocus.demo.study.check_pairing`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from f3ocus._checks import check_choice, check_int, check_positive_float
from f3ocus.demo.strategies import check_strategy, default_budgets, make_plan, score_of

__all__ = ["HEAD", "TaskConfig", "load_model", "run_seed"]

#: The required layer: trained by every client in every round, never selectable.
HEAD = "head"


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    r"""The federated task (defaults: the study's task, sized for a 2-core CPU).

    Attributes:
        rounds: Federated rounds per strategy after the warm start.
        clients: Number of clients $K$.
        samples_per_client: Mean number of training questions per client.
        alpha: Dirichlet concentration of the non-IID split (smaller: more skew).
        budgets: Encoder layers per client (the head comes on top); default spread from 2 to 6.
        local_steps: Adam steps per client per round.
        batch_size: Questions per local step.
        lr: Adam learning rate of the encoder layers in local fine-tuning (chosen by a sweep on full
            fine-tuning only).
        head_lr: Adam learning rate of the fusion head in local fine-tuning (the new head takes larger
            steps than the pretrained encoder layers).
        max_grad_norm: Local gradients are clipped to this Euclidean norm before every step (None: no
            clipping).
        warmup_rounds: Head-only FedAvg rounds of the warm start.
        warmup_steps: Adam steps per client per warm-up round.
        warmup_lr: Learning rate of the warm-up.
        lr_schedule: How the local learning rates change over the rounds of each phase (warm-up and
            fine-tuning, each over its own rounds): ``"cosine"`` scales round $r$ of $R$ by
            $\tfrac12(1 + \cos(\pi r / R))$ (1 in the first round, about $2.5/R^2$ in the last), so the
            last rounds only settle the model; ``"constant"`` keeps them. Under label skew a constant step
            keeps the averaged model swinging between the clients' majority answers from round to round.
        score_samples: Questions per client in the NTK scoring batch.
        kernel: NTK kernel of the scoring (``"output"``, ``"sum"`` or ``"loss"``).
        solver: Solver of the ``f3ocus`` strategy (see :func:`f3ocus.available_solvers`).
        test_images: Test images (all their questions are the test split).
        image_size: Image side given to the model (easy-VQA's 64 x 64 images, area-averaged down).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    """

    rounds: int = 5
    clients: int = 5
    samples_per_client: int = 200
    alpha: float = 0.5
    budgets: tuple[int, ...] | None = None
    local_steps: int = 5
    batch_size: int = 16
    lr: float = 3e-5
    head_lr: float = 3e-4
    max_grad_norm: float | None = 1.0
    warmup_rounds: int = 4
    warmup_steps: int = 10
    warmup_lr: float = 1e-3
    lr_schedule: str = "cosine"
    score_samples: int = 4
    kernel: str = "loss"
    solver: str = "nsga2"
    test_images: int = 300
    image_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, low=1)
        check_int("clients", self.clients, low=1)
        check_int("samples_per_client", self.samples_per_client, low=2)
        check_int("local_steps", self.local_steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("warmup_rounds", self.warmup_rounds, low=0)
        check_int("warmup_steps", self.warmup_steps, low=1)
        check_int("score_samples", self.score_samples, low=1)
        check_int("test_images", self.test_images, low=1, high=1000)
        check_int("image_size", self.image_size, low=8, high=64)
        check_positive_float("alpha", self.alpha)
        check_positive_float("lr", self.lr)
        check_positive_float("head_lr", self.head_lr)
        if self.max_grad_norm is not None:
            check_positive_float("max_grad_norm", self.max_grad_norm)
        check_positive_float("warmup_lr", self.warmup_lr)
        check_choice("kernel", self.kernel, ["output", "sum", "loss"])
        check_choice("lr_schedule", self.lr_schedule, ["cosine", "constant"])
        if self.budgets is not None and len(self.budgets) != self.clients:
            raise ValueError(
                f"budgets has {len(self.budgets)} entries but clients={self.clients}; pass one budget per client."
            )

    def lr_factor(self, r: int, rounds: int) -> float:
        """The factor of the local learning rates in round ``r`` (0-based) of ``rounds`` (``lr_schedule``)."""
        if self.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * r / rounds))

    def client_budgets(self, num_layers: int) -> list[int]:
        """The per-client budgets of encoder layers, checked against the number of selectable layers."""
        budgets = list(self.budgets) if self.budgets is not None else default_budgets(self.clients)
        for k, b in enumerate(budgets):
            check_int(f"budgets[{k}]", b, low=1, high=num_layers)
        return budgets


def load_model(device: str = "cpu", image_size: int = 64):
    """``(model, tokenizer, pretrained state)``: the demo model, loaded once per process."""
    from f3ocus.demo.model import build_model

    model, tokenizer = build_model(13, seed=0, image_size=image_size)
    model.to(torch.device(device))
    return model, tokenizer, {k: v.clone() for k, v in model.state_dict().items()}


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _warmup(model, data, layer_map, config: TaskConfig, seed: int) -> None:
    """Head-only FedAvg on cached frozen-encoder features (step 3 of the module docs)."""
    from f3ocus.demo.train import child_generator
    from f3ocus.fl import run_round

    with torch.no_grad():
        text = model.text_features(data.input_ids, data.attention_mask)
        image = model.image_features(data.clients[0].images)  # the shared image table of the pool
        feats = [(image[c.image_index], text[c.question_index]) for c in data.clients]

    def train_fn(local, client):
        k, r = client
        u, t = feats[k]
        y = data.clients[k].answers
        g = child_generator(seed, 10_000 + r, k)
        lr = config.warmup_lr * config.lr_factor(r, config.warmup_rounds)
        opt = torch.optim.Adam([p for p in local.parameters() if p.requires_grad], lr=lr)
        for _ in range(config.warmup_steps):
            i = torch.randint(len(y), (config.batch_size,), generator=g).to(y.device)
            loss = torch.nn.functional.cross_entropy(local.head(u[i], t[i]), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return len(y)

    for r in range(config.warmup_rounds):
        clients = [(k, r) for k in range(len(data.clients))]
        run_round(model, clients, [[HEAD]] * len(clients), train_fn, layer_map=layer_map)


def _per_sample_loss(logits, answers):
    return torch.nn.functional.cross_entropy(logits, answers, reduction="none")


def _scores(
    model, data, layer_map, names, config: TaskConfig, seed: int, r: int, score: str = "ntk"
) -> np.ndarray:
    """The ``(K, L)`` scores of the encoder layers ``names`` on each client's scoring batch: the NTK
    (:func:`f3ocus.ntk_layer_importance` with ``config.kernel``) or a baseline score of
    :func:`f3ocus.layer_scores` on the per-sample cross-entropy. The batch is the same for every score."""
    from f3ocus import layer_scores, ntk_layer_importance
    from f3ocus.demo.train import child_generator, scoring_batch
    from f3ocus.fl import train_only

    layers = {name: layer_map[name] for name in names}
    rows = []
    with train_only(model, names, layer_map=layer_map):
        for k, split in enumerate(data.clients):
            g = child_generator(seed, 20_000 + r, k)
            batch, answers = scoring_batch(data, split, config.score_samples, g)
            loss = {"loss_fn": _per_sample_loss, "targets": answers}
            if score == "ntk":
                extra: dict[str, Any] = loss if config.kernel == "loss" else {}
                s = ntk_layer_importance(
                    model, batch, layers=layers, kernel=config.kernel, seed=seed, **extra
                )
            else:
                s = layer_scores(model, batch, score, layers=layers, seed=seed, **loss)
            rows.append([float(s[name]) for name in names])
    return np.array(rows)


def _refresh(cache: dict, trained: set[str]) -> None:
    for encoder in ("image", "text"):  # features stay valid while no parameter of the encoder changed
        if any(name.startswith(encoder + ".") for name in trained):
            cache.pop(encoder, None)


def _run_strategy(strategy, model, data, layer_map, names, budgets, config, seed, start, progress, shared):
    from f3ocus.demo.train import child_generator, evaluate, frozen_features, local_train
    from f3ocus.fl import run_round

    model.load_state_dict(start["state"])
    record: dict[str, Any] = {"strategy": strategy, "seed": seed, "alpha": config.alpha}
    record.update({f"accuracy_{k}": [v] for k, v in start["accuracy"].items()})
    record.update({"plans": [], "scores": [], "plan_stats": [], "params_up": [], "bytes_up": []})
    record.update({"bytes_down": [], "data_digest": start["data_digest"]})
    record["warmstart_digest"] = start["warmstart_digest"]
    # Bitwise results depend on the CPU's kernels (AVX2 vs AVX-512 reduction orders): say where it ran.
    record["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    record["torch_version"] = torch.__version__
    batches = hashlib.sha256()
    began = time.perf_counter()
    test_features: dict[str, torch.Tensor] = {}
    pool_features: dict[str, torch.Tensor] = {}
    for r in range(config.rounds):
        score_fn = None
        score = score_of(strategy)
        if score is not None:

            def score_fn(r=r, score=score):
                if r == 0:  # every strategy starts from the same model: round-0 scores are shared
                    key = f"round0/{score}"
                    if key not in shared:
                        shared[key] = _scores(model, data, layer_map, names, config, seed, r, score)
                    return shared[key]
                return _scores(model, data, layer_map, names, config, seed, r, score)

        plan = make_plan(
            strategy, names, budgets, score_fn=score_fn, solver=config.solver, seed=seed * 1000 + r
        )
        pool_features.update(frozen_features(model, data, data.clients[0], skip=pool_features))

        factor = config.lr_factor(r, config.rounds)

        def train_fn(local, k, r=r, factor=factor):
            g = child_generator(seed, r, k)
            n = local_train(
                local,
                data,
                data.clients[k],
                steps=config.local_steps,
                batch_size=config.batch_size,
                lr=config.lr * factor,
                generator=g,
                features=pool_features,
                head_lr=config.head_lr * factor,
                max_grad_norm=config.max_grad_norm,
            )
            batches.update(g.get_state().numpy().tobytes())
            return n

        layers = [[HEAD, *row] for row in plan.layers]
        result = run_round(model, list(range(len(data.clients))), layers, train_fn, layer_map=layer_map)
        trained = {name for row in plan.layers for name in row}
        _refresh(test_features, trained)
        _refresh(pool_features, trained)
        acc = evaluate(model, data, data.test, features=test_features)
        for k, v in acc.items():
            record[f"accuracy_{k}"].append(v)
        record["plans"].append(plan.mask.astype(int).tolist())
        record["scores"].append(None if plan.scores is None else plan.scores.tolist())
        record["plan_stats"].append(plan.stats)
        record["params_up"].append(list(result.cost.params_up))
        record["bytes_up"].append(list(result.cost.bytes_up))
        record["bytes_down"].append(list(result.cost.bytes_down))
        if progress is not None:
            progress.set_postfix_str(f"{strategy} round {r + 1}: acc {acc['all']:.3f}")
            progress.update(1)
    record["batch_digest"] = batches.hexdigest()[:16]
    record["seconds"] = time.perf_counter() - began
    return record


def run_seed(
    config: TaskConfig,
    seed: int,
    strategies: Sequence[str],
    loaded,
    *,
    progress: bool = False,
    position: int = 0,
    on_result: Callable[[str, dict], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``strategies`` for one seed (module docs), from one shared split and warm start.

    Args:
        config: The task.
        seed: The seed (split, head initialization, minibatches, solver).
        strategies: Names of :mod:`f3ocus.demo.strategies`.
        loaded: :func:`load_model`'s result (reused across seeds in one process).
        progress: Show a tqdm bar (stderr) for the seed.
        position: Row of the bar.
        on_result: Called as ``on_result(strategy, record)`` when a strategy finishes (e.g. to save it).

    Returns:
        Strategy -> record: ``accuracy_all``, ``accuracy_yes/no``, ``accuracy_other`` (entry 0 = the warm
        start, then one per round), the plans (over the encoder layers), NTK scores, plan stats,
        per-client traffic (head included), digests of split, warm start and minibatches, ``seconds``.
    """
    from f3ocus.demo.data import load_easy_vqa
    from f3ocus.demo.model import demo_layers, layer_parameter_counts
    from f3ocus.demo.train import evaluate

    check_int("seed", seed, low=0)
    for s in strategies:
        check_strategy("strategies[...]", s)
    model, tokenizer, pretrained = loaded
    layer_map = demo_layers(model)
    names = [name for name in layer_map if name != HEAD]
    budgets = config.client_budgets(len(names))
    began = time.perf_counter()
    data = load_easy_vqa(
        tokenizer,
        num_clients=config.clients,
        samples_per_client=config.samples_per_client,
        alpha=config.alpha,
        test_images=config.test_images,
        image_size=config.image_size,
        seed=seed,
    ).to(torch.device(config.device))
    model.load_state_dict(pretrained)
    _reset_head(model, seed)
    _warmup(model, data, layer_map, config, seed)
    start = {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "accuracy": evaluate(model, data, data.test),
        "data_digest": _digest(
            *(t for c in [*data.clients, data.test] for t in (c.image_index, c.question_index, c.answers))
        ),
        "warmstart_digest": _digest(*model.head.state_dict().values()),
    }
    setup = time.perf_counter() - began
    shared: dict[str, np.ndarray] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(strategies) * config.rounds
        bar = tqdm(total=total, desc=f"a={config.alpha:g} seed {seed}", unit="round", position=position)
    out = {}
    try:
        for strategy in strategies:
            rec = _run_strategy(
                strategy, model, data, layer_map, names, budgets, config, seed, start, bar, shared
            )
            rec.update(
                {
                    "layers": names,
                    "layer_params": layer_parameter_counts(model, layer_map),
                    "budgets": budgets,
                    "client_sizes": [len(c) for c in data.clients],
                    "test_size": len(data.test),
                    "setup_seconds": setup,
                    "device": config.device,
                    "threads": torch.get_num_threads(),
                }
            )
            out[strategy] = rec
            if on_result is not None:
                on_result(strategy, rec)
    finally:
        if bar is not None:
            bar.close()
    return out


def _reset_head(model, seed: int) -> None:
    from f3ocus.demo.model import FusionHead

    old = model.head
    head = FusionHead(
        old.image_proj.in_features,
        old.text_proj.in_features,
        old.hidden.out_features,
        old.out.out_features,
        generator=torch.Generator().manual_seed(seed),
    )
    head.requires_grad_(False)
    with torch.no_grad():
        for p_old, p_new in zip(old.parameters(), head.parameters(), strict=True):
            p_old.copy_(p_new)
