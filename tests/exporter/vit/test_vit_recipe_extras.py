"""Optional recipe keys: rotation/zoom augmentation, an EMA of the weights, mixup, the
epoch selection rule, and splits monitored during training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from exporter.vit.config import ViTConfig, ViTRecipe
from exporter.vit.medmnist import Augmentation, augment, rotate_and_zoom
from exporter.vit.model import ViT
from exporter.vit.training import evaluate, train, update_ema

SMALL = ViTConfig(image_size=8, patch_size=2, width=32, depth=2, n_heads=4, ffn_width=64,
                  n_classes=3, channels=1)


def test_rotate_and_zoom_identity_quarter_turn_and_zoom():
    batch = np.random.default_rng(0).normal(size=(3, 2, 7, 7)).astype(np.float32)
    ones = np.ones(3)
    assert np.array_equal(rotate_and_zoom(batch, np.zeros(3), ones), batch)
    # +90 degrees turns clockwise as displayed (rows grow downwards).
    turned = rotate_and_zoom(batch, np.full(3, 90.0), ones)
    np.testing.assert_allclose(turned, np.rot90(batch, -1, axes=(2, 3)), atol=1e-5)
    # A horizontal ramp x -> x zoomed by 2 about the centre 3: x -> 3 + (x - 3) / 2
    # (bilinear sampling is exact on a linear ramp).
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32), (1, 1, 7, 7)).copy()
    zoomed = rotate_and_zoom(ramp, np.zeros(1), np.full(1, 2.0))
    np.testing.assert_allclose(zoomed[0, 0, 0], 3 + (np.arange(7) - 3) / 2, atol=1e-6)


def test_rotation_and_zoom_extend_edges_and_stay_in_range():
    batch = np.random.default_rng(1).uniform(-1, 2, size=(16, 1, 10, 10)).astype(np.float32)
    out = augment(batch, Augmentation(hflip=False, max_shift=0, rotation=30, scale=0.3),
                  np.random.default_rng(2))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert not np.allclose(out, batch)
    # Bilinear interpolation with clamped (edge-extended) coordinates never leaves the
    # input's range: no zero-filled corners.
    for a, b in zip(out, batch):
        assert a.min() >= b.min() - 1e-6 and a.max() <= b.max() + 1e-6


def test_recipes_without_the_new_keys_augment_exactly_as_before():
    batch = np.random.default_rng(1).normal(size=(8, 1, 6, 6)).astype(np.float32)
    old = augment(batch, Augmentation(hflip=True, max_shift=1), np.random.default_rng(5))
    new = augment(batch, Augmentation(hflip=True, max_shift=1, rotation=0.0, scale=0.0),
                  np.random.default_rng(5))
    assert np.array_equal(old, new)
    rotated = augment(batch, Augmentation(hflip=True, max_shift=1, rotation=10.0),
                      np.random.default_rng(5))
    assert not np.allclose(old, rotated)


@pytest.mark.parametrize("key,value", [("rotation", -1.0), ("scale", 1.0), ("ema", 1.0)])
def test_recipe_rejects_out_of_range_values(key, value):
    with pytest.raises(ValueError):
        ViTRecipe(**{key: value})


def test_ema_update_averages_with_a_ramped_decay():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        ema.weight.zero_()
        ema.bias.zero_()
    update_ema(ema, model, decay=0.99, step=0)  # ramp: d = 1 / 10
    np.testing.assert_allclose(ema.weight.detach(), 0.9 * model.weight.detach(), rtol=1e-6)
    update_ema(ema, model, decay=0.5, step=1000)  # d = decay
    np.testing.assert_allclose(ema.weight.detach(), 0.95 * model.weight.detach(), rtol=1e-6)


def test_training_with_ema_and_rotation_learns_and_keeps_the_averaged_weights(tmp_path):
    from vit_fixtures import one_torch_thread, write_synthetic_npz

    from exporter.vit.medmnist import load_medmnist
    from runtime.vision.preprocess import Preprocessing

    data = load_medmnist(write_synthetic_npz(tmp_path / "synthmnist.npz"))
    spec = Preprocessing(size=8, channels=1, mean=(0.4,), std=(0.2,))
    torch.manual_seed(0)
    model = ViT(dataclasses.replace(SMALL, ternary="ffn", n_kv_heads=1))
    recipe = ViTRecipe(epochs=6, batch_size=32, lr=3e-3, warmup_epochs=0, max_shift=0,
                         rotation=10.0, scale=0.1, ema=0.9)
    with one_torch_thread():
        result = train(model, data, spec, recipe, seed=0)
    assert result.metrics["val"]["accuracy"] >= 0.9
    # The returned weights are the selected epoch's averaged ones: their validation
    # score is the one recorded for that epoch.
    best = result.history[result.best_epoch - 1]
    assert evaluate(model, data.splits["val"], spec)["accuracy"] == best["val_accuracy"]
    assert result.metrics["val"]["accuracy"] == best["val_accuracy"]


def test_mixup_trains_a_distilled_student(tmp_path):
    from vit_fixtures import one_torch_thread, write_synthetic_npz

    from exporter.vit.config import DistillConfig
    from exporter.vit.distill import init_from_teacher
    from exporter.vit.medmnist import load_medmnist
    from runtime.vision.preprocess import Preprocessing

    data = load_medmnist(write_synthetic_npz(tmp_path / "synthmnist.npz"))
    spec = Preprocessing(size=8, channels=1, mean=(0.4,), std=(0.2,))
    torch.manual_seed(0)
    teacher = ViT(SMALL)
    recipe = ViTRecipe(epochs=5, batch_size=32, lr=3e-3, warmup_epochs=0, max_shift=0,
                         mixup=0.4)
    with one_torch_thread():
        train(teacher, data, spec, recipe, seed=0)
        student = ViT(dataclasses.replace(SMALL, ternary="ffn", n_kv_heads=1))
        init_from_teacher(student, teacher)
        result = train(student, data, spec, recipe, seed=1, teacher=teacher,
                       distill=DistillConfig())
    losses = [row["loss"] for row in result.history]
    assert all(np.isfinite(losses))
    assert result.metrics["val"]["accuracy"] >= 0.9
    with pytest.raises(ValueError):
        ViTRecipe(mixup=-0.1)


def test_log_loss_is_the_mean_negative_log_likelihood_of_the_labels():
    from exporter.vit.metrics import classification_metrics, log_loss

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    labels = np.array([0, 1, 2])
    expected = -(np.log(0.7) + np.log(0.1) + np.log(1e-12)) / 3  # a zero is clipped
    assert log_loss(probs, labels) == pytest.approx(expected)
    assert classification_metrics(probs, labels)["loss"] == pytest.approx(expected)


def _train_small(tmp_path, select: str, monitor: tuple[str, ...] = ()):
    tmp_path.mkdir(exist_ok=True)
    from vit_fixtures import one_torch_thread, write_synthetic_npz

    from exporter.vit.medmnist import load_medmnist
    from runtime.vision.preprocess import Preprocessing

    data = load_medmnist(write_synthetic_npz(tmp_path / "synthmnist.npz"))
    # Every third validation label is wrong, so the validation loss rises again once the
    # model grows confident: the three rules pick three different epochs.
    val = data.splits["val"]
    val.labels[::3] = (val.labels[::3] + 1) % 3
    spec = Preprocessing(size=8, channels=1, mean=(0.4,), std=(0.2,))
    torch.manual_seed(0)
    model = ViT(SMALL)
    recipe = ViTRecipe(epochs=6, batch_size=32, lr=3e-2, min_lr=1e-2, warmup_epochs=0,
                         max_shift=0, select=select)
    with one_torch_thread():
        result = train(model, data, spec, recipe, seed=0, monitor=monitor)
    return model, data, spec, result


def test_each_select_rule_returns_the_weights_of_the_epoch_it_names(tmp_path):
    picks = {}
    for select in ("val_accuracy", "val_loss", "last"):
        model, data, spec, result = _train_small(tmp_path / select, select)
        history = result.history
        expected = {
            "val_accuracy": max(range(len(history)), key=lambda i: (
                history[i]["val_accuracy"], history[i]["val_auc"], -i)),
            "val_loss": min(range(len(history)), key=lambda i: history[i]["val_loss"]),
            "last": len(history) - 1,
        }[select] + 1
        assert result.best_epoch == expected
        # The returned weights are that epoch's: their validation scores are the recorded ones.
        picked = history[expected - 1]
        scores = evaluate(model, data.splits["val"], spec)
        assert scores["accuracy"] == picked["val_accuracy"]
        assert scores["loss"] == pytest.approx(picked["val_loss"], rel=1e-6)
        picks[select] = expected
    assert len(set(picks.values())) == 3, picks


def test_monitored_splits_are_recorded_but_never_change_the_training(tmp_path):
    plain_model, _, _, plain = _train_small(tmp_path, "val_accuracy")
    model, data, spec, monitored = _train_small(tmp_path, "val_accuracy", monitor=("test",))
    assert monitored.best_epoch == plain.best_epoch
    assert [r["val_loss"] for r in monitored.history] == [r["val_loss"] for r in plain.history]
    for a, b in zip(model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.equal(a, b)
    last = monitored.history[-1]
    assert {"test_accuracy", "test_auc", "test_loss"} <= set(last)
    assert "test_accuracy" not in plain.history[-1]
    best = monitored.history[monitored.best_epoch - 1]
    assert monitored.metrics["test"]["accuracy"] == best["test_accuracy"]


def test_unknown_select_rule_is_rejected():
    with pytest.raises(ValueError, match="select must be one of"):
        ViTRecipe(select="best")
