#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.11: each sets up what it needs in .venv.

python3 tasks.py explain [ARGS...]   the walkthrough (installs patchconv into .venv)
python3 tasks.py test [PYTEST ARGS]  ruff, mypy and the whole test suite (installs the oracles),
                                     then the algorithm tests without numba
python3 tasks.py bench [ARGS...]     the benchmark suite against the peers
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PY = BIN / "python"


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, env=env)


def _ensure_venv(extra: str | None) -> None:
    """Create .venv and install patchconv (with an extra); redo only when pyproject changes."""
    if not PY.exists():
        _run(sys.executable, "-m", "venv", VENV)
        _run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{extra or 'core'}-{key}"
    if stamp.exists():
        return
    target = f".[{extra}]" if extra else "."
    _run(PY, "-m", "pip", "install", "-q", "-e", target)
    stamp.touch()


def _ensure_chromium() -> None:
    """The web-page test drives Debian's Chromium; install it (as root) when missing."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("note: chromium is missing and cannot be installed here; its test will fail")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get", "update", "-qq", env=env)
    _run("apt-get", "install", "-y", "-qq", "chromium", env=env)


def explain(args: list[str]) -> int:
    _ensure_venv(None)
    return subprocess.call([str(BIN / "patchconv"), "explain", *args], cwd=ROOT)


def test(args: list[str]) -> int:
    _ensure_venv("test")
    _ensure_chromium()
    lint_paths = [p for p in ("src", "tests", "benchmarks", "tasks.py") if (ROOT / p).exists()]
    _run(BIN / "ruff", "check", *lint_paths)
    _run(BIN / "mypy")
    cmd = [str(PY), "-m", "pytest", "--cov", "--cov-report=term:skip-covered", *args]
    print("+", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=ROOT)
    if status or args:
        return status
    # The algorithms once more without numba: the NumPy fallbacks must hold on their own.
    fallback = [str(PY), "-m", "pytest", "-q", *NO_NUMBA_TESTS]
    print("+ PATCHCONV_NUMBA=0", " ".join(fallback), flush=True)
    return subprocess.call(fallback, cwd=ROOT, env=dict(os.environ, PATCHCONV_NUMBA="0"))


NO_NUMBA_TESTS = [
    "tests/test_algorithms.py",
    "tests/test_algorithms_fast_paths.py",
    "tests/test_workspace.py",
    "tests/test_backward.py",
]


def bench(args: list[str]) -> int:
    _ensure_venv("test")
    env = dict(os.environ)
    # These slow a current NumPy's OpenBLAS; unset for benchmarks only (never for tests).
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    return subprocess.call([str(BIN / "patchconv"), "bench", *args], cwd=ROOT, env=env)


def main() -> int:
    tasks = {"explain": explain, "test": test, "bench": bench}
    if len(sys.argv) < 2 or sys.argv[1] not in tasks:
        print(__doc__)
        return 2
    try:
        return tasks[sys.argv[1]](sys.argv[2:])
    except subprocess.CalledProcessError as exc:
        print(f"tasks.py {sys.argv[1]}: step failed (exit {exc.returncode}): {exc.cmd}")
        return exc.returncode or 1


if __name__ == "__main__":
    raise SystemExit(main())
