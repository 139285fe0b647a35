"""Claims as data: every test the report runs is one row of REPORT-claims.csv, Holm-adjusted within its
family, each discussion sentence one row; twins found by traits, ResNet against VGG, the depth study, failures
counted, gradients named by direction, identical runs shown once."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats
from test_report import generate, interval, row_for, section, table_rows, write_run

import archbench
from archbench import runs as records
from archbench.report.stats import holm

FINAL = {  # final test accuracy per seed 0, 1, 2
    "resnet18": [0.50, 0.52, 0.51],
    "resnet18_plain": [0.49, 0.50, 0.52],  # about the same as resnet18: not resolved
    "resnet34": [0.56, 0.57, 0.58],  # better than resnet18
    "resnet34_plain": [0.40, 0.41, 0.43],  # worse than resnet18_plain: degradation
    "vgg11": [0.30, 0.33, 0.31],
    "vgg11_bn": [0.45, 0.44, 0.47],
}


def write_finals(root: Path, finals: dict, **kw) -> Path:
    for model, values in finals.items():
        for seed, final in enumerate(values):
            write_run(root, model, seed, [0.5 * final, 0.8 * final, 0.9 * final, final], **kw)
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("claims")
    text = generate(tmp, write_finals(tmp / "runs", FINAL))
    return tmp, text, read_claims(tmp)


def read_claims(folder: Path) -> pd.DataFrame:
    claims = pd.read_csv(folder / "REPORT-claims.csv")
    text = ["family", "claim", "arm", "model_a", "model_b", "metric", "test", "verdict", "note"]
    return claims.fillna({c: "" for c in text})


def paired_p(a: str, b: str) -> float:
    return scipy_stats.ttest_rel(FINAL[a], FINAL[b]).pvalue


def claim(claims: pd.DataFrame, family: str, a: str, b: str = "") -> pd.Series:
    rows = claims[(claims["family"] == family) & (claims["model_a"] == a) & (claims["model_b"] == b)]
    assert len(rows) == 1, (family, a, b, len(rows))
    return rows.iloc[0]


def test_claims_file_adjusted_p_at_least_raw_and_verdicts_follow_the_adjusted_p(report):
    _, _, claims = report
    assert list(claims.columns[:12]) == [
        "family", "claim", "arm", "model_a", "model_b", "metric", "n_a", "n_b", "test", "statistic", "p", "p_adjusted"
    ]  # fmt: skip
    tested = claims[claims["test"] != ""]
    p, adjusted = tested["p"].astype(float), tested["p_adjusted"].astype(float)
    assert (adjusted >= p - 1e-12).all() and (adjusted <= 1).all()
    assert ((adjusted < 0.05) == (tested["verdict"] == "resolved")).all()
    assert set(tested["verdict"]) <= {"resolved", "not resolved"}
    for _, rows in tested.groupby("family"):  # Holm over each family, and only within it
        assert rows["p_adjusted"].astype(float).tolist() == pytest.approx(holm(rows["p"].astype(float)), rel=1e-5)
    # no test twice: each pair once per family and arm
    assert not claims.duplicated(["family", "arm", "model_a", "model_b"]).any()


def test_each_twin_and_resnet_against_each_vgg_is_a_claim(report):
    _, text, claims = report
    residual = claim(claims, "accuracy", "resnet18", "resnet18_plain")
    assert residual["test"] == "paired t" and residual["p"] == pytest.approx(
        paired_p("resnet18", "resnet18_plain"), rel=1e-5
    )
    assert residual["verdict"] == "not resolved"
    bn = claim(claims, "accuracy", "vgg11_bn", "vgg11")
    assert bn["p"] == pytest.approx(paired_p("vgg11_bn", "vgg11"), rel=1e-5)
    assert bn["note"].startswith("rates differ: vgg11_bn at lr 0.1, vgg11 at lr 0.01")  # registry lr_scale
    resnet_vgg = claims[(claims["family"] == "accuracy") & claims["claim"].str.startswith("ResNet vs VGG")]
    assert sorted(zip(resnet_vgg["model_a"], resnet_vgg["model_b"])) == [
        (r, v) for r in ("resnet18", "resnet34") for v in ("vgg11", "vgg11_bn")
    ]  # a plain ResNet is neither side: residual and family both decide
    summary = section(text, "## 1. Summary")
    assert len(summary.splitlines()) <= 32  # one screen
    assert "resnet18 vs resnet18_plain" in summary and "not resolved (Holm p = " in summary
    assert "vgg11_bn vs vgg11 +14.00 pts, vgg11_bn higher" in summary and "[rates differ]" in summary


def test_depth_claims_and_the_reference_rows_of_the_runs_data_set(report, tmp_path):
    _, text, claims = report
    plain = claim(claims, "depth", "resnet34_plain", "resnet18_plain")
    # every seed 9 points lower: the paired t statistic is undefined (scipy returns p = 4e-32 from rounding
    # noise); the exact sign-flip test says p = 2 / 2^3, and the sentence says so
    assert plain["test"] == "exact sign-flip" and plain["p"] == 0.25 and plain["verdict"] == "not resolved"
    assert "every seed: -9.00" in text
    assert plain["difference"] == pytest.approx(100 * (sum(FINAL["resnet34_plain"]) - sum(FINAL["resnet18_plain"])) / 3)
    depth = section(text, "## 6. Depth: plain against residual")
    rows = {r["model"]: r for r in table_rows(depth)}
    acc = [100 * a for a in FINAL["resnet34_plain"]]
    assert rows["resnet34_plain"]["final test acc (%)"] == interval(acc)
    # Tiny-ImageNet runs: He et al. 2016 Table 2 (ImageNet) rows
    assert rows["*reference: plain-34*"]["test error (%)"] == "*28.54*"
    assert rows["*reference: ResNet-18*"]["test error (%)"] == "*27.88*"
    assert "vgg11" not in rows and "## 7. Convergence" in text
    # CIFAR-10 runs: Table 6 rows; other data: none
    cifar = generate(tmp_path / "c", write_finals(tmp_path / "c" / "runs", FINAL, data_name="cifar10"))
    rows = {r["model"]: r for r in table_rows(section(cifar, ". Depth: plain against residual"))}
    assert rows["*reference: ResNet-20*"]["test error (%)"] == "*8.75*"
    assert rows["*reference: ResNet-110*"]["test error (%)"] == "*6.43*"
    assert "*reference: plain-34*" not in rows and "*reference: resnet18*" not in cifar
    digits = generate(tmp_path / "d", write_finals(tmp_path / "d" / "runs", FINAL, data_name="digits"))
    assert "*reference:" not in digits and "No published reference is set beside these runs" in digits


def test_a_seed_that_never_reaches_the_threshold_counts_as_infinite_time(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):
        write_run(runs, "resnet18", seed, [0.35, 0.45, 0.5, 0.55])  # 40% at epoch 2
        # seed 2 never reaches 40% (dropping it would make vgg11's mean time 4 epochs, from 2 of 3 seeds)
        write_run(runs, "vgg11", seed, [0.2, 0.3, 0.35, 0.4] if seed < 2 else [0.1, 0.15, 0.2, 0.25])
    text = generate(tmp_path, runs)
    results = pd.read_csv(tmp_path / "REPORT-results.csv")
    vgg = results[results["label"] == "vgg11"].set_index("seed")
    assert vgg.loc[2, "epochs_to_0.4"] == math.inf and vgg.loc[0, "epochs_to_0.4"] == 4
    assert row_for(section(text, "## 1. Summary"), "vgg11")["epochs to 40%"] == "∞ (2/3; those 4.0)"
    claims = read_claims(tmp_path)
    time = claim(claims, "time-to-threshold", "resnet18", "vgg11")
    # the never-reached seed enters at the budget + 1 (5 epochs), never dropped: 4, 4, 5 against 2, 2, 2
    assert time["mean_b"] == pytest.approx((4 + 4 + 5) / 3)
    assert time["p"] == pytest.approx(scipy_stats.ttest_rel([2, 2, 2], [4, 4, 5]).pvalue, rel=1e-5)
    assert "vgg11 1/3" in time["note"]


def _rewrite_gradients(run_dir: Path, factor: float) -> None:
    """gradnorms.csv with ‖g‖/‖w‖ multiplied by `factor` per layer towards the input (first/last = factor^(n-1))."""
    with open(run_dir / records.GRADNORMS, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    n = max(int(r["layer_index"]) for r in rows) + 1
    for r in rows:
        r["grad_to_weight"] = repr(factor ** (n - 1 - int(r["layer_index"])))
    records.write_csv(run_dir / records.GRADNORMS, records.GRADNORM_COLUMNS, rows)


def test_a_gradient_profile_that_explodes_and_one_that_vanishes_are_named(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):
        for model, factor in (("vgg11_bn", 1.6 + 0.01 * seed), ("vgg11", 0.6 - 0.01 * seed)):
            _rewrite_gradients(write_run(runs, model, seed, [0.3, 0.4], gradnorm_steps=12), factor)
    text = generate(tmp_path, runs)
    claims = read_claims(tmp_path)
    exploding = claim(claims, "gradient-step0", "vgg11_bn")
    vanishing = claim(claims, "gradient-step0", "vgg11")
    assert exploding["claim"].startswith("vgg11_bn: gradients exploding") and exploding["mean_a"] > 1
    assert vanishing["claim"].startswith("vgg11: gradients vanishing") and vanishing["mean_a"] < -1
    assert exploding["verdict"] == vanishing["verdict"] == "resolved"
    discussion = section(text, ". Discussion")
    # what the literature expects of a plain net with BN, beside the row
    line = next(ln for ln in discussion.splitlines() if ln.startswith("- vgg11_bn: gradients exploding (step 0)"))
    assert "He et al. 2016 §4.1" in line and "(in line with this row)" in line and "Yang et al. 2019" in line
    # the early window is the same optimiser steps for every model; pairs at different rates are not compared
    early = claim(claims, "gradient-early", "vgg11_bn", "vgg11")
    assert early["test"] == "" and early["note"].startswith("not compared: rates differ")


def test_identical_runs_are_shown_once_and_tested_once(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):
        for model in ("resnet18", "vgg11"):
            values = [0.2, 0.3, 0.4 + 0.01 * seed + (0.1 if model == "resnet18" else 0)]
            write_run(runs, model, seed, values)
            # the tuned rate equals the default: the same recipe and numbers, recorded again
            lr = 0.1 * (0.1 if model == "vgg11" else 1.0)
            write_run(runs, model, seed, values, lr=lr, lr_source="tuned (tuning.json)", run_tag="tuned1")
    text = generate(tmp_path, runs)
    claims = read_claims(tmp_path)
    assert "tuned" not in set(claims["arm"]) and not claims.duplicated(["family", "model_a", "model_b"]).any()
    assert "(tuned lr)" not in section(text, "## 1. Summary")
    assert "Identical runs shown once" in text and "resnet18 (tuned lr) = resnet18" in text
    results = pd.read_csv(tmp_path / "REPORT-results.csv", keep_default_na=False)
    assert set(results.loc[results["label"] == "vgg11 (tuned lr)", "identical_to"]) == {"vgg11"}


def test_load_runs_is_the_results_file_and_imports_no_torch(report):
    tmp, _, _ = report
    table = archbench.load_runs(tmp / "runs")
    written = pd.read_csv(tmp / "REPORT-results.csv", keep_default_na=False)
    assert list(table.columns) == list(written.columns) and len(table) == len(written) == 18
    assert table["final_test_acc"].tolist() == pytest.approx(written["final_test_acc"].astype(float).tolist())
    code = "import sys, archbench, archbench.report; archbench.load_runs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_line_is_longer_than_300_characters(report):
    tmp, _, _ = report
    lines = (tmp / "REPORT.md").read_text(encoding="utf-8").splitlines()
    assert max(len(ln) for ln in lines) <= 300


def test_older_run_records_are_read_with_their_columns_missing_said_once(tmp_path):
    runs = write_finals(tmp_path / "runs", {"resnet18": [0.5, 0.52]})
    for run_dir in (runs / "resnet18").iterdir():  # as schema version 1 wrote them
        metrics = pd.read_csv(run_dir / records.METRICS).drop(columns=["clip_fraction", "schema_version"])
        metrics.rename(columns={"holdout_loss": "val_loss", "holdout_acc": "val_acc"}).to_csv(
            run_dir / records.METRICS, index=False
        )
        summary = records.read_json(run_dir / records.SUMMARY)
        summary["best_val_acc"] = summary.pop("best_holdout_acc")
        summary.pop("schema_version")
        records.write_json(run_dir / records.SUMMARY, summary)
        (run_dir / records.CLIPPING).unlink()
    text = generate(tmp_path, runs)
    notes = [ln for ln in text.splitlines() if ln.startswith("> **Older run records:**")]
    assert notes == [
        "> **Older run records:** metrics.csv: 2 column(s) absent from records older than schema version 2 "
        "(clip_fraction, schema_version), read as missing."
    ]
    assert row_for(section(text, "## 1. Summary"), "resnet18")["clipped steps"] == "—"  # not recorded: unknown
