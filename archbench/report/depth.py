"""The depth study: plain and residual nets of the same builder at two or more depths (e.g. 18 and 34
layers), beside He et al. 2016, Table 2.

A depth group is found by traits: one builder with a residual variant, one BN setting and one
learning-rate arm, with counted runs at two or more depths. The section appears only when one exists.
Degradation (He et al. 2016): the deeper plain net ends worse than the shallower one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from archbench import references
from archbench.report.comparisons import compare_labels
from archbench.report.study import traits
from archbench.report.text import md, pct, verdict

if TYPE_CHECKING:
    from archbench.report.study import Study


class DepthGroup(NamedTuple):
    builder: str
    batch_norm: bool
    arm: str
    cells: dict[tuple[int, bool], list[str]]  # (depth, residual) -> labels

    @property
    def depths(self) -> list[int]:
        return sorted({d for d, _ in self.cells})


def depth_groups(kinds: pd.DataFrame) -> list[DepthGroup]:
    groups = []
    known = kinds[kinds["depth"].notna()]
    for (builder, bn, arm), rows in known.groupby(["builder", "batch_norm", "arm"], sort=True):
        if not rows["residual"].astype(bool).any() or rows["depth"].nunique() < 2:
            continue
        cells: dict[tuple[int, bool], list[str]] = {}
        for label, r in rows.iterrows():
            cells.setdefault((int(r["depth"]), bool(r["residual"])), []).append(label)
        groups.append(DepthGroup(builder, bool(bn), arm, cells))
    return groups


def _error(values) -> list[float]:
    return [1.0 - v for v in values]


def _group_table(group: DepthGroup, counted: pd.DataFrame) -> str:
    rows = []
    for (depth, residual), labels in sorted(group.cells.items()):
        for label in labels:
            acc = counted.loc[counted["label"] == label, "final_test_acc"]
            rows.append(
                {
                    "model": label,
                    "depth": str(depth),
                    "residual": "yes" if residual else "no",
                    "final test acc (%)": pct(acc),
                    "test error (%)": pct(_error(acc)),
                }
            )
    for ref in references.HE_2016_TABLE2:
        if ref.depth in group.depths:
            rows.append(
                {
                    "model": f"*reference: {ref.label}*",
                    "depth": str(ref.depth),
                    "residual": "yes" if ref.residual else "no",
                    "final test acc (%)": f"*{100 - ref.top1_error:.2f}*",
                    "test error (%)": f"*{ref.top1_error:.2f}*",
                }
            )
    return md(pd.DataFrame(rows))


def depth_section(study: Study) -> str | None:
    groups = depth_groups(traits(study.counted))
    if not groups:
        return None
    parts = []
    for group in groups:
        parts += [
            f"{group.builder} builder, {'with' if group.batch_norm else 'without'} BN, {group.arm} "
            f"({' and '.join(str(d) for d in group.depths)} layers):",
            _group_table(group, study.counted),
        ]
    parts.append(
        "Final test accuracy and error (100 - accuracy) at the last epoch, mean over seeds with the 95% "
        f"confidence interval. Reference rows (*italic*) are {references.HE_2016} "
        f"({references.HE_2016_TABLE2_PROTOCOL}): "
        "published ImageNet numbers, not archbench results, and not this dataset or recipe; accuracy there is "
        "100 - the published error. The discussion tests whether the deeper plain net is worse than the "
        "shallower one (degradation) and whether the deeper residual net is better."
    )
    return "\n\n".join(parts)


def _reference_gap(residual: bool, shallow: int, deep: int) -> str:
    refs = {(r.depth, r.residual): r for r in references.HE_2016_TABLE2}
    a, b = refs.get((shallow, residual)), refs.get((deep, residual))
    if a is None or b is None:
        return ""
    return (
        f" (He et al. 2016, Table 2: {b.label} {b.top1_error:.2f}% against {a.label} {a.top1_error:.2f}% "
        "ImageNet top-1 error)"
    )


def depth_sentences(counted: pd.DataFrame) -> list[str]:
    """Per depth group and each pair of consecutive depths: degradation of the plain nets, gain of the
    residual ones, each tested on final test accuracy."""
    out = []
    for group in depth_groups(traits(counted)):
        for shallow, deep in zip(group.depths, group.depths[1:]):
            for residual in (False, True):
                for a in group.cells.get((deep, residual), []):
                    for b in group.cells.get((shallow, residual), []):
                        out.append(_depth_sentence(counted, a, b, residual, shallow, deep))
    return out


def _depth_sentence(counted: pd.DataFrame, deep: str, shallow: str, residual: bool, d_shallow: int, d_deep: int) -> str:
    c = compare_labels(counted, deep, shallow, "final_test_acc", 100.0)
    if c.n_a == 0 or c.n_b == 0:
        return f"Depth ({shallow} against {deep}): no final test accuracy on one side, so nothing to compare."
    gap = c.difference
    direction = "worse" if gap < 0 else "better" if gap > 0 else "no different"
    numbers = (
        f"{deep} ends at {c.mean_a:.2f}% against {shallow}'s {c.mean_b:.2f}% final test accuracy, "
        f"{abs(gap):.2f} points {direction}: {verdict(c)}"
    )
    reference = _reference_gap(residual, d_shallow, d_deep)
    if not residual:
        if c.resolved and gap < 0:
            reading = "degradation appears: the deeper plain net is worse"
        elif c.resolved:
            reading = "no degradation: the deeper plain net is better"
        else:
            reading = "degradation is not shown (the difference is not resolved)"
        return f"Degradation, plain nets {d_shallow} to {d_deep} layers: {numbers}; {reading}{reference}."
    if c.resolved and gap > 0:
        reading = "the deeper residual net is better"
    elif c.resolved:
        reading = "the deeper residual net is worse"
    else:
        reading = "whether the deeper residual net is better is not resolved"
    return f"Depth, residual nets {d_shallow} to {d_deep} layers: {numbers}; {reading}{reference}."
