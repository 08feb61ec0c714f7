"""Maze geometry of gymnasium-robotics PointMaze: cells, walls, shortest paths, geodesic distances, and the
D4RL waypoint controller that drives the point mass along shortest paths."""

from __future__ import annotations

import numbers
from collections import deque
from dataclasses import dataclass

import numpy as np
from gymnasium_robotics.envs.maze import maps
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from relreward_cli.errors import UserError

MAZE_MAPS: dict[str, np.ndarray] = {
    name: np.array(layout, dtype=np.int64)
    for name, layout in (("open", maps.OPEN), ("umaze", maps.U_MAZE), ("medium", maps.MEDIUM_MAZE),
                         ("large", maps.LARGE_MAZE))
}

NEIGHBORS = ((-1, 0), (1, 0), (0, -1), (0, 1))

Cell = tuple[int, int]


@dataclass(frozen=True, eq=False)
class MazeGeometry:
    """Walls of a maze in PointMaze's world frame (world units, PointMaze uses `scaling` = 1).

    `maze_map` is a (rows, cols) int array, 1 = wall. Cell (row, col) is a `scaling`-wide square centred at
    x = (col + 0.5 - cols / 2) * scaling, y = (rows / 2 - row - 0.5) * scaling: x grows with the column and
    y decreases with the row, as `gymnasium_robotics.envs.maze.maze_v4.Maze.cell_rowcol_to_xy` does.
    """

    maze_map: np.ndarray
    scaling: float = 1.0

    @classmethod
    def from_name(cls, maze: str) -> MazeGeometry:
        if maze not in MAZE_MAPS:
            raise UserError(f"Unknown maze '{maze}'. Choose one of: {', '.join(MAZE_MAPS)}.")
        return cls(MAZE_MAPS[maze])

    @property
    def shape(self) -> tuple[int, int]:
        return self.maze_map.shape

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the whole maze, outer walls included."""
        half_width, half_height = self.shape[1] / 2 * self.scaling, self.shape[0] / 2 * self.scaling
        return -half_width, half_width, -half_height, half_height

    def cell_to_xy(self, cells: np.ndarray) -> np.ndarray:
        """Cell centres: (..., 2) int (row, col) -> (..., 2) float (x, y)."""
        cells = np.asarray(cells)
        rows, cols = self.shape
        x = (cells[..., 1] + 0.5 - cols / 2) * self.scaling
        y = (rows / 2 - cells[..., 0] - 0.5) * self.scaling
        return np.stack([x, y], axis=-1)

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """Cells holding points: (..., 2) float (x, y) -> (..., 2) int (row, col), possibly off the map."""
        xy = np.asarray(xy, dtype=np.float64)
        rows, cols = self.shape
        row = np.floor(rows / 2 - xy[..., 1] / self.scaling)
        col = np.floor(xy[..., 0] / self.scaling + cols / 2)
        return np.stack([row, col], axis=-1).astype(np.int64)

    def free_cells(self) -> np.ndarray:
        """(K, 2) int (row, col) of every free cell, row-major."""
        return np.argwhere(self.maze_map == 0)

    def in_wall(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) points -> (N,) bool: True inside a wall block or outside the maze."""
        cells = self.xy_to_cell(xy)
        rows, cols = self.shape
        inside = (cells[..., 0] >= 0) & (cells[..., 0] < rows) & (cells[..., 1] >= 0) & (cells[..., 1] < cols)
        blocked = ~inside
        blocked[inside] = self.maze_map[cells[inside][:, 0], cells[inside][:, 1]] == 1
        return blocked

    def is_free(self, cell: Cell) -> bool:
        (row, col), (rows, cols) = cell, self.shape
        return 0 <= row < rows and 0 <= col < cols and self.maze_map[row, col] == 0

    def check_free(self, cell) -> Cell:
        """The cell as a (row, col) tuple of ints, or a UserError if it is not two integers, a wall or off the map."""
        def refuse(why: str) -> UserError:
            return UserError(f"Cell {why} (rows count down from the top, 1 = wall). Pick one of the free cells: "
                             f"{[tuple(c) for c in self.free_cells().tolist()]}.")

        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in cell):
            raise refuse(f"{list(cell)} is not a cell of a maze: a cell is [row, col], two integers")
        cell = tuple(int(c) for c in cell)
        if len(cell) != 2 or not self.is_free(cell):
            raise refuse(f"{cell} is not a free cell of this {self.shape[0]}x{self.shape[1]} maze")
        return cell

    def cell_distances(self, goal_cell) -> np.ndarray:
        """BFS over 4-connected free cells: (rows, cols) float steps to `goal_cell`, inf for walls and
        unreachable cells."""
        goal = self.check_free(goal_cell)
        dist = np.full(self.shape, np.inf)
        dist[goal] = 0.0
        queue = deque([goal])
        while queue:
            row, col = queue.popleft()
            for d_row, d_col in NEIGHBORS:
                neighbor = (row + d_row, col + d_col)
                if self.is_free(neighbor) and np.isinf(dist[neighbor]):
                    dist[neighbor] = dist[row, col] + 1
                    queue.append(neighbor)
        return dist

    def shortest_path(self, start_cell, goal_cell, rng: np.random.Generator | None = None) -> list[Cell]:
        """Cells from `start_cell` to `goal_cell` inclusive, each a 4-neighbour of the one before. Where several
        neighbours are equally near the goal, the first in `NEIGHBORS` order (up, down, left, right) is taken, as
        D4RL's controller does (in open space its paths run along one row or column first), or, given `rng`, one
        drawn uniformly."""
        start = self.check_free(start_cell)
        dist = self.cell_distances(goal_cell)
        if np.isinf(dist[start]):
            raise UserError(f"Cell {start} cannot reach cell {tuple(goal_cell)}: a wall separates them.")
        path = [start]
        while dist[path[-1]] > 0:
            row, col = path[-1]
            nearer = [cell for d_row, d_col in NEIGHBORS if self.is_free(cell := (row + d_row, col + d_col))
                      and dist[cell] == dist[row, col] - 1]
            path.append(nearer[0] if rng is None else nearer[rng.integers(len(nearer))])
        return path

    def distance_field(
        self, goal_xy: np.ndarray, resolution: float = 0.05
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Maze-geodesic distance (world units) to `goal_xy` from a fine grid over the maze.

        Dijkstra on a 16-connected grid (steps (0, 1), (1, 1), (1, 2) and their mirrors) of points spaced
        about `resolution` apart (cell-centred, tiling `bounds()`), restricted to free space: a step is
        allowed when every grid point in the box spanned by its two ends is free, so no step cuts a wall
        corner. Grid paths overestimate free-space distances by a few percent (4% around the U-maze's wall).

        Returns xs (nx,), ys (ny,) ascending, dist (ny, nx) with dist[i, j] at (xs[j], ys[i]) (NaN in walls,
        inf where unreachable) and free_mask (ny, nx) bool.
        """
        goal_xy = np.asarray(goal_xy, dtype=np.float64)
        if self.in_wall(goal_xy[None])[0]:
            raise UserError(f"Goal {goal_xy.tolist()} lies in a wall or outside the maze {self.bounds()}.")
        xmin, xmax, ymin, ymax = self.bounds()
        nx, ny = int(np.ceil((xmax - xmin) / resolution)), int(np.ceil((ymax - ymin) / resolution))
        dx, dy = (xmax - xmin) / nx, (ymax - ymin) / ny
        xs, ys = xmin + (np.arange(nx) + 0.5) * dx, ymin + (np.arange(ny) + 0.5) * dy
        free = ~self.in_wall(np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)).reshape(ny, nx)
        node = np.full((ny, nx), -1)
        node[free] = np.arange(free.sum())
        padded = np.pad(free, 2)

        def free_at(di: int, dj: int) -> np.ndarray:  # free[i + di, j + dj] at every (i, j), False off grid
            return padded[2 + di : 2 + di + ny, 2 + dj : 2 + dj + nx]

        sources, targets, weights = [], [], []
        for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1), (1, 2), (2, 1), (2, -1), (1, -2)):
            box = [free_at(i, j) for i in range(di + 1) for j in range(min(0, dj), max(0, dj) + 1)]
            rows, cols = np.nonzero(np.logical_and.reduce(box))
            sources.append(node[rows, cols])
            targets.append(node[rows + di, cols + dj])
            weights.append(np.full(len(rows), np.hypot(di * dy, dj * dx)))

        # a virtual source node joined to the free grid points around the goal by straight segments
        source = int(free.sum())
        j0, i0 = int((goal_xy[0] - xs[0]) // dx), int((goal_xy[1] - ys[0]) // dy)
        corners = [(i, j) for i in (i0, i0 + 1) for j in (j0, j0 + 1) if 0 <= i < ny and 0 <= j < nx]
        corners = [corner for corner in corners if free[corner]]
        sources.append(np.full(len(corners), source))
        targets.append(np.array([node[c] for c in corners]))
        weights.append(np.array([np.hypot(xs[j] - goal_xy[0], ys[i] - goal_xy[1]) for i, j in corners]))

        edges = (np.concatenate(sources), np.concatenate(targets))
        graph = csr_matrix((np.concatenate(weights), edges), shape=(source + 1, source + 1))
        dist = np.full((ny, nx), np.nan)
        dist[free] = dijkstra(graph, directed=False, indices=source)[:source]
        return xs, ys, dist, free


class WaypointController:
    """D4RL's maze2d data-collection controller: PD control along the BFS cell path to a target.

    Waypoints are the centres of the path's cells after the current one, then the exact target. The action is
    `p_gain * (waypoint - pos) - d_gain * vel`, clipped to [-1, 1]; the controller moves on to the next
    waypoint within `waypoint_radius` (world units) of the current one, replans when the target changes or
    when the point leaves the planned path (action noise can push it into another cell), and hovers at the
    target once there.
    """

    def __init__(
        self, geometry: MazeGeometry, p_gain: float = 10.0, d_gain: float = 1.0, waypoint_radius: float = 0.1,
        path_rng: np.random.Generator | None = None,
    ):
        """`path_rng`: breaks ties between equally short cell paths at random (None: D4RL's fixed order; see
        :meth:`MazeGeometry.shortest_path`)."""
        self.geometry, self.p_gain, self.d_gain = geometry, p_gain, d_gain
        self.waypoint_radius, self.path_rng = waypoint_radius, path_rng
        self.reset()

    def reset(self) -> None:
        self.target: np.ndarray | None = None
        self.path: list[Cell] = []
        self.waypoints = np.zeros((0, 2))
        self.index = 0  # heading to waypoints[index], i.e. the centre of path[index + 1] (or the target)

    def plan(self, position: np.ndarray, target: np.ndarray) -> None:
        start, goal = self.geometry.xy_to_cell(np.stack([position, target]))
        self.target, self.path, self.index = target.copy(), self.geometry.shortest_path(start, goal, self.path_rng), 0
        self.waypoints = np.concatenate([self.geometry.cell_to_xy(np.array(self.path[1:-1]).reshape(-1, 2)),
                                         target[None]])

    def __call__(self, observation: np.ndarray, target: np.ndarray) -> np.ndarray:
        """observation (>= 4,) = x, y, vx, vy (world units, per second); target (2,) xy -> action (2,)."""
        position, velocity = observation[:2], observation[2:4]
        target = np.asarray(target, dtype=np.float64)
        cell = tuple(self.geometry.xy_to_cell(position).tolist())
        new_target = self.target is None or not np.array_equal(target, self.target)
        if new_target or cell not in self.path[self.index :]:
            self.plan(position, target)
        near = np.linalg.norm(self.waypoints[self.index] - position) < self.waypoint_radius
        if near and self.index < len(self.waypoints) - 1:
            self.index += 1
        action = self.p_gain * (self.waypoints[self.index] - position) - self.d_gain * velocity
        return np.clip(action, -1.0, 1.0)
