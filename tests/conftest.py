"""Shared test setup: quiet offline W&B, one CPU thread, the smoke datasets made once, a CLI runner.

Tests never touch the network: W&B runs offline (or disabled) and its config/cache folders live in a
temporary directory. The smoke datasets (``experiment=smoke``) are generated once per session by the real
``relreward make-dataset`` command and reused by every test that needs data. Commands run in a process of their own,
forked from a warm one that has imported what a command imports (:class:`WarmCli`); the tests that signal a command,
or run one installed elsewhere, start it as a new process.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
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


class WarmCli:
    """One warm ``relreward`` process (``tests/cli_server.py``) per test process, started with the session and again
    when a test has changed the environment: it forks a child per command instead of starting Python and importing
    torch again (1.5 s a command).
    ``RELREWARD_TEST_COLD_CLI=1`` runs every command as a new process instead (:func:`run_cli`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        requests_read, self._requests = os.pipe()
        self._replies, replies_write = os.pipe()
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_server.py")),
                                         str(requests_read), str(replies_write)], cwd=REPO, env=self.env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        pass_fds=(requests_read, replies_write))
        os.close(requests_read)
        os.close(replies_write)
        self.replies = os.fdopen(self._replies, "r")

    def _reply(self, timeout: float | None) -> dict:
        if not select.select([self.replies], [], [], timeout)[0]:
            raise TimeoutError
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"the warm relreward process ended (exit code {self.process.wait()})")
        return json.loads(line)

    def started_with(self, env: dict[str, str]) -> bool:
        """Whether ``env`` is the environment this process started with, but for pytest's name of the test phase."""
        return _without(env, "PYTEST_CURRENT_TEST") == _without(self.env, "PYTEST_CURRENT_TEST")

    def run(self, args: list[str], cwd: Path, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="relreward-cli-") as out:
            files = {name: str(Path(out) / name) for name in ("stdout", "stderr")}
            request = {"args": args, "cwd": str(cwd), "env": env, **files}
            os.write(self._requests, (json.dumps(request) + "\n").encode())
            pid = self._reply(timeout=60)["pid"]
            try:
                returncode = self._reply(timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._reply(timeout=60)
                raise subprocess.TimeoutExpired([*_cli_command(), *args], timeout) from None
            stdout, stderr = (Path(files[name]).read_text() for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess([*_cli_command(), *args], returncode, stdout, stderr)

    def close(self) -> None:
        os.close(self._requests)
        self.replies.close()
        self.process.wait(timeout=60)


_warm_cli: WarmCli | None = None
warm_commands_run = 0
"""How many commands ran in a warm process (the rest started as new processes)."""


@pytest.fixture(scope="session", autouse=True)
def _warm_cli_process(_isolated_wandb_dirs):
    """The warm CLI process, started with the session's environment (W&B's folders included) and closed at its
    end; none under ``RELREWARD_TEST_COLD_CLI=1``."""
    global _warm_cli
    if os.environ.get("RELREWARD_TEST_COLD_CLI") != "1":
        _warm_cli = WarmCli(dict(os.environ))
    yield
    if _warm_cli is not None:
        _warm_cli.close()


def _without(env: dict[str, str], key: str) -> dict[str, str]:
    return {name: value for name, value in env.items() if name != key}


def run_cli(args: list[str], cwd: Path, timeout: float = CLI_TIMEOUT_S, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``relreward <args>`` in ``cwd``; returns the completed process (text output). The command runs in a child of
    the warm process (:class:`WarmCli`), which is started again first if the command's environment is another.

    With ``check`` a non-zero exit fails the test with the command's stdout and stderr.
    """
    global _warm_cli, warm_commands_run
    args = list(map(str, args))
    command_env = {**os.environ, **(env or {})}
    if _warm_cli is not None and os.environ.get("RELREWARD_TEST_COLD_CLI") != "1":
        if not _warm_cli.started_with(command_env):  # a test changed the environment: a warm process of that one
            _warm_cli.close()
            _warm_cli = WarmCli(command_env)
        proc = _warm_cli.run(args, cwd, timeout, command_env)
        warm_commands_run += 1
    else:
        proc = subprocess.run([*_cli_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=command_env)
    if check and proc.returncode != 0:
        pytest.fail(f"relreward {' '.join(args)} exited {proc.returncode}\n--- stdout\n"
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
