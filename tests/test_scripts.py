"""The scripts under scripts/ import against the current package and refuse bad input as the CLI does (they are
not run to the end here: the benchmarks' timings belong to `make bench`, the analyses to documented runs)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("name", ["bench_train", "bench_extract", "bench_plan", "classifier_reference",
                                  "reward_features"])
def test_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # bench_extract imports bench_train's helpers
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert callable(module.main)


@pytest.mark.parametrize(("args", "said"), [
    (["bench_train.py", "--devices", "tpu"], "device=tpu is not a device torch knows"),
    (["bench_train.py", "horizon=abc"], "horizon=abc: must be an integer"),
    (["bench_train.py", "--max-steps", "0"], "argument --max-steps: 0 is below 2"),
    (["bench_plan.py", "--device", "bogus"], "device=bogus is not a device torch knows"),
    (["classifier_reference.py", "no-such-run"], "No config.yaml in no-such-run"),
    (["reward_features.py", "no-such-run"], "No extracted reward at no-such-run"),
])
def test_script_refuses_bad_input_in_one_paragraph(args, said, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPTS / args[0]), *args[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_paper_sweep_whose_launch_fails_ends_with_the_reason_and_its_exit_code(tmp_path):
    """A launch refused before any job (a bad value) left only the report's "No run folders" on the terminal, and the
    script stopped there; the reason is now the last thing shown, with the launch's exit code."""
    import os

    proc = subprocess.run(["bash", str(SCRIPTS / "paper_maze2d.sh"), "--local", "train.n_steps=abc"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MAZES": "umaze", "RUN_ROOT": str(tmp_path / "runs"),
                               "RELREWARD": str(Path(sys.executable).parent / "relreward")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    tail = proc.stderr[proc.stderr.index("== umaze: the launch failed"):]
    assert "train.n_steps=abc: must be an integer" in tail and "some jobs failed" in tail
    assert "Traceback" not in proc.stderr


def test_the_reward_analyses_refuse_a_reward_changed_after_its_extraction(tmp_path):
    """A reward.pt replaced after its extraction sealed the folder is not analysed as that extraction's reward."""
    import json

    run = tmp_path / "extract"
    run.mkdir()
    (run / "reward.pt").write_bytes(b"another reward")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "provenance.json").write_text(json.dumps({"settings": {}, "inputs": {},
                                                     "outputs": {"reward.pt": "0123456789abcdef"}}))
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    for args in (["reward_features.py", str(run)], ["classifier_reference.py", str(tmp_path)]):
        proc = subprocess.run([sys.executable, str(SCRIPTS / args[0]), *args[1:]], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and "reward.pt was changed after its run finished" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_the_plain_loop_times_its_network_share(monkeypatch):
    """The training benchmark's reference loop reports the share of its steps spent in the network (0 < share < 1):
    the ceiling of any loop around that network."""
    import torch

    monkeypatch.syspath_prepend(str(SCRIPTS))
    import bench_train

    from relreward_cli.models.unet import TemporalUnet

    steps_per_s, share = bench_train.plain_loop_steps_per_s(TemporalUnet(8, 4, 8, (1, 2)), (4, 8, 4), 20, 1e-3,
                                                            torch.device("cpu"), budget_s=5.0, max_steps=4)
    assert steps_per_s > 0 and 0 < share < 1
