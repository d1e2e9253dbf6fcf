"""The `e2edge train/export/eval/bench vit` commands, end to end on a synthetic npz."""

from __future__ import annotations

import json

import pytest
from vit_fixtures import one_torch_thread, write_synthetic_npz

from e2edge.cli import main


@pytest.mark.slow  # ~10 s on an idle machine, 23 s measured on a busy 2-core one
def test_train_export_eval_bench(tmp_path, capsys):
    npz = write_synthetic_npz(tmp_path / "synthmnist.npz", channels=3)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    second_teacher = tmp_path / "teacher-2"
    common = ["--preset", "mnist28", "--data", str(npz), "--epochs", "1", "--threads", "1"]
    with one_torch_thread():
        assert main(["train", "vit", "--role", "teacher", "--out", str(teacher), *common,
                     "--recipe", "select=last", "--monitor", "test"]) == 0
        assert main(["train", "vit", "--role", "teacher", "--out", str(second_teacher),
                     *common, "--seed", "1"]) == 0
        assert main(["train", "vit", "--role", "student", "--ternary", "all", "--teacher",
                     str(teacher), "--teacher", str(second_teacher), "--out", str(student),
                     "--recipe", "max_shift=1", "--kd-weight", "0.7", *common]) == 0
        trained = capsys.readouterr().out
        # training scores in batches of the recipe's eval_batch_size (256): the same here,
        # so both sums run in the same order and equal scores rank alike
        assert main(["eval", "vit", "--model", str(teacher), "--model", str(second_teacher),
                     "--batch-size", "256"]) == 0
        ensemble = json.loads(capsys.readouterr().out)
    assert ensemble["models"] == [str(teacher), str(second_teacher)]
    assert "ensemble of 2" in trained
    record = json.loads((teacher / "config.json").read_text())["record"]
    assert record["recipe"]["select"] == "last"
    assert record["history"][-1]["test_accuracy"] == record["metrics"]["test"]["accuracy"]
    assert record["metrics"]["test"]["loss"] > 0
    config = json.loads((student / "config.json").read_text())
    assert "test_accuracy" not in config["record"]["history"][-1]
    assert config["role"] == "student" and config["model"]["ternary"] == "all"
    assert config["model"]["n_kv_heads"] == 1 and config["record"]["recipe"]["max_shift"] == 1
    assert config["record"]["distillation"]["kd_weight"] == 0.7
    assert config["record"]["not_copied_from_teacher"] == []
    assert config["record"]["teacher"] == str(teacher)  # the one the student started from
    assert config["record"]["teachers"] == [str(teacher), str(second_teacher)]
    # the student's record carries its ensemble teacher's scores, as `eval vit` gives them
    assert config["record"]["teacher_metrics"]["test"] == pytest.approx(ensemble["test"])
    assert config["record"]["teacher_metrics"]["val"] == pytest.approx(ensemble["val"])
    assert record["teacher_metrics"] is None  # a teacher has no teacher

    pkg, fp_pkg = tmp_path / "pkg", tmp_path / "teacher-pkg"
    assert main(["export", "vit", "--model", str(student), "--out", str(pkg)]) == 0
    assert main(["export", "vit", "--model", str(teacher), "--out", str(fp_pkg)]) == 0
    capsys.readouterr()
    assert main(["eval", "vit", "--package", str(pkg), "--data", str(npz),
                 "--split", "test"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    manifest = json.loads((pkg / "manifest.json").read_text())
    package_acc = manifest["verification"]["package_metrics"]["accuracy"]
    assert evaluated["test"]["accuracy"] == pytest.approx(package_acc)

    out = tmp_path / "bench.json"
    assert main(["bench", "vit", "--package", str(pkg), "--compare", str(fp_pkg),
                 "--repeats", "3", "--warmup", "1", "--threads", "1", "--execution", "all",
                 "--out", str(out)]) == 0
    bench = json.loads(out.read_text())
    latency = bench["packages"][str(pkg)]["latency_ms"]
    assert set(latency) == {"packed", "fp32", "int8"}
    assert all(ms > 0 for mode in latency.values() for ms in mode.values())
    assert set(bench["compare"]["speedup"]["int8"]) == {"batch_1", "batch_16"}
    assert bench["compare"]["weight_bytes_ratio"] > 5


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    npz = write_synthetic_npz(tmp_path / "synthmnist.npz")
    base = ["train", "vit", "--role", "teacher", "--data", str(npz), "--out", str(tmp_path / "t")]
    assert main([*base, "--recipe", "nope=1"]) == 1
    assert "--recipe: 'nope=1'" in capsys.readouterr().err
    assert main([*base, "--recipe", "vflip=maybe"]) == 1
    assert "vflip takes true or false" in capsys.readouterr().err
    assert main([*base, "--recipe", "select=best"]) == 1
    assert "select must be one of" in capsys.readouterr().err
    assert main([*base, "--preset", "huge"]) == 1
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["train", "vit", "--role", "teacher", "--data", str(tmp_path / "absent.npz"),
                 "--out", str(tmp_path / "t")]) == 1
    assert not (tmp_path / "t").exists()


def test_a_teacher_for_other_data_is_refused_by_path(tmp_path, capsys):
    """In an ensemble, the teacher that does not fit is named; nothing is written."""
    three, four = (write_synthetic_npz(tmp_path / f"synth{n}.npz", n_classes=n) for n in (3, 4))
    common = ["--preset", "mnist28", "--epochs", "1", "--threads", "1"]
    with one_torch_thread():
        for npz, out in ((three, "t3"), (four, "t4")):
            assert main(["train", "vit", "--role", "teacher", "--data", str(npz),
                         "--out", str(tmp_path / out), *common]) == 0
        capsys.readouterr()
        assert main(["train", "vit", "--role", "student", "--data", str(three), "--teacher",
                     str(tmp_path / "t3"), "--teacher", str(tmp_path / "t4"),
                     "--out", str(tmp_path / "s"), *common]) == 1
    assert f"{tmp_path / 't4'} has 4 classes, the data 3" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    # nor can it be scored in one ensemble with them
    assert main(["eval", "vit", "--model", str(tmp_path / "t3"), "--model",
                 str(tmp_path / "t4")]) == 1
    assert f"{tmp_path / 't4'} has 4 classes" in capsys.readouterr().err
