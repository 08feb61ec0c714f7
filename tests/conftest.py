"""Shared test setup: quiet offline W&B, one CPU thread, the smoke datasets made once, a CLI runner.

Tests never touch the network: W&B runs offline (or disabled) and its config/cache folders live in a
temporary directory. The smoke datasets (``experiment=smoke``) are generated once per session by the real
``relreward make-dataset`` command and reused by every test that needs data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before torch is imported anywhere: one thread per process (the CI box has 2 shared cores, and the CLI
# subprocesses inherit these variables), no GUI backend, W&B offline and silent as a safety net.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 300


@pytest.fixture(scope="session", autouse=True)
def _isolated_wandb_dirs(tmp_path_factory):
    """W&B's config, cache and data folders under a temporary directory instead of ``~``."""
    root = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(name, str(root / name.lower()))
        yield


def _cli_command() -> list[str]:
    script = Path(sys.executable).parent / "relreward"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "relreward_cli.cli"]


def run_cli(args: list[str], cwd: Path, timeout: float = CLI_TIMEOUT_S, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``relreward <args>`` in ``cwd`` as a subprocess; returns the completed process (text output).

    With ``check`` a non-zero exit fails the test with the command's stdout and stderr.
    """
    proc = subprocess.run([*_cli_command(), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        pytest.fail(f"relreward {' '.join(map(str, args))} exited {proc.returncode}\n--- stdout\n"
                    f"{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@dataclass
class SmokeData:
    """The smoke datasets made by ``relreward make-dataset experiment=smoke`` (once per session)."""

    root: Path  # the folder the command ran in
    data_dir: Path  # Minari root holding relreward/pointmaze-umaze/{base,expert}-r1c1-v0 (the default goal)
    process: subprocess.CompletedProcess

    def overrides(self, run_root: Path) -> list[str]:
        """Overrides that point a stage at these datasets and at a run folder of its own."""
        return ["experiment=smoke", f"data_dir={self.data_dir}", f"run_root={run_root}", "device=cpu"]


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> SmokeData:
    root = tmp_path_factory.mktemp("smoke")
    data_dir = root / "data"
    proc = run_cli(["make-dataset", "experiment=smoke", f"run_root={root / 'runs'}", f"data_dir={data_dir}",
                    "logger.mode=disabled"], cwd=root, check=True)
    return SmokeData(root, data_dir, proc)


@pytest.fixture
def run_root(tmp_path) -> Path:
    """A fresh ``run_root`` for one test."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def cli():
    """:func:`run_cli` as a fixture (``cli(args, cwd)``)."""
    return run_cli
