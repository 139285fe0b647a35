"""The tuning file: per model, the learning rate chosen on the validation split, and the whole grid behind it.

`archbench tune` writes one per study (JSON, indented, sorted keys); `archbench run --lr tuned` reads it.
A rate is chosen per model as the one whose trials reach the highest validation accuracy (mean over
seeds), ties broken by the lower validation loss; trials that diverged score nothing. An exact tie, or a
model whose every trial diverged, is written down as such and no rate is chosen for it: `--lr tuned`
then says so rather than guess.

The file names what its rates are tied to: the data (its fingerprint), the validation split, the
trials' recipe (`recipe`: preset, image size, batch, epochs, momentum, weight decay, Nesterov,
schedule, warm-up, label smoothing, clipping, precision), each model's registry TOML hash and global
batch, and the code that trained the trials (git commit, dirty state, torch version). `--lr tuned`
refuses it on other data, and for a run whose recipe differs in a field that changes what a rate means
(`RATE_FIELDS`; a different batch is fine: the rate is scaled to it). A second `archbench tune` into the
same file keeps the models it does not tune, provided it runs on the same data, split and recipe
(`STUDY_FIELDS`: the tuning budget too); otherwise it is refused, so one file is one study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from archbench import runs
from archbench.config import TunedRate
from archbench.errors import ArchbenchError

FORMAT_VERSION = 1
CHOSEN, TIE, ALL_DIVERGED = "chosen", "tie", "all diverged"
# The recipe fields a rate is only meaningful with: a run that differs in one cannot use the tuned rate.
RATE_FIELDS = (
    "image_size",
    "momentum",
    "weight_decay",
    "nesterov",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "clip_grad_norm",
)
# What every model of one tuning file shares: the above and the tuning budget (epochs per trial).
STUDY_FIELDS = (*RATE_FIELDS, "epochs")
RULE = (
    "highest validation accuracy (mean over seeds), ties broken by lower validation loss; diverged rates score nothing"
)


@dataclass(frozen=True)
class Trial:
    """One tuning run, as the tuning file lists it."""

    model: str
    lr: float
    seed: int
    run_id: str
    status: str
    val_acc: float | None  # at the epoch chosen on validation
    val_loss: float | None
    test_acc: float | None  # of that epoch; shown for the record, never used to choose


def choose(trials: list[Trial]) -> dict:
    """One model's grid: the score of every rate (mean over its seeds) and the choice, with its status."""
    by_lr: dict[float, list[Trial]] = {}
    for trial in trials:
        by_lr.setdefault(trial.lr, []).append(trial)
    grid = []
    for lr in sorted(by_lr):
        done = [t for t in by_lr[lr] if t.status == "completed" and t.val_acc is not None]
        diverged = len(done) < len(by_lr[lr])
        grid.append(
            {
                "lr": lr,
                "seeds": len(by_lr[lr]),
                "diverged": diverged,
                "val_acc": None if diverged else sum(t.val_acc for t in done) / len(done),
                "val_loss": None if diverged else sum(t.val_loss for t in done) / len(done),
                "test_acc": None if diverged else sum(t.test_acc for t in done) / len(done),
            }
        )
    scored = [g for g in grid if g["val_acc"] is not None and math.isfinite(g["val_loss"])]
    if not scored:
        return {"status": ALL_DIVERGED, "lr": None, "tied": [], "grid": grid}
    best = max(scored, key=lambda g: (g["val_acc"], -g["val_loss"]))
    tied = [g["lr"] for g in scored if (g["val_acc"], g["val_loss"]) == (best["val_acc"], best["val_loss"])]
    if len(tied) > 1:
        return {"status": TIE, "lr": None, "tied": tied, "grid": grid}
    return {"status": CHOSEN, "lr": best["lr"], "tied": [], "grid": grid}


def grid_edge(choice: dict) -> tuple[str, list[float]] | None:
    """Whether a model's chosen rate is the highest or lowest of its grid (where the best may lie beyond it,
    as DeepOBS and AlgoPerf warn), and the next two rates past that edge at the grid's own step there;
    None for a rate inside the grid, a grid of one rate, or no choice."""
    rates = sorted(g["lr"] for g in choice["grid"])
    if choice["status"] != CHOSEN or len(rates) < 2 or choice["lr"] not in (rates[0], rates[-1]):
        return None
    if choice["lr"] == rates[-1]:
        step = rates[-1] / rates[-2]
        return "top", [float(f"{rates[-1] * step**k:.3g}") for k in (1, 2)]
    step = rates[1] / rates[0]
    return "bottom", [float(f"{rates[0] / step**k:.3g}") for k in (1, 2)]


def recipe_record(config: dict) -> dict:
    """The recipe a trial ran with, from its config.json: what the tuning file records as `recipe`."""
    recipe = config["recipe"]
    return {
        "preset": config["preset"],
        "image_size": config["image_size"],
        "epochs": recipe["epochs"],
        "batch_size": recipe["batch_size"],
        "global_batch_size": recipe["global_batch_size"],
        **{name: recipe[name] for name in RATE_FIELDS if name != "image_size"},
        "precision": config["precision"],
    }


def _differences(recorded: dict, wanted: dict, fields: tuple[str, ...], now: str) -> str:
    """The fields of `fields` where `recorded` and `wanted` differ, in words ("" when none)."""
    return ", ".join(
        f"{name} {recorded.get(name)} ({now} {wanted[name]})" for name in fields if recorded.get(name) != wanted[name]
    )


def write_tuning(
    path: Path,
    *,
    trials: list[Trial],
    configs: list[dict],
    data: dict,
    validation: dict,
    provenance: dict,
    keep: dict | None = None,
) -> dict:
    """Write the tuning file for `trials` (`configs`: their config.json, in the same order) and return its
    content. `keep` is a tuning file already at `path` (see `existing_tuning`): its models that `trials` do
    not tune stay in the file, with their trials."""
    if not trials:
        raise ArchbenchError(f"no finished tuning trial to write into {path}; rerun `archbench tune`.")
    recipe = recipe_record(configs[0])
    recipe["precision"] = ", ".join(sorted({c["precision"] for c in configs}))
    code = {
        "git_commit": sorted({str(c["provenance"].get("git_commit")) for c in configs}),
        "git_dirty": any(c["provenance"].get("git_dirty") for c in configs),
        "torch": sorted({str(c["provenance"].get("torch")) for c in configs}),
    }
    models = {}
    for model in sorted({t.model for t in trials}):
        own = [c for t, c in zip(trials, configs) if t.model == model]
        models[model] = {
            **choose([t for t in trials if t.model == model]),
            "global_batch_size": own[0]["recipe"]["global_batch_size"],
            "registry_toml_sha256": sorted({c["entry"].get("toml_sha256") or "" for c in own}),
            "provenance": {**provenance, **code},
        }
    listed = [vars(t) for t in trials]
    if keep is not None:
        models = {**{m: c for m, c in keep["models"].items() if m not in models}, **models}
        listed += [t for t in keep.get("trials", []) if t["model"] not in {t.model for t in trials}]
    content = {
        "format_version": FORMAT_VERSION,
        "rule": RULE,
        "preset": recipe["preset"],
        "epochs": recipe["epochs"],
        "global_batch_size": recipe["global_batch_size"],
        "recipe": recipe,
        "data": data,
        "validation": validation,
        "models": models,
        "trials": sorted(listed, key=lambda t: (t["model"], t["lr"], t["seed"])),
        "provenance": {**provenance, **code},
    }
    runs.write_json(path, content)
    return content


def _load(path: Path, remedy: str = "rerun `archbench tune`") -> dict:
    try:
        content = runs.read_json(path)
    except FileNotFoundError:
        raise ArchbenchError(
            f"--lr tuned needs a tuning file, and {path} does not exist: run `archbench tune "
            "MODEL...` first, or name the file with --tuning FILE."
        ) from None
    except (OSError, ValueError) as e:
        raise ArchbenchError(f"cannot read the tuning file {path} ({e}); {remedy}.") from None
    if (
        not isinstance(content, dict)
        or content.get("format_version") != FORMAT_VERSION
        or not isinstance(content.get("models"), dict)
    ):
        raise ArchbenchError(f"{path} is not an archbench tuning file (format {FORMAT_VERSION}); {remedy}.")
    return content


def existing_tuning(path: Path, *, data: dict, validation: dict, recipe: dict) -> dict | None:
    """The tuning file already at `path`, whose other models a new tuning keeps, or None when there is none.
    One made on other data, another validation split or another recipe (`STUDY_FIELDS`) is refused: its
    rates and the new ones could not be compared."""
    path = Path(path)
    if not path.exists():
        return None
    other_file = "write this tuning to another file with --tuning OTHER_FILE"
    content = _load(path, remedy=f"move it away, or {other_file}")
    recorded = content.get("recipe")
    if content.get("data", {}).get("fingerprint") != data["fingerprint"]:
        problem = "other data"
    elif content.get("validation") != validation:
        problem = "another validation split"
    elif not isinstance(recorded, dict):
        problem = "a recipe it does not record (an older tuning file)"
    elif differ := _differences(recorded, recipe, STUDY_FIELDS, "this tuning:"):
        problem = f"another recipe ({differ})"
    else:
        return content
    raise ArchbenchError(f"the tuning file {path} was made on {problem}; {other_file}.")


@dataclass(frozen=True)
class Tuning:
    """A tuning file, read and checked against the data it is about to be used on."""

    path: Path
    content: dict

    def rate_for(self, model: str) -> TunedRate:
        choice = self.content["models"].get(model)
        if choice is None:
            raise ArchbenchError(
                f"the tuning file {self.path} has no rate for {model} (it tuned "
                f"{', '.join(sorted(self.content['models']))}): run `archbench tune {model}` first."
            )
        if choice["status"] == TIE:
            rates = " and ".join(f"{lr:g}" for lr in choice["tied"])
            raise ArchbenchError(
                f"the tuning file {self.path} has no single rate for {model}: {rates} tie on "
                "validation; tune with more epochs or seeds, or pass --lr."
            )
        if choice["status"] == ALL_DIVERGED:
            raise ArchbenchError(
                f"every rate tried for {model} in {self.path} diverged: tune a lower range (--lr), or pass --lr."
            )
        grid = len(choice["grid"])
        source = (
            f"{self.path.name}: best of {grid} rates on {self.content['validation']['per_class']} validation "
            f"images per class, {self.content['epochs']} epochs"
        )
        batch = choice.get("global_batch_size", self.content["global_batch_size"])
        return TunedRate(lr=float(choice["lr"]), global_batch=int(batch), source=source)

    def check_recipe(self, config) -> None:
        """Refuse a run (a `RunConfig`) whose recipe differs from the trials' in a field that changes what a
        rate means (`RATE_FIELDS`); its batch may differ (the rate is scaled), and so may its precision."""
        recorded = self.content.get("recipe")
        if not isinstance(recorded, dict):
            raise ArchbenchError(
                f"the tuning file {self.path} does not record the recipe its rates were tuned with (an older "
                "file): rerun `archbench tune` with --tuning NEW_FILE (finished trials are not run again)."
            )
        run = {"image_size": config.image_size, **{f: getattr(config.recipe, f) for f in RATE_FIELDS[1:]}}
        if differ := _differences(recorded, run, RATE_FIELDS, "this run:"):
            raise ArchbenchError(
                f"the rates in {self.path} were tuned with {differ}: they do not carry over to this run; "
                "tune with this run's recipe, or pass --lr."
            )


def read_tuning(path: Path, data) -> Tuning:
    """The tuning file at `path`, which must have been made on `data`."""
    path = Path(path)
    content = _load(path)
    fingerprint = content.get("data", {}).get("fingerprint")
    if fingerprint != data.fingerprint:
        raise ArchbenchError(
            f"the tuning file {path} was made on other data (fingerprint {str(fingerprint)[:12]}, "
            f"this data {data.fingerprint[:12]}): tune on this data first."
        )
    return Tuning(path, content)
