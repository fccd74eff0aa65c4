"""The code passes the project's lint rules (pyproject [tool.ruff])."""

import subprocess
import sys

from tests.daemon import REPO


def test_ruff_is_clean():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "coop", "tests", "bench"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
