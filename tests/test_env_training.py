"""Every environment config trains a few iterations end to end through run.py and RLlib.
(simple_spread, simple_tag, simple_adversary, LBF, HalfCheetah and SMAX 3m have their own
end-to-end tests elsewhere.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "config, extra",
    [
        ("configs/env/simple_push.yaml", []),
        ("configs/env/rware_tiny_2ag.yaml", []),
        ("configs/bn/coordination5_learned.yaml", []),
        ("configs/bn/aloha_full.yaml", []),
    ],
)
def test_env_config_trains_end_to_end(tmp_path, config, extra):
    proc = subprocess.run(
        [sys.executable, "run.py", "train", config, "algo.train_batch_size=400", "algo.minibatch_size=200",
         "algo.num_epochs=1", "runners.num_envs_per_env_runner=4", "train.total_env_steps=800",
         f"output_dir={tmp_path}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [400, 800]
    assert all(any(k.endswith("policy_loss") and v is not None for k, v in r.items()) for r in rows)
    assert (run_dir / "checkpoints" / "iter_000002").is_dir()
