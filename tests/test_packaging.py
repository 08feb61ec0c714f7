"""The project as a regular package: the wheel and sdist carry the Hydra configs, and an installed wheel runs.

The wheel is built from this checkout without network (``--no-build-isolation``: the build uses this venv's
setuptools) and installed, with ``--no-deps``, into a fresh virtual environment that sees this venv's
dependencies but neither the editable install nor the source tree. There ``relreward pipeline
experiment=smoke`` runs from a folder outside the repository, so it can only find its configs inside the
installed package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
# Configs a user of each feature needs; the test also checks that every configs/**/*.yaml is there.
KEY_CONFIGS = ("pipeline.yaml", "base.yaml", "env/maze2d_umaze.yaml", "experiment/smoke.yaml",
               "formulation/authors.yaml", "hydra/launcher/slurm.yaml", "hydra/launcher/local.yaml")


# Namespace packages the wheel installs into beside other distributions (its Hydra launcher plugin).
SHARED_NAMESPACES = ("hydra_plugins",)


def _run(cmd: list, cwd: Path, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> str:
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                    f"--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def _build_env(tmp: Path) -> dict[str, str]:
    """The environment for a build from the checkout: setuptools' build folder in ``tmp``, not in the repository.

    A build folder left in the checkout would be reused by the next build (stale files included) and show up in
    ``git status``; ``DIST_EXTRA_CONFIG`` points setuptools at one more config file, which moves it.
    """
    extra = tmp / "build.cfg"
    extra.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n")
    return {**os.environ, "DIST_EXTRA_CONFIG": str(extra)}


def _repo_configs() -> list[str]:
    return sorted(path.relative_to(REPO / "configs").as_posix() for path in (REPO / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, REPO],
         cwd=tmp, env=_build_env(tmp))
    (path,) = out.glob("relreward-*.whl")
    return path


def test_wheel_carries_configs_modules_and_extras(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in KEY_CONFIGS:
        assert f"relreward_cli/configs/{config}" in names, f"{config} is missing from {wheel.name}"
    assert [name for name in _repo_configs() if f"relreward_cli/configs/{name}" not in names] == []
    # pyproject.toml lists the packages (configs/ is mapped in): a new subpackage must be added there.
    modules = sorted(path.relative_to(REPO).as_posix() for package in ("relreward_cli", "hydra_plugins")
                     for path in (REPO / package).rglob("*.py"))
    assert "hydra_plugins/relreward_launchers/launchers.py" in modules
    assert [module for module in modules if module not in names] == []
    (metadata,) = (name for name in names if name.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert {"Provides-Extra: locomotion", "Provides-Extra: dev"} <= set(text.splitlines())
    assert any(line.startswith("Requires-Dist: stable-baselines3") and "extra == \"locomotion\"" in line
               for line in text.splitlines())


def test_sdist_carries_configs(tmp_path):
    out = tmp_path / "dist"
    out.mkdir()
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    name = _run([sys.executable, "-c", build, out], cwd=REPO, env=_build_env(tmp_path)).strip().splitlines()[-1]
    with tarfile.open(out / name) as sdist:
        members = {Path(*Path(member).parts[1:]).as_posix() for member in sdist.getnames()}
    for required in ("pyproject.toml", "MANIFEST.in", "README.md", "relreward_cli/cli.py"):
        assert required in members
    assert [name for name in _repo_configs() if f"configs/{name}" not in members] == []


def test_version_flag(cli, tmp_path):
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        proc = cli([flag], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"relreward {version('relreward')}"


def _deps_only_venv(root: Path) -> Path:
    """A virtual environment with this venv's packages (linked) but not relreward itself; returns its python.

    ``--system-site-packages`` would not do (the dependencies live in this venv, not in the base Python), and a
    ``.pth`` pointing at this venv's site-packages would also expose the editable install's metadata. So every
    entry of this site-packages is linked in, except the project's own: its editable finder and ``.pth``, its
    dist-info and any ``.pth`` that puts the checkout on ``sys.path``.
    """
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    python = root / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(("__editable__", "relreward", "__pycache__")) or (site / entry.name).exists():
            continue
        if name.endswith((".pth", ".egg-link")) and str(REPO) in entry.read_text(errors="replace"):
            continue
        if name in SHARED_NAMESPACES:  # a real folder, so that installing the wheel writes nothing into this venv
            (site / entry.name).mkdir()
            for child in entry.iterdir():
                (site / entry.name / child.name).symlink_to(child)
            continue
        (site / entry.name).symlink_to(entry)
    return python


def test_installed_wheel_runs_the_smoke_pipeline_outside_the_repo(wheel, tmp_path):
    python = _deps_only_venv(tmp_path / "venv")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "RELREWARD_CONFIG_DIR", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "--quiet", wheel],
         cwd=work, env=env)

    probe = ("import json, sys, relreward_cli, relreward_cli.cli as cli; "
             "print(json.dumps({'file': relreward_cli.__file__, 'configs': str(cli.CONFIG_DIR), 'path': sys.path}))")
    where = json.loads(_run([python, "-c", probe], cwd=work, env=env))
    venv = (tmp_path / "venv").resolve()
    assert Path(where["file"]).resolve().is_relative_to(venv), where["file"]
    assert not Path(where["file"]).resolve().is_relative_to(REPO)
    assert Path(where["configs"]).is_relative_to(venv) and (Path(where["configs"]) / "pipeline.yaml").is_file()
    assert not any(entry and Path(entry).resolve() in (REPO, REPO / "relreward_cli") for entry in where["path"])

    relreward = python.parent / "relreward"
    version = wheel.name.split("-")[1]
    assert _run([relreward, "--version"], cwd=work, env=env).strip() == f"relreward {version}"

    # RELREWARD_CONFIG_DIR still overrides the packaged configs (here: a folder without them).
    empty = tmp_path / "no-configs"
    empty.mkdir()
    proc = subprocess.run([relreward, "pipeline", "experiment=smoke"], cwd=work, capture_output=True, text=True,
                          env={**env, "RELREWARD_CONFIG_DIR": str(empty)}, timeout=TIMEOUT_S)
    assert proc.returncode == 2 and f"no config directory with pipeline.yaml at {empty}" in proc.stderr

    # A one-job sweep through the launcher the wheel installs under hydra_plugins (Hydra finds it there only).
    runs = tmp_path / "runs"
    _run([relreward, "pipeline", "--multirun", "hydra/launcher=local", "seed=0", "experiment=smoke",
          "logger.mode=disabled", "device=cpu", f"run_root={runs}", f"data_dir={tmp_path / 'data'}"], cwd=work, env=env)
    (metrics,) = runs.glob("multirun/pipeline/*/metrics.json")
    assert json.loads(metrics.read_text())
