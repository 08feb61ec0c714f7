"""Reward-guided planning, vectorized receding-horizon rollouts, normalized scores and `relreward steer-eval`.

Planner tests use untrained tiny models built in memory (planning does not care whether a model is good);
the end-to-end test trains the smoke models for a couple of steps with the real CLI.
"""

import json
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from relreward_cli.data.normalizer import Normalizer
from relreward_cli.diffusion.artifact import DiffusionSpec, TrainedDiffusion, build_diffusion
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.envs.registry import make_env
from relreward_cli.errors import UserError
from relreward_cli.models.reward_net import RewardNet
from relreward_cli.planning.evaluation import summarize
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.planner import GuidedPlanner
from relreward_cli.planning.rollout import PlannedActions, Rollouts, WaypointTracker, rollout
from relreward_cli.planning.scores import D4RL_REFERENCE_RETURNS, mean_and_sem, normalized_score, score_normalizer
from relreward_cli.reward.trainer import TrainedReward

SPEC = DiffusionSpec(horizon=8, obs_dim=4, act_dim=2, use_actions=False, dim=8, dim_mults=(1, 2), n_steps=5)
NORMALIZER = Normalizer("limits", np.zeros(4), np.full(4, 2.0))  # Maze2D-like (x, y, vx, vy) in [-2, 2]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model() -> TrainedDiffusion:
    torch.manual_seed(0)
    return TrainedDiffusion(build_diffusion(SPEC).eval().requires_grad_(False), SPEC, NORMALIZER, {}, Path("base"))


def reward_of(net: nn.Module, spec: DiffusionSpec = SPEC) -> TrainedReward:
    return TrainedReward(net, spec, NORMALIZER, NoiseSchedule(spec.n_steps, spec.schedule), {}, Path("reward"))


class FinalX(nn.Module):
    """Analytic reward: the plan's last normalized x coordinate, `r(x, t) = x[:, -1, 0]`."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x[:, -1, 0]


def observations(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 4)).astype(np.float32)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_zero_plans_are_unsteered_plans(model, sampler):
    net = RewardNet(SPEC.horizon, SPEC.transition_dim, dim=8, dim_mults=(1, 2)).eval().requires_grad_(False)
    unsteered = GuidedPlanner(model, None, sampler=sampler, generator=seeded(3)).plan(observations(5))
    guide = RewardGuide(reward_of(net), scale=0.0, n_guide_steps=2)
    steered = GuidedPlanner(model, guide, sampler=sampler, generator=seeded(3)).plan(observations(5))
    np.testing.assert_array_equal(steered.best, unsteered.best)
    assert unsteered.rewards is None and steered.rewards.shape == (5, 1)
    np.testing.assert_allclose(steered.best[:, 0], observations(5), atol=1e-6)  # current state inpainted


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guidance_moves_plans_up_an_analytic_reward(model, sampler):
    def final_x(scale: float) -> torch.Tensor:
        planner = GuidedPlanner(model, RewardGuide(reward_of(FinalX()), scale=scale), n_plans=16, sampler=sampler,
                                generator=seeded(4))
        return planner.sample(observations(4))[0][:, :, -1, 0]

    unguided, guided = final_x(0.0), final_x(5.0)
    assert guided.mean() > unguided.mean() + 0.3


class SpyGuide:
    """A `Guide` of constant gradient that records the diffusion step of every call."""

    def __init__(self, t_stopgrad: int, n_guide_steps: int):
        self.scale, self.t_stopgrad, self.n_guide_steps, self.scale_grad_by_std = 1.0, t_stopgrad, n_guide_steps, True
        self.calls: list[int] = []

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(int(t[0]))
        return x.new_zeros(len(x)), torch.ones_like(x)


@pytest.mark.parametrize("t_stopgrad", [0, 2, 4, 5])
def test_guidance_stops_below_t_stopgrad_after_n_guide_steps(model, t_stopgrad):
    """No guidance (and no gradient) at steps t < t_stopgrad; `n_guide_steps` gradients at every other DDPM step,
    one per DDIM step. The model has 5 steps (4 .. 0), so t_stopgrad=5 never guides and equals unguided sampling."""
    steps = list(range(SPEC.n_steps - 1, -1, -1))
    ddpm, ddim = SpyGuide(t_stopgrad, n_guide_steps=3), SpyGuide(t_stopgrad, n_guide_steps=3)
    guided = model.diffusion.sample(2, sampler="ddpm", generator=seeded(1), guide=ddpm).x
    model.diffusion.sample(2, sampler="ddim", generator=seeded(1), guide=ddim)
    assert ddpm.calls == [t for t in steps if t >= t_stopgrad for _ in range(3)]
    assert ddim.calls == [t for t in steps if t >= t_stopgrad]
    unguided = model.diffusion.sample(2, sampler="ddpm", generator=seeded(1)).x
    assert torch.equal(guided, unguided) == (t_stopgrad == SPEC.n_steps)


def test_gradient_clip_clamps_each_entry(model):
    class Steep(nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return 10 * x.sum(dim=(1, 2)) - 0.01 * x[:, 0, 0]

    x, t = torch.zeros(3, SPEC.horizon, SPEC.transition_dim), torch.full((3,), 2)
    _, grad = RewardGuide(reward_of(Steep()), grad_clip=0.2).gradient(x, t)
    assert grad.max() == pytest.approx(0.2) and grad.min() == pytest.approx(0.2)
    _, raw = RewardGuide(reward_of(Steep())).gradient(x, t)
    assert raw.max() == pytest.approx(10.0)
    with pytest.raises(UserError, match="grad_clip"):
        RewardGuide(reward_of(Steep()), grad_clip=0.0)


def test_summary_pairs_each_planner_with_base_by_episode():
    def runs(returns, terminated=(False, False), flipped=(False, False)):
        returns = np.asarray(returns, dtype=float)
        return Rollouts(returns, np.array([5, 3]), None, [], np.array([0.1, 0.3]), np.array(terminated),
                        np.array(flipped))

    base = [runs([10, 20]), runs([30, 40])]
    guided = summarize([runs([13, 21], (False, True)), runs([30, 46], flipped=(True, True))],
                       lambda r: r / 10, base)
    assert guided["vs_base_mean"] == pytest.approx(2.5) and guided["vs_base_per_seed"] == [2.0, 3.0]
    assert guided["vs_base_sem"] == pytest.approx(np.std([3, 1, 0, 6], ddof=1) / 2)
    assert guided["vs_base_sem_per_seed"] == [pytest.approx(1.0), pytest.approx(3.0)]
    assert guided["vs_base_win_rate"] == 0.75 and guided["vs_base_score_mean"] == pytest.approx(0.25)
    assert guided["terminated_rate"] == 0.25 and guided["flipped_rate"] == 0.5 and guided["length_mean"] == 4
    assert "vs_base_mean" not in summarize(base, None)


def test_steered_planner_keeps_the_plan_of_highest_reward(model):
    batch = GuidedPlanner(model, RewardGuide(reward_of(FinalX()), scale=0.0), n_plans=6,
                          generator=seeded(5)).plan(observations(3))
    best = batch.candidates[torch.arange(3), batch.rewards.argmax(dim=1)]
    np.testing.assert_allclose(batch.best, NORMALIZER.unnormalize(best.numpy()), rtol=1e-6)
    assert torch.equal(batch.rewards.argmax(dim=1), batch.candidates[:, :, -1, 0].argmax(dim=1))


def test_reward_of_another_space_is_refused(model):
    other = DiffusionSpec(**{**SPEC.__dict__, "horizon": 16})
    with pytest.raises(UserError, match="horizon: model 8 vs reward 16"):
        GuidedPlanner(model, RewardGuide(reward_of(FinalX(), other)))


def test_vectorized_maze_rollout_of_two_envs(model):
    planner = GuidedPlanner(model, RewardGuide(reward_of(FinalX())), n_plans=2, generator=seeded(6))
    envs = gym.vector.SyncVectorEnv([partial(make_env, "maze2d_umaze", 10)] * 2)
    result = rollout(planner, envs, WaypointTracker(SPEC.action_dim), [11, 12], replan_every=4,
                     reset_options={"goal_cell": np.array([1, 1])})
    envs.close()
    assert result.returns.shape == result.success.shape == (2,) and result.lengths.tolist() == [10, 10]
    assert [path.shape for path in result.paths] == [(11, 4)] * 2 and len(result.plan_seconds) == 3  # t=0, 4, 8
    with pytest.raises(UserError, match="replan_every=8"):
        rollout(planner, envs, WaypointTracker(0), [1, 2], replan_every=SPEC.horizon)


def test_vectorized_locomotion_rollout_executes_planned_actions():
    spec = DiffusionSpec(horizon=8, obs_dim=11, act_dim=3, use_actions=True, dim=8, dim_mults=(1, 2), n_steps=5)
    normalizer = Normalizer("limits", np.zeros(14), np.full(14, 3.0))  # actions up to 3: clipped to [-1, 1]
    torch.manual_seed(1)
    model = TrainedDiffusion(build_diffusion(spec).eval().requires_grad_(False), spec, normalizer, {}, Path("m"))
    envs = gym.vector.SyncVectorEnv([partial(make_env, "hopper", 40)] * 2)
    result = rollout(GuidedPlanner(model, generator=seeded(7)), envs, PlannedActions(3), [1, 2], replan_every=2)
    envs.close()
    assert result.success is None and result.lengths.max() <= 40 and (result.returns != 0).all()
    assert result.lengths.min() < 40  # the hopper falls: episodes end early, each at its own step
    assert [len(path) for path in result.paths] == (result.lengths + 1).tolist()


def test_planned_actions_are_executed_in_order():
    plans = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)  # (B, H, act_dim 2 + obs_dim 3)
    np.testing.assert_array_equal(PlannedActions(2)(plans, 1, None), plans[:, 1, :2])


def test_normalized_scores_on_the_published_reference_returns():
    random, expert = D4RL_REFERENCE_RETURNS["maze2d-umaze"]
    np.testing.assert_allclose(normalized_score([23.85, 161.86, 92.855], random, expert), [0, 100, 50])
    np.testing.assert_allclose(normalized_score(3234.3, *D4RL_REFERENCE_RETURNS["hopper"]), 100)
    np.testing.assert_allclose(normalized_score(0.0, *D4RL_REFERENCE_RETURNS["halfcheetah"]),
                               100 * 280.178953 / (12135.0 + 280.178953))
    np.testing.assert_allclose(score_normalizer("walker2d").score(np.array([1.629008])), [0.0], atol=1e-12)
    assert score_normalizer(None) is None
    mean, sem = mean_and_sem(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and sem == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_minari_reference_scores_win_over_d4rl(smoke_data, tmp_path):
    import shutil

    from relreward_cli.data.sources import open_minari

    shutil.copytree(smoke_data.data_dir, tmp_path / "data")
    dataset_id = "relreward/pointmaze-umaze/expert-r1c1-v0"
    open_minari("generated", dataset_id, tmp_path / "data").storage.update_metadata(
        {"ref_min_score": 10.0, "ref_max_score": 30.0})
    score = score_normalizer("maze2d-umaze", f"generated:{dataset_id}", tmp_path / "data")
    assert "Minari" in score.origin and score.score(np.array([20.0])).tolist() == [50.0]


def test_steer_eval_end_to_end_with_smoke_models(smoke_data, run_root, cli):
    overrides = smoke_data.overrides(run_root)
    cli(["pipeline", *overrides, "train.n_steps=2", "extract.n_steps=2", "logger.mode=disabled", "pipeline.steer=true"],
        cwd=run_root, check=True)
    pipeline = json.loads((run_root / "pipeline" / "smoke-maze2d_umaze-r1c1-s0" / "metrics.json").read_text())
    planners = ("base", "guided", "ranked", "guided_ranked", "expert")
    assert {"guided/score_mean", "guided_ranked/success_rate", "seconds/steer-eval"} <= pipeline.keys()
    proc = cli(["steer-eval", *overrides, "logger.mode=offline", "steer.sampler=ddim"], cwd=run_root, check=True)
    assert all(word in proc.stdout for word in ("guided_ranked", "normalized", "vs base", "ended early")), proc.stdout
    assert "flipped" not in proc.stdout, "a maze records no flips, so its table has no column for them"
    run_dir = run_root / "steer-eval" / "smoke-maze2d_umaze-r1c1-s0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {metrics[f"{name}/episodes"] for name in planners} == {2}
    assert 0.0 <= metrics["guided/success_rate"] <= 1.0 and "D4RL maze2d-umaze" in metrics["score_reference"]
    assert {"ranked/vs_base_mean", "ranked/vs_base_per_seed", "expert/vs_base_sem"} <= metrics.keys()
    assert "base/vs_base_mean" not in metrics and metrics["base/terminated_rate"] == 0.0  # the maze never ends early
    # guidance at scale 0 is the base planner: same plans, same episodes, a paired difference of exactly 0
    cli(["steer-eval", *overrides, "logger.mode=disabled", "steer.planners=[base,guided]", "steer.scale=0",
         f"hydra.run.dir={run_root / 'scale0'}"], cwd=run_root, check=True)
    scale0 = json.loads((run_root / "scale0" / "metrics.json").read_text())
    assert scale0["guided/return_per_seed"] == scale0["base/return_per_seed"] and scale0["guided/vs_base_mean"] == 0
    assert (run_dir / "plots" / "paths.png").is_file() and (run_dir / "plots" / "returns.png").is_file()
    assert (run_dir / "wandb").is_dir()
    unsteered = cli(["steer-eval", *overrides, "logger.mode=disabled", "steer.planners=[base,expert]",
                     f"reward_model={run_root / 'no-reward-here'}", f"hydra.run.dir={run_root / 'unsteered'}"],
                    cwd=run_root, check=True)
    assert "guided" not in unsteered.stdout, "no reward is needed without steering"
    unsteered_metrics = json.loads((run_root / "unsteered" / "metrics.json").read_text())
    assert unsteered_metrics["base/episodes"] == 2 and not any(key.startswith("guided") for key in unsteered_metrics)
