"""Locomotion datasets made the D4RL way: train Stable-Baselines3 SAC on a gymnasium MuJoCo task, keep a snapshot
at about a third of the final return, and roll out `random`, `medium` and `expert` datasets, written as Minari
datasets `relreward/<task>/<level>-v0`.

The `medium` snapshot is the first evaluated policy whose return reaches a third of the way from the random
policy's return to the final policy's (a D4RL-normalized score of about 33). Each dataset's Minari metadata
holds the generator settings and the policy returns under `relreward` (see `generate_maze`), and
`ref_min_score` / `ref_max_score` = the mean episode return of the random / expert datasets.
Stable-Baselines3 is an optional dependency: `pip install 'relreward[locomotion]'`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from relreward_cli.data.generate_maze import stack_episode, write_minari_dataset
from relreward_cli.envs.registry import environment, make_env
from relreward_cli.errors import UserError

LEVELS = ("random", "medium", "expert")
MEDIUM_FRACTION = 1 / 3  # of the way from the random return to the final return
GENERATOR = "sac_d4rl"
log = logging.getLogger(__name__)


def locomotion_dataset_id(task: str, level: str) -> str:
    """The Minari id make-dataset writes a level of `task` (an env name: halfcheetah, hopper, walker2d) to."""
    return f"relreward/{task}/{level}-v0"


def locomotion_settings(task: str, total_steps: int, eval_every: int, n_steps: dict[str, int], seed: int,
                        eval_episodes: int = 3, learning_starts: int = 100,
                        max_episode_steps: int | None = None) -> dict:
    """The settings `generate_locomotion_episodes` takes, as a JSON-ready record (also stored in the datasets'
    metadata), with the episode length filled in; unknown levels or missing sizes are refused."""
    if set(n_steps) != set(LEVELS) or min(n_steps.values()) < 1:
        raise UserError(f"n_steps needs a positive number of env steps for each of {', '.join(LEVELS)}; got "
                        f"{dict(n_steps)}.")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise UserError(f"env.max_episode_steps={max_episode_steps}: an episode needs at least one step (null: the "
                        "task's own length).")
    if eval_every < 1 or total_steps < eval_every:
        raise UserError(f"SAC needs total_steps >= eval_every >= 1 (got {total_steps}, {eval_every}): the "
                        "medium snapshot is picked among the evaluations.")
    return {"task": task, "max_episode_steps": max_episode_steps or environment(task).max_episode_steps,
            "total_steps": total_steps, "eval_every": eval_every, "eval_episodes": eval_episodes,
            "learning_starts": learning_starts, "n_steps": {level: n_steps[level] for level in LEVELS},
            "seed": seed}


def _sac_class():
    try:
        from stable_baselines3 import SAC
    except ImportError:
        raise UserError("Generating locomotion data trains a Stable-Baselines3 SAC policy, which is not "
                        "installed. Install it with `pip install 'relreward[locomotion]'`.") from None
    return SAC


def _mean_return(env, act: Callable[[np.ndarray], np.ndarray], n_episodes: int, seed: int) -> float:
    """Mean return of `n_episodes` full episodes of `act` (the k-th reset with seed `seed + k`)."""
    returns = []
    for k in range(n_episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def _rollout(env, act: Callable[[np.ndarray], np.ndarray], n_steps: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`n_steps` env steps of `act`, split into episodes where the env terminates or truncates them; the
    episode still running at `n_steps` is truncated there. Episode dicts as `write_minari_dataset` takes."""
    episodes, obs = [], env.reset(seed=seed)[0]
    steps = {"observations": [obs], "actions": [], "rewards": [], "terminations": [], "truncations": []}
    for index in range(n_steps):
        action = act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated or (index == n_steps - 1 and not terminated)
        for key, value in zip(steps, (obs, action, reward, terminated, truncated), strict=True):
            steps[key].append(value)
        if terminated or truncated:
            episodes.append(stack_episode(steps))
            obs = env.reset()[0]
            steps = {key: [obs] if key == "observations" else [] for key in steps}
    return episodes


def mean_episode_return(episodes: list[dict[str, np.ndarray]], max_episode_steps: int) -> float:
    """Mean return of the episodes the env ended (terminated, or truncated at `max_episode_steps`); of all of
    them when none did (a dataset shorter than one episode)."""
    ended = [episode for episode in episodes
             if episode["terminations"][-1] or len(episode["actions"]) == max_episode_steps]
    return float(np.mean([episode["rewards"].sum() for episode in ended or episodes]))


def generate_locomotion_episodes(settings: dict, progress: bool = True) -> dict[str, dict]:
    """Train SAC (Stable-Baselines3 defaults, `seed`) on `task` for `total_steps` env steps, evaluating the
    policy every `eval_every` steps over `eval_episodes` episodes and keeping its weights; then roll out
    `n_steps[level]` env steps of uniform random actions (`random`), of the first snapshot that reached
    `MEDIUM_FRACTION` of the final return above random (`medium`) and of the final policy (`expert`).
    `settings` is the record `locomotion_settings` returns (it checks them). Evaluations and rollouts alike
    sample the policy's actions (stochastic, as D4RL's data), so the medium data's return sits near a third
    of the way from random to expert. Episodes are truncated after `max_episode_steps`. Same settings and same
    torch thread count, same arrays (on CPU); another thread count changes SAC's floating-point sums and so its
    policy (measured: 1 and 2 threads differ after 4000 updates, 2 threads twice are identical). The thread
    count is recorded in the metadata (`torch_threads`).

    Returns per level: `episodes` (dicts as `write_minari_dataset` takes) and `metadata` (the settings, the
    level, the evaluations, the snapshot chosen and the mean returns of every level's dataset).
    """
    task, seed, n_steps = settings["task"], settings["seed"], settings["n_steps"]
    total_steps, eval_every, eval_episodes = settings["total_steps"], settings["eval_every"], settings["eval_episodes"]
    sac = _sac_class()
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.utils import set_random_seed

    env, eval_env = (make_env(task, settings["max_episode_steps"]) for _ in range(2))
    eval_seed = seed + 10_000

    def random_act(_obs):
        return env.action_space.sample()

    model = sac("MlpPolicy", env, seed=seed, learning_starts=settings["learning_starts"],
                buffer_size=max(total_steps, 1), device="cpu", verbose=0)
    # a logger that writes nowhere: SB3's default makes an empty SB3-<date> folder in the temp dir on every learn
    # call; the evaluations below are logged by this module
    model.set_logger(Logger(folder=None, output_formats=[]))

    def policy_act(obs):  # sampled actions, as the datasets are rolled out
        return model.predict(obs, deterministic=False)[0]

    def evaluate() -> float:
        return _mean_return(eval_env, policy_act, eval_episodes, eval_seed)

    evaluations: list[tuple[int, float, dict]] = []  # (step, mean return, actor weights)
    started = time.perf_counter()

    def record_evaluation() -> None:
        evaluations.append((model.num_timesteps, evaluate(), copy.deepcopy(model.policy.actor.state_dict())))
        elapsed = time.perf_counter() - started
        log.info("SAC %s: step %d/%d, eval return %.1f (%d episodes), %.0f steps/s, %.0f s elapsed", task,
                 model.num_timesteps, total_steps, evaluations[-1][1], eval_episodes, model.num_timesteps / elapsed,
                 elapsed)

    def on_step(_locals, _globals) -> bool:
        if model.num_timesteps % eval_every == 0:
            record_evaluation()
        return True

    model.learn(total_steps, callback=on_step, progress_bar=progress)
    if evaluations[-1][0] != model.num_timesteps:
        record_evaluation()
    env.action_space.seed(seed)
    random_return = _mean_return(eval_env, random_act, eval_episodes, eval_seed)
    final_return = evaluations[-1][1]
    threshold = random_return + MEDIUM_FRACTION * (final_return - random_return)
    medium = next((entry for entry in evaluations if entry[1] >= threshold),
                  min(evaluations, key=lambda entry: abs(entry[1] - threshold)))
    log.info("SAC %s: random return %.1f, final %.1f; medium snapshot at step %d (eval return %.1f)", task,
             random_return, final_return, medium[0], medium[1])

    episodes = {}
    for index, level in enumerate(LEVELS):
        set_random_seed(seed + index)  # python, numpy, torch: the policy's action sampling
        env.action_space.seed(seed + index)
        if level != "random":
            model.policy.actor.load_state_dict((medium if level == "medium" else evaluations[-1])[2])
        episodes[level] = _rollout(env, random_act if level == "random" else policy_act, n_steps[level],
                                   seed + 100 * (index + 1))
        log.info("%s %s data: %d steps in %d episodes, mean return %.1f", task, level, n_steps[level],
                 len(episodes[level]), mean_episode_return(episodes[level], settings["max_episode_steps"]))
    env.close()
    eval_env.close()
    results = {
        "evaluations": [[step, value] for step, value, _ in evaluations],
        "random_eval_return": random_return, "final_eval_return": final_return,
        "medium_threshold": threshold, "medium_snapshot": {"step": medium[0], "eval_return": medium[1]},
        "dataset_mean_return": {level: mean_episode_return(episodes[level], settings["max_episode_steps"])
                                for level in LEVELS},
        # SAC's floating-point results depend on torch's thread count: same seed and threads, same data
        "torch_threads": torch.get_num_threads(),
    }
    return {level: {"episodes": episodes[level],
                    "metadata": {"generator": GENERATOR, "settings": settings, "gym_id": environment(task).gym_id,
                                 "level": level, **results}}
            for level in LEVELS}


def write_locomotion_datasets(generated: dict[str, dict], root: Path, overwrite: bool = False) -> dict[str, Path]:
    """Write the levels `generate_locomotion_episodes` returned as `relreward/<task>/<level>-v0` under the
    Minari root `root`, each with ref_min_score / ref_max_score = the random / expert datasets' mean return.
    Returns the folder per level."""
    metadata = generated["expert"]["metadata"]
    task, mean_returns = metadata["settings"]["task"], metadata["dataset_mean_return"]
    env = make_env(task, metadata["settings"]["max_episode_steps"])
    try:
        return {level: write_minari_dataset(
            locomotion_dataset_id(task, level), data["episodes"], env, data["metadata"], root, overwrite=overwrite,
            algorithm_name=f"relreward SB3 SAC, {level} policy (D4RL recipe)",
            ref_min_score=mean_returns["random"], ref_max_score=mean_returns["expert"])
            for level, data in generated.items()}
    finally:
        env.close()
