"""How good tokens are as features: k-nearest-neighbour accuracy on Fashion-MNIST (Xiao, Rasul and Vollgraf,
2017), each image's tokens pooled into one vector.

Pooling: soft tokens give their mean vector; hard tokens the histogram of their ids (the mean of their one-hot
vectors). The classifier is scikit-learn's brute-force k-NN with cosine distance and a majority vote. The data
are the Debian package ``dataset-fashion-mnist`` (``VISTOK_FASHION_MNIST`` overrides its folder).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vistok.tokens import Tokens

__all__ = ["load_split", "upscale", "pooled", "encode_pooled", "knn_accuracy"]


def load_split(n_train: int, n_test: int, seed: int = 0, validation: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n_train`` images (28x28 uint8) with labels from the training set and ``n_test`` from the test set
    (``t10k``), a seeded random sample in file order; with ``validation`` the second part is drawn from the
    training set too, disjoint from the first."""
    from vistok.learned.data import FASHION_MNIST, read_idx

    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(f"Fashion-MNIST is not in {FASHION_MNIST}; install it with "
                                "`apt-get install -y dataset-fashion-mnist` or set VISTOK_FASHION_MNIST")
    rng = np.random.default_rng(seed)
    train_x = read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    train_y = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    if validation:
        pick = rng.choice(len(train_x), n_train + n_test, replace=False)
        a, b = np.sort(pick[:n_train]), np.sort(pick[n_train:])
        return train_x[a], train_y[a], train_x[b], train_y[b]
    test_x = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    a = np.sort(rng.choice(len(train_x), n_train, replace=False))
    b = np.sort(rng.choice(len(test_x), n_test, replace=False))
    return train_x[a], train_y[a], test_x[b], test_y[b]


def upscale(images: np.ndarray, size: int) -> list[Image.Image]:
    """28x28 grey images as RGB, upscaled (bicubic) to ``size`` pixels square."""
    return [Image.fromarray(im, "L").convert("RGB").resize((size, size), Image.Resampling.BICUBIC) for im in images]


def pooled(tokens: Tokens, vocab: int | None = None) -> np.ndarray:
    """One vector per image: the mean token (soft) or the id histogram over ``vocab`` ids (hard)."""
    if tokens.is_hard:
        size = vocab or tokens.vocab_size or int(tokens.values.max(initial=0)) + 1
        if len(tokens) == 0:
            return np.zeros(size, np.float32)
        return np.bincount(tokens.values, minlength=size).astype(np.float32) / len(tokens)
    return tokens.values.mean(axis=0)


def encode_pooled(tokenizer: Any, images: Sequence[Image.Image], *, batch_size: int = 64,
                  keep: Callable[[Tokens], None] | None = None, on_batch: Callable[[int], None] | None = None
                  ) -> np.ndarray:
    """``(len(images), D)`` pooled vectors of ``tokenizer.encode`` in batches; ``keep`` sees every Tokens."""
    vocab = getattr(tokenizer, "vocab_size", None)
    out = []
    for start in range(0, len(images), batch_size):
        batch = tokenizer.encode(list(images[start:start + batch_size]))
        for tokens in batch:
            if keep is not None:
                keep(tokens)
            out.append(pooled(tokens, vocab))
        if on_batch is not None:
            on_batch(len(batch))
    return np.stack(out)


def knn_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, k: int = 10) -> float:
    """Fraction of ``test`` vectors whose k nearest ``train`` vectors (cosine) vote their label."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="cosine", algorithm="brute")
    clf.fit(train, y_train)
    return float((clf.predict(test) == y_test).mean())
