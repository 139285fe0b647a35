"""The tuning file: per model, the learning rate chosen on the validation split, and the whole grid behind it.

`archbench tune` writes one per study (`write_tuning`: JSON, indented, sorted keys); `archbench run --lr tuned`
reads it (`read_tuning`), and refuses it where its rates do not carry over: other data, a changed registry entry
or code, a recipe that differs in a field that changes what a rate means. A file is read only if every field
its readers use has its JSON type (`TuningFile`). The rule and the checks are in docs/tuning.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

from archbench import runs
from archbench.annotations import json_problem
from archbench.config import RATE_FIELDS, TunedRate, upgrade_config
from archbench.errors import ArchbenchError

FORMAT_VERSION = 1
CHOSEN, TIE, ALL_DIVERGED = "chosen", "tie", "all diverged"
# What every model of one tuning file shares: RATE_FIELDS and the tuning budget (epochs per trial).
STUDY_FIELDS = (*RATE_FIELDS, "epochs")
RULE = (
    "highest validation accuracy (mean over seeds), ties broken by lower validation loss; diverged rates score nothing"
)


# The fields the readers of a tuning file rely on, with their JSON types (`X | None`: an older file may lack it;
# float: any number).
class GridRate(TypedDict):
    lr: float


class ModelChoice(TypedDict):
    status: Literal[CHOSEN, TIE, ALL_DIVERGED]
    lr: float | None
    tied: list[float]
    grid: list[GridRate]
    global_batch_size: int | None
    registry_toml_sha256: list[str] | None
    source_sha256: list[str] | None


class DataRecord(TypedDict):
    fingerprint: str


class ValidationRecord(TypedDict):
    per_class: int


class TuningFile(TypedDict):
    data: DataRecord
    validation: ValidationRecord
    epochs: int
    global_batch_size: int
    recipe: dict | None
    trials: list[dict] | None
    models: dict[str, ModelChoice]


# What a tuned rate belongs to besides the recipe: the hashes of the model's registry entry, as the tuning file
# and a run's entry identity name them, and what each is of.
ENTRY_HASHES = (
    ("registry_toml_sha256", "toml_sha256", "registry entry", "TOML"),
    ("source_sha256", "source_sha256", "code", "source"),
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
    """One model's grid: the score of every rate (mean over its seeds) and the choice, with its status: the
    highest validation accuracy, ties broken by the lower validation loss; a rate with a diverged seed scores
    nothing, and an exact tie chooses nothing."""
    grid = []
    for lr in sorted({t.lr for t in trials}):
        tried = [t for t in trials if t.lr == lr]
        done = [t for t in tried if t.status == "completed" and t.val_acc is not None]
        diverged = len(done) < len(tried)
        scores = {
            key: None if diverged else sum(getattr(t, key) for t in done) / len(done)
            for key in ("val_acc", "val_loss", "test_acc")
        }
        grid.append({"lr": lr, "seeds": len(tried), "diverged": diverged, **scores})
    scored = [g for g in grid if g["val_acc"] is not None and math.isfinite(g["val_loss"])]
    if not scored:
        return {"status": ALL_DIVERGED, "lr": None, "tied": [], "grid": grid}
    best = max(scored, key=lambda g: (g["val_acc"], -g["val_loss"]))
    tied = [g["lr"] for g in scored if (g["val_acc"], g["val_loss"]) == (best["val_acc"], best["val_loss"])]
    if len(tied) > 1:
        return {"status": TIE, "lr": None, "tied": tied, "grid": grid}
    return {"status": CHOSEN, "lr": best["lr"], "tied": [], "grid": grid}


def grid_edge(choice: dict) -> tuple[str, list[float]] | None:
    """Which edge of its grid ("top", "bottom") a model's chosen rate is at, where the best may lie beyond it (as
    DeepOBS and AlgoPerf warn), and the next two rates past it at the grid's step there; else None."""
    rates = sorted(g["lr"] for g in choice["grid"])
    if choice["status"] != CHOSEN or len(rates) < 2 or choice["lr"] not in (rates[0], rates[-1]):
        return None
    if choice["lr"] == rates[-1]:
        step = rates[-1] / rates[-2]
        return "top", [float(f"{rates[-1] * step**k:.3g}") for k in (1, 2)]
    step = rates[1] / rates[0]
    return "bottom", [float(f"{rates[0] / step**k:.3g}") for k in (1, 2)]


def recipe_record(config: dict) -> dict:
    """The tuning file's `recipe` from a trial's config.json (of any version): every recipe field but the rate."""
    config = upgrade_config(config)
    recipe = {name: value for name, value in config["recipe"].items() if name not in ("lr", "lr_source")}
    return {"preset": config["preset"], "image_size": config["image_size"], **recipe, "precision": config["precision"]}


def recorded_recipe(content: dict) -> dict | None:
    """A tuning file's `recipe` in today's form, or None when the file records none."""
    recorded = content.get("recipe")
    return upgrade_config({"recipe": recorded})["recipe"] if isinstance(recorded, dict) else None


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
    content; the models of `keep` (the file already at `path`) that `trials` do not tune stay in it."""
    if not trials:
        raise ArchbenchError(f"no finished tuning trial to write into {path}; rerun `archbench tune`.")
    recipe = recipe_record(configs[0])
    recipe["precision"] = ", ".join(sorted({c["precision"] for c in configs}))
    provenance = {  # with the code that trained the trials
        **provenance,
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
            **{key: sorted({c["entry"].get(field) or "" for c in own}) for key, field, _, _ in ENTRY_HASHES},
            "provenance": provenance,
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
        "provenance": provenance,
    }
    runs.write_json(path, content)
    return content


def load_tuning(path: Path, remedy: str = "rerun `archbench tune`") -> dict:
    """A tuning file's content, every field its readers use checked; one line naming the file when it cannot be."""
    try:
        content = runs.read_json(path)
    except FileNotFoundError:
        raise ArchbenchError(
            f"--lr tuned needs a tuning file, and {path} does not exist: run `archbench tune "
            "MODEL...` first, or name the file with --tuning FILE."
        ) from None
    except (OSError, ValueError) as e:
        raise ArchbenchError(f"cannot read the tuning file {path} ({e}); {remedy}.") from None
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        raise ArchbenchError(f"{path} is not an archbench tuning file (format {FORMAT_VERSION}); {remedy}.")
    if problem := json_problem(content, TuningFile):
        raise ArchbenchError(f"the tuning file {path} is damaged: {problem}; {remedy}.")
    return content


def existing_tuning(path: Path, *, data: dict, validation: dict, recipe: dict) -> dict | None:
    """The tuning file already at `path`, whose other models a new tuning keeps (None: there is none); one made on
    other data, split or recipe (`STUDY_FIELDS`) is refused, its rates and the new ones being incomparable."""
    path = Path(path)
    if not path.exists():
        return None
    other_file = "write this tuning to another file with --tuning OTHER_FILE"
    content = load_tuning(path, remedy=f"move it away, or {other_file}")
    recorded = recorded_recipe(content)
    if content["data"]["fingerprint"] != data["fingerprint"]:
        problem = "other data"
    elif content.get("validation") != validation:
        problem = "another validation split"
    elif recorded is None:
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
        tried = {g["lr"] for g in choice["grid"]}
        lr = choice["lr"]
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0 and lr in tried):
            raise ArchbenchError(
                f"the tuning file {self.path} gives {model} the rate {lr}, which is not a positive rate it "
                "tried: the file is damaged; rerun `archbench tune`, or pass --lr."
            )
        grid = len(choice["grid"])
        source = (
            f"{self.path.name}: best of {grid} rates on {self.content['validation']['per_class']} validation "
            f"images per class, {self.content['epochs']} epochs"
        )
        batch = choice.get("global_batch_size", self.content["global_batch_size"])
        return TunedRate(lr=float(lr), global_batch=int(batch), source=source)

    def check_entry(self, model: str, toml_sha256: str, source_sha256: str | None = None) -> None:
        """Refuse a model whose registry TOML or (a python entry) code is not the one its rate was tuned with."""
        for (key, _, what, label), now in zip(ENTRY_HASHES, (toml_sha256, source_sha256)):
            if now is None:  # a builder without code of its own
                continue
            recorded = [h for h in self.content["models"][model].get(key) or [] if h]
            if not recorded:
                raise ArchbenchError(
                    f"the tuning file {self.path} does not record which {what} {model} was tuned with (an "
                    "older file): rerun `archbench tune` with --tuning NEW_FILE, or pass --lr."
                )
            if recorded != [now]:
                raise ArchbenchError(
                    f"{model}'s {what} has changed since {self.path} was tuned ({label} sha256 "
                    f"{', '.join(h[:12] for h in recorded)} then, {now[:12]} now): tune it again, or pass --lr."
                )

    def check_recipe(self, config) -> None:
        """Refuse a run (a `RunConfig`) whose registry entry has changed since it was tuned, or whose recipe
        differs from the trials' in a `RATE_FIELDS` field (its batch and precision may differ)."""
        self.check_entry(config.model, config.entry.get("toml_sha256"), config.entry.get("source_sha256"))
        recorded = recorded_recipe(self.content)
        if recorded is None:
            raise ArchbenchError(
                f"the tuning file {self.path} does not record the recipe its rates were tuned with (an older "
                "file): rerun `archbench tune` with --tuning NEW_FILE (finished trials are not run again)."
            )
        if differ := _differences(recorded, recipe_record(config.to_json()), RATE_FIELDS, "this run:"):
            raise ArchbenchError(
                f"the rates in {self.path} were tuned with {differ}: they do not carry over to this run; "
                "tune with this run's recipe, or pass --lr."
            )


def read_tuning(path: Path, data) -> Tuning:
    """The tuning file at `path`, which must have been made on `data`."""
    path = Path(path)
    content = load_tuning(path)
    fingerprint = content["data"]["fingerprint"]
    if fingerprint != data.fingerprint:
        raise ArchbenchError(
            f"the tuning file {path} was made on other data (fingerprint {str(fingerprint)[:12]}, "
            f"this data {data.fingerprint[:12]}): tune on this data first."
        )
    return Tuning(path, content)
