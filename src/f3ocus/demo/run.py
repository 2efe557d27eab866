"""The demo's federated experiment: every strategy, every seed, the same data and starting point.

Per seed:

1. Data (:func:`f3ocus.demo.data.load_easy_vqa`): a non-IID Dirichlet split over $K$ clients, a test split.
2. Model (:func:`f3ocus.demo.model.build_model`): pretrained encoders, fusion head initialized from the seed.
3. Warm-up, shared by all strategies: ``warmup_rounds`` FedAvg rounds in which every client trains only the
   fusion head on frozen-encoder features (linear probing before fine-tuning, LP-FT: Kumar et al.,
   ICLR 2022). Features are computed once because no trained parameter precedes them. Without this step
   a strategy that leaves the random head untrained in a round would be measured on the head's
   initialization rather than on its layer choice.
4. For each strategy (:mod:`f3ocus.demo.strategies`), from the warmed-up model: ``rounds`` rounds of
   plan -> local training of the planned layers (:func:`f3ocus.fl.run_round`: :func:`f3ocus.fl.train_only`,
   masked FedAvg) -> test accuracy. Minibatches depend only on (seed, round, client), so every strategy
   sees the same data in the same order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from f3ocus._checks import check_choice, check_int, check_positive_float
from f3ocus.demo.assets import require_demo_assets
from f3ocus.demo.strategies import SCORED, STRATEGIES, default_budgets, make_plan

__all__ = ["DemoConfig", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo` (the CLI's options; defaults fit 2 CPU cores in about 3 minutes).

    Attributes:
        seeds: One full experiment per seed (split, head initialization, minibatches, solver).
        rounds: Federated rounds per strategy after the warm-up.
        clients: Number of clients $K$.
        samples_per_client: Mean number of training questions per client.
        alpha: Dirichlet concentration of the non-IID split (smaller: more skew).
        budgets: Layers per client; default spread from 2 to 6.
        local_steps: Adam steps per client per round.
        batch_size: Questions per local step.
        lr: Adam learning rate of local fine-tuning.
        warmup_rounds: Head-only FedAvg rounds before the comparison.
        warmup_steps: Adam steps per client per warm-up round.
        warmup_lr: Learning rate of the warm-up.
        score_samples: Questions per client in the NTK scoring batch.
        kernel: NTK kernel of the scoring (``"output"``, ``"sum"`` or ``"loss"``).
        solver: F³OCUS solver (see :func:`f3ocus.available_solvers`).
        strategies: Strategies to compare (subset of :data:`~f3ocus.demo.strategies.STRATEGIES`).
        test_images: Test images (all their questions are the test split).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda"``.
    """

    seeds: tuple[int, ...] = (0,)
    rounds: int = 6
    clients: int = 5
    samples_per_client: int = 200
    alpha: float = 0.5
    budgets: tuple[int, ...] | None = None
    local_steps: int = 4
    batch_size: int = 16
    lr: float = 5e-5
    warmup_rounds: int = 5
    warmup_steps: int = 20
    warmup_lr: float = 1e-3
    score_samples: int = 4
    kernel: str = "loss"
    solver: str = "nsga2"
    strategies: tuple[str, ...] = STRATEGIES
    test_images: int = 40
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, low=1)
        check_int("clients", self.clients, low=1)
        check_int("local_steps", self.local_steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_int("warmup_rounds", self.warmup_rounds, low=0)
        check_int("score_samples", self.score_samples, low=1)
        check_positive_float("lr", self.lr)
        check_positive_float("warmup_lr", self.warmup_lr)
        check_choice("kernel", self.kernel, ["output", "sum", "loss"])
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=(0,).")
        for s in self.seeds:
            check_int("seeds[...]", s, low=0)
        if not self.strategies:
            raise ValueError(f"strategies is empty; pass some of {', '.join(STRATEGIES)}.")
        for s in self.strategies:
            check_choice("strategies[...]", s, STRATEGIES)
        if self.budgets is not None and len(self.budgets) != self.clients:
            raise ValueError(
                f"budgets has {len(self.budgets)} entries but clients={self.clients}; pass one budget per client."
            )

    def client_budgets(self, num_layers: int) -> list[int]:
        """The per-client budgets, checked against the number of layers."""
        budgets = list(self.budgets) if self.budgets is not None else default_budgets(self.clients)
        for k, b in enumerate(budgets):
            check_int(f"budgets[{k}]", b, low=1, high=num_layers)
        return budgets


def _warmup(model, data, layer_map, config: DemoConfig, seed: int) -> None:
    """Head-only FedAvg on cached frozen-encoder features (step 3 of the module docs)."""
    from f3ocus.demo.train import child_generator
    from f3ocus.fl import run_round

    with torch.no_grad():
        text = model.text_features(data.input_ids, data.attention_mask)
        feats = [
            (model.image_features(c.images)[c.image_index], text[c.question_index]) for c in data.clients
        ]

    def train_fn(local, client):
        k, r = client
        u, t = feats[k]
        y = data.clients[k].answers
        g = child_generator(seed, 10_000 + r, k)
        opt = torch.optim.Adam([p for p in local.parameters() if p.requires_grad], lr=config.warmup_lr)
        for _ in range(config.warmup_steps):
            i = torch.randint(len(y), (config.batch_size,), generator=g).to(y.device)
            loss = torch.nn.functional.cross_entropy(local.head(u[i], t[i]), y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return len(y)

    for r in range(config.warmup_rounds):
        clients = [(k, r) for k in range(len(data.clients))]
        run_round(model, clients, [["head"]] * len(clients), train_fn, layer_map=layer_map)


def _scores(model, data, layer_map, config: DemoConfig, seed: int, r: int) -> np.ndarray:
    """The ``(K, L)`` NTK scores of the current model on each client's scoring batch."""
    from f3ocus import ntk_layer_importance
    from f3ocus.demo.train import child_generator, scoring_batch
    from f3ocus.fl import train_only

    names = list(layer_map)
    rows = []
    with train_only(model, names, layer_map=layer_map):
        for k, split in enumerate(data.clients):
            g = child_generator(seed, 20_000 + r, k)
            batch, answers = scoring_batch(data, split, config.score_samples, g)
            extra: dict[str, Any] = {}
            if config.kernel == "loss":
                extra = {"loss_fn": _per_sample_loss, "targets": answers}
            s = ntk_layer_importance(model, batch, layers=layer_map, kernel=config.kernel, seed=seed, **extra)
            rows.append([float(s[name]) for name in names])
    return np.array(rows)


def _per_sample_loss(logits, answers):
    return torch.nn.functional.cross_entropy(logits, answers, reduction="none")


def _run_strategy(
    strategy, model, data, layer_map, budgets, config, seed, start_state, acc0, progress, cache
):
    from f3ocus.demo.train import child_generator, evaluate, local_train
    from f3ocus.fl import run_round

    names = list(layer_map)
    model.load_state_dict(start_state)
    record: dict[str, Any] = {"accuracy": [acc0], "plans": [], "scores": [], "params_up": [], "bytes_up": []}
    record.update({"bytes_down": [], "plan_stats": []})
    began = time.perf_counter()
    features: dict[str, torch.Tensor] = {}
    for r in range(config.rounds):
        score_fn = None
        if strategy in SCORED:

            def score_fn(r=r):
                if r == 0:  # every strategy starts from the same model: round-0 scores are shared
                    if "round0" not in cache:
                        cache["round0"] = _scores(model, data, layer_map, config, seed, r)
                    return cache["round0"]
                return _scores(model, data, layer_map, config, seed, r)

        plan = make_plan(
            strategy, names, budgets, score_fn=score_fn, solver=config.solver, seed=seed * 1000 + r
        )

        def train_fn(local, k, r=r):
            g = child_generator(seed, r, k)
            return local_train(
                local,
                data,
                data.clients[k],
                steps=config.local_steps,
                batch_size=config.batch_size,
                lr=config.lr,
                generator=g,
            )

        result = run_round(model, list(range(len(data.clients))), plan.layers, train_fn, layer_map=layer_map)
        trained = {name for layers in plan.layers for name in layers}
        for encoder in ("image", "text"):  # re-encode the test split only where parameters changed
            if any(name.startswith(encoder + ".") for name in trained):
                features.pop(encoder, None)
        acc = evaluate(model, data, data.test, features=features)
        record["accuracy"].append(acc)
        record["plans"].append(plan.mask.astype(int).tolist())
        record["scores"].append(None if plan.scores is None else plan.scores.tolist())
        record["plan_stats"].append(plan.stats)
        record["params_up"].append(list(result.cost.params_up))
        record["bytes_up"].append(list(result.cost.bytes_up))
        record["bytes_down"].append(list(result.cost.bytes_down))
        if progress is not None:
            progress.set_postfix_str(f"{strategy} round {r + 1}: acc {acc:.3f}")
            progress.update(1)
    record["seconds"] = time.perf_counter() - began
    return record


def run_demo(
    config: DemoConfig, *, progress: bool = True, jobs: int = 1, threads: int | None = None
) -> dict[str, Any]:
    """Run the experiment of the module docs for every seed and strategy.

    Args:
        config: The settings.
        progress: Show tqdm progress bars (on stderr), one per seed.
        jobs: Seeds run in parallel worker processes (each loads its own model); 1 runs them here, one
            after another. Results do not depend on ``jobs``.
        threads: Torch CPU threads of each worker process (default: torch's choice).

    Returns:
        A JSON-ready dict: ``config``, ``layers`` (names and parameter counts), ``budgets``, ``device``,
        ``runs`` (per seed: data sizes, warm-up accuracy, per strategy the accuracy after every round,
        the plans, the NTK scores, per-client communication, seconds) and ``seconds``.
    """
    require_demo_assets()
    jobs = check_int("jobs", jobs, low=1)
    began = time.perf_counter()
    if jobs == 1 or len(config.seeds) == 1:
        loaded = _load(config)
        meta = _meta(config, loaded[0])
        runs = {str(s): _run_seed(config, s, loaded, progress, position=0) for s in config.seeds}
    else:
        import concurrent.futures
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(config.seeds)), mp_context=context) as pool:
            futures = [
                pool.submit(_seed_worker, config, s, progress, i, threads) for i, s in enumerate(config.seeds)
            ]
            results = [f.result() for f in futures]
        meta = results[0][0]
        runs = {str(s): run for s, (_, run) in zip(config.seeds, results, strict=True)}
    return {**meta, "runs": runs, "seconds": time.perf_counter() - began, "jobs": jobs}


def _load(config: DemoConfig):
    from f3ocus.demo.model import build_model

    model, tokenizer = build_model(13, seed=0)
    model.to(torch.device(config.device))
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    return model, tokenizer, pretrained


def _meta(config: DemoConfig, model) -> dict[str, Any]:
    from f3ocus.demo.model import demo_layers, layer_parameter_counts

    layer_map = demo_layers(model)
    device = torch.device(config.device)
    return {
        "config": dataclasses.asdict(config),
        "layers": list(layer_map),
        "layer_params": layer_parameter_counts(model, layer_map),
        "budgets": config.client_budgets(len(layer_map)),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _seed_worker(config: DemoConfig, seed: int, progress: bool, position: int, threads: int | None):
    if threads is not None:
        torch.set_num_threads(threads)
    loaded = _load(config)
    return _meta(config, loaded[0]), _run_seed(config, seed, loaded, progress, position=position)


def _run_seed(config: DemoConfig, seed: int, loaded, progress: bool, *, position: int) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from f3ocus.demo.data import load_easy_vqa
    from f3ocus.demo.model import demo_layers
    from f3ocus.demo.train import evaluate

    model, tokenizer, pretrained = loaded
    layer_map = demo_layers(model)
    budgets = config.client_budgets(len(layer_map))
    data = load_easy_vqa(
        tokenizer,
        num_clients=config.clients,
        samples_per_client=config.samples_per_client,
        alpha=config.alpha,
        test_images=config.test_images,
        seed=seed,
    ).to(torch.device(config.device))
    model.load_state_dict(pretrained)
    _reset_head(model, seed)
    _warmup(model, data, layer_map, config, seed)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    acc0 = evaluate(model, data, data.test)
    run: dict[str, Any] = {
        "client_sizes": [len(c) for c in data.clients],
        "client_answers": [torch.bincount(c.answers.cpu(), minlength=13).tolist() for c in data.clients],
        "test_size": len(data.test),
        "warmup_accuracy": acc0,
        "strategies": {},
    }
    cache: dict[str, np.ndarray] = {}
    bar = None
    if progress:
        total = len(config.strategies) * config.rounds
        bar = tqdm(total=total, desc=f"seed {seed}", unit="round", position=position, leave=True)
    try:
        for strategy in config.strategies:
            run["strategies"][strategy] = _run_strategy(
                strategy, model, data, layer_map, budgets, config, seed, start_state, acc0, bar, cache
            )
    finally:
        if bar is not None:
            bar.close()
    return run


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


def summarize(
    results: dict[str, Any], strategies: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Per strategy: final accuracy and accuracy averaged over the last (up to 3) rounds (mean, std over
    seeds), trainable parameters per client and round, MB uploaded and MB up+down per round (all clients),
    seconds per seed."""
    runs = list(results["runs"].values())
    strategies = strategies or list(runs[0]["strategies"])
    out: dict[str, dict[str, float]] = {}
    for s in strategies:
        recs = [run["strategies"][s] for run in runs]
        final = np.array([rec["accuracy"][-1] for rec in recs])
        tail = min(3, len(recs[0]["accuracy"]) - 1)
        last = np.array([np.mean(rec["accuracy"][-tail:]) for rec in recs])
        params = np.mean([np.mean(rec["params_up"]) for rec in recs])
        up = np.mean([np.mean(np.sum(rec["bytes_up"], axis=1)) for rec in recs]) / 1e6
        down = np.mean([np.mean(np.sum(rec["bytes_down"], axis=1)) for rec in recs]) / 1e6
        out[s] = {
            "final_accuracy_mean": float(final.mean()),
            "final_accuracy_std": float(final.std(ddof=1)) if final.size > 1 else 0.0,
            "last_rounds": tail,
            "last_rounds_accuracy_mean": float(last.mean()),
            "last_rounds_accuracy_std": float(last.std(ddof=1)) if last.size > 1 else 0.0,
            "best_accuracy_mean": float(np.mean([max(rec["accuracy"]) for rec in recs])),
            "trainable_params_per_client": float(params),
            "mb_up_per_round": float(up),
            "mb_total_per_round": float(up + down),
            "seconds_per_seed": float(np.mean([rec["seconds"] for rec in recs])),
            "num_seeds": len(recs),
        }
    return out
