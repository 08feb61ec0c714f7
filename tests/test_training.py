"""The shared training loop: exact resume after a kill, NaN stops, atomic checkpoints, model compatibility."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from relreward_cli.cli import CONFIG_DIR
from relreward_cli.data.normalizer import Normalizer, fit_transition_normalizer
from relreward_cli.data.pairs import SegmentPair
from relreward_cli.data.segments import SegmentDataset
from relreward_cli.data.sources import Episode
from relreward_cli.diffusion import artifact
from relreward_cli.diffusion.artifact import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    DiffusionSpec,
    TrainedDiffusion,
    build_diffusion,
    check_compatible,
    load_diffusion_model,
    train_diffusion,
)
from relreward_cli.errors import UserError
from relreward_cli.reward import trainer as reward_trainer
from relreward_cli.stages.common import diffusion_spec, log_to
from relreward_cli.tracking import RunTracker
from relreward_cli.training import (
    CHECKPOINT_FORMAT,
    NonFiniteLossError,
    adam,
    artifact_file,
    contiguous_span,
    flat_adam,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    train_loop,
)

OBS_DIM, ACT_DIM = 4, 2


def synthetic_pair(horizon: int, seed: int = 0, normalizer: Normalizer | None = None) -> SegmentPair:
    """Random-walk episodes standing in for base and expert data (a few hundred windows each)."""
    rng = np.random.default_rng(seed)

    def episodes(n: int, length: int, drift: float) -> list[Episode]:
        out = []
        for _ in range(n):
            obs = np.cumsum(rng.normal(drift, 0.1, (length + 1, OBS_DIM)), axis=0)
            out.append(Episode(obs, rng.uniform(-1, 1, (length, ACT_DIM)), np.zeros(length),
                               np.zeros(length, bool), np.eye(1, length, length - 1, dtype=bool)[0]))
        return out

    data = {"base": episodes(3, 40, 0.0), "expert": episodes(4, 25, 0.05)}
    normalizer = normalizer or fit_transition_normalizer(list(data.values()), use_actions=False)
    base, expert = (SegmentDataset(data[k], horizon, False, normalizer) for k in ("base", "expert"))
    return SegmentPair(base, expert, normalizer, base.layout, OBS_DIM, ACT_DIM,
                       {"base": "synthetic:base", "expert": "synthetic:expert"})


SPEC = DiffusionSpec(horizon=8, obs_dim=OBS_DIM, act_dim=ACT_DIM, use_actions=False, dim=8, dim_mults=(1, 2),
                     n_steps=5)
TRAIN_KW = dict(n_steps=12, batch_size=8, lr=1e-3, ema_decay=0.9, ema_start=2, grad_clip=1.0, save_every=4,
                log_every=3, device=torch.device("cpu"))


class SimulatedKill(Exception):
    """Stands in for SIGKILL / a preempted job in the middle of a step."""


def _train(run_dir: Path, segments: SegmentPair, seed: int = 0, tracker: RunTracker | None = None):
    logging = {"on_log": log_to(tracker, "train"), "on_resume": tracker.rewind} if tracker else {}
    return train_diffusion(SPEC, segments, "expert", run_dir, generator=seed_everything(seed),
                           info={"test": True}, **TRAIN_KW, **logging)


def _tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor of a nested state (model, EMA, optimizer) keyed by its path."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}/{i}", item)

    walk("", state)
    return out


def _assert_same_tensors(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys() and ta
    different = [key for key in ta if not torch.equal(ta[key], tb[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, monkeypatch):
    segments = synthetic_pair(SPEC.horizon)
    _, full = _train(tmp_path / "full", segments)
    assert (full.step, full.resumed_from) == (12, 0)

    # Kill the second run while it draws the batch of step 7: its last checkpoint is the one at step 4.
    real_train_loop = artifact.train_loop

    def killed_train_loop(*, loss_fn, **kwargs):
        calls = {"n": 0}

        def dying_loss_fn():
            calls["n"] += 1
            if calls["n"] == 7:
                raise SimulatedKill
            return loss_fn()

        return real_train_loop(loss_fn=dying_loss_fn, **kwargs)

    run_dir, log_dir = tmp_path / "killed", tmp_path / "killed-log"
    with monkeypatch.context() as m:
        m.setattr(artifact, "train_loop", killed_train_loop)
        with pytest.raises(SimulatedKill), RunTracker(log_dir, {}, "train", mode="disabled") as tracker:
            _train(run_dir, segments, tracker=tracker)
    assert not (run_dir / MODEL_FILE).exists()
    assert load_checkpoint(run_dir / CHECKPOINT_FILE, kind="diffusion")["step"] == 4
    assert [p.name for p in run_dir.iterdir()] == [CHECKPOINT_FILE]  # no temporary file left behind
    logged = [json.loads(line)["step"] for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [3, 6]  # step 6 was logged after the last checkpoint (4)

    # Different global RNG state before the resume: the checkpoint must restore all of it.
    torch.manual_seed(1234)
    with RunTracker(log_dir, {}, "train", mode="disabled") as tracker:
        model, resumed = _train(run_dir, segments, tracker=tracker)
    logged = [json.loads(line)["step"] for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == [3, 6, 9, 12]  # the first attempt's step 6 dropped on resume, logged once again
    assert resumed.resumed_from == 4
    assert resumed.step == 12
    assert resumed.final_loss == full.final_loss

    full_ckpt = load_checkpoint(tmp_path / "full" / CHECKPOINT_FILE, kind="diffusion")
    resumed_ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE, kind="diffusion")
    for part in ("model", "ema", "optimizer"):
        _assert_same_tensors(full_ckpt[part], resumed_ckpt[part])
    assert resumed_ckpt["ema"]["step"] == full_ckpt["ema"]["step"] == 12
    _assert_same_tensors(load_checkpoint(tmp_path / "full" / MODEL_FILE, kind="diffusion-model")["weights"],
                         load_checkpoint(run_dir / MODEL_FILE, kind="diffusion-model")["weights"])
    # model.pt holds the EMA weights, which differ from the online ones after training.
    online = full_ckpt["model"]
    ema = load_checkpoint(tmp_path / "full" / MODEL_FILE, kind="diffusion-model")["weights"]
    assert any(not torch.equal(online[k], ema[k]) for k in online)
    assert model.diffusion.training is False

    # A different seed gives other weights (the comparison above is not vacuous).
    _train(tmp_path / "other-seed", segments, seed=1)
    other = _tensors(load_checkpoint(tmp_path / "other-seed" / CHECKPOINT_FILE)["model"])
    assert any(not torch.equal(other[k], v) for k, v in _tensors(full_ckpt["model"]).items())


def test_flat_weights_train_bitwise_as_separate_ones_and_resume_their_checkpoints(tmp_path, monkeypatch):
    """Diffusion training steps Adam, scales the clipped gradient and averages the EMA over the U-Net's weights
    flattened into one tensor: it trains bitwise the weights the separate tensors train (online, EMA and Adam's
    moments), and a checkpoint written with separate tensors (by an earlier version) resumes into flat ones exactly."""
    segments = synthetic_pair(SPEC.horizon)
    _train(tmp_path / "flat", segments)
    with monkeypatch.context() as m:
        m.setattr(artifact, "flat_adam", lambda module, lr: adam(module.parameters(), lr))
        _train(tmp_path / "separate", segments)
        train_diffusion(SPEC, segments, "expert", tmp_path / "earlier", generator=seed_everything(0),
                        info={"test": True}, **{**TRAIN_KW, "n_steps": 4})
    _train(tmp_path / "earlier", segments)  # resumed at step 4 by the flat code, to step 12
    flat, separate, resumed = (load_checkpoint(tmp_path / run / CHECKPOINT_FILE, kind="diffusion")
                               for run in ("flat", "separate", "earlier"))
    for part in ("model", "ema"):
        _assert_same_tensors(flat[part], separate[part])
        _assert_same_tensors(flat[part], resumed[part])
    moments = separate["optimizer"]["state"]
    assert len(flat["optimizer"]["state"]) == 1 < len(moments) == len(flat["model"])
    for key in ("exp_avg", "exp_avg_sq"):
        joined = torch.cat([moments[i][key].reshape(-1) for i in sorted(moments)])
        assert torch.equal(flat["optimizer"]["state"][0][key], joined)
        assert torch.equal(resumed["optimizer"]["state"][0][key], joined)
    assert not any(torch.equal(flat["model"][k], resumed["ema"]["model"][k]) for k in flat["model"])  # trained


def test_flat_adam_keeps_the_module_gradients_as_views_of_its_own():
    """Zeroing the flat optimizer's gradient (even asked to set it to None) leaves each weight's gradient a view
    of it, so the next backward pass feeds the step; the EMA sees the weights as one span."""
    model = build_diffusion(SPEC).model
    optimizer = flat_adam(model, lr=1e-3)
    (flat,) = optimizer.param_groups[0]["params"]
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        assert flat.grad is not None and not flat.grad.any()
        model(torch.randn(2, SPEC.horizon, SPEC.transition_dim), torch.tensor([0, 1])).square().mean().backward()
        assert torch.equal(flat.grad, torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        assert flat.grad.any()
    assert contiguous_span(list(model.parameters())) is not None
    assert contiguous_span([p.grad for p in model.parameters()]) is not None


def test_finished_run_is_not_retrained(tmp_path):
    segments = synthetic_pair(SPEC.horizon)
    _train(tmp_path, segments)
    before = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    _, again = _train(tmp_path, segments)
    assert (again.resumed_from, again.step) == (12, 12)
    _assert_same_tensors(before["model"], load_checkpoint(tmp_path / CHECKPOINT_FILE)["model"])


def _linear_loop(tmp_path: Path, nan_at: int | None, n_steps: int = 6, save_every: int = 2):
    model = torch.nn.Linear(3, 1)
    x = torch.randn(16, 3)
    calls = {"n": 0}

    def loss_fn():
        calls["n"] += 1
        loss = model(x).pow(2).mean()
        if calls["n"] == nan_at:
            loss = loss * float("nan")
        return loss, {"extra": 1.0}

    logged = []
    result = train_loop(model=model, loss_fn=loss_fn, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        n_steps=n_steps, checkpoint_path=tmp_path / "ckpt.pt", generator=seed_everything(0),
                        extra={"note": "x"}, kind="unit", save_every=save_every, log_every=2,
                        on_log=lambda scalars, step: logged.append((step, scalars)))
    return result, logged


def test_a_finished_run_resumed_with_no_step_left_reports_its_own_figures(tmp_path):
    """Running a finished run's command again (or finishing a run killed after its last checkpoint) takes no step;
    it reports the loss and speed its checkpoint recorded, not NaN and 0."""
    first, _ = _linear_loop(tmp_path, nan_at=None)
    again, logged = _linear_loop(tmp_path, nan_at=None)
    assert again.step == first.step == 6 and again.resumed_from == 6 and not logged
    assert math.isfinite(first.final_loss) and again.final_loss == first.final_loss
    recorded = load_checkpoint(tmp_path / "ckpt.pt", kind="unit")["steps_per_s"]  # the first attempt's, at its end
    assert recorded > 0 and again.steps_per_s == recorded


def test_nan_loss_stops_with_the_step_number(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"nan at step 5\b.*\(step 4\)"):
        _linear_loop(tmp_path, nan_at=5)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt", kind="unit")
    assert ckpt["step"] == 4  # nothing saved after the last good checkpoint
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())

    # Before the first checkpoint there is nothing to resume from, and the message must not invent one.
    with pytest.raises(NonFiniteLossError, match=r"nan at step 1\b") as err:
        _linear_loop(tmp_path / "early", nan_at=1)
    assert "(step 0)" not in str(err.value)
    assert not (tmp_path / "early" / "ckpt.pt").exists()


def test_loop_logs_and_reports(tmp_path):
    result, logged = _linear_loop(tmp_path, nan_at=None)
    assert (result.step, result.resumed_from) == (6, 0)
    assert math.isfinite(result.final_loss) and result.steps_per_s > 0 and result.peak_memory_mb > 0
    assert [step for step, _ in logged] == [2, 4, 6]
    assert {"loss", "extra", "steps_per_s"} <= logged[-1][1].keys()
    ckpt = load_checkpoint(tmp_path / "ckpt.pt", kind="unit")
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["note"] == "x" and ckpt["step"] == 6
    assert {"python", "numpy", "torch", "data"} <= ckpt["rng"].keys()


def test_checkpoints_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, {"kind": "unit", "value": torch.arange(3)})
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    assert torch.equal(load_checkpoint(path, kind="unit")["value"], torch.arange(3))

    # A save that dies half-way (disk full, kill) leaves the previous checkpoint whole.
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"kind": "unit", "value": torch.arange(5)})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path, kind="unit")["value"], torch.arange(3))


def test_load_checkpoint_refuses_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"kind": "reward", "step": 3})

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(UserError, match="not a relreward checkpoint"):
        load_checkpoint(foreign)

    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(UserError, match="could not be read"):
        load_checkpoint(text)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="could not be read"):
        load_checkpoint(truncated)

    with pytest.raises(UserError, match="'reward' checkpoint where a 'diffusion' one"):
        load_checkpoint(good, kind="diffusion")
    with pytest.raises(UserError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    assert load_checkpoint(good, kind="reward")["step"] == 3

    # A reward checkpoint passed where a diffusion model is expected.
    with pytest.raises(UserError, match="'diffusion-model' one is needed"):
        load_diffusion_model(good)
    # A file without a suffix is read as the file it is, not as a run folder (`expert_model=/etc/passwd` was told
    # "No trained diffusion model at /etc/passwd/model.pt"); a missing path without one is a run folder not made yet.
    plain = tmp_path / "passwd"
    plain.write_text("root:x:0:0\n")
    with pytest.raises(UserError, match=f"{plain} could not be read as a relreward checkpoint"):
        load_diffusion_model(plain)
    with pytest.raises(UserError, match=f"No trained diffusion model at {tmp_path / 'no-run' / 'model.pt'}"):
        load_diffusion_model(tmp_path / "no-run")
    assert artifact_file(tmp_path, "model.pt") == tmp_path / "model.pt"
    assert artifact_file(tmp_path / "later.pt", "model.pt") == tmp_path / "later.pt"


def _trained(spec: DiffusionSpec, normalizer: Normalizer, path: Path) -> TrainedDiffusion:
    torch.manual_seed(0)
    return TrainedDiffusion(build_diffusion(spec).eval().requires_grad_(False), spec, normalizer, {}, path)


REWARD_KW = dict(dim=8, dim_mults=(1, 2), n_steps=4, batch_size=8, lr=1e-3, grad_clip=1.0, save_every=2,
                 log_every=2, device=torch.device("cpu"), info={})


def test_check_compatible_refuses_mismatched_models_before_training(tmp_path):
    segments = synthetic_pair(SPEC.horizon)
    base = _trained(SPEC, segments.normalizer, tmp_path / "base" / MODEL_FILE)
    check_compatible(base, _trained(SPEC, segments.normalizer, tmp_path / "expert" / MODEL_FILE))  # fine

    other_norm = Normalizer(segments.normalizer.kind, segments.normalizer.shift, segments.normalizer.scale * 2)
    mismatches = {
        "horizon": (_trained(replace(SPEC, horizon=16), segments.normalizer, tmp_path / "h16"), "horizon: base 8"),
        "normalizer": (_trained(SPEC, other_norm, tmp_path / "norm"), "normalizers differ"),
        "schedule": (_trained(replace(SPEC, schedule="linear"), segments.normalizer, tmp_path / "lin"),
                     "schedule: base cosine vs expert linear"),
    }
    for name, (expert, message) in mismatches.items():
        with pytest.raises(UserError, match=message):
            check_compatible(base, expert)
        run_dir = tmp_path / f"reward-{name}"
        with pytest.raises(UserError, match=message):
            reward_trainer.train_reward(base, expert, segments, run_dir, generator=seed_everything(0),
                                        **REWARD_KW)
        assert not (run_dir / reward_trainer.CHECKPOINT_FILE).exists()
        assert not (run_dir / reward_trainer.REWARD_FILE).exists()


def test_extract_stage_refuses_mismatched_models_before_any_work(tmp_path):
    """`extract` with model files of different horizons stops before loading data or writing anything."""
    from hydra import compose, initialize_config_dir

    from relreward_cli.cli import CONFIG_DIR
    from relreward_cli.stages import extract

    for name, horizon in (("base", 8), ("expert", 16)):
        spec = replace(SPEC, horizon=horizon)
        train_diffusion(spec, synthetic_pair(horizon), name, tmp_path / name, generator=seed_everything(0),
                        info={"sources": {"base": "generated:x/none-v0", "expert": "generated:x/none-v0"}},
                        **{**TRAIN_KW, "n_steps": 2, "save_every": 2})
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("extract", overrides=["experiment=smoke", "device=cpu", "logger.mode=disabled",
                                            f"data_dir={tmp_path / 'no-data'}"])
    run_dir = tmp_path / "extract"
    with pytest.raises(UserError, match="horizon: base 8 vs expert 16"):
        extract.run(cfg, run_dir, tmp_path / "base", tmp_path / "expert")
    assert not run_dir.exists()


def test_diffusion_spec_follows_the_config_and_refuses_clipping_gaussian_data():
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        paper = compose("train_diffusion", ["env=halfcheetah", "experiment=paper_locomotion"])
        clipped = compose("train_diffusion", ["normalizer=gaussian"])
    spec = diffusion_spec(paper, obs_dim=17, act_dim=6)
    assert (spec.prediction, spec.clip_denoised, spec.horizon, spec.transition_dim) == ("x0", False, 4, 23)
    with pytest.raises(UserError, match="clip_denoised=false"):
        diffusion_spec(clipped, obs_dim=4, act_dim=2)


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_float32_weights(tmp_path):
    model = torch.nn.Linear(8, 8)
    x = torch.randn(32, 8)
    dtypes = []

    def loss_fn():
        out = model(x)
        dtypes.append(out.dtype)
        return (out.float() - x).pow(2).mean(), {}

    result = train_loop(model=model, loss_fn=loss_fn, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                        n_steps=20, checkpoint_path=tmp_path / "ckpt.pt", generator=seed_everything(0), extra={},
                        kind="unit", save_every=10, log_every=5, autocast_dtype=torch.bfloat16)
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(result.final_loss) and result.final_loss < (x.pow(2).mean() + 1).item()


def test_the_batch_and_precision_of_a_training_section_follow_the_device():
    from omegaconf import OmegaConf

    from relreward_cli.stages.common import autocast_dtype, batch_size, loop_settings

    cfg = OmegaConf.create({"train": {"n_steps": 10, "batch_size": 64, "cuda_batch_size": 256, "precision": "bf16",
                                      "lr": 1e-3}})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (batch_size(cfg.train, cpu), batch_size(cfg.train, cuda)) == (64, 256)
    assert autocast_dtype(cfg.train) is torch.bfloat16
    # provenance records the batch used, not both settings, and leaves out the result-neutral keys
    assert loop_settings(cfg, "train", cuda, ("n_steps",)) == {"train": {"precision": "bf16", "lr": 1e-3,
                                                                         "batch_size": 256}}
    cfg.train.cuda_batch_size = None
    assert batch_size(cfg.train, cuda) == 64


def test_a_stage_on_cuda_uses_deterministic_kernels_and_on_cpu_leaves_them(monkeypatch):
    """One seed gives one set of numbers on a GPU only with deterministic kernels (two CUDA runs differed in the
    5th digit of the weights without them); the stage's device setup turns them on for CUDA alone."""
    from omegaconf import OmegaConf

    from relreward_cli.stages import common

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg = OmegaConf.create({"device": "cpu", "threads": None})
    assert common.torch_device(cfg).type == "cpu"
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setattr(common, "resolve_device", lambda device: torch.device("cuda"))  # no GPU needed to set up
    try:
        assert common.torch_device(cfg).type == "cuda"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
