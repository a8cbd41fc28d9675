"""The ``runners`` section against the attached Ray cluster (marl/resources.py, issue 11)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from marl.config import RunnersConfig, load_config
from marl.errors import ConfigError, UserError
from marl.resources import check_resources, demand

ROOT = Path(__file__).resolve().parent.parent


def runners(**kw) -> RunnersConfig:
    base = dict(num_env_runners=0, num_envs_per_env_runner=4, num_gpus_per_learner=0, torch_threads=1)
    return RunnersConfig(**{**base, **kw})


GRID = list(itertools.product([0, 1, 3], [0.0, 0.5, 1.0], [0, 1, 2], [0.0, 0.5, 1.0]))


def test_demand_counts_as_rllib_placement_group():
    """CPUs and GPUs per config equal the totals of RLlib's own placement group for the same
    settings (Algorithm.default_resource_request), over a grid of every key."""
    from ray.rllib.algorithms.ppo import PPO, PPOConfig

    for n_runners, runner_gpus, n_learners, learner_gpus in GRID:
        if runner_gpus and not n_runners:
            continue  # refused by the schema (test below)
        r = runners(num_env_runners=n_runners, num_gpus_per_env_runner=runner_gpus,
                    num_learners=n_learners, num_gpus_per_learner=learner_gpus)
        cfg = PPOConfig().env_runners(num_env_runners=n_runners, num_gpus_per_env_runner=runner_gpus) \
            .learners(num_learners=n_learners, num_gpus_per_learner=learner_gpus)
        rllib = PPO.default_resource_request(cfg).required_resources
        d = demand(r)
        assert (d.cpus, d.gpus) == (rllib.get("CPU", 0.0), rllib.get("GPU", 0.0)), (r, rllib)


def test_config_that_fits_passes_and_one_more_runner_does_not():
    cluster = {"CPU": 4.0, "GPU": 1.0}
    check_resources(runners(num_env_runners=3), cluster, local_cuda_devices=1)  # 3 + driver = 4
    with pytest.raises(UserError, match=r"^runners\.num_env_runners: 4 .* 5 CPUs, but the Ray cluster has "
                                        r"4 CPUs and 1 GPU; at most 3 fit"):
        check_resources(runners(num_env_runners=4), cluster, local_cuda_devices=1)


@pytest.mark.parametrize("kw, cluster, cuda, key, has", [
    # a GPU Learner in the driver on a cluster without GPUs (this machine)
    (dict(num_gpus_per_learner=1), {"CPU": 2.0}, 0, "runners.num_gpus_per_learner: 1 ", "0 GPUs"),
    # the cluster has a GPU, but not on the driver's machine
    (dict(num_gpus_per_learner=1), {"CPU": 8.0, "GPU": 1.0}, 0, "runners.num_gpus_per_learner: 1 ",
     "torch.cuda.device_count() is 0"),
    (dict(num_learners=2, num_gpus_per_learner=1), {"CPU": 8.0, "GPU": 1.0}, 1,
     "runners.num_gpus_per_learner: 1 for 2 Learners needs 2 GPUs", "1 GPU"),
    (dict(num_env_runners=2, num_gpus_per_env_runner=1), {"CPU": 8.0, "GPU": 1.0}, 1,
     "runners.num_gpus_per_env_runner: 1 × 2 EnvRunners needs 2 GPUs", "1 GPU"),
    (dict(num_env_runners=1, num_gpus_per_env_runner=1, num_gpus_per_learner=1), {"CPU": 8.0, "GPU": 1.0}, 1,
     "runners.num_gpus_per_env_runner: 1 × 1 EnvRunner (1) plus the Learners' 1", "1 GPU"),
    (dict(num_learners=4), {"CPU": 4.0}, 0, "runners.num_learners: 4 Learners without GPUs", "4 CPUs"),
])
def test_each_key_the_cluster_cannot_serve_is_named(kw, cluster, cuda, key, has):
    with pytest.raises(UserError) as e:
        check_resources(runners(**kw), cluster, local_cuda_devices=cuda)
    msg = str(e.value)
    assert msg.startswith(key) and has in msg and "\n" not in msg, msg


def test_gpu_learners_take_no_cpu_and_fractional_gpus_add_up():
    # 2 GPU Learners of half a GPU each fit one GPU and need no CPU of their own (RLlib: "auto").
    check_resources(runners(num_learners=2, num_gpus_per_learner=0.5), {"CPU": 1.0, "GPU": 1.0}, 0)


def test_gpu_env_runners_need_remote_runners():
    with pytest.raises(Exception, match="num_gpus_per_env_runner: 1 needs num_env_runners >= 1"):
        runners(num_gpus_per_env_runner=1)
    with pytest.raises(ConfigError, match="runners"):
        load_config(ROOT / "configs" / "base.yaml", ["runners.num_gpus_per_env_runner=1"])


@pytest.mark.slow
def test_train_asking_for_a_gpu_on_this_cluster_exits_2_with_one_line(tmp_path):
    """End to end through run.py: Ray starts, the check runs before the Algorithm is built, and
    the run directory the command made is gone."""
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU: the config fits")
    proc = subprocess.run(
        [sys.executable, "run.py", "train", "runners.num_gpus_per_learner=1", f"output_dir={tmp_path / 'runs'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: runners.num_gpus_per_learner: 1 "), proc.stderr
    assert not any((tmp_path / "runs").iterdir())
