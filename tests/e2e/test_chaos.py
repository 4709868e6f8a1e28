"""The chaos run's short mode: mixed jobs, failures, duplicates and worker kills end clean."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(420)  # about 20 s on an idle machine; far more when the cores are shared
def test_a_short_chaos_run_ends_clean(server_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--jobs", "150", "--database-url", server_url],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "chaos run: clean" in proc.stdout
    assert '"jobs": 150' in proc.stdout
