"""One schema for a run's options: what overrides the recipe, what changes a rate's meaning, what a run's
identity is (and that records written before a field was added or renamed keep it), the optimiser option,
and the limits a request is checked against."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_run_request
from typer.testing import CliRunner

from archbench import runs, tuning
from archbench.cli import app
from archbench.config import (
    ADDED_RECIPE_FIELDS,
    MACHINE_KEYS,
    PRESETS,
    RATE_FIELDS,
    Recipe,
    RunRequest,
    resolve_lr,
    run_identity,
    upgrade_config,
)
from archbench.devices import make_optimizer, optimizer_kernel
from archbench.errors import ArchbenchError
from archbench.report.sections import _recipe_rows
from archbench.study import run_models
from archbench.tune import trial_identity

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "runs").glob("*/*/config.json"))
# A value for every option that overrides the recipe, other than the preset's.
OVERRIDES = {
    "epochs": 7,
    "batch_size": 12,
    "optimizer": "adamw",
    "weight_decay": 3e-3,
    "warmup_epochs": 1.5,
    "schedule": "step",
    "nesterov": False,
    "label_smoothing": 0.1,
    "clip_grad_norm": 0.5,
}


def smoke(**kw) -> RunRequest:
    return RunRequest(models=["resnet18"], preset="smoke", **kw)


def recorded_today(**recipe) -> dict:
    """A config.json as a run records it today (from a committed record, in today's form)."""
    config = upgrade_config(json.loads(COMMITTED[0].read_text()))
    return {**config, "recipe": {**config["recipe"], **recipe}}


def as_recorded_before(config: dict) -> dict:
    """The same config.json as a run recorded it before the optimiser could be chosen."""
    older = {("optimizer" if k == "optimizer_kernel" else k): v for k, v in config.items()}
    older["recipe"] = {k: v for k, v in config["recipe"].items() if k != "optimizer"}
    return older


# ------------------------------------------------------------------------------------------ field metadata


def test_every_option_marked_as_a_recipe_override_reaches_the_recipe():
    marked = {f.name for f in dataclasses.fields(RunRequest) if f.metadata.get("recipe")}
    assert marked == set(OVERRIDES)
    assert marked <= {f.name for f in dataclasses.fields(Recipe)}
    recipe = smoke(**OVERRIDES).recipe()
    assert {name: getattr(recipe, name) for name in OVERRIDES} == OVERRIDES
    assert smoke(clip_grad_norm=0).recipe().clip_grad_norm is None  # 0 turns the preset's clipping off


def test_rate_fields_are_the_fields_marked_as_changing_what_a_rate_means():
    marked = {f.name for f in dataclasses.fields(Recipe) if f.metadata["rate"]}
    assert set(RATE_FIELDS) == marked | {"image_size"}
    assert {"optimizer", "momentum", "weight_decay", "schedule"} <= marked and "epochs" not in marked
    assert tuning.RATE_FIELDS == RATE_FIELDS and set(tuning.STUDY_FIELDS) == {*RATE_FIELDS, "epochs"}


def test_the_tuning_files_recipe_is_every_recipe_field_but_the_rate():
    record = tuning.recipe_record(json.loads(COMMITTED[0].read_text()))  # an older record: SGD
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)} - {"lr"}
    assert set(record) == {"preset", "image_size", "precision", "global_batch_size", *recipe_fields}
    assert record["optimizer"] == "sgd"


# ------------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize("path", COMMITTED[:6], ids=lambda p: p.parent.name)
def test_committed_runs_keep_their_config_hash_in_either_form(path):
    config = json.loads(path.read_text())
    assert runs.config_hash(config) == config["config_hash"]
    assert runs.config_hash(upgrade_config(config)) == config["config_hash"]


def test_an_older_record_reads_in_todays_form_and_hashes_as_the_same_run_recorded_today():
    today = recorded_today()
    older = as_recorded_before(today)
    assert "optimizer_kernel" not in older and "optimizer" not in older["recipe"]
    assert upgrade_config(older) == today
    assert upgrade_config(older)["optimizer_kernel"] in ("fused", "foreach")
    assert runs.config_hash(older) == runs.config_hash(today)
    assert runs.config_hash(recorded_today(optimizer="adamw")) != runs.config_hash(today)


def test_the_identity_without_the_machine_is_the_trials_and_ignores_only_the_machine():
    today = recorded_today()
    elsewhere = {**today, "device": "cuda", "precision": "bf16", "optimizer_kernel": "fused", "world_size": 2}
    elsewhere["recipe"] = {**today["recipe"], "global_batch_size": 2 * today["recipe"]["global_batch_size"]}
    assert trial_identity(elsewhere) == trial_identity(as_recorded_before(today)) == run_identity(today, machine=False)
    assert not set(MACHINE_KEYS) & set(trial_identity(today))
    assert runs.config_hash(elsewhere) != runs.config_hash(today)
    for changed in ({"seed": 9}, {"image_size": 64}, {"preset": "paper"}):
        assert trial_identity({**today, **changed}) != trial_identity(today)
    assert trial_identity(recorded_today(optimizer="adamw")) != trial_identity(today)
    assert ADDED_RECIPE_FIELDS == {"optimizer": "sgd"}


# ------------------------------------------------------------------------------------------ --optimizer


def test_presets_are_sgd_and_adamw_takes_torchs_defaults_unless_told():
    assert {p.recipe.optimizer for p in PRESETS.values()} == {"sgd"}
    adamw = smoke(optimizer="adamw").recipe()
    defaults = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    assert (adamw.lr, adamw.weight_decay, adamw.momentum) == (defaults["lr"], defaults["weight_decay"], None)
    assert resolve_lr(smoke(optimizer="adamw"), 0.1, 64) == (defaults["lr"], "torch adamw default")
    assert smoke(optimizer="adamw", weight_decay=0.05).recipe().weight_decay == 0.05
    assert resolve_lr(smoke(optimizer="adamw", lr="0.01"), 0.1, 64) == (0.01, "--lr")
    assert smoke(optimizer="sgd").recipe() == smoke().recipe()


def test_nesterov_with_adamw_is_refused_in_one_line(tmp_path):
    with pytest.raises(ArchbenchError, match="AdamW takes no momentum or Nesterov"):
        smoke(optimizer="adamw", nesterov=True).check()
    result = CliRunner().invoke(app, ["run", "resnet18", "--optimizer", "adamw", "--nesterov", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "AdamW takes no momentum or Nesterov" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["run", "resnet18", "--optimizer", "adam", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "sgd, adamw" in result.output


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_the_factory_builds_each_optimiser_with_the_kernel_chosen(name, kind, kernel):
    params = [torch.nn.Parameter(torch.ones(3))]
    momentum = 0.9 if name == "sgd" else None
    opt = make_optimizer(
        params, optimizer=name, lr=0.1, momentum=momentum, weight_decay=0.1, nesterov=False, kernel=kernel
    )
    assert type(opt) is kind and opt.defaults[kernel] is True
    assert optimizer_kernel(torch.device("cpu"), "fp32") == "foreach"


def test_adamw_decays_weights_decoupled_from_the_gradient():
    (p,) = params = [torch.nn.Parameter(torch.ones(1))]
    opt = make_optimizer(
        params, optimizer="adamw", lr=0.1, momentum=None, weight_decay=0.5, nesterov=False, kernel="foreach"
    )
    p.grad = torch.zeros(1)
    opt.step()  # a zero gradient: Adam's step is 0, the decay alone moves the weight by lr * wd * w
    assert p.item() == pytest.approx(1 - 0.1 * 0.5)


def test_a_run_with_adamw_records_and_trains_with_it(tiny_registry, tiny_data, tmp_path):
    run = tiny_run_request(tiny_registry, tiny_data, tmp_path, epochs=1, optimizer="adamw", keep_checkpoint=True)
    (summary,) = run_models(run)
    run_dir = tmp_path / summary["model"] / summary["run_id"]
    config = json.loads((run_dir / runs.CONFIG).read_text())
    assert config["recipe"]["optimizer"] == "adamw" and config["optimizer_kernel"] == "foreach"
    assert (config["recipe"]["lr"], config["recipe"]["weight_decay"]) == (1e-3, 1e-2)
    state = torch.load(run_dir / runs.CHECKPOINT, weights_only=True)["optimizer"]
    assert state["param_groups"][0]["amsgrad"] is False and "exp_avg_sq" in state["state"][0]
    assert summary["status"] == "completed"


def test_the_report_shows_the_optimiser_only_where_a_run_is_not_sgd():
    row = {
        "label": "m",
        "preset": "smoke",
        "epochs_planned": 2,
        "global_batch_size": 32,
        "image_size": 32,
        "lr": 0.1,
        "lr_source": "preset",
        "lr_scale": None,
        "schedule": "cosine",
        "clip_grad_norm": 2.0,
        "holdout": False,
        "optimizer": "sgd",
    }
    sgd = _recipe_rows(pd.DataFrame([row]))
    assert "optimizer" not in sgd.columns and list(sgd.columns[-3:]) == ["schedule", "grad clip", "holdout split"]
    assert _recipe_rows(pd.DataFrame([{k: v for k, v in row.items() if k != "optimizer"}])).equals(sgd)
    mixed = _recipe_rows(pd.DataFrame([row, {**row, "label": "n", "optimizer": "adamw", "clip_grad_norm": None}]))
    assert list(mixed["optimizer"]) == ["sgd", "adamw"] and list(mixed["grad clip"]) == ["2", "—"]


# ------------------------------------------------------------------------------------------ limits


@pytest.mark.parametrize("option", ["--seed", "--split-seed"])
@pytest.mark.parametrize("value", ["-1", str(2**32)])
def test_seeds_outside_numpys_range_are_refused_when_parsed(option, value, tmp_path):
    result = CliRunner().invoke(app, ["run", "resnet18", option, value, "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("settings", [{"seeds": [0, 2**32]}, {"seeds": [-1]}, {"split_seed": 2**32}])
def test_seeds_outside_numpys_range_are_refused_on_a_request_built_in_python(settings):
    with pytest.raises(ArchbenchError, match="out of range"):
        smoke(**settings).check()
    smoke(seeds=[0, 2**32 - 1], split_seed=2**32 - 1).check()
