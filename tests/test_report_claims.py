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
    assert row_for(section(text, "## 1. Summary"), "vgg11")["epochs to 40%"] == "∞ (2/3)"
    claims = read_claims(tmp_path)
    time = claim(claims, "time-to-threshold", "resnet18", "vgg11")
    # the never-reached seed is ∞, ranked above every time, never replaced by a number: 2, 2, 2 against 4, 4, ∞
    assert time["mean_b"] == math.inf and math.isnan(time["difference"]) and time["test"] == "exact signed-rank"
    oracle = scipy_stats.wilcoxon([2, 2, 2], [4, 4, 1e9], method="exact").pvalue  # any stand-in above every time
    assert time["p"] == pytest.approx(oracle) and time["of_b"] == "2/3" and time["of_a"] == "3/3"
    time_part = section(text, ". Discussion").split("**Time to the main threshold")[1]
    line = next(ln for ln in time_part.splitlines() if ln.startswith("- ResNet vs VGG: resnet18"))
    assert "vgg11 ∞ (2/3)" in line and "difference" not in line


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
    # the sign is what was tested; the name comes from the 95% interval
    assert exploding["claim"].startswith("vgg11_bn: log10 ratio above 0, gradients exploding by its 95% interval")
    assert vanishing["claim"].startswith("vgg11: log10 ratio below 0, gradients vanishing by its 95% interval")
    assert exploding["mean_a"] > 1 and vanishing["mean_a"] < -1
    assert exploding["verdict"] == vanishing["verdict"] == "resolved"
    discussion = section(text, ". Discussion")
    # what the literature expects of a plain net with BN, beside the row: explosion is against He et al.'s
    # healthy gradients and in line with Yang et al.
    line = next(ln for ln in discussion.splitlines() if ln.startswith("- vgg11_bn: log10 ratio above 0"))
    he, yang = line.split("He et al. 2016 §4.1")[1].split("Yang et al. 2019")
    assert "(against this row)" in he and "(in line with this row)" in yang
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
        config = records.read_json(run_dir / records.CONFIG)
        records.write_json(run_dir / records.CONFIG, {k: v for k, v in config.items() if k != "schema_version"})
        (run_dir / records.CLIPPING).unlink()
    text = generate(tmp_path, runs)
    notes = [ln for ln in text.splitlines() if ln.startswith("> **Older run records:**")]
    assert notes == [
        "> **Older run records:** metrics.csv: 2 column(s) absent from records older than schema version 2 "
        "(clip_fraction, schema_version), read as missing."
    ]
    assert row_for(section(text, "## 1. Summary"), "resnet18")["clipped steps"] == "—"  # not recorded: unknown


def test_a_partly_collapsed_tuned_arm_keeps_its_pairs_and_step_0_is_tested_once_per_architecture(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):
        for model in ("resnet18", "vgg11", "vgg11_bn"):
            values = [0.2, 0.3, {"resnet18": 0.5, "vgg11": 0.3, "vgg11_bn": 0.45}[model] + 0.01 * seed**2]
            write_run(runs, model, seed, values)
            if model != "vgg11":  # resnet18's and vgg11_bn's tuned rates equal their defaults: identical runs
                write_run(runs, model, seed, values, lr=0.1, lr_source="tuned (tuning.json)", run_tag="tuned1")
        # vgg11's tuned rate is 0.1 (default 0.01): runs of its own, at the rate of vgg11_bn
        tuned = {"lr": 0.1, "lr_source": "tuned (tuning.json)", "run_tag": "tuned2"}
        write_run(runs, "vgg11", seed, [0.2, 0.3, 0.4 - 0.02 * seed], **tuned)
    generate(tmp_path, runs)
    claims = read_claims(tmp_path)
    accuracy = claims[claims["family"] == "accuracy"]
    tuned = accuracy[accuracy["arm"] == "tuned"]
    # the only same-rate BN pair: vgg11_bn (tuned lr) stands in with vgg11_bn's runs
    bn = claim(claims, "accuracy", "vgg11_bn (tuned lr)", "vgg11 (tuned lr)")
    assert bn["test"] == "paired t" and "rates differ" not in bn["note"]
    assert "vgg11_bn (tuned lr) = vgg11_bn (identical runs)" in bn["note"]
    expected = scipy_stats.ttest_rel([45 + s**2 for s in range(3)], [40 - 2 * s for s in range(3)]).pvalue
    assert bn["p"] == pytest.approx(expected, rel=1e-5)
    assert sorted(zip(tuned["model_a"], tuned["model_b"])) == [
        ("resnet18 (tuned lr)", "vgg11 (tuned lr)"),
        ("vgg11_bn (tuned lr)", "vgg11 (tuned lr)"),
    ]  # resnet18 (tuned lr) vs vgg11_bn (tuned lr) is resnet18 vs vgg11_bn again: not tested twice
    assert len(accuracy) == 3 + 2
    # step 0 precedes any update: one row per architecture, whatever the arm
    step0 = claims[(claims["family"] == "gradient-step0") & (claims["model_b"] == "")]
    assert sorted(step0["model_a"]) == ["resnet18", "vgg11", "vgg11_bn"]
    assert set(step0["arm"]) == {"all arms (step 0)"}
    early = claims[(claims["family"] == "gradient-early") & (claims["model_b"] == "")]
    assert "vgg11 (tuned lr)" in set(early["model_a"])


def _set_clipping(run_dir: Path, fraction: float) -> None:
    metrics = pd.read_csv(run_dir / records.METRICS)
    metrics["clip_fraction"] = fraction
    metrics.to_csv(run_dir / records.METRICS, index=False)
    config = records.read_json(run_dir / records.CONFIG)
    config["recipe"]["clip_grad_norm"] = 2.0
    config["config_hash"] = records.config_hash(config)  # as a run recorded with clipping
    records.write_json(run_dir / records.CONFIG, config)
    summary = records.read_json(run_dir / records.SUMMARY)
    records.write_json(run_dir / records.SUMMARY, {**summary, "config_hash": config["config_hash"]})


def test_the_first_screen_flags_chance_warns_of_clipping_and_gives_every_family(tmp_path):
    runs = tmp_path / "runs"
    finals = {
        "resnet18": [0.50, 0.52, 0.51],
        "resnet18_plain": [0.48, 0.50, 0.49],  # every seed 2 points below resnet18
        "vgg11": [0.12, 0.13, 0.14],  # 13% ± 2.5 on 10 classes: the interval lies below 2 × chance
        "vgg11_bn": [0.05, 0.40, 0.60],  # an interval that reaches from below chance to far above it
    }
    clipping = {"resnet18": 0.9, "resnet18_plain": 0.1, "vgg11": 0.1, "vgg11_bn": 0.1}
    for model, values in finals.items():
        for seed, final in enumerate(values):
            _set_clipping(write_run(runs, model, seed, [0.5 * final, 0.8 * final, final]), clipping[model])
    text = generate(tmp_path, runs)
    summary = section(text, "## 1. Summary")
    rows = {m: row_for(summary, m) for m in finals}
    assert rows["vgg11"]["final test acc (%)"].endswith(" did not learn")
    assert rows["vgg11_bn"]["final test acc (%)"].endswith(" not distinguishable from chance (10%)")
    assert not rows["resnet18"]["final test acc (%)"].endswith(("learn", "chance (10%)"))
    assert rows["resnet18"]["clipped steps"] == "90%" and rows["resnet18_plain"]["clipped steps"] == "10%"
    warnings = [ln for ln in summary.splitlines() if ln.startswith("> **WARNING: gradient clipping bound")]
    assert warnings == [
        "> **WARNING: gradient clipping bound on most optimiser steps** (threshold 2): resnet18 90% of steps. "
        "Those runs trained as normalised SGD, their step size set by the clip threshold rather than the learning "
        "rate, and that step size differs by architecture."
    ]  # resnet18_plain's 10% is a minority: not named
    assert '"did not learn"' in section(text, "## 2. Methods")  # the rule is named
    # every family's verdicts, within the first screen
    first_screen = "\n".join(text.splitlines()[:32])
    claims = read_claims(tmp_path)
    for family, rows_of in claims.groupby("family"):
        resolved = int((rows_of["verdict"] == "resolved").sum())
        assert f"- **{family}**: {resolved} of {len(rows_of)} rows resolved" in first_screen
    assert {"accuracy", "time-to-threshold", "gradient-step0", "gradient-early"} <= set(claims["family"])
    # a constant difference is spelled out on the first screen as in the discussion
    assert "resnet18 vs resnet18_plain +2.00 pts, every seed: +2.00, not resolved" in first_screen


def test_a_seed_one_side_did_not_complete_is_dropped_from_the_pairing_and_named(tmp_path):
    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate(((0.50, 0.45), (0.56, 0.50), (0.53, 0.30))):
        write_run(runs, "resnet18", seed, [0.2, 0.3, 0.4, a])
        diverged = {"status": "diverged", "diverged_at_step": 5} if seed == 2 else {}
        write_run(runs, "resnet18_plain", seed, [0.2, 0.3, 0.4, b], **diverged)
    text = generate(tmp_path, runs)
    row = claim(read_claims(tmp_path), "accuracy", "resnet18", "resnet18_plain")
    # paired on seeds 0 and 1, never Welch over 3 against 2
    assert row["test"] == "paired t" and row["n_a"] == row["n_b"] == 2
    assert row["p"] == pytest.approx(scipy_stats.ttest_rel([50, 56], [45, 50]).pvalue, rel=1e-5)
    assert "paired on the shared seeds, dropped: resnet18 seed(s) 2" in row["note"]
    assert (row["of_a"], row["of_b"]) == ("3/3", "2/3")  # completed / total
    # the means of the paired seeds, each side's completed/total beside it
    assert "resnet18 53.00 (3/3) vs resnet18_plain 47.50 (2/3), difference +5.50; paired t, n = 2 vs 2" in text


def test_every_seed_equal_is_said_with_its_resolution_in_the_summary_and_the_accuracy_section(tmp_path):
    text = generate(tmp_path, write_finals(tmp_path / "runs", {"resnet18": [0.5, 0.5, 0.5]}))
    equal = "50.00 (all 3 seeds equal, resolution 0.5 points)"  # 1 of 200 test images
    assert row_for(section(text, "## 1. Summary"), "resnet18")["final test acc (%)"] == equal
    assert row_for(section(text, ". Accuracy"), "resnet18")["final test acc (%)"] == equal
