"""The code stays lint-clean and type-checks: run as part of the suite, so CI keeps it so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "", "MYPY_CACHE_DIR": str(tmp_path / "mypy"),
                               "RUFF_CACHE_DIR": str(tmp_path / "ruff")})


def test_ruff_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("ruff", reason="ruff comes with the [test] extra")
    result = run("ruff", "check", "neuralsync", "tests", "bench", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy comes with the [test] extra")
    result = run("mypy", "neuralsync", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
