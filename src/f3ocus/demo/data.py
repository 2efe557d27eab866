"""easy-VQA, split non-IID over federated clients, as tensors ready for the demo model.

The dataset (``pip install easy-vqa``) has 38,575 training and 9,673 test questions about 4,000 / 1,000
images of 64 x 64 pixels, each showing one shape; there are 13 answers (3 shapes, 8 colours, yes, no)
and only 107 distinct question strings.

Non-IID split (label-distribution skew, the Dirichlet scheme of NIID-Bench: Li et al., "Federated
Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022): a pool of ``K * samples_per_client``
training questions is drawn uniformly; then for every answer $c$ a proportion vector
$p_c \\sim \\mathrm{Dir}_K(\\alpha)$ is drawn and the pool's questions with answer $c$ are cut into $K$
consecutive parts of sizes $\\approx p_{c,k} n_c$. Small $\\alpha$ gives each client a few dominant answers;
$\\alpha \\to \\infty$ gives every client the pool's distribution. Draws are repeated until every client has
at least ``min_size`` questions. Client sizes therefore differ; FedAvg weights clients by size.

Test set: ``test_images`` test images drawn uniformly, with all their questions (about 9.7 per image;
110 images give about 1,060 questions), so that evaluation runs the image encoder once per image (see
:func:`f3ocus.demo.train.evaluate`). :func:`answer_types` tells yes/no answers from the others (shapes
and colours), whose accuracies are reported separately.

Speed: tokenization is done once for the 107 question strings; images are decoded once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from f3ocus._checks import check_int, check_positive_float

__all__ = ["Split", "VQAData", "answer_types", "dirichlet_split", "load_easy_vqa"]

YES_NO = ("yes", "no")


@dataclasses.dataclass(frozen=True)
class Split:
    """Questions of one client (or of the test set), with the images they refer to.

    Attributes:
        images: ``(M, 3, 64, 64)`` float images, normalized to $[-1, 1]$, one per distinct image.
        image_index: ``(N,)`` row of ``images`` for each question.
        question_index: ``(N,)`` row of the shared token table (:attr:`VQAData.input_ids`) for each question.
        answers: ``(N,)`` answer class of each question.
    """

    images: Tensor
    image_index: Tensor
    question_index: Tensor
    answers: Tensor

    def __len__(self) -> int:
        return int(self.answers.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """The same split with every tensor on ``device``."""
        return Split(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class VQAData:
    """The demo's data: shared token table, clients' splits and the test split.

    Attributes:
        answers: The 13 answer strings; class ``c`` is ``answers[c]``.
        questions: The distinct question strings; row ``q`` of the token table is ``questions[q]``.
        input_ids: ``(Q, T)`` token ids of every distinct question (padded to the longest).
        attention_mask: ``(Q, T)`` 1 on tokens, 0 on padding.
        clients: One :class:`Split` per client.
        test: The held-out :class:`Split`.
    """

    answers: list[str]
    questions: list[str]
    input_ids: Tensor
    attention_mask: Tensor
    clients: list[Split]
    test: Split

    def to(self, device: torch.device | str) -> VQAData:
        """The same data with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            clients=[c.to(device) for c in self.clients],
            test=self.test.to(device),
        )

    def batch(self, split: Split, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The model input ``(images, input_ids, attention_mask)`` of ``split``'s questions ``index``."""
        if index is None:
            index = torch.arange(len(split))
        q = split.question_index[index]
        return split.images[split.image_index[index]], self.input_ids[q], self.attention_mask[q]


def answer_types(answers: Sequence[str]) -> dict[str, list[int]]:
    """Answer classes by type: ``"yes/no"`` and ``"other"`` (the shapes and colours)."""
    yes_no = [c for c, a in enumerate(answers) if a in YES_NO]
    return {"yes/no": yes_no, "other": [c for c in range(len(answers)) if c not in yes_no]}


def dirichlet_split(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Partition sample indices over clients with Dirichlet label skew (NIID-Bench, Li et al., 2022).

    For each class $c$ with sample indices $I_c$ (in random order), draw $p_c \\sim \\mathrm{Dir}_K(\\alpha)$
    and give client $k$ the slice $I_c[\\lfloor n_c P_{c,k-1} \\rceil : \\lfloor n_c P_{c,k} \\rceil]$ with
    $P_{c,k} = \\sum_{j \\le k} p_{c,j}$. Redraw everything until every client has ``min_size`` samples.

    Args:
        labels: Class of each sample.
        num_clients: Number of clients $K \\ge 1$.
        alpha: Dirichlet concentration $\\alpha > 0$ (smaller: more skew).
        rng: The source of randomness.
        min_size: Smallest admissible client size.
        max_tries: Draws before giving up.

    Returns:
        ``num_clients`` sorted index arrays; they are disjoint and cover ``range(len(labels))``.

    Raises:
        ValueError: an argument is out of range, or no draw met ``min_size`` in ``max_tries`` draws.
    """
    labels = np.asarray(labels)
    num_clients = check_int("num_clients", num_clients, low=1)
    alpha = check_positive_float("alpha", alpha)
    min_size = check_int("min_size", min_size, low=0)
    if min_size * num_clients > labels.shape[0]:
        raise ValueError(
            f"min_size={min_size} is impossible for {labels.shape[0]} samples over num_clients={num_clients}; "
            f"use min_size <= {labels.shape[0] // num_clients}."
        )
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.rint(np.cumsum(p) * idx.shape[0]).astype(int)
            for k, piece in enumerate(np.split(idx, cuts[:-1])):
                parts[k].append(piece)
        out = [np.sort(np.concatenate(pk)) if pk else np.zeros(0, dtype=int) for pk in parts]
        if min(o.shape[0] for o in out) >= min_size:
            return out
    raise ValueError(
        f"no Dirichlet split with alpha={alpha} gave every client >= min_size={min_size} samples in "
        f"{max_tries} draws; raise alpha or samples_per_client, or lower min_size."
    )


def _read_images(paths: Sequence[str], size: int = 64) -> Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if x.shape[-1] != size:  # area averaging: 64 -> 32 averages 2 x 2 pixel blocks
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    return x / 127.5 - 1.0  # EfficientNet-Lite's input scaling: (x - 127.5) / 127.5


def _split(ids, answers, qrows, image_table, chosen) -> Split:
    images, row = image_table
    return Split(
        images=images,
        image_index=torch.tensor([row[ids[i]] for i in chosen], dtype=torch.long),
        question_index=torch.tensor([qrows[i] for i in chosen], dtype=torch.long),
        answers=torch.tensor([answers[i] for i in chosen], dtype=torch.long),
    )


def _image_table(image_ids, paths, size: int) -> tuple[Tensor, dict[int, int]]:
    image_ids = sorted(set(image_ids))
    return _read_images([paths[im] for im in image_ids], size), {im: r for r, im in enumerate(image_ids)}


def _questions_of_images(ids: Sequence[int], images: Sequence[int]) -> list[int]:
    chosen = set(images)
    return [i for i, im in enumerate(ids) if im in chosen]


def load_easy_vqa(
    tokenizer,
    *,
    num_clients: int = 5,
    samples_per_client: int = 64,
    alpha: float = 0.5,
    test_images: int = 110,
    image_size: int = 64,
    seed: int = 0,
) -> VQAData:
    """Load easy-VQA, split a training pool non-IID over clients and draw a test split.

    The training pool is drawn by images: train images in random order, with all their questions, until
    the pool has ``num_clients * samples_per_client`` questions. All clients share the pool's image table
    (:attr:`Split.images` is one tensor), so encoder features of the pool can be computed once per round
    and reused by every client that does not train that encoder (:func:`f3ocus.demo.train.local_train`).

    Args:
        tokenizer: A ``transformers`` tokenizer for the text encoder.
        num_clients: Number of clients $K$.
        samples_per_client: Mean client size; the pool has ``K * samples_per_client`` questions.
        alpha: Dirichlet concentration of the split (:func:`dirichlet_split`).
        test_images: Number of test images; all their questions form the test split (about 9.7 per image).
        image_size: Side of the images given to the model: 64 (easy-VQA's own) or smaller, by area
            averaging (32 makes the image encoder about twice as fast).
        seed: Seed of every draw (pool, split, test images).

    Returns:
        A :class:`VQAData`.
    """
    import easy_vqa

    num_clients = check_int("num_clients", num_clients, low=1)
    samples_per_client = check_int("samples_per_client", samples_per_client, low=2)
    test_images = check_int("test_images", test_images, low=1, high=1000)
    image_size = check_int("image_size", image_size, low=8, high=64)
    rng = np.random.default_rng(seed)

    answer_names = list(easy_vqa.get_answers())
    cls = {a: c for c, a in enumerate(answer_names)}
    train_q, train_a, train_ids = easy_vqa.get_train_questions()
    test_q, test_a, test_ids = easy_vqa.get_test_questions()
    questions = sorted(set(train_q) | set(test_q))
    qrow = {q: r for r, q in enumerate(questions)}
    tokens = tokenizer(questions, padding=True, return_tensors="pt")

    per_image = np.bincount(np.asarray(train_ids))
    order = rng.permutation(np.flatnonzero(per_image))
    want = min(num_clients * samples_per_client, len(train_q))
    taken = int(np.searchsorted(np.cumsum(per_image[order]), want)) + 1
    pool = np.array(_questions_of_images(train_ids, order[:taken].tolist()))
    pool = rng.permutation(pool)
    pool_labels = np.array([cls[train_a[i]] for i in pool])
    parts = dirichlet_split(pool_labels, num_clients, alpha, rng, min_size=max(2, samples_per_client // 4))
    table = _image_table([train_ids[i] for i in pool], easy_vqa.get_train_image_paths(), image_size)
    train_rows = [qrow[q] for q in train_q]
    train_cls = [cls[a] for a in train_a]
    clients = [_split(train_ids, train_cls, train_rows, table, np.sort(pool[part])) for part in parts]

    chosen_images = rng.choice(sorted(set(test_ids)), size=test_images, replace=False).tolist()
    test_idx = _questions_of_images(test_ids, chosen_images)
    test = _split(
        test_ids,
        [cls[a] for a in test_a],
        [qrow[q] for q in test_q],
        _image_table([test_ids[i] for i in test_idx], easy_vqa.get_test_image_paths(), image_size),
        test_idx,
    )
    return VQAData(
        answers=answer_names,
        questions=questions,
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        clients=clients,
        test=test,
    )
