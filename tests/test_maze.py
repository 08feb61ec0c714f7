from pathlib import Path

import numpy as np
import pytest

from relreward_cli.envs.maze import MAZE_MAPS, MazeGeometry, WaypointController
from relreward_cli.envs.registry import make_maze_env
from relreward_cli.errors import UserError
from relreward_cli.stages.inputs import stage_folders

UMAZE = MazeGeometry.from_name("umaze")
GOAL = (1, 1)  # top-left end of the U; the bottom-left end (3, 1) is the far end


def test_umaze_map_is_the_literal_one():
    expected = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert MAZE_MAPS["umaze"].tolist() == expected


def test_umaze_bfs_distances_by_hand():
    inf = np.inf
    expected = [
        [inf, inf, inf, inf, inf],
        [inf, 0, 1, 2, inf],
        [inf, inf, inf, 3, inf],
        [inf, 6, 5, 4, inf],
        [inf, inf, inf, inf, inf],
    ]
    np.testing.assert_array_equal(UMAZE.cell_distances(GOAL), expected)
    assert UMAZE.shortest_path((3, 1), GOAL) == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    with pytest.raises(UserError, match="free cell"):
        UMAZE.cell_distances((2, 1))


@pytest.mark.parametrize("maze", ["umaze", "large"])
def test_cell_conversions_match_the_env(maze):
    geometry, env = MazeGeometry.from_name(maze), make_maze_env(maze)
    env_maze = env.unwrapped.maze
    cells = geometry.free_cells()
    np.testing.assert_allclose(geometry.cell_to_xy(cells), [env_maze.cell_rowcol_to_xy(c) for c in cells])
    xmin, xmax, ymin, ymax = geometry.bounds()
    points = np.random.default_rng(0).uniform([xmin, ymin], [xmax, ymax], size=(500, 2))
    env_cells = [env_maze.cell_xy_to_rowcol(point) for point in points]
    np.testing.assert_array_equal(geometry.xy_to_cell(points), env_cells)
    np.testing.assert_array_equal(geometry.xy_to_cell(geometry.cell_to_xy(cells)), cells)
    env.close()


def test_in_wall_on_known_points():
    points = np.array([[-1, 1], [-1, 0], [0, 0], [1, 0], [0.4, -1.4], [-2.2, 0.9], [3, 0]], dtype=float)
    # free end, inner wall (2, 1), inner wall (2, 2), right arm, bottom arm, outer wall (1, 0), outside
    np.testing.assert_array_equal(UMAZE.in_wall(points), [False, True, True, False, False, True, True])
    assert UMAZE.bounds() == (-2.5, 2.5, -2.5, 2.5)


def test_distance_field_is_geodesic():
    goal_xy = UMAZE.cell_to_xy(np.array(GOAL))
    xs, ys, dist, free = UMAZE.distance_field(goal_xy, resolution=0.05)
    assert dist.shape == free.shape == (len(ys), len(xs)) == (100, 100)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    np.testing.assert_array_equal(free.ravel(), ~UMAZE.in_wall(grid))
    assert np.isnan(dist[~free]).all() and np.isfinite(dist[free]).all()

    def at(x, y):
        return dist[np.abs(ys - y).argmin(), np.abs(xs - x).argmin()]

    assert at(*goal_xy) < 0.05
    # straight line along the top arm, then around the inner wall's corners (0.5, +-0.5) from the far end
    assert at(1.025, 0.975) == pytest.approx(np.hypot(2.05, 0.05), rel=0.02)
    far = np.hypot(1.525, 0.525) + 1.0 + np.hypot(1.525, 0.475)
    assert far <= at(-1.025, -1.025) <= 1.06 * far
    along_path = np.array([at(*UMAZE.cell_to_xy(np.array(c))) for c in UMAZE.shortest_path((3, 1), GOAL)])
    assert (np.diff(along_path) < 0.1).all() and (along_path[:-2] - along_path[2:] > 0.5).all()
    with pytest.raises(UserError, match="wall"):
        UMAZE.distance_field(np.array([0.0, 0.0]))


def test_controller_drives_the_env_to_the_goal():
    env = make_maze_env("umaze", max_episode_steps=400)
    obs, _ = env.reset(seed=0, options={"reset_cell": np.array([3, 1]), "goal_cell": np.array(GOAL)})
    controller, goal_xy = WaypointController(UMAZE), UMAZE.cell_to_xy(np.array(GOAL))
    positions = [obs["observation"][:2]]
    for _ in range(400):
        obs, *_ = env.step(controller(obs["observation"], goal_xy))
        positions.append(obs["observation"][:2])
    positions = np.array(positions)
    distances = np.linalg.norm(positions - goal_xy, axis=1)
    assert distances[0] > 1.5 and not UMAZE.in_wall(positions).any()
    assert np.argmax(distances < 0.1) < 250  # reaches the goal along the U ...
    assert (distances[300:] < 0.02).all()  # ... and hovers there
    assert positions[:, 0].max() > 0.5  # it went around the inner wall, through the right arm
    env.close()


def test_open_maze_env_and_geometry_agree():
    """maze2d_open: PointMaze's open arena (3 x 5 free cells), episodes of 150 steps as D4RL's maze2d-open."""
    import numpy as np

    from relreward_cli.envs.maze import MazeGeometry
    from relreward_cli.envs.registry import environment, make_env

    geometry = MazeGeometry.from_name("open")
    assert len(geometry.free_cells()) == 15 and environment("maze2d_open").max_episode_steps == 150
    env = make_env("maze2d_open")
    try:
        obs, _ = env.reset(seed=0, options={"goal_cell": np.array([2, 3])})
        assert not geometry.in_wall(obs["observation"][None, :2])[0]
        assert np.allclose(obs["desired_goal"], geometry.cell_to_xy(np.array([2, 3])), atol=0.3)
    finally:
        env.close()


def _world_noise(cfg, t: int) -> float:
    """The noise of diffusion step t relative to the signal (sigma_t / sqrt(alpha_bar_t), normalized units) in
    world units: times the geometric mean over x and y of the limits normalizer's scale, which for generated
    Maze2D data is the free space's half extent less the 0.25 margin the ball keeps from the walls."""
    from relreward_cli.diffusion.schedule import NoiseSchedule

    alpha_bar = float(NoiseSchedule(cfg.diffusion.n_steps, cfg.diffusion.schedule).alpha_bars[t])
    free = MazeGeometry.from_name(cfg.env.maze).free_cells()
    half_extents = [(free[:, axis].max() - free[:, axis].min() + 1) / 2 - 0.25 for axis in (0, 1)]
    return ((1 - alpha_bar) / alpha_bar) ** 0.5 * float(np.sqrt(np.prod(half_extents)))


def test_every_maze_reports_at_the_world_noise_of_the_umaze_report_time():
    """report_t is chosen once (U-maze, goal (1,1), seed 0); the other mazes read the reward at the step whose
    noise spans the same world distance, not at a t tuned on their own results."""
    from hydra import compose, initialize_config_dir

    from relreward_cli.cli import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfgs = {maze: compose("extract", [f"env=maze2d_{maze}"]) for maze in MAZE_MAPS}
    umaze = cfgs["umaze"]
    assert umaze.extract.report_t == 10
    target = _world_noise(umaze, umaze.extract.report_t)
    assert 1.4 < target < 1.55  # world units: about one and a half cells
    for maze, cfg in cfgs.items():
        steps = range(cfg.diffusion.n_steps - 1)
        nearest = min(steps, key=lambda t, cfg=cfg: abs(_world_noise(cfg, t) - target))
        assert cfg.extract.report_t == nearest, (maze, [round(_world_noise(cfg, t), 2) for t in steps])


def test_ties_between_shortest_paths_follow_d4rl_order_or_are_drawn_at_random():
    """In the open arena every monotone staircase is a shortest path: D4RL's controller always takes the same one
    (up first), a path_rng spreads over several, each still shortest and made of 4-neighbour steps."""
    arena = MazeGeometry.from_name("open")
    start, goal = (3, 5), (1, 1)
    length = int(arena.cell_distances(goal)[start]) + 1
    assert arena.shortest_path(start, goal)[:3] == [(3, 5), (2, 5), (1, 5)]  # up first, then along the top row
    paths = {tuple(arena.shortest_path(start, goal, np.random.default_rng(seed))) for seed in range(20)}
    assert len(paths) > 3
    for path in paths:
        assert len(path) == length and path[0] == start and path[-1] == goal
        assert all(abs(r1 - r2) + abs(c1 - c2) == 1 for (r1, c1), (r2, c2) in zip(path[:-1], path[1:], strict=True))
    assert UMAZE.shortest_path((3, 1), GOAL, np.random.default_rng(0)) == UMAZE.shortest_path((3, 1), GOAL)


def test_the_open_arena_breaks_path_ties_at_random_in_its_own_dataset_version():
    """The open arena's recipe differs from D4RL's fixed order, so its datasets are v1 (v0 made the other way stays
    valid beside it); the walled mazes keep D4RL's order and v0."""
    from hydra import compose, initialize_config_dir

    from relreward_cli.cli import CONFIG_DIR
    from relreward_cli.families.maze2d import generation

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        arena, umaze = (compose("pipeline", [f"env={name}"]) for name in ("maze2d_open", "maze2d_umaze"))
    assert generation(arena, "expert", arena.env.generate.expert, seed=1).path_ties == "random"
    assert arena.env.expert_data.endswith("-v1") and arena.env.base_data.endswith("-v1")
    assert generation(umaze, "expert", umaze.env.generate.expert, seed=1).path_ties == "first"
    assert umaze.env.expert_data.endswith("-v0")


def test_each_goal_of_a_maze_has_run_folders_of_its_own():
    """Run folder names carry the goal (the datasets' ids do too), so that running a second goal of one maze by hand
    neither sets the first goal's run aside nor reuses it; envs without goals keep the plain env name."""
    from hydra import compose, initialize_config_dir

    from relreward_cli.cli import CONFIG_DIR

    def run_dirs(stage: str, overrides: list[str]) -> str:
        cfg = compose(stage, overrides, return_hydra_config=True)
        return cfg.hydra.run.dir

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        assert run_dirs("pipeline", []) == "runs/pipeline/maze2d_umaze-r1c1-s0"
        assert run_dirs("pipeline", ["env.goal_cell=[3,1]", "seed=2"]) == "runs/pipeline/maze2d_umaze-r3c1-s2"
        assert run_dirs("train_diffusion", ["env=maze2d_medium", "env.goal_cell=[3,4]", "experiment=smoke"]) \
            == "runs/train-diffusion/smoke-maze2d_medium-r3c4-s0-base"
        assert run_dirs("make_dataset", ["env=maze2d_large", "env.goal_cell=[5,4]"]) \
            == "runs/make-dataset/maze2d_large-r5c4"
        steer = compose("steer_eval", ["env.goal_cell=[1,2]"])
        assert steer.pipeline_dir == "runs/pipeline/maze2d_umaze-r1c2-s0"
        # where extract and steer-eval look for the stand-alone runs of a name is where those runs are made
        stand_alone = stage_folders(Path("runs"), "maze2d_umaze-r1c2-s0")
        assert run_dirs("train_diffusion", ["env.goal_cell=[1,2]", "kind=expert"]) \
            == str(stand_alone["expert_model"])
        assert run_dirs("extract", ["env.goal_cell=[1,2]"]) == str(stand_alone["reward_model"])
        assert run_dirs("pipeline", ["env=hopper"]) == "runs/pipeline/hopper-s0"
