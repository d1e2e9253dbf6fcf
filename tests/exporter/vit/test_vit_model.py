"""The ViT: MQA vs MHA, bidirectional attention, distillation loss, a short training run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exporter.vit.config import DistillConfig, ViTConfig, ViTRecipe, get_preset
from exporter.vit.distill import (
    DistillationLoss,
    TeacherEnsemble,
    init_from_teacher,
    kd_kl,
)
from exporter.vit.model import ViT, count_parameters
from exporter.vit.ternary import BitLinear
from exporter.vit.training import evaluate, train

SMALL = ViTConfig(image_size=8, patch_size=2, width=32, depth=2, n_heads=4, ffn_width=64,
                  n_classes=3, channels=1)


def test_mqa_with_one_kv_head_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    mqa = ViT(dataclasses.replace(SMALL, n_kv_heads=1)).eval()
    mha = ViT(dataclasses.replace(SMALL, n_kv_heads=SMALL.n_heads)).eval()
    state = mqa.state_dict()
    for name, tensor in list(state.items()):
        if name.endswith((".attn.k.weight", ".attn.v.weight")):
            state[name] = tensor.repeat(SMALL.n_heads, 1)  # every query head reads the one K/V
    mha.load_state_dict(state)
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(mqa(images), mha(images), atol=1e-5)


def test_attention_is_bidirectional():
    """The first token's output depends on later tokens (a causal mask would cut that)."""
    torch.manual_seed(0)
    model = ViT(SMALL).eval()
    x = torch.randn(1, 16, SMALL.width)
    y = x.clone()
    y[:, -1] += 1.0  # change only the last patch
    attn = model.blocks[0].attn
    with torch.no_grad():
        assert not torch.allclose(attn(x)[:, 0], attn(y)[:, 0])


def test_ternary_modes_choose_the_linears():
    def kinds(ternary):
        model = ViT(dataclasses.replace(SMALL, ternary=ternary))
        return {name.split(".")[-1]: isinstance(m, BitLinear)
                for name, m in model.named_modules() if name.startswith("blocks.0.")
                and isinstance(m, torch.nn.Linear)}
    assert kinds("ffn") == {"q": False, "k": False, "v": False, "o": False,
                            "fc1": True, "fc2": True}
    assert all(kinds("all").values()) and not any(kinds("none").values())
    model = ViT(dataclasses.replace(SMALL, ternary="all"))
    assert not isinstance(model.patch_embed, BitLinear) and not isinstance(model.head, BitLinear)


def test_bitmedvit_preset_has_the_papers_size():
    config = get_preset("bitmedvit").model.for_data(5, 3).for_role("student")
    assert (config.image_size, config.patch_size, config.width, config.depth) == (224, 7, 512, 3)
    assert config.n_kv_heads == 1 and config.n_heads == 8 and config.ffn_width == 2048
    assert 8.4e6 < count_parameters(ViT(config)) < 8.8e6


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViTConfig(image_size=28, patch_size=5)
    with pytest.raises(ValueError, match="n_heads divisible by n_kv_heads"):
        ViTConfig(n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_distillation_terms_are_weighted_independently():
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(6, 3), torch.randn(6, 3)
    s_feat, t_feat = torch.randn(6, 8), torch.randn(6, 8)
    labels = torch.randint(0, 3, (6,))
    ce = F.cross_entropy(s_logits, labels)
    kd = kd_kl(s_logits, t_logits, 4.0)
    mse = F.mse_loss(s_feat, t_feat)
    for w in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.3, 0.5, 0.2)]:
        loss, _ = DistillationLoss(DistillConfig(*w, temperature=4.0), 8, 8)(
            s_logits, s_feat, t_logits, t_feat, labels)
        expected = w[0] * ce.item() + w[1] * kd.item() + w[2] * mse.item()
        assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert kd_kl(t_logits, t_logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # T^2 scaling: the KL itself shrinks about as 1/T^2, the scaled term stays the same order
    p, q = F.log_softmax(s_logits / 4, -1), F.log_softmax(t_logits / 4, -1)
    raw = F.kl_div(p, q, reduction="batchmean", log_target=True)
    assert kd.item() == pytest.approx(16 * raw.item(), rel=1e-6)


def test_teacher_ensemble_averages_logits_and_keeps_the_first_teachers_features():
    torch.manual_seed(0)
    teachers = [ViT(SMALL.for_role("teacher")).eval() for _ in range(3)]
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        logits, features = TeacherEnsemble(teachers).forward_with_features(images)
        each = [t.forward_with_features(images) for t in teachers]
        alone, alone_features = TeacherEnsemble(teachers[:1]).forward_with_features(images)
    assert torch.allclose(logits, torch.stack([z for z, _ in each]).mean(0), atol=1e-6)
    assert not torch.allclose(logits, each[0][0], atol=1e-3)  # the others do count
    assert torch.equal(features, each[0][1])
    with torch.no_grad():  # plain forward scores the ensemble: the same mean logits
        assert torch.equal(TeacherEnsemble(teachers)(images), logits)
    assert torch.equal(alone, each[0][0]) and torch.equal(alone_features, each[0][1])
    assert TeacherEnsemble(teachers).config == teachers[0].config
    with pytest.raises(ValueError, match="disagree on the number of classes"):
        TeacherEnsemble([teachers[0], ViT(dataclasses.replace(SMALL, n_classes=5))])
    with pytest.raises(ValueError, match="at least one teacher"):
        TeacherEnsemble([])


def test_student_starts_from_teacher_with_pooled_kv_heads():
    torch.manual_seed(0)
    teacher = ViT(SMALL.for_role("teacher"))
    student = ViT(SMALL.for_role("student", "ffn"))
    assert init_from_teacher(student, teacher) == []
    t_k = teacher.blocks[0].attn.k.weight.detach().reshape(4, 8, 32)
    assert torch.allclose(student.blocks[0].attn.k.weight, t_k.mean(0))
    assert torch.equal(student.blocks[1].ffn.fc1.weight, teacher.blocks[1].ffn.fc1.weight)


def test_a_few_training_steps_reduce_the_loss(tmp_path):
    from vit_fixtures import one_torch_thread, write_synthetic_npz

    from exporter.vit.medmnist import load_medmnist
    from runtime.vision.preprocess import Preprocessing

    data = load_medmnist(write_synthetic_npz(tmp_path / "synthmnist.npz"))
    spec = Preprocessing(size=8, channels=1, mean=(0.4,), std=(0.2,))
    torch.manual_seed(0)
    model = ViT(dataclasses.replace(SMALL, ternary="all", n_kv_heads=1))
    recipe = ViTRecipe(epochs=6, batch_size=32, lr=3e-3, warmup_epochs=0, max_shift=0)
    before = evaluate(model, data.splits["val"], spec)
    with one_torch_thread():
        result = train(model, data, spec, recipe, seed=0)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert before["accuracy"] < 0.7 and result.metrics["val"]["accuracy"] >= 0.9
    assert np.isfinite(result.metrics["test"]["auc"])
