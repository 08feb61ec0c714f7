"""Matplotlib figures a person would rather look at than read: plans on the maze, reward heatmaps."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WALL_COLOR = "#3b3b3b"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-writing backend (Agg), imported at the first figure: a command that draws
    nothing (a refused config, ``--help``) does not pay for it."""
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def draw_maze(ax: Axes, geometry, resolution: float = 0.02) -> None:
    """Draw the maze's walls (from ``geometry.in_wall``) in world coordinates on ``ax``."""
    xmin, xmax, ymin, ymax = geometry.bounds()
    xs = np.arange(xmin, xmax, resolution) + resolution / 2
    ys = np.arange(ymin, ymax, resolution) + resolution / 2
    gx, gy = np.meshgrid(xs, ys)
    walls = geometry.in_wall(np.stack([gx.ravel(), gy.ravel()], -1)).reshape(gx.shape)
    ax.imshow(np.ma.masked_where(~walls, walls), origin="lower", extent=(xmin, xmax, ymin, ymax),
              cmap=matplotlib.colors.ListedColormap([WALL_COLOR]), interpolation="nearest", zorder=3)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_maze_plans(geometry, plans_xy: np.ndarray, goal_xy: Sequence[float] | None, path: Path,
                    title: str = "") -> Path:
    """Draw plans ``(N, horizon, 2)`` (world x, y) on the maze, start dots and the goal star."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    _draw_trajectories(ax, geometry, plans_xy, goal_xy, title)
    return save_figure(fig, path)


def _draw_trajectories(ax: Axes, geometry, paths_xy: Sequence[np.ndarray], goal_xy: Sequence[float] | None,
                       title: str) -> None:
    """The maze with paths (each ``(T, 2)`` world x, y) coloured by time, start dots and the goal star."""
    plt = pyplot()
    draw_maze(ax, geometry)
    for trajectory in paths_xy:
        colors = plt.cm.viridis(np.linspace(0, 1, len(trajectory)))
        ax.plot(trajectory[:, 0], trajectory[:, 1], color="0.6", lw=0.6, zorder=1)
        ax.scatter(trajectory[:, 0], trajectory[:, 1], c=colors, s=4, zorder=2)
        ax.scatter(trajectory[0, 0], trajectory[0, 1], c="white", edgecolors="k", s=18, zorder=4)
    if goal_xy is not None:
        ax.scatter([goal_xy[0]], [goal_xy[1]], marker="*", c="red", s=160, edgecolors="k", zorder=5)
    ax.set_title(title, fontsize=9)


def plot_maze_paths(geometry, paths_xy: dict[str, Sequence[np.ndarray]], goal_xy: Sequence[float] | None,
                    path: Path) -> Path:
    """One maze panel per named set of executed paths (each ``(T, 2)`` world x, y), side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(paths_xy), figsize=(4 * len(paths_xy), 4.2), squeeze=False)
    for ax, (name, paths) in zip(axes[0], paths_xy.items(), strict=True):
        _draw_trajectories(ax, geometry, paths, goal_xy, name)
    return save_figure(fig, path)


def plot_episode_returns(returns: dict[str, np.ndarray], path: Path, ylabel: str = "return") -> Path:
    """Each named set of episode returns ``(E,)`` as dots over its episode index, its mean as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for index, (name, values) in enumerate(returns.items()):
        color = f"C{index}"
        ax.plot(np.arange(len(values)), values, "o", ms=4, color=color, label=name)
        ax.axhline(float(np.mean(values)), color=color, ls="--", lw=1)
    ax.set_xlabel("episode")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _standardize(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    free = values[mask]
    out = (values - free.mean()) / (free.std() + 1e-12)
    return np.where(mask, out, np.nan)


def plot_reward_maps(geometry, xs: np.ndarray, ys: np.ndarray, learned: np.ndarray, truth: np.ndarray,
                     free_mask: np.ndarray, t_values: Sequence[int], correlations: Sequence[float],
                     goal_xy: Sequence[float], path: Path) -> Path:
    """One row per diffusion time: learned reward | ground truth | difference, standardized over free space.

    Args:
        xs, ys: grid coordinates (world units), ``learned`` is ``(len(t_values), len(ys), len(xs))``,
            ``truth`` and ``free_mask`` are ``(len(ys), len(xs))``.
    """
    plt = pyplot()
    rows = len(t_values)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 3.2 * rows), squeeze=False)
    extent = (xs[0], xs[-1], ys[0], ys[-1])
    truth_z = _standardize(truth, free_mask)
    for row, (t, rho) in enumerate(zip(t_values, correlations, strict=True)):
        learned_z = _standardize(learned[row], free_mask)
        panels = [(learned_z, f"learned reward, t={t} (Pearson {rho:.3f})", "viridis"),
                  (truth_z, "ground truth: -geodesic distance", "viridis"),
                  (learned_z - truth_z, "learned - truth (standardized)", "coolwarm")]
        for ax, (image, title, cmap) in zip(axes[row], panels, strict=True):
            lim = np.nanmax(np.abs(image)) if cmap == "coolwarm" else None
            im = ax.imshow(image, origin="lower", extent=extent, cmap=cmap, interpolation="nearest",
                           vmin=-lim if lim else None, vmax=lim)
            draw_maze(ax, geometry)
            ax.scatter([goal_xy[0]], [goal_xy[1]], marker="*", c="red", s=120, edgecolors="k", zorder=5)
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def plot_segment_rewards(learned: np.ndarray, returns: np.ndarray, is_expert: np.ndarray, t: int, rho: float,
                         path: Path) -> Path:
    """Learned reward ``(N,)`` of dataset segments against their env return ``(N,)``, base and expert
    segments (``is_expert`` ``(N,)`` bool) in two colours."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for index, (name, mask) in enumerate((("base data", ~is_expert), ("expert data", is_expert))):
        ax.scatter(returns[mask], learned[mask], s=4, alpha=0.5, color=f"C{index}", label=name)
    ax.set_xlabel("env return of the segment")
    ax.set_ylabel(f"learned reward, t={t}")
    ax.set_title(f"dataset segments (Pearson {rho:.3f})", fontsize=9)
    ax.legend(fontsize=8, markerscale=3)
    return save_figure(fig, path)


def plot_curve(steps: Sequence[float], series: dict[str, Sequence[float]], path: Path, xlabel: str,
               ylabel: str, title: str = "", logy: bool = False) -> Path:
    """Line plot of one or more named series against ``steps``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, values in series.items():
        ax.plot(steps, values, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path, dpi: int = 110, title_space_in: float = 0.0) -> Path:
    """Lay out, save (creating the folder) and close ``fig``; ``title_space_in`` inches stay free on top for a
    suptitle."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, 1 - title_space_in / fig.get_figheight()))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_class_rewards(classes: np.ndarray, means: np.ndarray, sems: np.ndarray, highlighted: set[int], path: Path,
                       title: str) -> Path:
    """Bar chart of the mean reward per class ``(K,)`` with standard-error bars ``(K,)``; the ``highlighted``
    classes (the expert's) in a second colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    is_expert = np.array([int(c) in highlighted for c in classes], dtype=bool)
    positions = np.arange(len(classes))
    for index, (name, mask) in enumerate((("other classes", ~is_expert), ("expert's classes", is_expert))):
        if mask.any():
            ax.bar(positions[mask], np.asarray(means)[mask], yerr=np.asarray(sems)[mask], color=f"C{index}",
                   capsize=3, label=name)
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_xticks(positions, [str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("mean reward (± s.e.)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_image_grid(rows: dict[str, np.ndarray], path: Path, title: str,
                    captions: dict[str, list[str]] | None = None) -> Path:
    """One row of small grey images per named entry (each ``(n, 8, 8)`` raw pixels in [0, 16]), the name as the
    row's label and an optional caption under each image (e.g. its reward)."""
    plt = pyplot()
    n_cols = max(1, max((len(images) for images in rows.values()), default=1))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.9 * n_cols + 1.2, 1.35 * len(rows) + 0.4),
                             squeeze=False)
    for row_axes, (name, images) in zip(axes, rows.items(), strict=True):
        row_captions = (captions or {}).get(name, [])
        for col, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(images):
                ax.axis("off")
                continue
            ax.imshow(images[col], cmap="gray_r", vmin=0.0, vmax=16.0, interpolation="nearest")
            if col < len(row_captions):
                ax.set_xlabel(row_captions[col], fontsize=6)
        row_axes[0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, title_space_in=0.3)


def plot_class_shares(classes: np.ndarray, shares: dict[str, np.ndarray], highlighted: set[int], path: Path,
                      title: str) -> Path:
    """Grouped bars: the share of each class ``(K,)`` among the samples of each named sampler; the ``highlighted``
    classes' ticks marked with an asterisk."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    positions, width = np.arange(len(classes)), 0.8 / max(len(shares), 1)
    for index, (name, values) in enumerate(shares.items()):
        ax.bar(positions + (index - (len(shares) - 1) / 2) * width, values, width, label=name, color=f"C{index}")
    ax.set_xticks(positions, [f"{c}*" if int(c) in highlighted else str(c) for c in classes])
    ax.set_xlabel("class (* the expert's)")
    ax.set_ylabel("share of samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
