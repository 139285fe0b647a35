"""The mutation check's list stays current: every planted bug still applies to the code as it is (a
refactor that moves a line leaves a stale entry, which would silently stop checking that promise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "mutation_check.py"


def test_every_mutation_still_applies():
    done = subprocess.run([sys.executable, TOOL, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    applied, listed = last.split()[0].split("/")
    assert applied == listed and int(listed) >= 50, last
