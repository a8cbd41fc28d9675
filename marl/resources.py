"""The ``runners`` section against the Ray cluster a run is attached to.

RLlib does not check that a config fits the cluster: a remote EnvRunner or Learner actor that
asks for more CPUs or GPUs than exist waits for them forever, and a local Learner given a GPU
on a machine without CUDA fails deep inside the build. ``check_cluster`` runs right after Ray
starts (or is joined) and before the Algorithm is built, and turns either case into one
``error:`` line (exit code 2) that names the key and what the cluster has.

Resources are counted as RLlib counts them for its placement group
(``Algorithm.default_resource_request``, ray/rllib/algorithms/utils.py), with RLlib's defaults
for the keys the project does not expose (``num_cpus_per_env_runner`` 1,
``num_cpus_for_main_process`` 1, ``num_cpus_per_learner`` "auto", no aggregator actors):

- the driver: 1 CPU, plus ``num_gpus_per_learner`` GPUs when its own Learner trains
  (``num_learners: 0``);
- each remote EnvRunner: 1 CPU and ``num_gpus_per_env_runner`` GPUs;
- each remote Learner (``num_learners >= 1``): ``num_gpus_per_learner`` GPUs, and 1 CPU when it
  has no GPU ("auto").

``num_envs_per_env_runner`` (already >= 1 by the schema) is not a cluster resource: vectorised
copies of the env share their runner's CPU, and what bounds them is memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marl.errors import UserError

DRIVER_CPUS = 1  # RLlib's num_cpus_for_main_process
CPUS_PER_ENV_RUNNER = 1  # RLlib's num_cpus_per_env_runner


@dataclass(frozen=True)
class Demand:
    """CPUs and GPUs a ``runners`` section takes, by part."""

    driver_cpus: float
    driver_gpus: float
    runner_cpus: float
    runner_gpus: float
    learner_cpus: float
    learner_gpus: float

    @property
    def cpus(self) -> float:
        return self.driver_cpus + self.runner_cpus + self.learner_cpus

    @property
    def gpus(self) -> float:
        return self.driver_gpus + self.runner_gpus + self.learner_gpus


def demand(runners: Any) -> Demand:
    r = runners
    remote_learner_cpus = 1 if r.num_gpus_per_learner == 0 else 0  # RLlib's "auto"
    return Demand(
        driver_cpus=DRIVER_CPUS,
        driver_gpus=r.num_gpus_per_learner if r.num_learners == 0 else 0.0,
        runner_cpus=r.num_env_runners * CPUS_PER_ENV_RUNNER,
        runner_gpus=r.num_env_runners * r.num_gpus_per_env_runner,
        learner_cpus=r.num_learners * remote_learner_cpus,
        learner_gpus=r.num_learners * r.num_gpus_per_learner,
    )


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _plural(x: float, word: str) -> str:
    return f"{_n(x)} {word}" + ("" if x == 1 else "s")


def check_resources(runners: Any, cluster: dict[str, float], local_cuda_devices: int) -> Demand:
    """Raise ``UserError`` naming the first ``runners`` key the cluster cannot serve.

    ``cluster``: ``ray.cluster_resources()``; ``local_cuda_devices``: CUDA devices this process
    sees (``torch.cuda.device_count()``), where a Learner with ``num_learners: 0`` trains."""
    r, d = runners, demand(runners)
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    has = f"the Ray cluster has {_plural(cpus, 'CPU')} and {_plural(gpus, 'GPU')}"

    learner_gpus = d.driver_gpus + d.learner_gpus
    if learner_gpus > gpus:
        who = "the driver's Learner" if r.num_learners == 0 else f"{_plural(r.num_learners, 'Learner')}"
        raise UserError(
            f"runners.num_gpus_per_learner: {_n(r.num_gpus_per_learner)} for {who} needs "
            f"{_plural(learner_gpus, 'GPU')}, but {has}"
        )
    if d.driver_gpus > 0 and local_cuda_devices < 1:
        raise UserError(
            f"runners.num_gpus_per_learner: {_n(r.num_gpus_per_learner)} with runners.num_learners: 0 "
            "trains in this process, which sees no CUDA device (torch.cuda.device_count() is 0), "
            f"although {has}; set runners.num_learners >= 1 to train on the cluster's GPUs"
        )
    if d.runner_gpus > gpus:
        raise UserError(
            f"runners.num_gpus_per_env_runner: {_n(r.num_gpus_per_env_runner)} × "
            f"{_plural(r.num_env_runners, 'EnvRunner')} needs {_plural(d.runner_gpus, 'GPU')}, but {has}"
        )
    if d.gpus > gpus:
        raise UserError(
            f"runners.num_gpus_per_env_runner: {_n(r.num_gpus_per_env_runner)} × "
            f"{_plural(r.num_env_runners, 'EnvRunner')} ({_n(d.runner_gpus)}) plus the Learners' "
            f"{_n(learner_gpus)} (runners.num_gpus_per_learner) need {_plural(d.gpus, 'GPU')}, but {has}"
        )
    base = d.driver_cpus + d.learner_cpus
    if base > cpus:
        raise UserError(
            f"runners.num_learners: {r.num_learners} Learners without GPUs take 1 CPU each, plus "
            f"{_n(d.driver_cpus)} for the driver: {_plural(base, 'CPU')}, but {has}"
        )
    if d.cpus > cpus:
        fit = int((cpus - base) // CPUS_PER_ENV_RUNNER)
        raise UserError(
            f"runners.num_env_runners: {r.num_env_runners} remote EnvRunners take 1 CPU each, plus "
            f"{_n(base)} for the driver" + (" and the Learners" if d.learner_cpus else "")
            + f": {_plural(d.cpus, 'CPU')}, but {has}; at most {fit} fit "
            "(runners.num_env_runners: 0 samples in the driver)"
        )
    return d


def check_cluster(runners: Any) -> Demand:
    """``check_resources`` against the Ray cluster this process has started or joined."""
    import ray
    import torch

    return check_resources(runners, ray.cluster_resources(), torch.cuda.device_count())
