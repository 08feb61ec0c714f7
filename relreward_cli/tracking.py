"""Experiment tracking: a local run folder that is always complete, and W&B when it is wanted.

Every run folder holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per logged step),
``metrics.json`` (the final summary), checkpoints and ``plots/``, whatever W&B does. W&B runs in
``logger.mode``: ``online``, ``offline`` (files under ``<run_dir>/wandb``, upload later with
``wandb sync``), ``disabled``, or ``auto`` (online when credentials are found, offline otherwise).
A W&B failure (no network, bad key) degrades to offline with a warning; it never stops a run.
The W&B run id is stored in the run folder, so a resumed or requeued job continues the same W&B run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_server_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the W&B server (``WANDB_BASE_URL``, default ``https://api.wandb.ai``) opens
    within ``timeout_s``. Checked before an online run starts: without network W&B itself waits ~90 s, then
    gives up on the run."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """Map ``logger.mode`` to a W&B mode: ``auto`` is online with credentials, offline without."""
    if mode not in WANDB_MODES:
        from relreward_cli.errors import UserError

        raise UserError(f"logger.mode={mode!r} is not one of {', '.join(WANDB_MODES)}; set e.g. logger.mode=offline.")
    if mode == "auto":
        return "online" if _wandb_credentials_present() else "offline"
    return mode


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON through a temporary file, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    os.replace(tmp, path)


class RunTracker:
    """The run folder plus (optionally) a W&B run, with one ``log`` call for both.

    Args:
        run_dir: the stage's run folder (created if missing).
        config: the resolved config, written to ``config.yaml`` and sent to W&B.
        job_type: the stage name (W&B ``job_type``).
        mode, project, entity, group, tags: W&B settings (``logger.*`` in the configs).
        name: the W&B run name (default: the run folder's name).
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        job_type: str,
        mode: str = "auto",
        project: str = "relreward",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        import yaml

        self.mode = resolve_wandb_mode(mode)  # first: a mode refused leaves no folder and no open file
        self.run_dir = Path(run_dir)
        self.plots_dir = self.run_dir / "plots"
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(_jsonable(dict(config)), sort_keys=False))
        self._wandb_floor = self._steps_an_earlier_attempt_sent()
        self._wandb_step = max(self._wandb_floor, 0)
        self._metrics_file = (self.run_dir / "metrics.jsonl").open("a")
        self.wandb_run = None
        if self.mode != "disabled":
            self.wandb_run = self._start_wandb(
                config, job_type, project, entity, group, tags or [], name or self.run_dir.name
            )

    def _start_wandb(self, config, job_type, project, entity, group, tags, name):
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        kwargs = dict(
            project=project, entity=entity, group=group, tags=tags, name=name, job_type=job_type,
            config=_jsonable(dict(config)), dir=str(self.run_dir), id=id_file.read_text().strip(),
            resume="allow", reinit="finish_previous",
        )
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode == "online" and not wandb_server_reachable():
            log.warning("The W&B server (%s) cannot be reached; logging offline instead (upload later: wandb sync "
                        "%s).", os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai", self.run_dir / "wandb")
            self.mode = "offline"
        try:
            return wandb.init(mode=self.mode, **kwargs)
        except Exception as err:  # no network, bad key, blocked host: keep running offline
            if self.mode != "online":
                log.warning("W&B could not start (%s); continuing without it.", err)
                return None
            log.warning("W&B online failed (%s); logging offline instead (upload later: wandb sync).", err)
            self.mode = "offline"
            try:
                return wandb.init(mode="offline", **kwargs)
            except Exception as err2:
                log.warning("W&B offline failed too (%s); the run folder still holds everything.", err2)
                return None

    def _steps_an_earlier_attempt_sent(self) -> int:
        """The last step an earlier attempt of this run (same W&B run id) logged, before any rewind; -1 if none."""
        metrics = self.run_dir / "metrics.jsonl"
        if not ((self.run_dir / "wandb_id.txt").is_file() and metrics.is_file()):
            return -1
        steps = [json.loads(line).get("step", -1) for line in metrics.read_text().splitlines() if line.strip()]
        return max(steps, default=-1)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Append ``metrics`` at ``step`` to ``metrics.jsonl`` and W&B. W&B's steps only go forward: a row at a step
        an earlier attempt already sent (a run resumed from an earlier checkpoint logs those steps again, with the
        same values) goes to ``metrics.jsonl`` only."""
        row = _jsonable({"step": step, **metrics})
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        if step > self._wandb_floor:
            self._wandb_step = max(self._wandb_step, step)
            self._to_wandb(lambda run: run.log(dict(metrics), step=step))

    def _to_wandb(self, send: Callable[[Any], Any]) -> None:
        """Call `send(wandb_run)`; if W&B fails mid-run (its service process killed, as SLURM does to every
        process of a job it pre-empts, or a full disk), warn once and go on without it: the run folder holds
        everything."""
        if self.wandb_run is None:
            return
        try:
            send(self.wandb_run)
        except Exception as err:
            log.warning("W&B stopped working (%s: %s); going on without it (the run folder holds everything).",
                        type(err).__name__, err)
            self.wandb_run = None

    def rewind(self, step: int) -> None:
        """Drop the rows of ``metrics.jsonl`` logged after ``step``: a run resuming from its checkpoint at ``step``
        logs the later steps again, and an earlier attempt may have logged some of them before it was killed."""
        self._metrics_file.close()
        path = self.run_dir / "metrics.jsonl"
        lines = [line for line in path.read_text().splitlines() if line]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, path)
            log.info("metrics.jsonl: dropped %d row(s) logged after the checkpoint's step %d", len(lines) - len(kept),
                     step)
        self._metrics_file = path.open("a")

    def rows(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` so far (those of earlier, resumed attempts included)."""
        self._metrics_file.flush()
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]

    def history(self, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every logged row holding ``key``."""
        return [(row["step"], row[key]) for row in self.rows() if key in row]

    def log_image(self, key: str, path: Path) -> None:
        """Send a saved PNG to W&B (it already lives in the run folder), at the last step logged, by this attempt or
        an earlier one: a run evaluated again after its training shows its figures at the step they were made of."""
        if self.wandb_run is not None:
            import wandb

            self._to_wandb(lambda run: run.log({key: wandb.Image(str(path))}, step=self._wandb_step))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Write the final figures to ``metrics.json`` and the W&B summary."""
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        self._to_wandb(lambda run: run.summary.update(_jsonable(dict(metrics))))

    def finish(self) -> None:
        self._metrics_file.close()
        self._to_wandb(lambda run: run.finish())
        self.wandb_run = None

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


RUN_OVERRIDES = "overrides.yaml"
"""The command-line overrides of a run's last finished attempt, in its folder (Hydra's `.hydra/overrides.yaml` holds
the last attempt's, finished or not); `relreward report` labels runs with them."""


def print_summary_table(title: str, rows: Mapping[str, Any]) -> None:
    """Print a two-column summary table (rich) at the end of a stage, under `title` on one unwrapped line (it
    often ends with a run folder's path, which a table title would wrap to the table's width)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(escape(str(key)), escape(f"{value:.4g}" if isinstance(value, float) else str(value)))
    console = Console(stderr=False)
    console.print(f"[bold]{escape(title)}[/bold]", soft_wrap=True)
    console.print(table)


def tracker_from_config(cfg, run_dir: Path, job_type: str, group: str | None = None) -> RunTracker:
    """Build a :class:`RunTracker` from a stage's resolved config (``cfg.logger``)."""
    from omegaconf import OmegaConf

    lg = cfg.logger
    return RunTracker(run_dir, OmegaConf.to_container(cfg, resolve=True), job_type, mode=lg.mode,
                      project=lg.project, entity=lg.entity, group=group or lg.group, tags=list(lg.tags),
                      name=f"{cfg.name}-{job_type}")
