"""What a run folder was made from, so that nothing stale is resumed or reused.

A training stage records in its folder, before its first step, `provenance.json`: the settings that shape its
result (a config subset) and digests of the files it reads (datasets, upstream models). When the folder is
used again (to resume a checkpoint, or by `pipeline` to skip a finished stage), the record must equal what the
current command would make; otherwise the stage refuses, saying what differs and which override starts
afresh, or, when asked to (`overwrite=true`, or inside `pipeline`, which reruns what is stale), moves the old
files into `superseded-<time>/` in the folder and starts again. Settings that do not change the result (how
often to log or save, `n_steps`, which a resumed run may extend) are left out of the record. A setting added to
relreward after a run was recorded reads, in that older record, as the value that reproduces how the run was
made (`ADDED_SETTINGS`), so upgrading relreward does not retrain what it already has.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relreward_cli import locks
from relreward_cli.errors import UserError
from relreward_cli.tracking import write_json_atomic

PROVENANCE_FILE = "provenance.json"
HOLD_FILE = ".in-use"  # an empty file its holder locks (`held`), removed when the holder lets go
# The record's entry of the finished run's file digests: absent in records from before seals, None while unsealed.
OUTPUTS = "outputs"
# A folder holding any of these holds work of a run; one without them (a run stopped before its first result)
# is simply claimed by the next.
WORK = ("checkpoint.pt", "model.pt", "reward.pt", "metrics.json")
# What a stage leaves in its folder; moved aside together when the folder is reused for something else.
STAGE_OUTPUTS = ("checkpoint.pt", "model.pt", "reward.pt", "metrics.json", "metrics.jsonl", "plots", "wandb",
                 "wandb_id.txt", "inputs.json", "config.yaml", PROVENANCE_FILE)
# Settings recorded since a later version, by (section, key), with the value that reproduces what runs recorded
# before them did: an older record that lacks one was made with that value.
ADDED_SETTINGS: dict[tuple[str, str], Any] = {("train", "precision"): "fp32", ("extract", "precision"): "fp32",
                                              ("reward", "architecture"): "default", ("extract", "ema_decay"): 0.0,
                                              ("extract", "ema_start"): 200}
log = logging.getLogger(__name__)


def digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a file, or of a folder's files (names and contents, in sorted order). Files
    are read once per process while their size and modification time stay the same (`pipeline` asks for the
    datasets' digests at every stage)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    sha = hashlib.sha256()
    for file in files:
        stat = file.stat()
        sha.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        sha.update(_file_sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns))
    return sha.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> bytes:
    """The SHA-256 of a file's contents; `size` and `mtime_ns` key the cache, so a rewritten file is read again."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.digest()


def record(settings: Mapping[str, Any], inputs: Mapping[str, Path]) -> dict[str, Any]:
    """The provenance of a stage: its result-shaping `settings` (JSON-ready) and the digest of each input."""
    return {"settings": json.loads(json.dumps(dict(settings), default=str)),
            "inputs": {name: digest(path) for name, path in inputs.items()}}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {key: item for name, sub in value.items() for key, item in _flat(sub, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): value}


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`key: recorded -> current` for every entry that differs (`inputs.*` are digests of files)."""
    old, new = _flat(recorded), _flat(current)
    return [f"{key}: {old.get(key, '(none)')} -> {new.get(key, '(none)')}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _read(run_dir: Path) -> dict[str, Any] | None:
    """The record in `run_dir` as written, seal included (None without one)."""
    path = Path(run_dir) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path} cannot be read ({err}), so what this run folder was made from is unknown. Delete "
                        "that file and run the command again: the folder's results are then set aside (pipeline, "
                        "overwrite=true) or the command says how to start afresh; nothing is reused unchecked."
                        ) from None
    damaged = [key for key in ("settings", "inputs") if not isinstance(found.get(key), dict)] if isinstance(
        found, dict) else []
    if isinstance(found, dict) and not isinstance(found.get(OUTPUTS), dict | None):
        damaged.append(OUTPUTS)
    if not isinstance(found, dict) or damaged:
        what = f" (its {', '.join(damaged)} entry is damaged)" if damaged else ""
        raise UserError(f"{path} holds no record of what the run folder was made from{what}. Delete that file and run "
                        "the command again: the folder's results are then set aside (pipeline, overwrite=true) or the "
                        "command says how to start afresh; nothing is reused unchecked.")
    return found


def recorded(run_dir: Path) -> dict[str, Any] | None:
    """The provenance recorded in `run_dir` (None without one), without its seal, and with the settings added since
    it was written filled in with their earlier behaviour (`ADDED_SETTINGS`) where its section is recorded."""
    found = _read(run_dir)
    if found is None:
        return None
    found.pop(OUTPUTS, None)
    settings = found.get("settings", {})
    for (section, key), earlier in ADDED_SETTINGS.items():
        if isinstance(settings.get(section), dict):
            settings[section].setdefault(key, earlier)
    return found


def seal(run_dir: Path) -> None:
    """Record in `run_dir`'s record the digests of the files its finished run wrote (those of `WORK` it holds)."""
    run_dir = Path(run_dir)
    found = _read(run_dir)
    if found is None:
        raise RuntimeError(f"{run_dir} has no {PROVENANCE_FILE} to seal; a stage claims its folder first")
    found[OUTPUTS] = {name: digest(run_dir / name) for name in WORK if (run_dir / name).exists()}
    write_json_atomic(run_dir / PROVENANCE_FILE, found)


def _altered(run_dir: Path, sealed: Mapping[str, str]) -> list[str]:
    """`name: how` for each file of `sealed` (name -> digest) that `run_dir` no longer holds as it was sealed."""
    changed = []
    for name, recorded_digest in sorted(sealed.items()):
        if not (Path(run_dir) / name).exists():
            changed.append(f"{name}: gone since the run finished")
        elif (now := digest(Path(run_dir) / name)) != recorded_digest:
            changed.append(f"{name}: not the file the run wrote (digest {recorded_digest} -> {now})")
    return changed


def altered_outputs(run_dir: Path) -> list[str]:
    """`name: how` for every file the sealed run in `run_dir` wrote that is not as it left it (replaced, damaged or
    gone); empty for an unsealed folder or a record from before seals."""
    outputs = (_read(run_dir) or {}).get(OUTPUTS)
    return _altered(run_dir, outputs) if isinstance(outputs, dict) else []


def intact(run_dir: Path) -> bool:
    """Whether `run_dir` holds a finished run as it left it: sealed with its files unchanged, or recorded before
    seals were kept (unchecked)."""
    found = _read(run_dir)
    if found is None or OUTPUTS not in found:
        return True
    return found[OUTPUTS] is not None and not _altered(run_dir, found[OUTPUTS])


def check_output(file: Path, stage: str) -> None:
    """Refuse to read `file` (a model or reward) unless the run that wrote it finished and left it as it is. A file
    outside a recorded run folder, or in one recorded before seals were kept, is read unchecked.

    Args:
        stage: the command that writes the file, for the message (``relreward train-diffusion``).
    """
    file = Path(file)
    found = _read(file.parent)
    if found is None or OUTPUTS not in found:
        return
    if found[OUTPUTS] is None:
        raise UserError(f"{file} belongs to a run in {file.parent} that has not finished (it is running, or was "
                        "stopped), so it is not the run's result. Finish that run first: the command that made it "
                        f"(`{stage}`, or `relreward pipeline` for a pipeline's stage folder) resumes it when run "
                        "again with the same settings. Nothing was run.")
    sealed = {name: value for name, value in found[OUTPUTS].items() if name == file.name}  # only the file read
    if problems := _altered(file.parent, sealed):
        raise UserError(f"{file} was changed after its run finished ({problems[0].split(': ', 1)[1]}): it was "
                        f"replaced or damaged, so what it holds is unknown. Run `{stage}` for that folder again with "
                        "overwrite=true (its files move to superseded-<time>/; `relreward pipeline` does this by "
                        "itself for a pipeline's stage folder), or pass another file. Nothing was run.")


def matches(run_dir: Path, current: Mapping[str, Any]) -> bool:
    """Whether `run_dir` was made from `current` (its recorded provenance equals it)."""
    return recorded(run_dir) == current


KEPT_FILES = ("model.pt", "reward.pt", "metrics.json", "plots")
"""What a finished run extended by more steps keeps of itself (not its checkpoint, which the training continues)."""


def _keep_finished_run(run_dir: Path, done: int | None, asked: int) -> None:
    """Before a finished, sealed run at step `done` (its checkpoint's) is trained on to `asked` steps, copy its result
    (`KEPT_FILES`) to `finished-<done>-steps/` in its folder, with its record sealed over the copies, so that the
    shorter model or reward stays readable as a run folder of its own (``base_model=<folder>/finished-3000-steps``)."""
    if done is None or done >= asked:
        return
    found = _read(run_dir)
    if found is None or not isinstance(found.get(OUTPUTS), dict):  # not finished, or recorded before seals
        return
    kept = Path(run_dir) / f"finished-{done}-steps"
    if kept.exists():
        return
    staging = kept.with_name(f".{kept.name}.tmp")  # complete or absent: a kill while copying leaves no half folder
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in KEPT_FILES:
        source = Path(run_dir) / name
        if source.is_dir():
            shutil.copytree(source, staging / name)
        elif source.is_file():
            shutil.copy2(source, staging / name)
    sealed = {name: value for name, value in found[OUTPUTS].items() if (staging / name).exists()}
    write_json_atomic(staging / PROVENANCE_FILE, {**found, OUTPUTS: sealed})
    staging.rename(kept)
    log.info("%s: the finished run of %d steps is kept in %s; training on to %d steps.", run_dir, done, kept, asked)


def _past_asked_steps(done: int | None, n_steps: tuple[str, int] | None) -> str | None:
    """Why a folder whose checkpoint is at step `done` cannot give ``n_steps`` = ``(override, steps asked)``: it is
    further on (a run may be extended, never shortened); None when it can."""
    if n_steps is None or done is None:
        return None
    key, asked = n_steps
    if done <= asked:
        return None
    return f"{key}={asked}, but the folder's run is at step {done} (ask for at least {done} to continue it)"


def held(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Hold `run_dir` for this process while the block runs (:func:`relreward_cli.locks.exclusive` of
    `run_dir/.in-use`, which the system drops when the process ends): another process asking for it meanwhile (a
    second command given the same folder, e.g. two horizons run by hand under one `run_root`, whose folder names do
    not differ) is refused (:class:`UserError`) instead of moving aside or overwriting the files of the run in
    progress."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    in_use = UserError(f"{run_dir} is in use by another relreward process that is still running (its log is in the "
                       "folder): two runs in one folder would move aside or overwrite each other's files. Wait for it "
                       "to end, or give this run a folder of its own (run_root=, name= or hydra.run.dir=). Nothing "
                       "was run; the run in progress keeps its files.")
    return locks.exclusive(run_dir / HOLD_FILE, busy=in_use)


def claim(run_dir: Path, current: Mapping[str, Any], *, start_afresh: bool, how_to_start_afresh: str,
          n_steps: tuple[str, int] | None = None) -> None:
    """Make `run_dir` a folder of the run `current` describes, before any work.

    A new folder, one holding the same run, or one without results yet is claimed (the record written). One
    holding results (`WORK`) of a run made from something else, or from before records were kept, or whose
    sealed files were changed after it finished, or (given `n_steps`, the override and the steps asked for)
    trained further than asked, is refused with the differences, unless `start_afresh`: then its outputs move to
    `superseded-<time>/` inside it and the run starts there anew. A finished run of the same record asked for more
    steps keeps a copy of its result in `finished-<steps>-steps/` before its training goes on. The claimed folder is
    unsealed until its stage calls `seal`.
    """
    from relreward_cli.training import steps_done

    run_dir = Path(run_dir)
    found = recorded(run_dir)
    altered = altered_outputs(run_dir)
    done = None if altered or n_steps is None else steps_done(run_dir / "checkpoint.pt")  # an altered one may not load
    past = _past_asked_steps(done, n_steps)
    if (found != current or past or altered) and any((run_dir / name).exists() for name in WORK):
        changes = ([past] if past else []) + altered
        if found != current:
            changes += differences(found, current) if found is not None else [
                "the folder's files were made before relreward recorded what a run is made from"]
        if not start_afresh:
            raise UserError(
                f"{run_dir} holds a run made from something else than this command asks for:\n  "
                + "\n  ".join(changes[:12]) + ("\n  ..." if len(changes) > 12 else "")
                + f"\nResuming or reusing it would mix the two. Pass {how_to_start_afresh} to start afresh (its "
                "files move to a superseded-<time>/ folder inside it), or give this run another folder.")
        aside = run_dir / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for name in STAGE_OUTPUTS:
            if (run_dir / name).exists():
                (run_dir / name).rename(aside / name)
        log.warning("%s was made from something else (%s); its files moved to %s, starting afresh.", run_dir,
                    "; ".join(changes[:3]), aside)
    elif n_steps is not None:
        _keep_finished_run(run_dir, done, n_steps[1])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / PROVENANCE_FILE, {**current, OUTPUTS: None})  # unsealed until the run finishes
