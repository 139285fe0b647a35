"""The claims the discussion tests: twins found by traits, ResNet against VGG, and the depth study."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats
from test_report import generate, interval, section, table_rows, write_run

from archbench.report.depth import depth_sentences

FINAL = {  # final test accuracy per seed 0, 1, 2
    "resnet18": [0.50, 0.52, 0.51],
    "resnet18_plain": [0.49, 0.50, 0.52],  # about the same as resnet18: not resolved
    "resnet34": [0.56, 0.57, 0.58],  # better than resnet18
    "resnet34_plain": [0.40, 0.41, 0.43],  # worse than resnet18_plain: degradation
    "vgg11": [0.30, 0.33, 0.31],
    "vgg11_bn": [0.45, 0.44, 0.47],
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("claims")
    for model, finals in FINAL.items():
        for seed, final in enumerate(finals):
            write_run(tmp / "runs", model, seed, [0.5 * final, 0.8 * final, 0.9 * final, final])
    return generate(tmp, tmp / "runs")


def paired_p(a: str, b: str) -> float:
    return scipy_stats.ttest_rel(FINAL[a], FINAL[b]).pvalue


def test_depth_section_with_he_et_al_reference_rows(report):
    depth = section(report, "## 4. Depth: plain against residual")
    rows = {r["model"]: r for r in table_rows(depth)}
    acc = [100 * a for a in FINAL["resnet34_plain"]]
    assert rows["resnet34_plain"]["final test acc (%)"] == interval(acc)
    assert rows["resnet34_plain"]["test error (%)"] == interval([100 - a for a in acc])
    assert rows["resnet34_plain"]["depth"] == "34" and rows["resnet34_plain"]["residual"] == "no"
    assert rows["*reference: plain-34*"]["test error (%)"] == "*28.54*"
    assert rows["*reference: plain-34*"]["final test acc (%)"] == "*71.46*"
    assert rows["*reference: ResNet-34*"]["test error (%)"] == "*25.03*"
    assert rows["*reference: plain-18*"]["test error (%)"] == "*27.94*"
    assert rows["*reference: ResNet-18*"]["test error (%)"] == "*27.88*"
    assert "vgg11" not in rows  # VGG has no residual variant: not part of the depth study
    assert "not archbench results" in depth and "10-crop" in depth
    assert "## 5. Convergence" in report  # the sections after it renumber


def test_discussion_reads_degradation_and_the_deeper_resnet(report):
    discussion = section(report, "Discussion")
    assert (
        "Degradation, plain nets 18 to 34 layers: resnet34_plain ends at 41.33% against resnet18_plain's "
        "50.33% final test accuracy, 9.00 points worse: resolved"
    ) in discussion
    assert "degradation appears: the deeper plain net is worse (He et al. 2016, Table 2: plain-34 28.54%" in discussion
    assert "Depth, residual nets 18 to 34 layers: resnet34 ends at 57.00%" in discussion
    assert "the deeper residual net is better (He et al. 2016, Table 2: ResNet-34 25.03%" in discussion


def paired_seeds_needed(a: str, b: str) -> int:
    """The fewest seeds at which a paired t-test (one sample of per-seed differences, df n - 1) has 80% power
    against the observed mean difference, at the observed spread of the differences."""
    differences = [x - y for x, y in zip(FINAL[a], FINAL[b])]
    d = abs(statistics.mean(differences)) / statistics.stdev(differences)
    for n in range(2, 1001):
        t, delta = scipy_stats.t.ppf(0.975, n - 1), d * math.sqrt(n)
        if scipy_stats.nct.sf(t, n - 1, delta) + scipy_stats.nct.cdf(-t, n - 1, delta) >= 0.8:
            return n
    raise AssertionError("more than 1000")


def test_each_twin_and_resnet_against_each_vgg_is_tested(report):
    discussion = section(report, "Discussion")
    p = paired_p("resnet18", "resnet18_plain")
    assert p >= 0.05
    residual = next(ln for ln in discussion.splitlines() if ln.startswith("- Residual connections: resnet18 "))
    assert f"not resolved with 3 seeds (p = {p:.2g}, paired, n = 3 vs 3)" in residual
    needed = paired_seeds_needed("resnet18", "resnet18_plain")
    assert needed > 3
    assert residual.endswith(
        f"; at the observed spread {needed} seeds per model would resolve a difference this size with 80% power."
    )
    bn = next(ln for ln in discussion.splitlines() if ln.startswith("- BN: vgg11_bn "))
    assert f"resolved (p = {paired_p('vgg11_bn', 'vgg11'):.2g}, paired, n = 3 vs 3)" in bn
    for resnet in ("resnet18", "resnet34"):
        for vgg in ("vgg11", "vgg11_bn"):
            assert f"- ResNet against VGG: {resnet} " in discussion
            assert f"against {vgg} " in discussion
    assert "Residual connections: resnet34 " in discussion  # the 34-layer twins too
    # a plain ResNet is neither side of ResNet against VGG: residual and family both decide
    resnet_vgg = [ln for ln in discussion.splitlines() if ln.startswith("- ResNet against VGG: ")]
    assert len(resnet_vgg) == 4 and not any("plain" in ln for ln in resnet_vgg)


def _counted(finals: dict[str, list[float]]) -> pd.DataFrame:
    traits = {"r18": (18, True), "p18": (18, False), "r34": (34, True), "p34": (34, False)}
    return pd.DataFrame(
        [
            {
                "label": m,
                "model": m,
                "name_label": m,
                "seed": s,
                "final_test_acc": a,
                "builder": "resnet",
                "depth": traits[m][0],
                "residual": traits[m][1],
                "batch_norm": True,
                "arm": "shared recipe",
            }
            for m, values in finals.items()
            for s, a in enumerate(values)
        ]
    )


def test_degradation_not_shown_when_not_resolved():
    counted = _counted({"p18": [0.5, 0.4, 0.6], "p34": [0.45, 0.55, 0.35], "r18": [0.5, 0.5, 0.5]})
    sentences = depth_sentences(counted)
    assert len(sentences) == 1  # no residual net at 34 layers: only the plain pair
    assert "degradation is not shown (the difference is not resolved)" in sentences[0]
    assert "not resolved with 3 seeds" in sentences[0]
    assert depth_sentences(_counted({"p18": [0.5, 0.4, 0.6], "r18": [0.45, 0.55, 0.35]})) == []  # one depth


def test_no_depth_section_without_a_residual_variant(tmp_path: Path):
    for seed in (0, 1):  # VGG11 and VGG16: two depths, but no residual twin to set them against
        write_run(tmp_path / "runs", "vgg11", seed, [0.2, 0.3])
        write_run(tmp_path / "runs", "vgg16", seed, [0.2, 0.3])
    text = generate(tmp_path, tmp_path / "runs")
    assert "Depth: plain against residual" not in text
    assert "## 4. Convergence" in text
