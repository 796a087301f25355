"""Streaming k-means on Gaussian blobs, nearest-centroid assignment against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from biomamba.training.kmeans import assign, fit_kmeans, load_centroids, save_centroids


def blobs(rng, k=8, d=5, per_blob=600, spread=0.3):
    centres = rng.uniform(-20, 20, (k, d))
    labels = np.repeat(np.arange(k), per_blob)
    x = centres[labels] + spread * rng.standard_normal((len(labels), d))
    return centres, x.astype(np.float32), labels


def brute_assign(x, c):
    return np.argmin(((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1), axis=1)


def match_centres(found, true):
    """For each true centre the nearest found one; must be a permutation."""
    nearest = brute_assign(true, found)
    assert sorted(nearest.tolist()) == list(range(len(true))), "two true centres share a found one"
    return nearest


@pytest.mark.parametrize("order", ["shuffled", "sorted"])
def test_streamed_blobs_recover_centres(order):
    rng = np.random.default_rng()
    true, x, labels = blobs(rng)
    if order == "shuffled":
        perm = rng.permutation(len(x))
        x, labels = x[perm], labels[perm]
    # a generator of uneven pieces: nothing needs the whole array
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 40, replace=False))
    seed = int(rng.integers(1 << 30))
    if order == "shuffled":
        pieces = (piece for piece in np.split(x, cuts))  # a one-shot generator
        centroids = fit_kmeans(pieces, 8, seed=seed, batch_size=500, shuffle_rows=2000)
    else:
        # blob after blob: the head of the stream holds one blob only, so the init sample
        # must come from the whole stream
        centroids = fit_kmeans(np.split(x, cuts), 8, seed=seed, batch_size=500, shuffle_rows=2000,
                               reservoir_init=True)
    assert centroids.shape == (8, 5) and centroids.dtype == np.float32
    perm = match_centres(centroids, true)
    np.testing.assert_allclose(centroids[perm], true, atol=0.1)
    found = assign(x, centroids)
    for blob in range(8):  # pure clusters: every point of a blob goes to its centre
        assert set(found[labels == blob].tolist()) == {perm[blob]}


def test_multiple_passes_need_reiterable_stream():
    rng = np.random.default_rng()
    true, x, _ = blobs(rng, k=3, per_blob=200)
    listed = list(np.array_split(x[rng.permutation(len(x))], 6))
    centroids = fit_kmeans(listed, 3, passes=3, batch_size=100)
    perm = match_centres(centroids, true)
    np.testing.assert_allclose(centroids[perm], true, atol=0.1)
    with pytest.raises(ValueError, match="re-iterable"):
        fit_kmeans(iter(listed), 3, passes=2)


def test_init_buffer_and_errors():
    rng = np.random.default_rng()
    with pytest.raises(ValueError, match="fewer than k"):
        fit_kmeans([rng.standard_normal((5, 2))], 10)
    with pytest.raises(ValueError, match="dims"):
        fit_kmeans([rng.standard_normal((50, 2)), rng.standard_normal((50, 3))], 2, batch_size=10)
    with pytest.raises(ValueError, match="NaN"):
        fit_kmeans([np.full((50, 2), np.nan)], 2)
    # init_size larger than the first batches: the buffer gathers several of them
    c = fit_kmeans([rng.standard_normal((10, 2)) for _ in range(30)], 4, init_size=100, batch_size=50)
    assert c.shape == (4, 2) and np.isfinite(c).all()


def test_assign_matches_brute_force_across_chunks():
    rng = np.random.default_rng()
    x = rng.standard_normal((5000, 7)).astype(np.float32)
    c = rng.standard_normal((33, 7)).astype(np.float32)
    got = assign(x, c, chunk_rows=777)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, brute_assign(x, c))


def test_save_load_roundtrip_without_pickle(tmp_path):
    rng = np.random.default_rng()
    c = rng.standard_normal((4, 3))
    path = save_centroids(tmp_path / "km100.npy", c)
    np.testing.assert_array_equal(load_centroids(path), c.astype(np.float32))
    other = save_centroids(tmp_path / "centroids.bin", c)
    assert other == tmp_path / "centroids.bin" and other.is_file()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        load_centroids(tmp_path / "obj.npy")
    with pytest.raises(ValueError, match="no such file"):
        load_centroids(tmp_path / "missing.npy")


# --------------------------------------------------------------------------- pre-training labels


def _recording_features(n_recordings: int, rows: int, dim: int = 8, block: int = 500):
    """features(path) for fake recordings "rec<i>": recording i's rows lie around its own centre
    (distinct content per recording), in blocks of `block` rows, the same on every call."""
    centres = np.random.default_rng(0).normal(0, 10, (n_recordings, dim))

    def features(path):
        i = int(str(path)[3:])
        rng = np.random.default_rng(100 + i)
        x = centres[i] + 0.1 * rng.standard_normal((rows, dim))
        for start in range(0, rows, block):
            yield x[start : start + block].astype(np.float32)

    return features


def test_labels_use_most_clusters_on_many_distinct_recordings(tmp_path):
    """Issue 10 item 1: the initial centres come from all recordings, not the first ~10 minutes.
    20 recordings of 6,000 frames each with distinct content, 20 clusters: the first 6,000 rows
    (the init sample's size here) are one recording, so centres started there mostly stay there."""
    from biomamba.training.pretrain.labels import KMeansOptions, build_labels

    n, rows, k = 20, 6000, 20
    features = _recording_features(n, rows)
    files = [f"rec{i}" for i in range(n)]
    opts = KMeansOptions(fraction=1.0, batch_size=2000, n_init=2, seed=0)
    paths = build_labels(files, [rows] * n, features, k, tmp_path / "labels", "test", opts, log=lambda m: None)
    used = {int(c) for p in paths for c in np.unique(np.load(p))}
    assert len(used) >= 0.9 * k
    # each recording gets its own cluster: the clustering separates the recordings
    majority = [np.bincount(np.load(p)).argmax() for p in paths]
    assert len(set(majority)) >= 0.9 * n


def test_feature_stream_interleaves_recordings():
    """The k-means shuffle buffer is fed blocks of several recordings in turn, not one recording's run."""
    from biomamba.training.pretrain.labels import _FileFeatures

    features = _recording_features(6, rows=1500, block=500)
    stream = _FileFeatures([f"rec{i}" for i in range(6)], features, open_files=4)
    blocks = list(stream)
    assert len(blocks) == 18
    first_rows = np.array([b[0] for b in blocks])
    owner = [int(np.argmin(np.linalg.norm(first_rows[j] - np.stack(
        [next(iter(features(f"rec{i}")))[0] for i in range(6)]), axis=1))) for j in range(len(blocks))]
    assert owner[:4] == [0, 1, 2, 3]                       # one block from each open recording in turn
    assert sorted(owner) == sorted([i for i in range(6) for _ in range(3)])   # every block exactly once
    assert list(stream)[0].tolist() == blocks[0].tolist()                   # re-iterable
