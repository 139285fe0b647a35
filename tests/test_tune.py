"""A fair comparison: the validation split, per-model learning-rate tuning, and time and memory to result."""

from __future__ import annotations

import csv
import json
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from archbench.cli import app
from archbench.config import RunRequest, TuneRequest
from archbench.data import resolve
from archbench.data.split import holdout
from archbench.errors import ArchbenchError
from archbench.train import run_models
from archbench.tune import tune
from archbench.tuning import ALL_DIVERGED, CHOSEN, TIE, Trial, choose, read_tuning

runner = CliRunner()


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_dir(out: Path, summary: dict) -> Path:
    return out / summary["model"] / summary["run_id"]


def request(tiny_registry, tiny_data, out, **kw) -> RunRequest:
    settings = dict(
        models=["tiny_resnet"],
        data=str(tiny_data),
        preset="smoke",
        epochs=2,
        batch_size=16,
        image_size=32,
        device="cpu",
        out=out,
        quiet=True,
        registry=tiny_registry,
    )
    return RunRequest(**{**settings, **kw})


# ------------------------------------------------------------------------------------------ the split


def test_the_split_is_deterministic_disjoint_and_per_class():
    labels = np.repeat(np.arange(5), 20)
    a, b = holdout(labels, 4, seed=7), holdout(labels, 4, seed=7)
    assert np.array_equal(a.val, b.val) and a.fingerprint == b.fingerprint
    assert not set(a.val) & set(a.train) and sorted([*a.val, *a.train]) == list(range(100))
    assert np.bincount(labels[a.val]).tolist() == [4] * 5
    assert holdout(labels, 4, seed=8).fingerprint != a.fingerprint


@pytest.mark.parametrize("per_class", [0, 20, 25])
def test_a_split_that_leaves_no_training_image_is_refused(per_class):
    with pytest.raises(ArchbenchError, match="leave at least one training image per class"):
        holdout(np.repeat(np.arange(3), 20), per_class, seed=0)


def test_every_model_and_seed_holds_out_the_same_images_and_chooses_on_them(tiny_registry, tiny_data, tmp_path):
    summaries = run_models(
        request(
            tiny_registry,
            tiny_data,
            tmp_path,
            models=["tiny_resnet", "tiny_plain"],
            seeds=[0, 1],
            val_per_class=4,
            split_seed=3,
        )
    )
    configs = [json.loads((run_dir(tmp_path, s) / "config.json").read_text()) for s in summaries]
    assert len({json.dumps(c["validation"], sort_keys=True) for c in configs}) == 1
    expected = holdout(resolve(str(tiny_data)).train_labels, 4, seed=3)
    assert configs[0]["validation"] == {"per_class": 4, "seed": 3, "size": 16, "fingerprint": expected.fingerprint}
    for summary in summaries:
        rows = read_rows(run_dir(tmp_path, summary) / "metrics.csv")
        assert all(int(r["train_samples"]) == 80 for r in rows)  # 96 minus the 16 held out
        val_acc = [float(r["val_acc"]) for r in rows]
        best = val_acc.index(max(val_acc))
        assert summary["selected_on"] == "val" and summary["best_epoch"] == best + 1
        assert summary["best_val_acc"] == val_acc[best]
        assert summary["test_acc_at_best_epoch"] == float(rows[best]["test_acc"])


def test_without_a_split_the_choice_is_marked_as_test_selection(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(request(tiny_registry, tiny_data, tmp_path))
    rows = read_rows(run_dir(tmp_path, summary) / "metrics.csv")
    assert summary["selected_on"] == "test" and summary["best_val_acc"] is None
    assert all(r["val_acc"] == "" for r in rows)


# ------------------------------------------------------------------------------------------ time to result


def test_time_and_images_to_threshold_follow_the_metrics(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(request(tiny_registry, tiny_data, tmp_path, epochs=3, thresholds=[0.0001, 0.26, 0.99]))
    rows = read_rows(run_dir(tmp_path, summary) / "metrics.csv")
    elapsed = list(accumulate(float(r["train_seconds"]) for r in rows))
    assert [int(r["images_seen"]) for r in rows] == [96, 192, 288]
    for key, epoch in summary["epochs_to_threshold"].items():
        if epoch is None:
            assert summary["seconds_to_threshold"][key] is None and summary["images_to_threshold"][key] is None
        else:
            assert summary["seconds_to_threshold"][key] == pytest.approx(elapsed[epoch - 1])
            assert summary["images_to_threshold"][key] == int(rows[epoch - 1]["images_seen"])
    assert summary["epochs_to_threshold"]["0.0001"] == 1 and summary["epochs_to_threshold"]["0.99"] is None
    assert summary["train_seconds"] == pytest.approx(elapsed[-1])
    assert all(float(r["train_seconds"]) < float(r["epoch_seconds"]) for r in rows)  # evaluation excluded
    assert summary["peak_memory_mb"] > 0 and "RSS" in summary["peak_memory_kind"]
    assert summary["compile_seconds"] is None


# ------------------------------------------------------------------------------------------ choosing


def trial(lr, val_acc, val_loss=1.0, status="completed", seed=0) -> Trial:
    return Trial("m", lr, seed, f"r{lr}{seed}", status, val_acc, val_loss, 0.5)


def test_choose_takes_the_best_mean_validation_accuracy():
    choice = choose([trial(0.01, 0.30), trial(0.1, 0.50), trial(0.1, 0.40, seed=1), trial(1.0, 0.44)])
    assert choice["status"] == CHOSEN and choice["lr"] == 0.1  # mean 0.45 beats 0.44 and 0.30
    assert [g["val_acc"] for g in choice["grid"]] == [0.30, pytest.approx(0.45), 0.44]


def test_choose_breaks_accuracy_ties_by_loss_and_reports_exact_ties():
    assert choose([trial(0.01, 0.5, 0.9), trial(0.1, 0.5, 0.7)])["lr"] == 0.1
    tie = choose([trial(0.01, 0.5, 0.7), trial(0.1, 0.5, 0.7)])
    assert tie["status"] == TIE and tie["lr"] is None and tie["tied"] == [0.01, 0.1]


def test_a_diverged_rate_scores_nothing_and_all_diverged_is_reported():
    choice = choose([trial(0.01, 0.2), trial(10.0, None, None, status="diverged")])
    assert choice["lr"] == 0.01 and choice["grid"][1]["diverged"] and choice["grid"][1]["val_acc"] is None
    assert choose([trial(10.0, None, None, status="diverged")])["status"] == ALL_DIVERGED


# ------------------------------------------------------------------------------------------ the workflow


@pytest.fixture(scope="module")
def tuned(tiny_registry, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    content = tune(
        TuneRequest(
            models=["tiny_resnet", "tiny_vgg"],
            lrs=[0.05, 0.2, 1e6],
            data=str(tiny_data),
            preset="smoke",
            epochs=2,
            batch_size=16,
            image_size=32,
            device="cpu",
            out=out,
            quiet=True,
            registry=tiny_registry,
            val_per_class=4,
            clip_grad_norm=0,
        )
    )
    return out, content


def test_tune_records_each_trial_and_chooses_from_the_records(tuned):
    out, content = tuned
    assert json.loads((out / "tuning.json").read_text()) == content
    assert sorted(content["models"]) == ["tiny_resnet", "tiny_vgg"]
    for model, choice in content["models"].items():
        trials = [t for t in content["trials"] if t["model"] == model]
        assert sorted(t["lr"] for t in trials) == [0.05, 0.2, 1e6]
        diverged = [t for t in trials if t["lr"] == 1e6]
        assert diverged[0]["status"] == "diverged" and diverged[0]["val_acc"] is None
        for t in trials:  # every trial is a run record marked as a tuning trial on the split
            config = json.loads((out / model / t["run_id"] / "config.json").read_text())
            assert config["tuning_trial"] is True and config["validation"]["per_class"] == 4
            assert config["recipe"]["lr"] == t["lr"]
            if t["status"] == "completed":
                rows = read_rows(out / model / t["run_id"] / "metrics.csv")
                assert t["val_acc"] == max(float(r["val_acc"]) for r in rows)
        scored = [t for t in trials if t["val_acc"] is not None]
        best = max(scored, key=lambda t: (t["val_acc"], -t["val_loss"]))
        assert choice["status"] == CHOSEN and choice["lr"] == best["lr"]


def test_run_with_tuned_rates_uses_and_records_the_file(tuned, tiny_registry, tiny_data):
    out, content = tuned
    summaries = run_models(
        request(tiny_registry, tiny_data, out, models=["tiny_resnet", "tiny_vgg"], lr="tuned", epochs=1, batch_size=8)
    )
    for summary in summaries:
        config = json.loads((run_dir(out, summary) / "config.json").read_text())
        chosen = content["models"][summary["model"]]["lr"]
        assert config["recipe"]["lr"] == pytest.approx(chosen * 8 / 16)  # scaled from the trials' batch of 16
        assert config["recipe"]["lr_source"].startswith("tuned (tuning.json: best of 3 rates")
        assert "scaled from batch 16 to 8" in config["recipe"]["lr_source"]
        assert config["tuning_trial"] is False


def test_tuned_rates_refuse_other_data_and_unknown_models(tuned, tiny_registry, tmp_path):
    out, content = tuned
    with pytest.raises(ArchbenchError, match="made on other data"):
        read_tuning(out / "tuning.json", resolve("synthetic"))
    edited = dict(content, models={"tiny_resnet": content["models"]["tiny_resnet"]})
    (tmp_path / "t.json").write_text(json.dumps(edited))
    result = runner.invoke(
        app,
        [
            "run",
            "tiny_vgg",
            "--lr",
            "tuned",
            "--tuning",
            str(tmp_path / "t.json"),
            "--data",
            str(Path(content_data_root(out))),
            "--registry",
            str(tiny_registry),
            "--preset",
            "smoke",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 2 and "has no rate for tiny_vgg" in result.output
    assert not (tmp_path / "runs").exists()


def content_data_root(out: Path) -> str:
    config = json.loads(next(out.glob("tiny_resnet/*/config.json")).read_text())
    return config["provenance"]["data_root"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["tune", "tiny_resnet", "--lr", "0"], "positive finite"),
        (["tune", "tiny_resnet", "--lr", "nan"], "positive finite"),
        (["tune", "tiny_resnet", "--val-per-class", "24"], "leave at least one training image per class"),
        (["run", "tiny_resnet", "--lr", "tuned"], "does not exist: run `archbench tune"),
        (["run", "tiny_resnet", "--lr", "fast"], "neither a number nor 'tuned'"),
        (["run", "tiny_resnet", "--lr", "-1"], "positive finite"),
    ],
)
def test_bad_tuning_input_is_one_line_and_creates_nothing(tiny_registry, tiny_data, tmp_path, args, expected):
    out = tmp_path / "runs"
    result = runner.invoke(
        app,
        [
            *args,
            "--data",
            str(tiny_data),
            "--registry",
            str(tiny_registry),
            "--preset",
            "smoke",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2
    assert not out.exists()
