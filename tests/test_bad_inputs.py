"""Bad inputs, as a demanding user gives them: each is refused with a message that says what to do, exit code 2,
no traceback, no artifact a later run would take as finished, and no earlier result changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

FINISHED = ("model.pt", "reward.pt", "metrics.json")


def _digests(root: Path) -> dict[str, str]:
    """Every file under `root` (wandb's own folders aside) and its SHA-256."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and "wandb" not in path.parts}


def _assert_refused(proc, *message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    for part in message:
        assert part in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.n_steps=abc"], "train.n_steps=abc: must be an integer"),
    (["train.n_steps=-5"], "train.n_steps=-5: must be a positive integer"),
    (["train.batch_size=0"], "train.batch_size=0: must be a positive integer"),
    (["train.save_every=0", "train.lr=0"], "train.lr=0: must be a positive learning rate"),
    (["threads=0"], "threads=0: must be a positive integer"),
])
def test_impossible_config_is_refused_before_any_work(cli, smoke_data, tmp_path, overrides, message):
    run_root = tmp_path / "runs"
    proc = cli(["train-diffusion", *smoke_data.overrides(run_root), "logger.mode=disabled", *overrides], tmp_path)
    _assert_refused(proc, message, "nothing was run")
    made = [path.name for path in run_root.rglob("*") if path.is_file() and ".hydra" not in path.parts]
    assert set(made) <= {"train_diffusion.log", "error.txt"}, made  # Hydra's own files, the log, the reason
