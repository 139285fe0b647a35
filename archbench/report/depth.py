"""The depth study: plain and residual nets of one builder at two or more depths, beside He et al. 2016's
published rows (docs/report.md). The tests of depth are claims (`claims`, family "depth")."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from archbench import references
from archbench.report.text import accuracy_resolution, md, pct

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
    for (builder, bn, arm, _), rows in known.groupby(
        ["builder", "batch_norm", "arm", "fingerprint"], sort=True, dropna=False
    ):
        if not rows["residual"].astype(bool).any() or rows["depth"].nunique() < 2:
            continue
        cells: dict[tuple[int, bool], list[str]] = {}
        for label, r in rows.iterrows():
            cells.setdefault((int(r["depth"]), bool(r["residual"])), []).append(label)
        groups.append(DepthGroup(builder, bool(bn), arm, cells))
    return groups


TINY_IMAGENET, CIFAR10 = "Tiny-ImageNet", "CIFAR-10"


def dataset_family(names) -> str | None:
    """TINY_IMAGENET or CIFAR10 when every run's data set is that one (by its recorded name), else None."""
    found = set()
    for name in names:
        key = str(name).lower().replace("-", "").replace("_", "")
        found.add(CIFAR10 if "cifar10" in key and "cifar100" not in key else TINY_IMAGENET if "tiny" in key else None)
    return found.pop() if len(found) == 1 else None


REFERENCES = {  # data family -> He et al. 2016's published depth rows, their source and protocol
    CIFAR10: (references.HE_2016_TABLE6, references.HE_2016_CIFAR, references.HE_2016_CIFAR_PROTOCOL),
    TINY_IMAGENET: (references.HE_2016_TABLE2, references.HE_2016, references.HE_2016_TABLE2_PROTOCOL),
}
NO_REFERENCE = ((), "", "")  # for other data


def _group_table(group: DepthGroup, counted: pd.DataFrame, family: str | None) -> str:
    res = accuracy_resolution(counted)
    rows = []
    for (depth, residual), labels in sorted(group.cells.items()):
        for label in labels:
            acc = counted.loc[counted["label"] == label, "final_test_acc"]
            rows.append((label, depth, residual, pct(acc, res), pct(1.0 - acc, res)))
    for ref in REFERENCES.get(family, NO_REFERENCE)[0]:
        if ref.depth in group.depths or family == CIFAR10:
            error = ref.top1_error
            rows.append(
                (f"*reference: {ref.label}*", ref.depth, ref.residual, f"*{100 - error:.2f}*", f"*{error:.2f}*")
            )
    table = pd.DataFrame(rows, columns=["model", "depth", "residual", "final test acc (%)", "test error (%)"])
    table["depth"] = table["depth"].astype(str)
    table["residual"] = table["residual"].map({True: "yes", False: "no"})
    return md(table)


def depth_section(study: Study) -> str | None:
    groups = depth_groups(study.kinds)
    if not groups:
        return None
    family = dataset_family(study.counted["dataset"])
    parts = []
    for group in groups:
        parts += [
            f"{group.builder} builder, {'with' if group.batch_norm else 'without'} BN, {group.arm} "
            f"({' and '.join(str(d) for d in group.depths)} layers):",
            _group_table(group, study.counted, family),
        ]
    refs, source, protocol = REFERENCES.get(family, NO_REFERENCE)
    text = (
        "Final test accuracy and error (100 - accuracy) at the last epoch, mean over seeds with the 95% "
        "confidence interval."
    )
    if refs:
        text += (
            f" Reference rows (*italic*) are {source} ({protocol}): published numbers, not archbench results, "
            "and not this recipe; accuracy there is 100 - the published error."
        )
        if family == CIFAR10:
            text += f" Plain nets: {references.HE_2016_CIFAR_PLAIN}."
    else:
        text += " No published reference is set beside these runs: none was measured on this data set."
    depth_claims = (study.claims["family"] == "depth").sum()
    text += f" The depth claims ({depth_claims} rows of REPORT-claims.csv) are in the discussion."
    parts.append(text)
    return "\n\n".join(parts)
