"""Run records on disk: one folder per run, `runs/<model>/<run_id>/`.

A run folder holds config.json, metrics.csv, gradnorms.csv and summary.json (tracked by git) and
checkpoint.pt (never tracked). Every file is written to a temporary name and moved into place with
`os.replace`, so a crash leaves either the old file or the new one, never half of one.

Resuming: rerunning the same command finds the unfinished run whose config hash matches and continues
it from its checkpoint. Each process holds an exclusive lock on the run it writes, so two processes
started at once never write to the same folder: the second one starts a run of its own.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archbench.errors import ArchbenchError

CHECKPOINT = "checkpoint.pt"
UNFINISHED = (None, "interrupted")


def config_hash(config: dict) -> str:
    """A stable hash of everything that determines a run's numbers (not where or when it ran, nor the
    paths it read: the data fingerprint and the entry's builder and arguments identify those)."""
    keyed = {k: v for k, v in config.items() if k not in ("run_id", "provenance", "config_hash")}
    keyed["data"] = {k: v for k, v in keyed.get("data", {}).items() if k not in ("root", "spec")}
    keyed["entry"] = {k: v for k, v in keyed.get("entry", {}).items() if k != "path"}
    blob = json.dumps(keyed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise ArchbenchError(f"cannot read the checkpoint {path} ({type(e).__name__}); "
                             "delete it or rerun with --fresh to start the run over.") from None


@dataclass
class Run:
    """A run folder opened by `open_run`, locked by this process until `close()`.

    `status` is the recorded status of a run found already finished ("completed" or "diverged"):
    rerunning the same command skips it rather than training it again.
    """

    path: Path
    run_id: str
    status: str | None = None
    _lock_fd: int | None = None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _try_lock(run_dir: Path) -> int | None:
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _status(run_dir: Path) -> str | None:
    try:
        return read_json(run_dir / "summary.json").get("status")
    except (OSError, ValueError):
        return None


def open_run(out: Path, config: dict, fresh: bool = False) -> Run:
    """The run this config belongs to: a finished one (to skip), an unfinished one (to resume), or new.

    With `fresh`, always a new one. A new run's folder gets config.json (with `run_id` and
    `config_hash`) before this returns.
    """
    model_dir = out / config["model"]
    model_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(config)
    if not fresh:
        matching = []
        for run_dir in sorted(model_dir.iterdir(), reverse=True):  # newest first: ids start with the time
            try:
                if read_json(run_dir / "config.json").get("config_hash") == digest:
                    matching.append(run_dir)
            except (OSError, ValueError):
                continue
        for run_dir in matching:
            if _status(run_dir) not in UNFINISHED:
                return Run(run_dir, run_dir.name, status=_status(run_dir))
        for run_dir in matching:
            fd = _try_lock(run_dir)
            if fd is None:  # another process is running it right now
                continue
            if _status(run_dir) not in UNFINISHED:  # it finished while we looked
                os.close(fd)
                return Run(run_dir, run_dir.name, status=_status(run_dir))
            return Run(run_dir, run_dir.name, _lock_fd=fd)
    while True:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-s{config['seed']}-{digest[:6]}-{secrets.token_hex(2)}"
        try:
            (model_dir / run_id).mkdir()
            break
        except FileExistsError:
            continue
    run_dir = model_dir / run_id
    fd = _try_lock(run_dir)
    write_json(run_dir / "config.json", {**config, "run_id": run_id, "config_hash": digest})
    return Run(run_dir, run_id, _lock_fd=fd)
