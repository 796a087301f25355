"""Streaming k-means for pre-training labels (HuBERT's MiniBatchKMeans, fed batch by batch).

HuBERT (fairseq `examples/hubert/simple_kmeans/learn_kmeans.py`) fits scikit-learn's
MiniBatchKMeans (k-means++ init, batch 10,000, reassignment_ratio 0) on features held in
memory. Here the features arrive as a stream of [n, d] arrays and go through `partial_fit`
in batches of `batch_size` rows, so only a few batches are ever in memory:

1. k-means++ (scikit-learn's `kmeans_plusplus`) runs `n_init` times on an init sample of
   max(3k, init_size) rows (init_size defaults to scikit-learn's 3 x batch_size), and the
   candidate with the lowest inertia on that sample is kept. The sample is the first rows
   of the stream, or with `reservoir_init` a uniform random sample of the whole stream
   drawn in an extra pass (the stream must then be re-iterable). Feed recordings in random
   order: with reassignment_ratio 0 a centre never leaves the region where it started, so a
   head sample drawn from a few recordings gives a poor clustering;
2. every row then goes through MiniBatchKMeans.partial_fit in batches of `batch_size` rows,
   after a shuffle inside a buffer of `shuffle_rows` rows (features of one recording come in
   long runs; mini-batch updates drift without mixing);
3. with `passes` > 1 the stream is read again (it must then be re-iterable, e.g. a list or
   an object whose __iter__ starts over).

Centroids are saved as .npy (never pickle).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def _rows(batches: Iterable[np.ndarray], dim: int | None) -> Iterator[np.ndarray]:
    """The stream's arrays as float32 [n, d], checked."""
    for i, batch in enumerate(batches):
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2:
            raise ValueError(f"feature batch {i} must be [n, d], got shape {batch.shape}")
        if dim is not None and batch.shape[1] != dim:
            raise ValueError(f"feature batch {i} has {batch.shape[1]} dims, expected {dim}")
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"feature batch {i} holds NaN or inf")
        dim = batch.shape[1]
        if len(batch):
            yield batch


def _rebatch(
    arrays: Iterable[np.ndarray], batch_size: int, shuffle_rows: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Regroup a stream of [n, d] arrays into [batch_size, d] batches (the last may be smaller),
    shuffling rows within a buffer of about `shuffle_rows` rows."""
    pending: list[np.ndarray] = []
    held = 0
    fill = max(shuffle_rows, batch_size)
    for array in arrays:
        pending.append(array)
        held += len(array)
        if held >= fill:
            rows = np.concatenate(pending)
            rows = rows[rng.permutation(len(rows))]
            n_full = len(rows) // batch_size * batch_size
            yield from np.split(rows[:n_full], n_full // batch_size)
            pending, held = [rows[n_full:]], len(rows) - n_full
    if held:
        rows = np.concatenate(pending)
        rows = rows[rng.permutation(len(rows))]
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]


def _uniform_sample(arrays: Iterable[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random sample of n rows (all rows if fewer) of a stream, without replacement:
    every row gets a random key and the n smallest keys are kept as the stream goes by."""
    keys = np.empty(0)
    rows: np.ndarray | None = None
    for array in arrays:
        keys = np.concatenate([keys, rng.random(len(array))])
        rows = array if rows is None else np.concatenate([rows, array])
        if len(keys) > n:
            keep = np.argpartition(keys, n)[:n]
            keys, rows = keys[keep], rows[keep]
    if rows is None:
        return np.empty((0, 0), dtype=np.float32)
    return rows


def fit_kmeans(
    batches: Iterable[np.ndarray],
    k: int,
    *,
    seed: int = 0,
    init_size: int | None = None,
    batch_size: int = 10_000,
    n_init: int = 3,
    passes: int = 1,
    shuffle_rows: int = 100_000,
    reservoir_init: bool = False,
) -> np.ndarray:
    """Fit k centroids to a stream of feature arrays [n, d] -> centroids [k, d] float32.

    See the module docstring for the procedure. Raises ValueError when the stream holds fewer
    than k rows, or when `passes` > 1 or `reservoir_init` is asked of a one-shot iterator.
    """
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if batch_size < k:
        raise ValueError(f"batch_size ({batch_size}) must be >= k ({k})")
    one_shot = iter(batches) is batches
    if one_shot and (passes > 1 or reservoir_init):
        raise ValueError(
            "passes > 1 and reservoir_init need a re-iterable stream (a list, or an object whose "
            "__iter__ restarts)"
        )
    rng = np.random.default_rng(seed)
    need = max(3 * k, init_size if init_size is not None else 3 * batch_size)

    stream = _rows(batches, None)
    head: list[np.ndarray] = []
    if reservoir_init:
        init_rows = _uniform_sample(stream, need, rng)
        stream = iter(())
    else:
        held = 0
        for array in stream:
            head.append(array)
            held += len(array)
            if held >= need:
                break
        init_rows = np.concatenate(head) if head else np.empty((0, 0), dtype=np.float32)
    if len(init_rows) < k:
        raise ValueError(f"the features hold {len(init_rows)} rows, fewer than k = {k}")
    dim = init_rows.shape[1]

    best, best_inertia = None, np.inf
    for i in range(n_init):
        centres, _ = kmeans_plusplus(init_rows, k, random_state=seed + i)
        inertia = float(np.sum(np.min(_squared_distances(init_rows, centres), axis=1)))
        if inertia < best_inertia:
            best, best_inertia = centres, inertia

    model = MiniBatchKMeans(
        n_clusters=k,
        init=best,
        n_init=1,
        batch_size=batch_size,
        reassignment_ratio=0.0,
        random_state=seed,
        compute_labels=False,
    )

    def first_pass() -> Iterator[np.ndarray]:
        yield from head  # rows already taken from the stream for the init
        yield from stream

    for p in range(passes):
        source = first_pass() if p == 0 and not reservoir_init else _rows(batches, dim)
        for batch in _rebatch(source, batch_size, shuffle_rows, rng):
            model.partial_fit(batch)
    return np.asarray(model.cluster_centers_, dtype=np.float32)


def _squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """|x - c|^2 [n, k] in float64 via |x|^2 - 2 x.c + |c|^2, clipped at 0."""
    x = x.astype(np.float64, copy=False)
    c = centroids.astype(np.float64, copy=False)
    d = (x * x).sum(1, keepdims=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def assign(features: np.ndarray, centroids: np.ndarray, *, chunk_rows: int = 16_384) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) of every row -> [n] int64.
    features: [n, d]; centroids: [k, d]. Computed in float64, `chunk_rows` rows at a time."""
    features = np.asarray(features)
    centroids = np.asarray(centroids)
    if features.ndim != 2 or centroids.ndim != 2 or features.shape[1] != centroids.shape[1]:
        raise ValueError(f"features {features.shape} and centroids {centroids.shape} must be [n, d] and [k, d]")
    if len(centroids) == 0:
        raise ValueError("no centroids")
    out = np.empty(len(features), dtype=np.int64)
    for start in range(0, len(features), chunk_rows):
        chunk = features[start : start + chunk_rows]
        out[start : start + len(chunk)] = np.argmin(_squared_distances(chunk, centroids), axis=1)
    return out


def save_centroids(path: str | Path, centroids: np.ndarray) -> Path:
    """Write centroids [k, d] as float32 .npy (no pickle)."""
    centroids = np.asarray(centroids, dtype=np.float32)
    if centroids.ndim != 2:
        raise ValueError(f"centroids must be [k, d], got shape {centroids.shape}")
    path = Path(path)
    with open(path, "wb") as f:  # a file object keeps the name as given (np.save adds .npy)
        np.save(f, centroids, allow_pickle=False)
    return path


def load_centroids(path: str | Path) -> np.ndarray:
    """Read centroids [k, d] float32 from a .npy file written by `save_centroids`."""
    path = Path(path)
    try:
        centroids = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a numeric .npy array ({e})") from None
    if not isinstance(centroids, np.ndarray) or centroids.ndim != 2 or not np.issubdtype(centroids.dtype, np.floating):
        raise ValueError(f"{path}: expected a float [k, d] array, got {getattr(centroids, 'shape', '?')}")
    return centroids.astype(np.float32, copy=False)
