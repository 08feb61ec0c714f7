"""The run folder is always complete; W&B writes real offline runs there and resumes the same run id."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import yaml

from relreward_cli.errors import UserError
from relreward_cli.tracking import RunTracker, resolve_wandb_mode, write_json_atomic

CONFIG = {"seed": 3, "model": {"dim": 8, "dim_mults": [1, 2]}, "lr": 2.0e-4}


def _strict_json(text: str):
    """``json.loads`` that refuses NaN/Infinity (which are not JSON)."""
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _wandb_file_holding(path, needles: list[bytes], patience_s: float = 30.0) -> bytes:
    """The bytes of a ``.wandb`` file once they hold every needle. wandb-core writes the file from its own
    process and may still be flushing when ``finish()`` returns, so wait for it (a bound, not a timing test)."""
    deadline = time.monotonic() + patience_s
    while True:
        data = path.read_bytes()
        if all(needle in data for needle in needles) or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def _offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_offline_tracker_writes_run_folder_and_wandb_files(tmp_path):
    run_dir = tmp_path / "run"
    with RunTracker(run_dir, CONFIG, "unit-test", mode="offline", group="g", tags=["t"]) as tracker:
        assert tracker.mode == "offline" and tracker.wandb_run is not None
        tracker.log({"train/loss": 0.5, "train/steps_per_s": torch.tensor(12.0)}, step=5)
        tracker.log({"train/loss": 0.25, "weird": float("nan")}, step=10)
        assert tracker.history("train/loss") == [(5, 0.5), (10, 0.25)]
        tracker.summary({"final_loss": 0.25, "pearson/t0": 0.9, "device": "cpu"})

    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == CONFIG
    rows = [_strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 5, "train/loss": 0.5, "train/steps_per_s": 12.0},
                    {"step": 10, "train/loss": 0.25, "weird": "nan"}]
    assert _strict_json((run_dir / "metrics.json").read_text()) == {"final_loss": 0.25, "pearson/t0": 0.9,
                                                                     "device": "cpu"}
    assert (run_dir / "plots").is_dir()

    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert len(run_id) == 12
    runs = _offline_runs(run_dir)
    assert len(runs) == 1 and runs[0].name.endswith(f"-{run_id}")
    wandb_file = runs[0] / f"run-{run_id}.wandb"
    data = _wandb_file_holding(wandb_file, [b"train/loss", b"pearson/t0", b"unit-test"])
    assert b"train/loss" in data and b"pearson/t0" in data and b"unit-test" in data  # history, summary, job

    # A second attempt in the same folder (a resumed or requeued job) continues the same W&B run.
    with RunTracker(run_dir, CONFIG, "unit-test", mode="offline") as again:
        assert again.wandb_run.id == run_id
        again.log({"train/loss": 0.125}, step=15)
        assert again.history("train/loss") == [(5, 0.5), (10, 0.25), (15, 0.125)]
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    # W&B names each attempt's folder offline-run-<time>-<id>, adding -1 when two start within one second
    assert all(f"-{run_id}" in run.name for run in _offline_runs(run_dir))


def test_disabled_tracker_writes_no_wandb_files(tmp_path):
    with RunTracker(tmp_path, CONFIG, "unit-test", mode="disabled") as tracker:
        assert tracker.wandb_run is None
        tracker.log({"loss": 1.0}, step=1)
        tracker.log_image("nothing", tmp_path / "missing.png")  # no W&B: nothing to send
        tracker.summary({"loss": 1.0})
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id.txt").exists()
    assert [_strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": 1.0}]
    assert _strict_json((tmp_path / "metrics.json").read_text()) == {"loss": 1.0}


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_auto_mode_is_offline_without_credentials(no_credentials):
    assert resolve_wandb_mode("auto") == "offline"
    (no_credentials / ".netrc").write_text("machine example.org login a password b\n")
    assert resolve_wandb_mode("auto") == "offline"


def test_auto_mode_is_online_with_credentials(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "1" * 40 + "\n")
    assert resolve_wandb_mode("auto") == "online"


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_explicit_modes_pass_through(mode, no_credentials):
    assert resolve_wandb_mode(mode) == mode


def test_bad_mode_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"logger.mode='offlne'.*auto, online, offline, disabled"):
        resolve_wandb_mode("offlne")
    with pytest.raises(UserError):
        RunTracker(tmp_path / "run", CONFIG, "unit-test", mode="wandb")
    assert not (tmp_path / "run").exists()  # refused before it made the run folder or opened its metrics


def test_write_json_atomic(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": math.inf, "b": [1, 2.5], "c": torch.tensor(3.0)})
    assert _strict_json(path.read_text()) == {"a": "inf", "b": [1, 2.5], "c": 3.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_wandb_failing_mid_run_warns_once_and_the_run_folder_goes_on(tmp_path, caplog):
    """As when SLURM pre-empts a job: SIGTERM kills W&B's service process while training goes on until the
    job is killed; a dead W&B must not turn into a failed job."""

    class DeadService:
        calls = 0

        def log(self, *args, **kwargs):
            DeadService.calls += 1
            raise ConnectionResetError("Connection lost")

    tracker = RunTracker(tmp_path, {"seed": 0}, job_type="train", mode="disabled")
    tracker.wandb_run = DeadService()
    with caplog.at_level("WARNING", logger="relreward_cli.tracking"):
        for step in (1, 2, 3):
            tracker.log({"loss": 1.0 / step}, step=step)
        tracker.summary({"loss": 1 / 3})
        tracker.finish()
    assert DeadService.calls == 1 and tracker.wandb_run is None
    assert len([record for record in caplog.records if "W&B stopped working" in record.message]) == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"loss": 1 / 3}


def test_online_mode_without_network_falls_back_to_offline_within_seconds(tmp_path, monkeypatch):
    """A W&B key but no server answering (here: a closed local port): the run goes offline at once, instead of
    W&B's own ~90 s wait that ends with nothing logged, and keeps its offline files for `wandb sync`."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")
    started = time.monotonic()
    with RunTracker(tmp_path, {"seed": 0}, job_type="train", mode="online") as tracker:
        assert tracker.mode == "offline"
        tracker.log({"loss": 1.0}, step=1)
    assert time.monotonic() - started < 60
    (offline_run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert offline_run.name.endswith((tmp_path / "wandb_id.txt").read_text().strip())
    assert list(offline_run.glob("*.wandb"))


def test_wandb_steps_only_go_forward_across_attempts(tmp_path):
    """W&B drops a row logged at a step below its last one, and offline it cannot tell a resumed run's last step.
    A run resumed from its checkpoint at step 400, after an attempt that logged up to 405, sends W&B only the steps
    past 405 (metrics.jsonl gets them all); its figures go to the last step logged, not to step 0."""
    from PIL import Image

    class Recorder:
        def __init__(self):
            self.steps: list[tuple[str, int]] = []

        def log(self, data, step):
            self.steps.extend((key, step) for key in data)

        def finish(self):
            pass

    png = tmp_path / "figure.png"
    Image.new("RGB", (4, 4)).save(png)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wandb_id.txt").write_text("abc123def456")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": step, "loss": 1.0}) + "\n"
                                                   for step in range(0, 406, 5)))
    tracker = RunTracker(run_dir, CONFIG, "unit-test", mode="disabled")
    tracker.wandb_run = recorder = Recorder()
    tracker.rewind(400)
    for step in range(401, 411):
        tracker.log({"loss": 0.5}, step=step)
    tracker.log_image("heatmap", png)
    assert [row["step"] for row in tracker.rows()][-11:] == [400, *range(401, 411)]  # the file has every step
    tracker.finish()
    assert recorder.steps == [("loss", step) for step in range(406, 411)] + [("heatmap", 410)]

    evaluated_again = RunTracker(run_dir, CONFIG, "unit-test", mode="disabled")  # no training: figures only
    evaluated_again.wandb_run = recorder = Recorder()
    evaluated_again.log_image("heatmap", png)
    evaluated_again.finish()
    assert recorder.steps == [("heatmap", 410)]

    fresh = RunTracker(tmp_path / "fresh", CONFIG, "unit-test", mode="disabled")
    fresh.wandb_run = recorder = Recorder()
    fresh.log_image("samples", png)
    fresh.log({"loss": 1.0}, step=0)
    fresh.log({"loss": 0.5}, step=3)
    fresh.finish()
    assert recorder.steps == [("samples", 0), ("loss", 0), ("loss", 3)]
