"""The report's sections, one function each: `Study` in, the section's markdown (without its heading) out.

`archbench.report.SECTIONS` lists them in order with their titles and numbers them.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from archbench import references
from archbench.config import ADDED_RECIPE_FIELDS, Recipe
from archbench.report.claims import FAR
from archbench.report.depth import TINY_IMAGENET, dataset_family
from archbench.report.gradient_measures import (
    COSINE,
    DEPTH_BINS,
    EARLY,
    SIZES,
    STEP0,
    SYMBOLS,
    column,
    early_window,
)
from archbench.report.load import schema_note
from archbench.report.speed import bench_part, gpu_part, latency_cell, latency_part
from archbench.report.stats import finite
from archbench.report.study import Study
from archbench.report.summary import CHANCE_RULE
from archbench.report.text import (
    DASH,
    INTERVAL_RULE,
    TEST_RULES,
    accuracy_resolution,
    ci,
    counts,
    epochs_cell,
    geometric_ci,
    join,
    listing,
    md,
    never_cell,
    pct,
    per_label,
    seeds_text,
    status_note,
    threshold_label,
    unique,
)
from archbench.report.thresholds import thresholds_of
from archbench.runs import HOLDOUT, TEST


def header_section(study: Study) -> str:
    listed = study.listed
    synthetic = int(listed["synthetic"].sum())
    if not synthetic:
        return "# archbench report"
    return (
        f"# archbench report\n\n> **WARNING: SYNTHETIC DATA.** {synthetic} of the {len(listed)} runs in this report "
        "trained on synthetic images. No number in this report is a result on real images; they show that the code "
        "runs end to end, nothing about how these architectures compare."
    )


def notes_section(study: Study) -> str:
    """What follows the summary: notes on the data and records, and how to regenerate the report."""
    inputs = study.inputs
    parts = []
    fingerprints = unique(study.listed["fingerprint"])
    if len(fingerprints) > 1:
        parts.append(
            f"> **Note:** the runs used {len(fingerprints)} different datasets (fingerprints "
            f"{', '.join(f[:12] for f in fingerprints)}); numbers from different datasets do not compare."
        )
    parts += [
        f"> **WARNING: one name, several architectures.** Runs named {clash.model} built "
        f"{len(clash.variants)} different networks: {'; '.join(clash.variants)}. They are shown apart, "
        "tagged with a hash of the registry entry's builder and arguments, and never averaged together."
        for clash in study.clashes
    ]
    if note := schema_note():
        parts.append(f"> **Older run records:** {note}.")
    parts.append(
        f"Regenerate with `{inputs.command}` (from this file's folder); every number here is read from the run "
        f"records under `{inputs.runs_label}/`. Every test is a row of REPORT-claims.csv; every run that counts "
        "is a row of REPORT-results.csv."
    )
    return "\n\n".join(parts)


def methods_section(study: Study) -> str:
    """How runs are chosen and numbers are tested, in short paragraphs."""
    return "\n\n".join(
        [
            "Per model and seed the newest completed run counts (by start time); a model and seed without one "
            "is shown from its newest run, marked with its status. Each mean shows completed/total runs; a run "
            "that diverged or never reached a threshold counts as never reaching it (infinite time, as "
            "AlgoPerf counts it), never as a dropped seed.",
            f"Statistics are over seeds: {INTERVAL_RULE}.",
            *TEST_RULES,
            "Arms: \"registry default rates\" is the preset's rate times each registry entry's lr_scale (so two "
            'models of one pair may train at different rates: such pairs are flagged "rates differ"); '
            '"tuned" is each model\'s rate chosen on the holdout (a split of the training images) by '
            "`archbench tune`. A tuned group whose runs are identical to the default-rate runs is shown once.",
            "Gradients: per run, the first weight layer's ‖g‖/‖w‖ over the last's. Its log10 below 0 means the "
            f"early layers get relatively smaller updates (towards vanishing), above 0 larger (towards "
            f"exploding). What is tested is the sign (mean log10 against 0). The name comes from the 95% interval "
            f"of the mean log10: vanishing when the whole interval is at or below -{FAR:g} (a factor of 10), "
            f"exploding when at or above {FAR:g}, balanced when inside (-{FAR:g}, {FAR:g}), else undetermined. "
            "Step 0 is the primary measure (before any update: independent of the rate and the arm, so tested "
            "once per architecture); "
            f"the early window is {early_window(study.gradients.steps)}, the same optimiser steps for every model, "
            "and there only pairs trained at the same rate are compared.",
            CHANCE_RULE,
        ]
    )


def _recipe_rows(chosen: pd.DataFrame) -> pd.DataFrame:
    """The recipe table: what each model ran with, a column for each recipe field the schema reports
    (`archbench.config.Recipe`). A field added since the first records shows only where a run departs from
    what the older ones ran with, so the report of an older study reads as it did."""
    reported = [
        f
        for f in dataclasses.fields(Recipe)
        if f.metadata["report"]
        and (f.name not in ADDED_RECIPE_FIELDS or chosen.get(f.name, pd.Series()).ne(ADDED_RECIPE_FIELDS[f.name]).any())
    ]
    return per_label(
        chosen,
        lambda _, group: {
            "preset": listing(group["preset"]),
            "epochs": listing(group["epochs_planned"]),
            "global batch": listing(group["global_batch_size"]),
            "image size": listing(group["image_size"]),
            "lr": ", ".join(sorted({f"{lr:g}" for lr in group["lr"]})),
            "lr source": listing(group["lr_source"]),
            "registry lr_scale": ", ".join(f"{s:g}" for s in sorted(set(finite(group["lr_scale"])))) or DASH,
            **{f.metadata["report"]: _recipe_cell(group[f.name]) for f in reported},
            "holdout split": ", ".join(sorted({"yes" if v else "no" for v in group["holdout"]})),
        },
    )


def _recipe_cell(values: pd.Series) -> str:
    """A recipe field's values over a model's runs: numbers as %g in order, then words; a dash for none."""
    numbers = finite(v for v in values if not isinstance(v, str))
    words = unique(v for v in values if isinstance(v, str))
    return ", ".join([*(f"{n:g}" for n in sorted(set(numbers))), *words]) or DASH


def provenance_section(study: Study) -> str:
    runs = study.runs
    chosen = runs[runs["selected"]]

    def each(text, sep: str = "; ") -> str:  # the distinct texts `text(run)` gives over the chosen runs
        return sep.join(sorted({text(r) for r in chosen.itertuples()}))

    finished = unique(chosen["finished_at"])
    rows = {
        "data": each(
            lambda r: (
                f"{r.dataset} ({'SYNTHETIC' if r.synthetic else 'real images'}, {r.num_classes} classes, "
                f"{r.train_size} train / {r.test_size} test images, fingerprint {str(r.fingerprint)[:12]})"
            )
        ),
        "devices": each(lambda r: f"{r.device_name} ({r.device}, {r.precision}, {r.world_size} process(es))"),
        "archbench": listing(chosen["archbench_version"]),
        "torch / torchvision": each(lambda r: f"{r.torch} / {r.torchvision}"),
        "CUDA": listing(chosen["cuda"]) or "none (CPU)",
        "python": listing(chosen["python"]),
        "git commits": each(
            lambda r: f"{str(r.git_commit)[:12]}{' (uncommitted changes)' if r.git_dirty else ''}", ", "
        ),
        "presets": listing(chosen["preset"]),
        "seeds": "; ".join(sorted({f"{m}: {seeds_text(g)}" for m, g in chosen.groupby("label", sort=True)})),
        "runs started": f"{chosen['started_at'].min()} to {chosen['started_at'].max()}",
        "last run finished": finished[-1] if finished else DASH,
        "run folders read": f"{len(runs)} study runs ({len(chosen)} counted; the others are listed under Run records)",
    }
    if len(study.trials):
        rows["tuning trials"] = (
            f"{len(study.trials)} (shown under Learning-rate sensitivity only; never in the other tables)"
        )
    if study.ignored:
        rows["folders without a recorded epoch"] = (
            f"{len(study.ignored)}, ignored (stopped before their first epoch ended): {', '.join(study.ignored)}"
        )
    return "\n\n".join(
        [
            "\n".join(f"- {name}: {value}" for name, value in rows.items()),
            "Training recipe per model (\"lr source\" says whether the learning rate is the preset's, the preset's "
            "times the registry entry's `lr_scale`, set with `--lr`, or tuned per model on the holdout; "
            '"grad clip" is the global gradient-norm bound, — where none; "holdout split": whether the run '
            "held training images out to choose its best epoch on):",
            md(_recipe_rows(chosen)),
        ]
    )


def _whole(value) -> str:
    return DASH if value is None or pd.isna(value) else str(int(value))


def _compile_cell(group: pd.DataFrame) -> str:
    compiled = group[group["compile"]]
    if compiled.empty:
        return "not compiled"
    backends = unique(compiled["compile_backend"])
    return ci(compiled["compile_seconds"], ".1f") + (f", {', '.join(backends)}" if backends else "")


def architectures_section(study: Study) -> str:
    counted, latency = study.counted, study.latency

    def row(_, group: pd.DataFrame) -> dict:
        first = group.iloc[0]
        params, gflops = finite(group["parameters"]), finite(group["gflops_224"])
        return {
            "depth": _whole(first["depth"]),
            "residual": "yes" if first["residual"] else "no",
            "BN": "yes" if first["batch_norm"] else "no",
            "parameters": f"{int(params[0]):,}" if params else DASH,
            "GFLOPs @224": f"{gflops[0]:.4f}" if gflops else DASH,
            "peak memory (MB)": ci(group["peak_memory_mb"], ",.0f"),
            "compile (s)": _compile_cell(group),
            "latency b1 (ms)": latency_cell(latency, first["model"], 1),
            "latency b32 (ms)": latency_cell(latency, first["model"], 32),
        }

    kinds = unique(counted["peak_memory_kind"])
    parts = [
        md(per_label(counted, row)),
        "Depth counts the conv and linear weight layers on the main path. GFLOPs: fvcore at 224x224 in eval "
        "mode; fvcore counts one fused multiply-add as one flop (so these are GMACs; PyTorch's own "
        "`FlopCounterMode` counts 2 per multiply-add and reports about twice as much). "
        f"Peak memory: what each counted run recorded ({'; '.join(kinds) or 'not recorded'}), at the training "
        "recipe's batch and image size, mean ± 95% interval over seeds. Compile: seconds of the first compiled step, "
        "compilation included (mean ± 95% interval over seeds). "
        "Latency: median archbench forward pass in eval mode under `torch.inference_mode()`, at the image size "
        "and on the device of the latency table below.",
    ]
    return "\n\n".join(parts + latency_part(study) + bench_part(study) + gpu_part(study))


def _chosen_on(group: pd.DataFrame) -> str:
    sides = {HOLDOUT: "holdout", TEST: "test (no holdout split)"}
    found = sorted({str(s) for s in group["selected_on"]})
    if len(found) == 1:
        return sides.get(found[0], found[0])
    return ", ".join(f"{sides.get(s, s)}: {int((group['selected_on'] == s).sum())} seed(s)" for s in found)


def _val_chosen_cell(group: pd.DataFrame, res: str) -> str:
    on_val = group[group["selected_on"] == HOLDOUT]
    return pct(on_val["test_acc_at_best_epoch"], res) if len(on_val) else f"{DASH} (no holdout split)"


def accuracy_section(study: Study) -> str:
    runs, counted = study.runs, study.counted
    chosen = runs[runs["selected"]]
    res = accuracy_resolution(counted)  # what "all n seeds equal" is equal to within, as on the first screen
    wide = per_label(
        counted,
        lambda label, group: {
            "n": str(len(group)),
            "status": status_note(chosen[chosen["label"] == label], group),
            "final train acc (%)": pct(group["final_train_acc"]),
            "final test acc (%)": pct(group["final_test_acc"], res),
            "best epoch chosen on": _chosen_on(group),
            "test acc at holdout-chosen epoch (%)": _val_chosen_cell(group, res),
            "best test acc, test-selected (%)": pct(group["best_test_acc"], res),
            "best epoch": epochs_cell(group["best_epoch"]),
            "epochs run": counts(group["epochs_completed"]),
        },
    )
    ref = references.REPRODUCTION
    tiny = dataset_family(counted["dataset"]) == TINY_IMAGENET
    if tiny:
        wide.loc[len(wide)] = {
            **dict.fromkeys(wide.columns, DASH),
            "model": f"*reference: {ref.model}*",
            "status": "*reference (not an archbench run)*",
            "final train acc (%)": f"{ref.train_acc:.2f}",
            "final test acc (%)": f"{ref.test_acc:.2f}",
        }
    published = pd.DataFrame(map(dataclasses.asdict, references.PUBLISHED))
    published = published.rename(columns={"model": "archbench model", "label": "as published"})
    first = ["model", "n", "status", "final train acc (%)", "final test acc (%)"]
    notes = [
        "n: seeds behind each row. Which split chose what: final train and test accuracy are those of the last "
        "epoch, fixed before training, so nothing was selected on any split: they are unbiased estimates. "
        '"test acc at holdout-chosen epoch" is the test accuracy of the epoch with the highest accuracy on the '
        "holdout split of the training images: chosen without the test set, so also unbiased. "
        '"best test acc, test-selected" is the highest test accuracy of any epoch: that epoch was picked by '
        "looking at the test set, so it is optimistic and not an estimate of accuracy on new data. Runs "
        'without a holdout split chose their best epoch ("best epoch") on the test set.',
    ]
    if tiny:
        notes += [
            f"The reference row gives the numbers reported by {ref.source} ({ref.protocol}): they are not an "
            "archbench result.",
            "Published references under other protocols (for orientation only; not archbench results, and not "
            "the protocol above):",
            md(published),
        ]
    tables = [md(wide[first]), md(wide[["model", *[c for c in wide.columns if c not in first]]])]
    return "\n\n".join(tables + notes)


def _reached(group: pd.DataFrame, t: float, key: str = "epochs_to_threshold") -> list:
    return [e.get(t) for e in group[key] if e.get(t) is not None]


def _threshold_cell(group: pd.DataFrame, t: float) -> str:
    """Mean ± interval over the seeds when all reached `t`; else ∞ (a seed that never reached it takes
    infinite time) with reached/total."""
    reached = _reached(group, t)
    return epochs_cell(reached) if len(reached) == len(group) else never_cell(len(reached), len(group))


def _device_hours(group: pd.DataFrame, t: float) -> list[float]:
    return [
        s * w / 3600
        for s, w in zip((e.get(t) for e in group["seconds_to_threshold"]), group["world_size"])
        if s is not None
    ]


def _time_to_result(counted: pd.DataFrame, t: float) -> pd.DataFrame:
    def row(_, group: pd.DataFrame) -> dict:
        reached = _reached(group, t)
        every = len(reached) == len(group)
        never = never_cell(len(reached), len(group))
        return {
            "threshold": threshold_label(t),
            "seeds reached": f"{len(reached)}/{len(group)}",
            "epochs": _threshold_cell(group, t),
            "training seconds": ci(_reached(group, t, "seconds_to_threshold"), ".1f") if every else never,
            "device-hours": ci(_device_hours(group, t), ".3g") if every else never,
            "images": ci(_reached(group, t, "images_to_threshold"), ",.0f") if every else never,
            "device": "; ".join(sorted({f"{r.device_name} x{r.world_size}" for r in group.itertuples()})),
        }

    return per_label(counted, row)


def convergence_section(study: Study) -> str:
    counted = study.chosen  # every chosen run: a diverged seed counts as never reaching a threshold
    thresholds = thresholds_of(counted)
    table = per_label(
        counted,
        lambda _, group: {
            "n": str(len(group)),
            "epochs run": counts(group["epochs_completed"]),
            **{f"epochs to {threshold_label(t)}": _threshold_cell(group, t) for t in thresholds},
        },
    )
    claim = references.CONVERGENCE
    return "\n\n".join(
        [
            md(table),
            "Epochs until the test accuracy first reaches each threshold, over every chosen seed (diverged ones "
            "included): mean ± 95% interval when every seed reached it; ∞ (reached/total) when one did not "
            "(AlgoPerf counts a run that never reaches the target as infinite time; no mean of the others is given).",
            "Time to result at the main threshold (after AlgoPerf: the training cost of reaching it; evaluation "
            "and compilation excluded): training seconds until the epoch that first reached it, device-hours = "
            "those seconds x processes / 3600 (GPU-hours on GPU runs; the device column says which hardware), and "
            "the training images seen by then; mean ± 95% interval when every seed reached it, else ∞ (reached/total):",
            md(pd.DataFrame() if study.main_threshold is None else _time_to_result(counted, study.main_threshold)),
            f'> Reference claim, from {claim.source}: "{claim.quote}". It does not say which accuracy counts '
            "as converged, so its epochs are not directly comparable to a threshold column.\n>\n"
            "> He et al. 2016 (§4.1, plain-18 against ResNet-18 on ImageNet): "
            f'"{references.HE_2016_CONVERGENCE_QUOTE}".',
        ]
    )


def _by_bins(bins: pd.DataFrame, windows: list[tuple[str, str]], fmt: str) -> pd.DataFrame:
    """Per label and window (column, name): per depth bin, the mean over seeds of each run's mean over the
    bin's layers, with its t half-width; n once per row, and in a cell only where fewer seeds have a value."""
    headers = [f"{100 * b // DEPTH_BINS}-{100 * (b + 1) // DEPTH_BINS}% depth" for b in range(DEPTH_BINS)]
    rows = []
    for label, g in bins.groupby("label", sort=True):
        seeds = g["run_id"].nunique()
        for name, title in windows:
            row = {"model": label, "measured at": title, "weight layers": counts(g["layers"]), "n": str(seeds)}
            rows.append(row | {h: ci(g.loc[g["bin"] == b, name], fmt, seeds=seeds) for b, h in enumerate(headers)})
    return pd.DataFrame(rows)


def _size_rows(per_run: pd.DataFrame, window: str) -> pd.DataFrame:
    def row(_, g: pd.DataFrame) -> dict:
        cells = {"n": str(len(g)), "first layer": listing(g["first_layer"]), "last layer": listing(g["last_layer"])}
        for key, title in ((STEP0, "step 0"), (EARLY, window)):
            for end in ("first", "last"):
                cells[f"{end}, {title}"] = ci(g[f"{end}_{column('grad_to_weight', key)}"], ".3g")
            cells[f"first / last, {title}"] = geometric_ci(g[f"ratio_{key}"], ".3g")
        return cells

    return per_label(per_run, row)


def _other_size_rows(per_run: pd.DataFrame) -> pd.DataFrame:
    return per_label(
        per_run,
        lambda _, g: {
            f"{SYMBOLS[measure]} {end}": ci(g[f"{end}_{column(measure, EARLY)}"], ".3g")
            for measure in SIZES[1:]
            for end in ("first", "last")
        },
    )


def _cosine_rows(per_run: pd.DataFrame) -> pd.DataFrame:
    return per_label(
        per_run,
        lambda _, g: {
            "n": str(len(g)),
            "first layer": listing(g["first_layer"]),
            "first-layer cosine": ci(g[f"first_{column(COSINE, EARLY)}"], ".3f"),
            "last layer": listing(g["last_layer"]),
            "last-layer cosine": ci(g[f"last_{column(COSINE, EARLY)}"], ".3f"),
        },
    )


def _zero_at_start(by_depth: pd.DataFrame) -> list[str]:
    """A note for the layers whose gradient is exactly zero at step 0, if any."""
    zero = by_depth[by_depth[column("grad_to_weight", STEP0)] == 0]
    if zero.empty:
        return []
    counts_text = join(f"{label} ({len(g)})" for label, g in zero.groupby("label", sort=True))
    return [
        f"Layers with no gradient at all at step 0: {counts_text} (a residual block whose last BN starts with "
        "γ = 0, for one, passes no gradient into its convolutions until the first update); the log-scale "
        "figure leaves these zeros out."
    ]


def early_training_section(study: Study) -> str:
    counted, grads = study.counted, study.gradients
    if grads.per_run.empty:
        return "No gradient norms were recorded (`gradnorms.csv` empty or absent in every counted run)."
    window = early_window(grads.steps)
    g2w = "grad_to_weight"
    parts = [
        "Gradient size, scale-free: ‖g‖/‖w‖ per weight tensor (the gradient's L2 norm over the weight's, the "
        "relative update scale LARS uses), which compares layers of different sizes where the raw ‖g‖ does "
        f'not. Step 0 is the gradient at initialisation, before any update; "{window}" is the mean over those '
        "optimiser steps, the same for every model, whatever number of steps a run recorded (the claims use "
        "these same steps). First and last: the first and the last weight layer in forward order; first / last "
        "is computed per run, then its geometric mean is taken over seeds (10 to the mean log10, the quantity "
        "the claims test) ×/÷ the factor of its 95% interval. Well below 1: the first layer's relative "
        "gradient is smaller than the last's (towards vanishing); well above 1: larger (towards exploding); "
        "near 1: about as large.",
        md(_size_rows(grads.per_run, window)),
        f"‖g‖/‖w‖ by depth: each model's weight layers, in forward order, split into {DEPTH_BINS} groups of "
        "(nearly) equal count; per run, each layer is averaged over the steps and then over the layers of its "
        "group; each cell is the mean of that over the n seeds ± the half-width of its 95% t interval (n=1: "
        "the value alone, no interval).",
        md(_by_bins(grads.bins, [(column(g2w, STEP0), "step 0"), (column(g2w, EARLY), window)], ".2e")),
        *_zero_at_start(grads.by_depth),
        f"Other size measures over {window} (shown for reference; no claim rests on them): ‖g‖/√n is the "
        "gradient's root mean square over the layer's n weights; ‖g‖ is the raw norm, which grows with the "
        "layer's size.",
        md(_other_size_rows(grads.per_run)),
        f"Gradient noise: the cosine between consecutive steps' gradients of a layer, mean over {window} (1: "
        "the gradient keeps its direction from step to step; near 0: it changes direction like noise). "
        f"{references.BALDUZZI_2017} find that in plain nets gradients decorrelate towards white noise with "
        "depth; skip connections slow this. The step-to-step cosine is a proxy for that: it also moves with "
        "the minibatch and with the weights' update.",
        md(_cosine_rows(grads.per_run)),
        f"Cosine by depth (mean over {window}, each fifth of the layers and the interval over the n seeds as above):",
        md(_by_bins(grads.bins, [(column(COSINE, EARLY), window)], ".3f")),
    ]
    missing = sorted(set(counted["label"]) - set(grads.per_run["label"]))
    if missing:
        parts.append(f"No gradient norms recorded for {join(missing)}.")
    return "\n\n".join(parts)


def figures_section(study: Study) -> str:
    figures, window = study.figures, early_window(study.gradients.steps)
    return "\n\n".join(
        [
            f"![Test accuracy and train loss per epoch, mean over seeds with 95% bands, one row per arm]"
            f"({figures.curves})",
            f"![Final test accuracy against parameters, GFLOPs and training seconds, with the Pareto front]"
            f"({figures.accuracy_cost})",
            f"![Performance profile: fraction of runs within τ x the best time to the main threshold]"
            f"({figures.profile})",
            f"![‖g‖/‖w‖ against depth at step 0 and over {window}, log scale]({figures.gradients})",
            f"![Step-to-step gradient cosine against depth over {window}]({figures.cosines})",
        ]
    )


def run_records_section(study: Study) -> str:
    runs = study.runs
    chosen = runs[runs["selected"]]
    used = pd.DataFrame(
        {
            "model": chosen["label"],
            "seed": chosen["seed"].astype(str),
            "run id": chosen["run_id"],
            "status": chosen["status"],
            "epochs": chosen["epochs_completed"].astype(str),
            "data": [
                ("synthetic " if s else "") + str(f)[:12] for s, f in zip(chosen["synthetic"], chosen["fingerprint"])
            ],
            "device": chosen["device"],
            "started": chosen["started_at"],
        }
    )
    parts = ["Runs behind the numbers above:", md(used)]
    bad = runs[runs["status"] != "completed"]
    if bad.empty:
        parts.append("Runs that did not complete: none.")
    else:
        parts += [
            "Runs that did not complete (diverged, or interrupted: stopped before finishing, or still running):",
            md(
                pd.DataFrame(
                    {
                        "model": bad["label"],
                        "seed": bad["seed"].astype(str),
                        "run id": bad["run_id"],
                        "status": bad["status"],
                        "epochs completed": bad["epochs_completed"].astype(str),
                        "diverged at step": bad["diverged_at_step"].map(_whole),
                        "non-finite in epoch": bad["diverged_at_epoch"].map(_whole),
                        "started": bad["started_at"],
                        "in the tables": [
                            "yes (no completed run for this seed)" if s else f"no (run {b} of this seed completed)"
                            for s, b in zip(bad["selected"], bad["superseded_by"])
                        ],
                    }
                )
            ),
        ]
    older = runs[(runs["status"] == "completed") & ~runs["selected"]]
    if len(older):
        parts.append(
            "Older completed runs superseded by a newer completed run of the same model and seed: "
            + ", ".join(f"{m}/{r}" for m, r in zip(older["model"], older["run_id"]))
            + "."
        )
    if study.damaged:
        parts.append(
            "Damaged runs, left out of every table (their records cannot be read or disagree: rerun or delete them):\n"
            + "\n".join(f"- {line}" for line in study.damaged)
        )
    return "\n\n".join(parts)
