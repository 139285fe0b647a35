"""Where a result came from: versions, commit, hardware and time, recorded beside every run."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

import torch
import torchvision

import archbench


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_state(path: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout archbench runs from, or (None, None) outside one."""
    cwd = path or Path(archbench.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout

    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict:
    commit, dirty = git_state()
    return {
        "archbench_version": archbench.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "device_name": device_name(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_at": utc_now(),
    }
