"""MedMNIST npz loading, batches, augmentation and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from vit_fixtures import write_synthetic_npz

from exporter.vit.medmnist import Augmentation, augment, batches, load_medmnist
from exporter.vit.metrics import auc, binary_auc
from runtime.vision.preprocess import Preprocessing


@pytest.mark.parametrize("channels,flat", [(1, True), (1, False), (3, True), (3, False)])
def test_loads_grey_and_rgb_with_flat_or_column_labels(tmp_path, channels, flat):
    path = write_synthetic_npz(tmp_path / "x.npz", channels=channels, flat_labels=flat)
    data = load_medmnist(path)
    assert data.channels == channels and data.n_classes == 3
    train = data.splits["train"]
    assert train.images.shape == (96, 12, 12, channels) and train.labels.shape == (96,)


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros(2, int))
    with pytest.raises(ValueError, match=r"missing keys .*val_images.*test_labels"):
        load_medmnist(path)


@pytest.mark.parametrize(
    "images,labels,message",
    [
        (np.zeros((4, 8), np.uint8), np.zeros(4, int), r"train_images must be \(N, H, W\)"),
        (np.zeros((4, 8, 8, 2), np.uint8), np.zeros(4, int), r"C 1 or 3"),
        (np.zeros((4, 8, 8), np.float32), np.zeros(4, int), "must be uint8"),
        (np.zeros((4, 8, 8), np.uint8), np.zeros((4, 2), int), "multi-label"),
        (np.zeros((4, 8, 8), np.uint8), np.zeros(3, int), "3 labels for 4 images"),
    ],
)
def test_wrong_shapes_give_clear_errors(tmp_path, images, labels, message):
    good_i, good_l = np.zeros((2, 8, 8), np.uint8), np.zeros(2, int)
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=images, train_labels=labels, val_images=good_i,
             val_labels=good_l, test_images=good_i, test_labels=good_l)
    with pytest.raises(ValueError, match=message):
        load_medmnist(path)


def test_not_an_npz_and_missing_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_medmnist(junk)
    with pytest.raises(FileNotFoundError):
        load_medmnist(tmp_path / "absent.npz")


def test_batches_resize_on_the_fly_and_shuffle_with_a_seed(tmp_path):
    data = load_medmnist(write_synthetic_npz(tmp_path / "x.npz", channels=1))
    spec = Preprocessing(size=20, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    first = [labels for _, labels in batches(data.splits["train"], spec, 32,
                                             np.random.default_rng(1))]
    again = [labels for _, labels in batches(data.splits["train"], spec, 32,
                                             np.random.default_rng(1))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    pixels, labels = next(batches(data.splits["test"], spec, 8))
    assert pixels.shape == (8, 3, 20, 20) and pixels.dtype == np.float32
    assert np.array_equal(labels, data.splits["test"].labels[:8])


def test_augmentation_flips_and_shifts_but_keeps_shape():
    rng = np.random.default_rng(0)
    batch = np.random.default_rng(1).normal(size=(16, 1, 6, 6)).astype(np.float32)
    out = augment(batch, Augmentation(hflip=True, vflip=False, max_shift=1), rng)
    assert out.shape == batch.shape and not np.array_equal(out, batch)
    flipped = augment(batch, Augmentation(hflip=True, max_shift=0),
                      np.random.default_rng(3))
    for a, b in zip(flipped, batch):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, :, ::-1])


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert binary_auc(scores, positive) == pytest.approx(pairwise)
    assert binary_auc(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1])) == 1.0
    assert binary_auc(np.array([0.9, 0.2, 0.1]), np.array([0, 0, 1])) == 0.0


def test_multiclass_auc_is_one_vs_rest_mean():
    labels = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[labels]
    assert auc(perfect, labels) == 1.0
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=6)
    expected = np.mean([binary_auc(probs[:, c], labels == c) for c in range(3)])
    assert auc(probs, labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match="positive and one negative"):
        binary_auc(np.array([0.1, 0.2]), np.array([1, 1]))
