"""The registry folder and the catalogue ``archbench list`` shows of it, without importing torch.

Counting an entry means building and tracing its model, tens of seconds for the shipped registry, so each
row is cached in ``$ARCHBENCH_CACHE/catalogue/`` under the sha256 of everything a count depends on (the
TOML file, `ARCHBENCH_CODE`, `COUNTING_PACKAGES`' versions and a ``python`` entry's `python_code`;
docs/extending.md). When every row is cached, torch is not imported; a changed file is checked in full.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import math
import os
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from archbench.errors import ArchbenchError

log = logging.getLogger("archbench")
ENV_VAR = "ARCHBENCH_REGISTRY"
CHECKOUT_REGISTRY = Path(__file__).resolve().parent.parent / "registry"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# What a row holds beyond the entry's name: the cached part.
COUNTED = ("description", "parameters", "gflops_224", "depth", "residual", "batch_norm", "uncounted_ops")
# The code and packages whose change can change a count.
ARCHBENCH_CODE = ("models/*.py", "registry.py", "flops.py", "catalogue.py")
COUNTING_PACKAGES = ("torch", "torchvision", "fvcore")


def resolve_registry_dir(path: str | os.PathLike | None = None) -> Path:
    """The registry folder: ``path`` > $ARCHBENCH_REGISTRY > the checkout's registry/ > the installed copy."""
    given = path if path is not None else os.environ.get(ENV_VAR) or None
    if given is not None:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise ArchbenchError(f"registry folder {folder} does not exist or is not a folder")
        return folder
    for folder in (CHECKOUT_REGISTRY, installed_registry()):
        if folder.is_dir():
            return folder
    raise ArchbenchError(
        f"no model registry found (looked in {CHECKOUT_REGISTRY} and {installed_registry()}); "
        f"pass --registry DIR or set ${ENV_VAR}"
    )


def installed_registry() -> Path:
    """The copy of registry/ an installed package carries (pyproject maps it to archbench.registry_files)."""
    return Path(str(importlib.resources.files("archbench").joinpath("registry_files")))


def registry_files(folder: Path) -> list[Path]:
    """The folder's *.toml files, sorted; an ArchbenchError for a bad name, a clash of names or no file."""
    files: list[Path] = []
    for file in sorted(folder.glob("*.toml")):
        if not NAME_PATTERN.fullmatch(file.stem):
            raise ArchbenchError(f"{file}: the model name (file stem) may hold only letters, digits, '_', '.', '-'")
        clash = next((f for f in files if f.stem.lower() == file.stem.lower()), None)
        if clash is not None:
            raise ArchbenchError(f"{file}: name '{file.stem}' clashes with {clash} (names ignore case)")
        files.append(file)
    if not files:
        raise ArchbenchError(f"registry folder {folder} holds no *.toml model files")
    return files


def catalogue(registry: str | os.PathLike | None = None) -> list[dict]:
    """One row per entry: its name and `COUNTED` (uncounted_ops: the ops fvcore left out of gflops_224, which
    is NaN for a model that cannot run on 224x224 input). Rows missing from the cache are counted and cached."""
    folder = resolve_registry_dir(registry)
    files = registry_files(folder)
    code = [_archbench_code(), *_versions()]
    keys = {file.stem: cache_key(file, code) for file in files}
    rows = {name: _read_cached(key) for name, key in keys.items()}
    missing = [name for name, row in rows.items() if row is None]
    if missing:
        from archbench.registry import load_registry

        entries = load_registry(folder)
        for name in missing:
            rows[name] = _count(entries[name])
            if keys[name] is not None:
                _write_cached(keys[name], rows[name])
    return [{"name": file.stem, **{key: rows[file.stem][key] for key in COUNTED}} for file in files]


def cache_key(file: Path, code: list[bytes]) -> str | None:
    """The sha256 that names a TOML file's cached row, given archbench's ``code`` and the counting packages'
    versions; None if it cannot be made (such an entry is read in full, which reports what is wrong)."""
    try:
        raw, data = read_toml(file)
        target = data.get("args", {}).get("target") if data.get("builder") == "python" else None
        parts = [raw, *code, *(python_code(target, file.parent) if target else [])]
    except (OSError, ValueError, ArchbenchError, AttributeError, ImportError):
        return None
    return _sha256(parts)


def read_toml(file: Path) -> tuple[bytes, dict]:
    """A TOML file's bytes and its table; an ArchbenchError naming the file where it is not valid TOML."""
    raw = file.read_bytes()
    try:
        return raw, tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ArchbenchError(f"{file}: not valid TOML: {e}") from None


def cache_folder() -> Path:
    from archbench.data.files import cache_dir

    return cache_dir() / "catalogue"


def _count(entry) -> dict:
    from archbench.flops import count_parameters, fvcore_count
    from archbench.models.builders import describe

    model = entry.build_for_counting()
    try:
        gflops, uncounted = fvcore_count(model, 224)
    except Exception as e:  # e.g. a network with a fixed 32x32 input
        log.warning("%s cannot run on 224x224 input, so its FLOPs are not counted: %s", entry.name, describe(e))
        gflops, uncounted = math.nan, []
    return {
        "description": entry.description,
        "parameters": count_parameters(model),
        "gflops_224": gflops,
        "depth": entry.depth,
        "residual": entry.residual,
        "batch_norm": entry.batch_norm,
        "uncounted_ops": uncounted,
    }


def _read_cached(key: str | None) -> dict | None:
    if key is None:
        return None
    try:
        row = json.loads((cache_folder() / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # not cached yet, or unreadable: counted again
        return None
    if not isinstance(row, dict) or set(row) != set(COUNTED):
        return None
    return {**row, "gflops_224": math.nan if row["gflops_224"] is None else row["gflops_224"]}


def _write_cached(key: str, row: dict) -> None:
    from archbench.runs import write_json

    plain = {**row, "gflops_224": None if math.isnan(row["gflops_224"]) else row["gflops_224"]}
    try:
        write_json(cache_folder() / f"{key}.json", plain)
    except ArchbenchError as e:  # a read-only cache costs speed, not the listing
        log.warning("the catalogue is not cached, so the next `archbench list` counts again: %s", e.message)


def _archbench_code() -> bytes:
    root = Path(__file__).resolve().parent
    files = sorted({f for pattern in ARCHBENCH_CODE for f in root.glob(pattern)})
    return b"".join(hashlib.sha256(f.read_bytes()).digest() for f in files)


def _sha256(parts: list[bytes]) -> str:
    """One sha256 of several byte strings (of each one's sha256, so that no two lists share it)."""
    return hashlib.sha256(b"".join(hashlib.sha256(part).digest() for part in parts)).hexdigest()


def _versions() -> list[bytes]:
    return [f"{package} {_version(package)}".encode() for package in COUNTING_PACKAGES]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def python_code_sha256(target: str, folder: Path) -> str:
    """The sha256 of a python entry's code (`python_code`): the ``source_sha256`` a run records."""
    return _sha256(python_code(target, folder))


def python_code(target: str, folder: Path) -> list[bytes]:
    """A python entry's code: a target file and every .py file beside it, by name (it may import them), or
    the file of a target module (found without running it, though its parent packages are imported)."""
    where = target.rpartition(":")[0]
    if where.endswith(".py"):
        beside = (folder / where).parent
        return [(folder / where).read_bytes()] + [f.name.encode() + f.read_bytes() for f in sorted(beside.glob("*.py"))]
    try:
        spec = importlib.util.find_spec(where)
    except Exception as e:  # a parent package that fails to import: the full read reports it
        raise ImportError(where) from e
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ImportError(where)
    return [Path(spec.origin).read_bytes()]
