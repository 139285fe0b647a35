"""A fair comparison: the validation split, per-model learning-rate tuning, and time and memory to result."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_request
from rich.console import Console
from typer.testing import CliRunner

import archbench
import archbench.tune as tune_module
from archbench import train
from archbench.cli import app
from archbench.config import TuneRequest, resolve_config
from archbench.data import resolve
from archbench.data.split import holdout
from archbench.data.synthetic import make_synthetic
from archbench.errors import ArchbenchError
from archbench.provenance import git_state
from archbench.registry import get_entry
from archbench.study import run_models
from archbench.tune import tune
from archbench.tuning import ALL_DIVERGED, CHOSEN, TIE, Trial, Tuning, choose, read_tuning

runner = CliRunner()


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_dir(out: Path, summary: dict) -> Path:
    return out / summary["model"] / summary["run_id"]


request = tiny_run_request


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
            holdout_per_class=4,
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
        holdout_acc = [float(r["holdout_acc"]) for r in rows]
        best = holdout_acc.index(max(holdout_acc))
        assert summary["selected_on"] == "holdout" and summary["best_epoch"] == best + 1
        assert summary["best_holdout_acc"] == holdout_acc[best]
        assert summary["test_acc_at_best_epoch"] == float(rows[best]["test_acc"])


def test_without_a_split_the_choice_is_marked_as_test_selection(tiny_registry, tiny_data, tmp_path):
    (summary,) = run_models(request(tiny_registry, tiny_data, tmp_path))
    rows = read_rows(run_dir(tmp_path, summary) / "metrics.csv")
    assert summary["selected_on"] == "test" and summary["best_holdout_acc"] is None
    assert all(r["holdout_acc"] == "" for r in rows)


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
    assert choose([trial(0.01, 0.6, 2.0), trial(0.1, 0.5, 0.5)])["lr"] == 0.01  # accuracy first, not loss


def test_choose_breaks_accuracy_ties_by_loss_and_reports_exact_ties():
    assert choose([trial(0.01, 0.5, 0.9), trial(0.1, 0.5, 0.7)])["lr"] == 0.1
    tie = choose([trial(0.01, 0.5, 0.7), trial(0.1, 0.5, 0.7)])
    assert tie["status"] == TIE and tie["lr"] is None and tie["tied"] == [0.01, 0.1]


def test_a_diverged_rate_scores_nothing_and_all_diverged_is_reported():
    choice = choose([trial(0.01, 0.2), trial(10.0, None, None, status="diverged")])
    assert choice["lr"] == 0.01 and choice["grid"][1]["diverged"] and choice["grid"][1]["val_acc"] is None
    assert choose([trial(10.0, None, None, status="diverged")])["status"] == ALL_DIVERGED


# ------------------------------------------------------------------------------------------ the workflow

# A grid whose answer is known without looking at the scores: on two easy classes, 1e-9 leaves the model at
# its initialisation (chance: 50%), 1e6 diverges in the first steps, and 0.3 learns within four epochs.
MODELS = ["tiny_plain", "tiny_resnet"]
SENSIBLE, TINY, HUGE = 0.3, 1e-9, 1e6
GRID = [TINY, SENSIBLE, HUGE]
TRIALS = [(model, 0, lr) for model in MODELS for lr in GRID]


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory) -> Path:
    """Two classes (distinct shape and hue), 40 training images each: 8 held out, 32 trained on."""
    root = tmp_path_factory.mktemp("easy-data")
    make_synthetic(root=root, classes=2, train_per_class=40, val_per_class=8, seed=0)
    return root


def tune_request(tiny_registry, data, out, **kw) -> TuneRequest:
    settings = dict(
        models=MODELS,
        lrs=GRID,
        data=str(data),
        preset="smoke",
        epochs=4,
        batch_size=8,
        image_size=32,
        device="cpu",
        out=out,
        quiet=True,
        registry=tiny_registry,
        holdout_per_class=8,
        clip_grad_norm=0,
    )
    return TuneRequest(**{**settings, **kw})


def tune_args(tiny_registry, data, out, *extra, models=MODELS, grid=GRID) -> list[str]:
    """`archbench tune` of `tune_request`'s defaults, on the command line (without the command's name)."""
    return [
        *models,
        *[a for lr in grid for a in ("--lr", repr(lr))],
        *["--data", str(data), "--preset", "smoke", "--epochs", "4", "--batch-size", "8", "--image-size", "32"],
        *["--device", "cpu", "--quiet", "--registry", str(tiny_registry), "--holdout-per-class", "8"],
        *["--clip-grad-norm", "0", "--out", str(out), *extra],
    ]


@pytest.fixture(scope="module")
def tuned(tiny_registry, easy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    return out, tune(tune_request(tiny_registry, easy_data, out), Console(quiet=True))


def without_provenance(models: dict) -> dict:
    return {m: {k: v for k, v in choice.items() if k != "provenance"} for m, choice in models.items()}


def trial_summaries(out: Path) -> list[dict]:
    return [
        json.loads((p.parent / "summary.json").read_text())
        for p in sorted(out.glob("*/*/config.json"))
        if json.loads(p.read_text())["tuning_trial"]
    ]


def test_tuning_picks_the_rate_that_learns_over_one_that_diverges_and_one_that_stays_at_chance(tuned):
    _, content = tuned
    assert sorted(content["models"]) == MODELS
    for model in MODELS:
        choice = content["models"][model]
        assert choice["status"] == CHOSEN and choice["lr"] == SENSIBLE, (model, choice["grid"])
        grid = {g["lr"]: g for g in choice["grid"]}
        assert grid[HUGE]["diverged"] and grid[HUGE]["val_acc"] is None
        assert grid[TINY]["val_acc"] <= 0.65 < 0.8 <= grid[SENSIBLE]["val_acc"]  # chance against learnt


def test_each_trial_is_a_run_record_the_file_reads_its_score_from(tuned):
    out, content = tuned
    assert json.loads((out / "tuning.json").read_text()) == content
    assert sorted((t["model"], t["seed"], t["lr"]) for t in content["trials"]) == sorted(TRIALS)
    for t in content["trials"]:
        config = json.loads((out / t["model"] / t["run_id"] / "config.json").read_text())
        assert config["tuning_trial"] is True and config["validation"]["per_class"] == 8
        assert config["recipe"]["lr"] == t["lr"]
        if t["lr"] == HUGE:
            assert t["status"] == "diverged" and t["val_acc"] is None
        else:
            rows = read_rows(out / t["model"] / t["run_id"] / "metrics.csv")
            assert t["status"] == "completed" and t["val_acc"] == max(float(r["holdout_acc"]) for r in rows)


def test_the_tuning_file_records_the_recipe_registry_entries_and_code(tuned, tiny_registry):
    _, content = tuned
    assert content["recipe"] == {
        "preset": "smoke",
        "image_size": 32,
        "epochs": 4,
        "batch_size": 8,
        "global_batch_size": 8,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": False,
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "label_smoothing": 0.0,
        "clip_grad_norm": None,
        "precision": "fp32",
    }
    for model in MODELS:
        toml = hashlib.sha256((tiny_registry / f"{model}.toml").read_bytes()).hexdigest()
        assert content["models"][model]["registry_toml_sha256"] == [toml]
        assert content["models"][model]["global_batch_size"] == 8
    commit, dirty = git_state()
    provenance = content["provenance"]
    assert provenance["git_commit"] == [str(commit)] and provenance["git_dirty"] == bool(dirty)
    assert provenance["torch"] == [torch.__version__] and provenance["archbench_version"] == archbench.__version__


def test_run_with_tuned_rates_uses_and_records_the_file(tuned, tiny_registry, easy_data):
    out, content = tuned
    settings = dict(models=MODELS, lr="tuned", epochs=1, batch_size=4, clip_grad_norm=0)
    summaries = run_models(request(tiny_registry, easy_data, out, **settings))
    for summary in summaries:
        config = json.loads((run_dir(out, summary) / "config.json").read_text())
        assert config["recipe"]["lr"] == pytest.approx(SENSIBLE * 4 / 8)  # scaled from the trials' batch of 8
        assert config["recipe"]["lr_source"].startswith("tuned (tuning.json: best of 3 rates")
        assert "scaled from batch 8 to 4" in config["recipe"]["lr_source"]
        assert config["tuning_trial"] is False


def test_tuned_rates_refuse_a_run_whose_recipe_changes_what_a_rate_means(tuned, tiny_registry, easy_data, tmp_path):
    out, content = tuned
    data = resolve(str(easy_data))
    tuning = read_tuning(out / "tuning.json", data)
    entry = get_entry("tiny_resnet", registry=tiny_registry)

    def config(precision="fp32", **kw):
        settings = {"lr": "tuned", "clip_grad_norm": 0, **kw}
        run = request(tiny_registry, easy_data, out, **settings)
        return resolve_config(
            run,
            entry,
            0,
            data,
            device="cpu",
            precision=precision,
            channels_last=False,
            optimizer_kernel="foreach",
            tuned=tuning.rate_for("tiny_resnet"),
        )

    tuning.check_recipe(config(batch_size=4, epochs=40, precision="bf16"))  # scaled, longer, lower precision: fine
    for settings, problem in [
        ({"image_size": 64}, "image_size 32 (this run: 64)"),
        ({"weight_decay": 1e-3}, "weight_decay 0.0005 (this run: 0.001)"),
        ({"clip_grad_norm": None}, "clip_grad_norm None (this run: 2.0)"),  # the smoke preset's clipping
        ({"schedule": "constant"}, "schedule cosine (this run: constant)"),
        ({"optimizer": "adamw", "weight_decay": 5e-4}, "optimizer sgd (this run: adamw)"),
    ]:
        with pytest.raises(ArchbenchError, match="they do not carry over to this run") as e:
            tuning.check_recipe(config(**settings))
        assert problem in str(e.value) and "\n" not in str(e.value)
    older = {k: v for k, v in content.items() if k != "recipe"}
    with pytest.raises(ArchbenchError, match="does not record the recipe its rates were tuned with"):
        Tuning(tmp_path / "old.json", older).check_recipe(config())
    before_optimizers = {k: v for k, v in content["recipe"].items() if k != "optimizer"}  # a file of SGD rates
    Tuning(tmp_path / "old.json", {**content, "recipe": before_optimizers}).check_recipe(config())
    with pytest.raises(ArchbenchError, match="optimizer sgd \\(this run: adamw\\)"):
        Tuning(tmp_path / "old.json", {**content, "recipe": before_optimizers}).check_recipe(
            config(optimizer="adamw", weight_decay=5e-4)
        )


def with_choice(content: dict, model: str, **choice) -> dict:
    """`content` with `model`'s entry changed."""
    return {**content, "models": {**content["models"], model: {**content["models"][model], **choice}}}


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -SENSIBLE, 0.0, 2 * SENSIBLE, "0.1"])
def test_a_tuned_rate_is_trusted_only_if_it_is_a_positive_rate_the_file_tried(tuned, tmp_path, lr):
    _, content = tuned
    Tuning(tmp_path / "t.json", content).rate_for("tiny_resnet")
    with pytest.raises(ArchbenchError, match="not a positive rate it tried") as e:
        Tuning(tmp_path / "t.json", with_choice(content, "tiny_resnet", lr=lr)).rate_for("tiny_resnet")
    assert "tiny_resnet" in str(e.value) and str(lr) in str(e.value) and "t.json" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_tuned_rate_is_refused_once_the_models_registry_entry_has_changed(tuned, tiny_registry, easy_data, tmp_path):
    out, content = tuned
    tuned_hash = content["models"]["tiny_resnet"]["registry_toml_sha256"][0]
    changed = tmp_path / "registry"
    shutil.copytree(tiny_registry, changed)
    with open(changed / "tiny_resnet.toml", "a") as f:
        f.write("# one more line\n")
    today = get_entry("tiny_resnet", registry=changed).identity()["toml_sha256"]
    Tuning(out / "tuning.json", content).check_entry("tiny_resnet", tuned_hash)
    args = ["run", "tiny_resnet", "--data", easy_data, "--lr", "tuned", "--tuning", out / "tuning.json"]
    result = runner.invoke(app, [str(a) for a in [*args, "--registry", changed, "--out", tmp_path / "runs"]])
    assert result.exit_code == 2 and "registry entry has changed since" in result.output, result.output
    assert tuned_hash[:12] in result.output and today[:12] in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    older = Tuning(out / "tuning.json", with_choice(content, "tiny_resnet", registry_toml_sha256=[""]))
    with pytest.raises(ArchbenchError, match="does not record which registry entry tiny_resnet was tuned with"):
        older.check_entry("tiny_resnet", tuned_hash)


def test_run_with_tuned_rates_at_another_image_size_is_one_line_and_creates_nothing(tuned, tiny_registry, easy_data):
    out, _ = tuned
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    args = ["run", *MODELS, "--data", easy_data, "--lr", "tuned", "--image-size", 64, "--clip-grad-norm", 0]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--registry", tiny_registry, "--out", out]])
    assert result.exit_code == 2 and "image_size 32 (this run: 64)" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_tuned_rates_refuse_other_data_and_unknown_models(tuned, tiny_registry, easy_data, tmp_path):
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
            str(easy_data),
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


# ------------------------------------------------------------------------------------------ rerunning, merging


def test_rerunning_tune_trains_no_trial_again(tuned, tiny_registry, easy_data, tmp_path, monkeypatch):
    out, content = tuned
    records = {p: p.read_bytes() for p in out.glob("*/*/*.csv")}

    def trained_again(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(train, "train_epoch", trained_again)
    again = tune(tune_request(tiny_registry, easy_data, out, tuning=tmp_path / "again.json"), Console(quiet=True))
    assert without_provenance(again["models"]) == without_provenance(content["models"])
    assert again["trials"] == content["trials"]
    assert {p: p.read_bytes() for p in out.glob("*/*/*.csv")} == records


def test_tuning_more_models_into_the_file_keeps_the_others(tuned, tiny_registry, easy_data, tmp_path):
    out, content = tuned
    path = tmp_path / "tuning.json"
    shutil.copy(out / "tuning.json", path)
    console = Console(record=True, width=300)
    more = tune(tune_request(tiny_registry, easy_data, tmp_path / "runs", models=["tiny_vgg"], tuning=path), console)
    assert json.loads(path.read_text()) == more
    assert sorted(more["models"]) == [*MODELS, "tiny_vgg"]
    assert {m: more["models"][m] for m in MODELS} == content["models"]
    assert [t for t in more["trials"] if t["model"] != "tiny_vgg"] == content["trials"]
    assert sorted(t["lr"] for t in more["trials"] if t["model"] == "tiny_vgg") == GRID
    assert "kept tiny_plain, tiny_resnet from the file" in console.export_text()
    # Tuning a model the file holds again replaces its grid (here: one rate, its trial already recorded).
    again = tune(tune_request(tiny_registry, easy_data, out, models=["tiny_resnet"], lrs=[SENSIBLE], tuning=path))
    assert [g["lr"] for g in again["models"]["tiny_resnet"]["grid"]] == [SENSIBLE]
    assert [t["lr"] for t in again["trials"] if t["model"] == "tiny_resnet"] == [SENSIBLE]
    assert again["models"]["tiny_plain"] == content["models"]["tiny_plain"]
    assert again["models"]["tiny_vgg"] == more["models"]["tiny_vgg"]


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--holdout-per-class", "4"], "another validation split"),
        (["--weight-decay", "0.001"], "another recipe (weight_decay 0.0005 (this tuning: 0.001))"),
        (["--epochs", "2"], "another recipe (epochs 4 (this tuning: 2))"),
        (["--image-size", "48"], "another recipe (image_size 32 (this tuning: 48))"),
        (["--data", "OTHER"], "other data"),
    ],
)
def test_tuning_into_a_file_of_other_data_split_or_recipe_is_refused(
    tuned, tiny_registry, easy_data, tiny_data, tmp_path, extra, problem
):
    out, _ = tuned
    path = tmp_path / "tuning.json"
    shutil.copy(out / "tuning.json", path)
    extra = [str(tiny_data) if a == "OTHER" else a for a in extra]
    result = runner.invoke(
        app, ["tune", *tune_args(tiny_registry, easy_data, tmp_path / "runs", "--tuning", str(path), *extra)]
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"the tuning file {path} was made on {problem}; write this tuning to another file with --tuning" in message
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    assert not (tmp_path / "runs").exists()
    assert path.read_bytes() == (out / "tuning.json").read_bytes()


def test_tuning_into_a_damaged_file_is_refused_before_any_trial(tiny_registry, easy_data, tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text("{not json")
    result = runner.invoke(
        app, ["tune", *tune_args(tiny_registry, easy_data, tmp_path / "runs", "--tuning", str(path))]
    )
    assert result.exit_code == 2 and "cannot read the tuning file" in result.output
    assert "move it away, or write this tuning to another file with --tuning OTHER_FILE" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "runs").exists() and path.read_text() == "{not json"


# ------------------------------------------------------------------------------------------ launcher, ranks


def submitted_trials(monkeypatch) -> list[tuple[str, int, float]]:
    """Stand in for the cluster: record each trial `archbench tune` submits, and return at once (no --wait)."""
    submitted = []

    def submit(requests, console=None):
        for r in requests:
            assert r.launcher == "submitit" and len(r.models) == len(r.seeds) == 1
            submitted.append((r.models[0], r.seeds[0], float(r.lr)))
        return []

    monkeypatch.setattr(tune_module, "run_requests", submit)
    return submitted


LAUNCHER = ["--launcher", "submitit", "--cluster", "local", "--gpus-per-job", "0"]


def test_submitted_trials_are_collected_by_rerunning_the_command(
    tuned, tiny_registry, easy_data, tmp_path, monkeypatch
):
    finished, _ = tuned
    out = tmp_path / "runs"
    submitted = submitted_trials(monkeypatch)
    result = runner.invoke(app, ["tune", *tune_args(tiny_registry, easy_data, out, *LAUNCHER)])
    assert result.exit_code == 0, result.output
    assert sorted(submitted) == sorted(TRIALS)
    message = " ".join(result.output.split())
    assert "6 of 6 tuning trials are not finished (6 submitted now)" in message
    assert f"rerun this same `archbench tune` command to write {out / 'tuning.json'}" in message
    assert not (out / "tuning.json").exists()

    # The jobs end: their run records appear under --out. The same command now submits nothing and writes the file.
    for model in MODELS:
        shutil.copytree(finished / model, out / model)
    submitted.clear()
    result = runner.invoke(app, ["tune", *tune_args(tiny_registry, easy_data, out, *LAUNCHER)])
    assert result.exit_code == 0, result.output
    assert submitted == []
    written = json.loads((out / "tuning.json").read_text())
    content = json.loads((finished / "tuning.json").read_text())
    assert without_provenance(written["models"]) == without_provenance(content["models"])


def test_a_rerun_submits_only_trials_neither_finished_nor_training(
    tuned, tiny_registry, easy_data, tmp_path, monkeypatch
):
    finished, _ = tuned
    out = tmp_path / "runs"
    for model in MODELS:
        shutil.copytree(finished / model, out / model)
    # A run of (tiny_resnet, lr 0.1) is training right now: a folder of that trial whose lock is held.
    trial = next(
        p.parent for p in out.glob("tiny_resnet/*/config.json") if json.loads(p.read_text())["recipe"]["lr"] == SENSIBLE
    )
    running = out / "tiny_resnet" / "20990101-000000-s0-running-0000"
    shutil.copytree(trial, running)
    config = json.loads((running / "config.json").read_text())
    config["recipe"]["lr"] = 0.1
    (running / "config.json").write_text(json.dumps(config))
    (running / "summary.json").unlink()
    submitted = submitted_trials(monkeypatch)
    fd = os.open(running / ".lock", os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = runner.invoke(app, ["tune", *tune_args(tiny_registry, easy_data, out, *LAUNCHER, "--lr", "0.1")])
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    assert submitted == [("tiny_plain", 0, 0.1)]
    assert "2 of 8 tuning trials are not finished (1 submitted now)" in " ".join(result.output.split())
    assert not (out / "tuning.json").exists()


def test_only_rank_0_writes_the_tuning_file(tuned, tiny_registry, easy_data, tmp_path, monkeypatch):
    out, content = tuned
    monkeypatch.setattr(tune_module, "run_requests", lambda requests, console=None: trial_summaries(out))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        path = tmp_path / f"rank{rank}.json"
        written = tune(tune_request(tiny_registry, easy_data, out, tuning=path), Console(quiet=True))
        assert (written is not None) == (rank == "0") == path.exists()
    assert without_provenance(written["models"]) == without_provenance(content["models"])


@pytest.mark.slow
def test_tune_under_torchrun_writes_one_file_from_rank_0(tiny_registry, easy_data, tmp_path):
    out = tmp_path / "runs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = tune_args(tiny_registry, easy_data, out, models=["tiny_resnet"], grid=[SENSIBLE])
    done = subprocess.run(
        [*torchrun, "-m", "archbench", "tune", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    content = json.loads((out / "tuning.json").read_text())
    (trial,) = content["trials"]
    config = json.loads((out / "tiny_resnet" / trial["run_id"] / "config.json").read_text())
    assert config["world_size"] == 2 and content["models"]["tiny_resnet"]["global_batch_size"] == 16
    assert trial["status"] == "completed" and len([p for p in (out / "tiny_resnet").iterdir() if p.is_dir()]) == 1
    assert " ".join(done.stdout.split()).count(f"wrote {out / 'tuning.json'}") == 1


@pytest.mark.slow
def test_tune_through_the_local_launcher_then_rerun(tiny_registry, easy_data, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "runs"
    req = tune_request(
        tiny_registry,
        easy_data,
        out,
        models=["tiny_resnet"],
        lrs=[TINY, SENSIBLE],
        epochs=2,
        launcher="submitit",
        cluster="local",
        gpus_per_job=0,
    )
    assert tune(req, Console(quiet=True)) is None
    deadline = time.monotonic() + 240
    while len([s for s in trial_summaries_if_any(out) if s["status"] != "interrupted"]) < 2:
        assert time.monotonic() < deadline, "the trial jobs did not finish"
        time.sleep(1)
    content = tune(req, Console(quiet=True))
    assert sorted(t["lr"] for t in content["trials"]) == [TINY, SENSIBLE]
    assert json.loads((out / "tuning.json").read_text()) == content


def trial_summaries_if_any(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in out.glob("*/*/summary.json")]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "args, expected",
    [
        (["tune", "tiny_resnet", "--lr", "0"], "positive finite"),
        (["tune", "tiny_resnet", "--lr", "nan"], "positive finite"),
        (["tune", "tiny_resnet", "--holdout-per-class", "24"], "leave at least one training image per class"),
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


def test_a_rate_chosen_at_the_edge_of_the_grid_is_warned_of_with_the_next_rates(
    tiny_registry, easy_data, tuned, tmp_path
):
    """Without HUGE the sensible rate is the top of the grid: the best may lie above it, and tune says so,
    naming the next two rates at the grid's step (its trials are finished: nothing trains again)."""
    from archbench.tuning import grid_edge

    out, _ = tuned
    console = Console(record=True, width=400)
    request = tune_request(tiny_registry, easy_data, out, lrs=[TINY, SENSIBLE], tuning=tmp_path / "edge.json")
    content = tune(request, console)
    step = SENSIBLE / TINY
    for model in MODELS:
        assert content["models"][model]["lr"] == SENSIBLE
        assert grid_edge(content["models"][model]) == ("top", [float(f"{SENSIBLE * step**k:.3g}") for k in (1, 2)])
    text = console.export_text()
    nxt = " ".join(f"--lr {SENSIBLE * step**k:.3g}" for k in (1, 2))
    for model in MODELS:
        assert f"warning: {model}: the chosen rate {SENSIBLE:g} is the top of the grid" in text
        assert nxt in text
    # inside the grid, nothing is said; at the bottom, the rates below
    assert grid_edge({"status": CHOSEN, "lr": 0.1, "grid": [{"lr": v} for v in (0.01, 0.1, 1.0)]}) is None
    assert grid_edge({"status": CHOSEN, "lr": 0.001, "grid": [{"lr": v} for v in (0.001, 0.00316, 0.01)]}) == (
        "bottom",
        [0.000316, 0.0001],
    )
