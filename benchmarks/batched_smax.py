"""Training env steps per second on SMAX smacv2_5_units, three ways, in one process:

- ``batched``: this project's MAPPO with ``runners.batched=true``: one EnvRunner steps
  ``--batched-envs`` copies of SMAX as one jitted, vmapped call per step and runs the team
  module once over all of them (marl/batched_runner.py);
- ``per_env``: the same MAPPO through today's path: RLlib's MultiAgentEnvRunner stepping
  ``--envs`` copies of the same env (``SmaxParallelEnv`` through the team adapter) one by one;
- ``rllib_ppo``: RLlib's stock PPO over the per-env env (``SmaxParallelEnv`` in RLlib's
  ``ParallelPettingZooEnv``, one agent per ally), one shared policy with RLlib's default
  module (MLP 64-64 tanh; it does not read the action masks: SMAX ignores illegal actions),
  ``--envs`` copies per runner, matched to MAPPO as in benchmarks/throughput.py: the same
  optimizer steps per iteration (RLlib's minibatch counts agent rows, of allies alive only;
  ``matched_stock_ppo``), no value-loss clipping, no KL term. One shim (``LastObservation``,
  below): an ally that dies on the time-out step gets a zero last observation, without which
  RLlib's wrapper raises.

All three: the same train batch (env steps per iteration), optimizer steps, epochs, lr, one local
EnvRunner (``num_env_runners=0``) and a local learner, torch on 1 thread, JAX on the CPU; the
JIT compile happens in an untimed warm-up iteration. The timed ``train()`` calls (sampling +
learning) are interleaved, one of each in turn, so load from other processes hits them alike.
``per_cpu_s`` is env steps per CPU second of this process (everything runs in it), which a
shared machine's load disturbs far less than wall time. ``sampling`` times the same runners'
``sample()`` of one train batch alone (no learner), interleaved likewise: the part of an
iteration that the batched path changes. ``learner_cpu_s_per_batch`` is an iteration's CPU time
less that of sampling its steps, and ``ceiling_per_cpu_s_vs_rllib_ppo`` the most the batched
path could gain over stock PPO per CPU second if its sampling cost nothing (Amdahl's law, with
the learner unchanged). The last stdout line is one JSON object.

    python benchmarks/batched_smax.py [--iterations 3] [--batch 8192] [--batched-envs 512]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAP = "smacv2_5_units"
N_ALLIES = 5
# MAPPO's settings (configs/base.yaml) where RLlib's PPO defaults differ (benchmarks/throughput.py).
MATCHED_PPO = {"gamma": 0.99, "lambda_": 0.95, "clip_param": 0.2, "entropy_coeff": 0.01,
               "grad_clip": 10.0, "vf_clip_param": float("inf"), "use_kl_loss": False, "kl_coeff": 0.0}


def mappo(args, batched: bool):
    from marl.algorithms import build_algorithm_config
    from marl.config import load_config

    cfg = load_config(ROOT / "configs" / "env" / f"smax_{MAP}.yaml", [
        f"algo.train_batch_size={args.batch}", f"algo.minibatch_size={args.minibatch}",
        f"algo.num_epochs={args.epochs}", "runners.num_env_runners=0",
        f"runners.num_envs_per_env_runner={args.batched_envs if batched else args.envs}",
        f"runners.batched={str(batched).lower()}",
    ])
    return build_algorithm_config(cfg).build_algo()


def stock_ppo(args, minibatch: int):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    from envs.smax import SmaxParallelEnv

    class LastObservation(ParallelPettingZooEnv):
        """RLlib's wrapper needs a last observation for every truncated agent; SmaxParallelEnv
        gives none to an ally that died on the time-out step (it is both terminated and
        truncated there, envs/battle.py), and RLlib then raises. Such an ally gets SMAX's
        dead-unit observation, zeros. Nothing else differs from the stock wrapper."""

        def step(self, action_dict):
            obs, rew, term, trunc, infos = super().step(action_dict)
            for agent, truncated in trunc.items():
                if truncated and agent != "__all__" and agent not in obs:
                    obs[agent] = np.zeros(self.par_env.observation_space(agent).shape, np.float32)
            return obs, rew, term, trunc, infos

    register_env("smax_pz", lambda cfg: LastObservation(SmaxParallelEnv(**cfg)))
    config = (
        PPOConfig()
        .environment("smax_pz", env_config={"map_name": MAP})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.envs, rollout_fragment_length="auto")
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda aid, *a, **k: "shared")
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh"))
        .training(train_batch_size=args.batch, num_epochs=args.epochs, lr=5e-4,
                  minibatch_size=minibatch, **MATCHED_PPO)
        .debugging(seed=0, log_level="ERROR")
    )
    return config.build_algo()


def matched_stock_ppo(args):
    """Stock PPO with as many optimizer steps per iteration as MAPPO takes. RLlib's PPO splits
    agent rows into minibatches, MAPPO team steps; dead allies have no rows, so n × the team
    minibatch would give stock PPO fewer steps. One train batch sampled by a probe build counts
    the agent rows; the minibatch is that count over MAPPO's minibatches per epoch."""
    probe = stock_ppo(args, N_ALLIES * args.minibatch)
    episodes = probe.env_runner.sample(num_timesteps=args.batch)
    rows = sum(len(sa) for ep in episodes for sa in ep.agent_episodes.values())
    probe.stop()
    return stock_ppo(args, math.ceil(rows / (args.batch // args.minibatch)))


def count_optimizer_steps(algo) -> list[int]:
    """A counter of the local Learner's gradient updates (one per minibatch), for the report."""
    learner, count = algo.learner_group._learner, [0]
    update = learner._update

    def counted(batch):
        count[0] += 1
        return update(batch)

    learner._update = counted
    return count


def time_algos(algos: dict, iterations: int) -> dict[str, dict]:
    """One untimed warm-up ``train()`` each (JIT compile, set-up), then ``iterations`` timed
    calls of each, interleaved. Env steps per wall and per CPU second of this process."""
    for algo in algos.values():
        algo.train()
    acc = {k: {"steps": 0, "wall": 0.0, "cpu": 0.0} for k in algos}
    counters = {k: count_optimizer_steps(algo) for k, algo in algos.items()}
    for _ in range(iterations):
        for name, algo in algos.items():
            w0, c0 = time.perf_counter(), time.process_time()
            result = algo.train()
            a = acc[name]
            a["wall"] += time.perf_counter() - w0
            a["cpu"] += time.process_time() - c0
            a["steps"] += int(result["env_runners"]["num_env_steps_sampled"])
    steps = {k: c[0] / iterations for k, c in counters.items()}
    # Sampling alone: the same EnvRunners' sample() of one train batch, interleaved.
    for _ in range(iterations):
        for name, algo in algos.items():
            w0, c0 = time.perf_counter(), time.process_time()
            episodes = algo.env_runner.sample(num_timesteps=algo.config.train_batch_size)
            a = acc[name]
            a["sample_wall"] = a.get("sample_wall", 0.0) + time.perf_counter() - w0
            a["sample_cpu"] = a.get("sample_cpu", 0.0) + time.process_time() - c0
            a["sample_steps"] = a.get("sample_steps", 0) + sum(len(e) for e in episodes)
            algo.env_runner.get_metrics()
    out = {}
    for name, algo in algos.items():
        algo.stop()
        a = acc[name]
        out[name] = {"steps_per_s": round(a["steps"] / a["wall"], 1),
                     "steps_per_cpu_s": round(a["steps"] / a["cpu"], 1),
                     "env_steps_per_iter": a["steps"] / iterations,
                     "wall_s_per_iter": round(a["wall"] / iterations, 2),
                     "sampling_steps_per_s": round(a["sample_steps"] / a["sample_wall"], 1),
                     "sampling_steps_per_cpu_s": round(a["sample_steps"] / a["sample_cpu"], 1)}
        # CPU seconds per train batch: the whole iteration, and its learner part (the
        # iteration less sampling the same number of steps).
        cpu_iter = a["cpu"] / a["steps"] * algo.config.train_batch_size
        out[name]["cpu_s_per_batch"] = round(cpu_iter, 3)
        out[name]["optimizer_steps_per_iter"] = steps[name]
        out[name]["minibatch"] = algo.config.minibatch_size
        out[name]["learner_cpu_s_per_batch"] = round(cpu_iter - a["sample_cpu"] / a["sample_steps"] * algo.config.train_batch_size, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=3, help="timed train() calls per algorithm")
    p.add_argument("--batch", type=int, default=8192, help="train batch, env steps (all three)")
    p.add_argument("--minibatch", type=int, default=1024, help="team steps (MAPPO); stock PPO: the agent rows that give as many minibatches")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--envs", type=int, default=16, help="env copies per runner, per-env paths")
    p.add_argument("--batched-envs", type=int, default=512, help="env copies per runner, batched path")
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    import ray
    import torch

    torch.set_num_threads(1)  # as the trainer does (runners.torch_threads)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)
    algos = {"batched": mappo(args, True), "per_env": mappo(args, False), "rllib_ppo": matched_stock_ppo(args)}
    from marl.runners import freeze_long_lived_objects

    freeze_long_lived_objects()  # as the trainer does after building; for all three alike
    details = time_algos(algos, args.iterations)
    print(json.dumps(details), file=sys.stderr, flush=True)
    out = {k: v["steps_per_s"] for k, v in details.items()}
    out["per_cpu_s"] = {k: v["steps_per_cpu_s"] for k, v in details.items()}
    out["env_steps_per_iter"] = {k: v["env_steps_per_iter"] for k, v in details.items()}
    out["wall_s_per_iter"] = {k: v["wall_s_per_iter"] for k, v in details.items()}
    out["sampling"] = {k: v["sampling_steps_per_s"] for k, v in details.items()}
    out["sampling_per_cpu_s"] = {k: v["sampling_steps_per_cpu_s"] for k, v in details.items()}
    for table, rate in (("ratios", out), ("ratios_per_cpu_s", out["per_cpu_s"]),
                        ("sampling_ratios", out["sampling"]), ("sampling_ratios_per_cpu_s", out["sampling_per_cpu_s"])):
        out[table] = {
            "batched_vs_rllib_ppo": round(rate["batched"] / rate["rllib_ppo"], 2),
            "batched_vs_per_env": round(rate["batched"] / rate["per_env"], 2),
            "per_env_vs_rllib_ppo": round(rate["per_env"] / rate["rllib_ppo"], 2),
        }
    # Amdahl: with the same optimiser steps the learner's CPU time stays whatever sampling
    # costs, so the batched path can beat stock PPO per CPU second by at most stock's CPU time
    # per batch over the batched path's learner CPU time per batch (sampling for free).
    out["optimizer_steps_per_iter"] = {k: v["optimizer_steps_per_iter"] for k, v in details.items()}
    out["learner_cpu_s_per_batch"] = {k: v["learner_cpu_s_per_batch"] for k, v in details.items()}
    out["ceiling_per_cpu_s_vs_rllib_ppo"] = round(
        details["rllib_ppo"]["cpu_s_per_batch"] / details["batched"]["learner_cpu_s_per_batch"], 2)
    out["settings"] = {"map": MAP, **{k: getattr(args, k) for k in
                                      ("batch", "minibatch", "epochs", "iterations", "envs", "batched_envs")}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
