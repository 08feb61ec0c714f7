"""``relreward report <sweep folder>``: the results of a sweep as a Markdown table and figures.

A sweep folder (``runs/multirun/pipeline`` after ``relreward pipeline --multirun ...``) holds one run
folder per job, each with ``config.yaml`` and, once finished, ``metrics.json``. The runs are grouped by
task (the env, plus any other swept override that is not the seed), and every metric is reported as the
mean and standard error over the seeds of a task:

- Maze2D: the Pearson correlation of the learned reward with the ground truth (at the best diffusion time
  and at t=0), and, when the pipeline ran steer-eval, the success rates of the planners;
- locomotion: the D4RL-normalized scores of the base, guided, ranked, guided_ranked and expert planners, and the
  paired differences of the reward planners to base (normalized score points).

A task with a single run (one steer-eval over several ``steer.seeds``) shows that run's own standard error over
its episodes (over paired episodes for the differences) instead.

Written next to the runs (or into ``--out``): ``report.md`` (the tables), ``report_bars.png`` (bar charts
with standard-error bars) and ``reward_maps_grid.png`` (the reward heatmap of every run, tasks by seeds).
With ``--wandb`` and W&B credentials, runs without a local ``metrics.json`` are filled from the summaries
of their W&B group; without network or credentials this is skipped with a note, never an error.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relreward_cli.errors import ERROR_FILE, UserError
from relreward_cli.plots import pyplot, save_figure
from relreward_cli.provenance import PROVENANCE_FILE
from relreward_cli.tracking import RUN_OVERRIDES

log = logging.getLogger(__name__)

# (column title, metrics.json key, bar-chart panel). A column appears when some run has its key.
PLANNER_COLUMNS = ("base", "guided", "ranked", "guided_ranked", "expert")  # steer-eval's planners
REWARD_PLANNER_COLUMNS = ("guided", "ranked", "guided_ranked")
COLUMNS: list[tuple[str, str, str]] = [
    ("reward corr., resting (report t)", "headline/pearson", "reward correlation (Pearson r)"),
    ("reward corr., binned (report t)", "headline/binned_pearson", "reward correlation (Pearson r)"),
    ("accuracy (report t)", "headline/accuracy", "held-out accuracy"),
    ("AUROC (report t)", "headline/auroc", "held-out AUROC"),
    ("reward corr. (best t)", "pearson/best", "reward correlation (Pearson r)"),
    ("reward corr. (t=0)", "pearson/t0", "reward correlation (Pearson r)"),
    *[(f"{name} score", f"{name}/score_mean", "normalized score") for name in PLANNER_COLUMNS],
    *[(f"{name} − base", f"{name}/vs_base_score_mean", "paired score difference to base")
      for name in REWARD_PLANNER_COLUMNS],
    *[(f"{name} success", f"{name}/success_rate", "success rate") for name in PLANNER_COLUMNS],
    *[(f"{name} expert share", f"{name}/expert_share", "share of the expert's classes (images)")
      for name in PLANNER_COLUMNS],
]
# Overrides that never define a task: the seed (averaged over) and settings that do not change results.
NOT_TASK_KEYS = ("seed", "run_root", "data_dir", "device", "threads", "base_model", "expert_model", "reward_model",
                 "pipeline_dir", "models_from", "overwrite")  # and logger.*
SIZE_ORDER = ("open", "umaze", "medium", "large")
HIDDEN = (".", "__")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    overrides: list[str] | None = None
    task: str = ""

    @property
    def seed(self) -> Any:
        """The run's seed; for a steer-eval run, the evaluation seeds its episodes come from (e.g. ``eval 1/2/3``)."""
        steer = self.config.get("steer")
        if self.config.get("stage") == "steer-eval" and isinstance(steer, dict) and steer.get("seeds"):
            return "eval " + "/".join(str(seed) for seed in steer["seeds"])
        return self.config.get("seed")

    @property
    def env(self) -> str:
        env = self.config.get("env")
        return str(env.get("name")) if isinstance(env, dict) else str(env or "?")

    def value(self, key: str) -> float | None:
        if self.metrics is None or key not in self.metrics:
            return None
        try:
            value = float(self.metrics[key])
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    @property
    def state(self) -> str:
        """``finished``, ``failed: <reason>`` (the run's ``error.txt``, written when a stage refused its input or
        failed), or ``running, killed or failed without a message``."""
        if self.metrics is not None:
            return "finished"
        errors = sorted(self.path.rglob(ERROR_FILE))
        if errors:
            reason = errors[0].read_text(errors="replace").strip().splitlines() or ["(no message)"]
            return f"failed: {reason[0][:200]}"
        return "running, killed or failed without a message"

    def heatmap(self) -> Path | None:
        """The run's reward map, from its own folder (a copied or moved sweep's runs keep theirs; the absolute path in
        ``metrics.json`` may name the original's), else from that path."""
        candidates = [self.path / "extract" / "plots" / "reward_maps.png", self.path / "plots" / "reward_maps.png"]
        if self.metrics and isinstance(self.metrics.get("heatmap"), str):
            recorded = Path(self.metrics["heatmap"])
            candidates.append(recorded if recorded.is_absolute() else self.path / recorded)
        return next((p for p in candidates if p.is_file()), None)


@dataclass
class Report:
    sweep: Path
    runs: list[Run]
    tasks: dict[str, list[Run]] = field(default_factory=dict)
    columns: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        """The sweep folder's last two parts (``multirun/pipeline``, ``sweeps/paper_maze2d``)."""
        return "/".join(self.sweep.resolve().parts[-2:])

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.metrics is not None]


def _read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


MAX_RUN_DEPTH = 6
"""How many folders below the report's folder a run folder may lie (``runs/multirun/pipeline/<job>`` is 3 below
``runs``); deeper folders are not searched, so that ``relreward report ~`` ends."""


def find_runs(sweep: Path) -> list[Run]:
    """Every run folder under ``sweep`` (at most :data:`MAX_RUN_DEPTH` below it): the outermost folders holding a
    relreward ``config.yaml`` (one with an env and a seed; the stage folders inside a pipeline run, and hidden
    ``.hydra``/``.submitit``/``wandb`` folders, are not runs of their own)."""
    runs: list[Run] = []
    for dirpath, dirnames, filenames in os.walk(sweep):
        here = Path(dirpath)
        hydra_job = (here / ".hydra" / "config.yaml").is_file()
        deep_enough = len(here.relative_to(sweep).parts) >= MAX_RUN_DEPTH
        dirnames[:] = [] if deep_enough else sorted(d for d in dirnames if not d.startswith(HIDDEN) and d != "wandb")
        if "config.yaml" not in filenames and not hydra_job:
            continue
        config, metrics = {}, None
        try:  # a job that died before its stage wrote config.yaml still has Hydra's copy
            config = _read_yaml(here / ("config.yaml" if "config.yaml" in filenames else ".hydra/config.yaml")) or {}
            if isinstance(config, dict) and not {"env", "seed"} <= config.keys():
                continue  # another program's config.yaml: look further down
            if not isinstance(config, dict):
                raise ValueError("its config.yaml does not hold a mapping")
            metrics = json.loads((here / "metrics.json").read_text()) if "metrics.json" in filenames else None
            if "metrics.json" in filenames and not isinstance(metrics, dict):  # `null` too
                raise ValueError("its metrics.json does not hold a mapping")
        except Exception as err:  # a half-written file of a run in progress: report it as unfinished
            log.warning("Leaving out the results of %s, which cannot be read (%s)", here, err)
            config, metrics = (config if isinstance(config, dict) else {}), None
        dirnames[:] = []  # the stage folders of a pipeline run are part of it
        if ERROR_FILE in filenames and metrics is not None:
            # Its last attempt failed after an earlier one finished, having changed what it held (a refusal that
            # leaves the finished run as it was writes no error.txt): the earlier results are not the run's now.
            log.warning("%s: its last attempt failed (%s); its earlier results are left out", here, ERROR_FILE)
            metrics = None
        overrides_file = here / RUN_OVERRIDES  # the finished attempt's own; else the last attempt's (Hydra's copy)
        if not overrides_file.is_file() or metrics is None:
            overrides_file = here / ".hydra" / "overrides.yaml"
        overrides = _read_yaml(overrides_file) if overrides_file.is_file() else None
        runs.append(Run(here, config, metrics, overrides))
    return runs


def _task_overrides(run: Run) -> list[str]:
    def telling(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return "=" in override and key != "env" and key not in NOT_TASK_KEYS and not key.startswith("logger.")

    return [o for o in (run.overrides or []) if telling(o)]


def label_tasks(runs: list[Run]) -> None:
    """Set ``run.task``: the env name, plus the stage when runs of one env come from several (a pipeline beside a
    stand-alone extract of its models is not a second seed), plus the swept overrides (other than the seed) that
    tell runs of one env apart. A sweep over ``env`` x ``seed`` gives one task per env (overrides set per env, like
    the paper's per-maze horizon, stay out of the label); a sweep over, say, ``steer.scale`` as well keeps each
    scale apart."""
    parsed = [dict(o.split("=", 1) for o in _task_overrides(run)) for run in runs]
    keys = {key for overrides in parsed for key in overrides}
    by_env: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for run, overrides in zip(runs, parsed, strict=True):
        by_env[run.env]["stage"].add(run.config.get("stage"))
        for key in keys:
            by_env[run.env][key].add(overrides.get(key))
    telling = sorted(key for key in keys if any(len(values[key]) > 1 for values in by_env.values()))
    for run, overrides in zip(runs, parsed, strict=True):
        stage = [str(run.config.get("stage"))] if len(by_env[run.env]["stage"]) > 1 else []
        varying = [f"{key}={overrides[key]}" for key in telling if key in overrides]
        run.task = run.env + (f" ({', '.join(stage + varying)})" if stage or varying else "")


def _task_order(task: str) -> tuple:
    sizes = [i for i, size in enumerate(SIZE_ORDER) if size in task.split(" ")[0]]
    return (task.split(" ")[0].split("_")[0], sizes[0] if sizes else len(SIZE_ORDER), task)


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def build_report(sweep: Path) -> Report:
    """Collect and group the runs of ``sweep`` (raises :class:`UserError` when there are none)."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise UserError(f"{sweep} is not a folder. Pass the sweep folder of a --multirun (by default "
                        "runs/multirun/<stage>, the 'sweep output dir' Hydra printed at launch).")
    runs = find_runs(sweep)
    if not runs:
        raise UserError(f"No run folders (folders with a config.yaml) under {sweep}. Pass the sweep folder of a "
                        "--multirun (runs/multirun/pipeline by default) or a folder holding run folders.")
    label_tasks(runs)
    report = Report(sweep, runs)
    for run in sorted(runs, key=lambda r: (_task_order(r.task), str(r.seed))):
        report.tasks.setdefault(run.task, []).append(run)
    report.columns = [col for col in COLUMNS if any(run.value(col[1]) is not None for run in runs)]
    if not report.columns:
        report.notes.append("No run has a known result metric (pearson/*, */score_mean, */success_rate, "
                            "*/expert_share) yet.")
    return report


def _sem_key(key: str) -> str:
    """Where a run keeps the s.e. over its episodes of ``key``: ``guided/score_mean`` -> ``guided/score_sem``,
    ``guided/success_rate`` -> ``guided/success_sem``, ``guided/expert_share`` -> ``guided/expert_share_sem``."""
    for suffix in ("_mean", "_rate"):
        if key.endswith(suffix):
            return key.removesuffix(suffix) + "_sem"
    return key + "_sem"


def _cell(runs: list[Run], key: str) -> str:
    """Mean ± s.e. over the runs' values of ``key``; for one run, ± its own ``*_sem`` (over episodes) if it has one.
    Runs without a finite value (NaN, or the key missing) are counted: ``(n=1 of 2)``."""
    values = [v for run in runs if (v := run.value(key)) is not None]
    if not values:
        return "–"
    some = f" (n={len(values)} of {len(runs)})" if len(values) < len(runs) else ""
    if len(values) > 1:
        return "{:.3f} ± {:.3f}".format(*mean_sem(values)) + some
    sem = runs[0].value(_sem_key(key)) if len(runs) == 1 else None
    return f"{values[0]:.3f}" + (f" ± {sem:.3f}" if sem is not None else "") + some


def _over_tasks(report: Report) -> list[list[str]]:
    """One row per env with two or more finished tasks: for every column, mean ± s.e. over tasks of the task
    means, then the lowest task mean (``worst ...``)."""
    by_env: dict[str, list[list[Run]]] = defaultdict(list)
    for runs in report.tasks.values():
        if done := [run for run in runs if run.metrics is not None]:
            by_env[done[0].env].append(done)
    rows = []
    for env, tasks in by_env.items():
        if len(tasks) < 2:
            continue
        cells = []
        for _, key, _ in report.columns:
            means = [sum(values) / len(values) for runs in tasks
                     if (values := [v for run in runs if (v := run.value(key)) is not None])]
            cells.append("–" if not means else "{:.3f} ± {:.3f}, worst {:.3f}".format(*mean_sem(means), min(means)))
        rows.append([_md_escape(env), str(len(tasks)), *cells])
    return rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: header, separator and rows, each with exactly the header's number of cells."""
    assert all(len(row) == len(header) for row in rows), (header, rows)
    return ["| " + " | ".join(cells) + " |" for cells in (header, ["---"] * len(header), *rows)]


def markdown(report: Report) -> str:
    """The report as Markdown: a summary table (mean ± s.e. over seeds per task), a table per finished run,
    and the runs left out (no metrics.json), each with why when the run recorded it (``error.txt``)."""
    titles = [title for title, _, _ in report.columns]
    lines = [f"# Results: {report.title}", "",
             f"Sweep folder `{report.sweep}`: {len(report.finished)} finished run(s) of {len(report.runs)}. "
             "Mean ± standard error over seeds (s.e. = sample std / sqrt(n)); a task of one run shows its s.e. "
             "over episodes (paired episodes for the differences to base). A cell marked (n=k of m) averages the "
             "k runs where the value is finite; the others gave none (NaN, e.g. a correlation of a constant).", ""]
    summary, per_run = [], []
    for task, runs in report.tasks.items():
        done = [run for run in runs if run.metrics is not None]
        if not done:
            continue
        seeds = ",".join(str(run.seed) for run in done)
        summary.append([_md_escape(task), f"{len(done)} ({seeds})",
                        *(_cell(done, key) for _, key, _ in report.columns)])
        for run in done:
            values = [run.value(key) for _, key, _ in report.columns]
            per_run.append([_md_escape(task), str(run.seed), *(f"{v:.3f}" if v is not None else "–" for v in values),
                            f"`{_md_escape(str(run.path.relative_to(report.sweep)))}`"])
    lines += _table(["task", "seeds", *titles], summary)
    if over := _over_tasks(report):
        lines += ["", "Over the tasks of each env (e.g. a maze's goals): mean ± s.e. over tasks of the per-task means, "
                  "and the worst task.", "", *_table(["env", "tasks", *titles], over)]
    lines += ["", "Per run:", "", *_table(["task", "seed", *titles, "folder"], per_run)]
    left_out = [run for run in report.runs if run.metrics is None]
    if left_out:
        lines += ["", f"Left out: {len(left_out)} run(s) without metrics.json.", ""]
        lines += _table(["task", "seed", "state", "folder"], [
            [_md_escape(run.task), str(run.seed), _md_escape(run.state),
             f"`{_md_escape(str(run.path.relative_to(report.sweep)))}`"] for run in left_out])
    if report.notes:
        lines += [""] + [f"Note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def plot_bars(report: Report, path: Path) -> Path | None:
    """One panel per kind of metric; a group of bars per task; error bars are the standard error."""
    import numpy as np

    plt = pyplot()
    panels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for title, key, panel in report.columns:
        panels[panel].append((title, key))
    if not panels:
        return None
    tasks = list(report.tasks)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 1.6 * len(tasks) + 2) * len(panels), 4.4),
                             squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        width = 0.8 / len(series)
        x = np.arange(len(tasks))
        for i, (title, key) in enumerate(series):
            stats = []
            for task in tasks:
                values = [v for run in report.tasks[task] if (v := run.value(key)) is not None]
                stats.append(mean_sem(values) if values else (np.nan, 0.0))
            means, sems = zip(*stats, strict=True)
            ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=sems, capsize=4, label=title)
        ax.set_xticks(x, [t.replace(" (", "\n(") for t in tasks], fontsize=8)
        ax.set_title(panel)
        ax.axhline(0, color="black", linewidth=0.6)
        if len(series) > 1:  # below the panel, where it hides no bar
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.suptitle(f"{report.title}: mean ± s.e. over seeds")
    return save_figure(fig, path, dpi=120, title_space_in=0.4)


def plot_heatmap_grid(report: Report, path: Path) -> Path | None:
    """Every run's reward heatmap figure (``extract/plots/reward_maps.png``), one row per task and one
    column per seed."""
    rows = {task: [(run.seed, run.heatmap()) for run in runs] for task, runs in report.tasks.items()}
    rows = {task: [(s, p) for s, p in cells if p is not None] for task, cells in rows.items()}
    rows = {task: cells for task, cells in rows.items() if cells}
    if not rows:
        return None
    import matplotlib.image as mpimg
    plt = pyplot()

    n_cols = max(len(cells) for cells in rows.values())
    first = mpimg.imread(next(iter(rows.values()))[0][1])
    aspect = first.shape[0] / first.shape[1]
    cell_w = 6.0
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(cell_w * n_cols, cell_w * aspect * len(rows) + 0.6),
                             squeeze=False)
    for r, (task, cells) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cells):
                seed, image = cells[c]
                ax.imshow(mpimg.imread(image))
                ax.set_title(f"{task} — seed {seed}", fontsize=9)
    fig.suptitle(f"{report.title}: learned reward maps (tasks x seeds)")
    return save_figure(fig, path, title_space_in=0.5)


def plot_goal_grid(report: Report, path: Path) -> Path | None:
    """One column per Maze2D task (e.g. each goal of a goal sweep; its first seed): the learned reward at the run's
    report time over the maze (top: an agent resting at each point; bottom: fresh base trajectories binned by
    position), standardized, the goal starred, the Pearson correlation with minus the maze distance in the title.
    Read from each run's ``extract/plots/reward_maps.npz``."""
    import numpy as np

    from relreward_cli.envs.maze import MazeGeometry
    from relreward_cli.plots import draw_maze

    cells = []
    for task, runs in report.tasks.items():
        arrays = next((run.path / "extract" / "plots" / "reward_maps.npz" for run in runs
                       if (run.path / "extract" / "plots" / "reward_maps.npz").is_file()), None)
        if arrays is not None:
            run = next(run for run in runs if run.path / "extract" / "plots" / "reward_maps.npz" == arrays)
            cells.append((task, run, dict(np.load(arrays))))
    if not cells:
        return None
    plt = pyplot()

    fig, axes = plt.subplots(2, len(cells), figsize=(2.8 * len(cells), 5.6), squeeze=False)
    for column, (task, run, maps) in enumerate(cells):
        geometry, t = MazeGeometry.from_name(str(maps["maze"])), int(maps["report_t"])
        layer = list(maps["t_values"]).index(t)
        for row, (prefix, key) in enumerate((("", "headline/pearson"), ("binned_", "headline/binned_pearson"))):
            ax, mask = axes[row][column], maps[f"{prefix}mask"]
            learned = maps[f"{prefix}learned"][layer]
            image = np.where(mask, (learned - np.nanmean(learned[mask])) / (np.nanstd(learned[mask]) + 1e-12), np.nan)
            xs, ys = maps[f"{prefix}xs"], maps[f"{prefix}ys"]
            ax.imshow(image, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), cmap="viridis",
                      interpolation="nearest")
            draw_maze(ax, geometry)
            ax.scatter(*maps["goal_xy"], marker="*", c="red", s=90, edgecolors="k", zorder=5)
            value = run.value(key)
            ax.set_title(f"{task}\n{'resting' if not prefix else 'binned'} r={value:.2f}" if value is not None
                         else task, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{report.title}: learned reward at the report time, one column per task (standardized)")
    return save_figure(fig, path, title_space_in=0.4)


def fill_from_wandb(report: Report) -> str:
    """Fill runs that lack a local ``metrics.json`` from the W&B summaries of their group (the pipeline's
    ``logger.group`` or ``pipeline-<name>``). Needs credentials and network; otherwise returns why not."""
    from relreward_cli.tracking import _wandb_credentials_present

    missing = [run for run in report.runs if run.metrics is None]
    if not missing:
        return "W&B: every run has a local metrics.json; nothing to fetch."
    if not _wandb_credentials_present():
        return "W&B: no credentials (WANDB_API_KEY or ~/.netrc); used the local run folders only."
    try:
        import wandb

        api = wandb.Api(timeout=20)
        filled = 0
        for run in missing:
            logger = run.config.get("logger") or {}
            group = logger.get("group") or f"pipeline-{run.config.get('name')}"
            path = f"{logger.get('entity') or api.default_entity}/{logger.get('project') or 'relreward'}"
            metrics: dict[str, Any] = {}
            for remote in api.runs(path, filters={"group": group}):
                metrics |= {k: v for k, v in dict(remote.summary).items()
                            if k.startswith("pearson/") or k.endswith(("score_mean", "score_sem", "success_rate"))}
            if metrics:
                run.metrics, filled = metrics, filled + 1
        return f"W&B: filled {filled} of {len(missing)} unfinished run(s) from their W&B groups."
    except Exception as err:  # no network, no such project: the local report stands
        return f"W&B: could not be read ({type(err).__name__}: {err}); used the local run folders only."


def select_setting(report: Report, key: str) -> dict[str, Any]:
    """The task of ``report`` whose runs have the highest mean of ``key`` (e.g. ``guided/score_mean``): its
    swept overrides (other than the seed), the value, and every task's value, for choosing hyperparameters on
    selection seeds. Raises :class:`UserError` when no finished run has ``key``."""
    values = {task: mean_sem(found)[0] for task, runs in report.tasks.items()
              if (found := [v for run in runs if (v := run.value(key)) is not None])}
    if not values:
        raise UserError(_nothing_to_select(report, key))
    best = max(values, key=values.get)
    parsed = [dict(o.split("=", 1) for o in _task_overrides(run)) for run in report.runs]
    swept = sorted({key for overrides in parsed for key in overrides
                    if len({str(other.get(key)) for other in parsed}) > 1})
    chosen = dict(o.split("=", 1) for o in _task_overrides(report.tasks[best][0]))
    overrides = [f"{key}={chosen[key]}" for key in swept if key in chosen]
    tied = [task for task, value in values.items() if value == values[best] and task != best]
    return {"metric": key, "task": best, "value": values[best], "overrides": overrides, "all": values, "tied": tied}


def _nothing_to_select(report: Report, key: str) -> str:
    """Why no task can be selected by ``key``: every finished run's value is NaN, or no run has the metric (then the
    nearest names among the metrics that the finished runs do have)."""
    if any(run.metrics is not None and key in run.metrics for run in report.finished):
        return (f"Every finished run under {report.sweep} has {key!r} as NaN or not a number, so there is nothing to "
                "select on; choose a metric that these runs measured (their metrics.json).")
    numeric = sorted({name for run in report.finished for name in run.metrics if run.value(name) is not None})
    near = difflib.get_close_matches(key, numeric, n=3, cutoff=0.5)
    shown = f"the nearest are {', '.join(near)}" if near else f"they include {', '.join(numeric[:8])}"
    return (f"No finished run under {report.sweep} has the metric {key!r} to select on. The finished runs have "
            f"{len(numeric)} numeric metrics (the keys of their metrics.json); {shown}.")


REPORT_FILES = ("report.md", "report_bars.png", "reward_maps_grid.png", "reward_maps_by_task.png", "selection.json")
"""What `relreward report` writes into its output folder."""


def write_report(sweep: Path, out: Path | None = None, use_wandb: bool = False,
                 report: Report | None = None) -> dict[str, Path | None]:
    """Write the report of ``sweep`` (``report`` when already built, else built here) as ``report.md`` and the
    figures into ``out`` (default: the sweep folder). Returns the written paths."""
    report = report if report is not None else build_report(sweep)
    if use_wandb:
        report.notes.append(fill_from_wandb(report))
        label_tasks(report.runs)
        report.columns = [col for col in COLUMNS if any(run.value(col[1]) is not None for run in report.runs)]
    out = Path(out) if out is not None else Path(sweep)
    out.mkdir(parents=True, exist_ok=True)
    bars = plot_bars(report, out / "report_bars.png")
    heatmaps = plot_heatmap_grid(report, out / "reward_maps_grid.png")
    goals = plot_goal_grid(report, out / "reward_maps_by_task.png")
    text = markdown(report)
    figures = [f"![{name}]({p.name})" for name, p in (("bars", bars), ("reward maps by task", goals),
                                                         ("reward maps", heatmaps)) if p]
    if figures:
        text += "\n" + "\n\n".join(figures) + "\n"
    (out / "report.md").write_text(text)
    return {"report": out / "report.md", "bars": bars, "heatmaps": heatmaps, "goals": goals, "markdown": text}


def main(argv: list[str] | None = None) -> int:
    """``relreward report <sweep folder> [--out DIR] [--wandb]``."""
    parser = argparse.ArgumentParser(
        prog="relreward report",
        description="Summarize the run folders of a sweep: report.md (mean ± s.e. over seeds per task) and "
                    "plots (report_bars.png, reward_maps_grid.png).")
    parser.add_argument("sweep", type=Path, help="sweep folder, e.g. runs/multirun/pipeline")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--wandb", action="store_true",
                        help="also read unfinished runs' results from their W&B group (needs credentials)")
    parser.add_argument("--select", metavar="METRIC", default=None,
                        help="also pick the task (swept setting) of highest METRIC, a key of the runs' "
                             "metrics.json, e.g. headline/pearson (a Maze2D pipeline) or guided/score_mean "
                             "(steering): written to selection.json, its overrides printed last, one per line")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.sweep
    if args.out is None and (args.sweep / PROVENANCE_FILE).is_file():
        print(f"relreward: error: {args.sweep} is the folder of one stage's run (it holds {PROVENANCE_FILE}), whose "
              "files are its results; a report of it would be written among them. Give the folder of the runs to "
              "summarise (a sweep's, e.g. runs/multirun/pipeline, or run_root's), or --out DIR. Nothing was "
              "written.", file=sys.stderr)
        return 2
    try:
        report = build_report(args.sweep)  # refuses a folder without runs before anything is written
        selection = select_setting(report, args.select) if args.select is not None else None
        for name in REPORT_FILES:  # an earlier report's files that this one might not write again
            (out / name).unlink(missing_ok=True)
        written = write_report(args.sweep, out, args.wandb, report)
        if selection is not None:
            (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    except UserError as err:
        print(f"relreward: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        from relreward_cli.cli import environment_error

        print(f"relreward: error: {environment_error(err, folders='--out or the sweep folder')}", file=sys.stderr)
        return 2
    print(written["markdown"])
    for key in ("report", "bars", "goals", "heatmaps"):
        if written[key] is not None:
            print(f"wrote {written[key]}")
    if selection is not None:
        if selection["tied"]:
            print(f"relreward: note: {', '.join(selection['tied'])} tie(s) with {selection['task']} at "
                  f"{selection['value']:.3f}; the first in the report's order was taken. A metric that tells them "
                  "apart, or more selection seeds, would choose among them.", file=sys.stderr)
        print(f"selected by {selection['metric']}: {selection['task']} ({selection['value']:.3f}); wrote "
              f"{out / 'selection.json'}")
        print("\n".join(selection["overrides"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
