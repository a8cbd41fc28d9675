"""Env steps per second on simple_spread (3 agents, 25 steps), side by side in one process:

- ``raw``: the PettingZoo env alone, random actions;
- ``rllib_ppo``: RLlib's stock PPO, one shared policy over ParallelPettingZooEnv, matched to
  MAPPO: minibatch n × the team minibatch (RLlib counts a multi-agent minibatch in agent rows,
  MAPPO in team steps of n rows each), no value-loss clipping, no KL penalty;
- ``rllib_ppo_defaults``: the same with the minibatch in agent rows and RLlib's defaults
  (vf_clip_param=10, use_kl_loss=True, kl_coeff=0.2), as this benchmark first ran it;
- ``mappo``: this project's MAPPO (JointPolicyModule + JointPPOLearner, empty graph);
- ``bn_mappo``: the same with the learned, context-aware DAG (agents sampled in DAG order);
- ``bn_mappo_annealed``: the learned DAG at the end of annealing: τ = 0, α = α_target, and the
  context network's edge logits pushed so far towards "no edge" that every sampled graph is
  empty (see ``anneal_to_empty``).

Every learner uses the same train batch, epochs, env runners and vectorised envs, and is
timed over whole ``Algorithm.train()`` calls (sampling + learning) after a warm-up iteration;
the learners' timed calls are interleaved, so that load from other processes hits them alike.
Top-level figures are env steps per wall-clock second; ``per_cpu_s`` gives env steps per CPU
second of this process (sampling and learning both run in it), which a shared machine's load
disturbs far less.
Beside each learner, ``optimizer_steps`` is the mean number of ``torch.optim.Adam.step`` calls
per timed iteration, counted by wrapping that method (the learner runs in this process:
``num_env_runners=0``, local learner). The last stdout line is one JSON object.

With ``--suite``, it also measures every environment of the README's table (key ``suite``):
``raw`` is the PettingZoo env alone with random legal actions, ``mappo`` is training env
steps/s of this project's MAPPO on it (same settings as above).

    python benchmarks/throughput.py [--iterations 10] [--envs 16] [--suite]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

ENV_KWARGS = {"N": 3, "max_cycles": 25, "continuous_actions": False}
N_AGENTS = ENV_KWARGS["N"]
# Settings MAPPO uses (configs/base.yaml) that RLlib's PPO defaults differ on; the matched
# stock run takes them, the defaults run keeps RLlib's (as the first version of this script).
MATCHED_PPO = {"gamma": 0.99, "lambda_": 0.95, "clip_param": 0.2, "entropy_coeff": 0.01,
               "grad_clip": 10.0, "vf_clip_param": float("inf"), "use_kl_loss": False, "kl_coeff": 0.0}
# Logit gap between "no edge" and "edge" per agent pair after annealing: P(edge) =
# sigmoid(-gap) under the Gumbel-softmax (a difference of two Gumbels is logistic), ~4e-18.
ANNEALED_LOGIT_GAP = 40.0


class AdamStepCounter:
    """Counts ``torch.optim.Adam.step`` calls in this process (the optimizer every learner here
    uses), by wrapping the method on the class."""

    def __init__(self):
        import torch

        self.calls = 0
        original = torch.optim.Adam.step

        def counted_step(opt, *a, **k):
            self.calls += 1
            return original(opt, *a, **k)

        torch.optim.Adam.step = counted_step


ADAM: AdamStepCounter | None = None


# The README's environment table: name -> config file under configs/env.
SUITE = {
    "simple_spread": "simple_spread", "simple_tag": "simple_tag", "simple_adversary": "simple_adversary",
    "simple_push": "simple_push", "coordination_game n=5": "coordination5", "aloha": "aloha",
    "lbf 8x8 2p 2f": "lbf_8x8_2p_2f", "rware tiny 2ag": "rware_tiny_2ag",
    "mamujoco HalfCheetah 6x1": "halfcheetah_6x1", "mamujoco Ant 2x4": "ant_2x4",
    "smax 3m": "smax_3m", "smax smacv2_5_units": "smax_smacv2_5_units", "sumo": "sumo",
}


def random_action(space, info, rng):
    mask = info.get("action_mask") if isinstance(info, dict) else None
    if mask is not None:
        return int(rng.choice(np.nonzero(mask)[0]))
    return space.sample()


def raw_env_steps_per_s(seconds: float, import_path: str = "mpe2.simple_spread_v3", kwargs=None,
                       cpu: bool = False) -> float:
    """The PettingZoo env alone, random (legal) actions; per wall second, or per CPU second of
    this process with ``cpu``."""
    from envs.adapter import resolve_env_factory

    env = resolve_env_factory(import_path)(**(kwargs if kwargs is not None else ENV_KWARGS))
    rng = np.random.default_rng(0)
    _, infos = env.reset(seed=0)
    for _ in range(20):  # warm-up: jitted envs compile on their first calls
        if not env.agents:
            _, infos = env.reset()
        _, _, _, _, infos = env.step({a: random_action(env.action_space(a), infos.get(a, {}), rng) for a in env.agents})
    clock = time.process_time if cpu else time.perf_counter
    steps, t0 = 0, clock()
    while clock() - t0 < seconds:
        if not env.agents:
            _, infos = env.reset()
        actions = {a: random_action(env.action_space(a), infos.get(a, {}), rng) for a in env.agents}
        _, _, _, _, infos = env.step(actions)
        steps += 1
    return steps / (clock() - t0)


def time_algos(algos: dict, iterations: int) -> dict[str, dict]:
    """Times ``iterations`` ``train()`` calls of each algorithm, interleaved (one call of each in
    turn), so a change in the machine's load hits every learner alike. Per learner: env steps
    per wall second and per CPU second of this process (everything runs in it), and Adam steps
    per iteration. Each algorithm gets one untimed warm-up call first."""
    for algo in algos.values():
        algo.train()  # warm-up: first sampling, module and optimizer set-up
    acc = {k: {"steps": 0, "wall": 0.0, "cpu": 0.0, "adam": 0, "densities": []} for k in algos}
    for _ in range(iterations):
        for name, algo in algos.items():
            a = acc[name]
            calls0, w0, c0 = ADAM.calls, time.perf_counter(), time.process_time()
            result = algo.train()
            a["wall"] += time.perf_counter() - w0
            a["cpu"] += time.process_time() - c0
            a["adam"] += ADAM.calls - calls0
            a["steps"] += int(result["env_runners"]["num_env_steps_sampled"])
            for stats in result.get("learners", {}).values():
                if isinstance(stats, dict) and "dag_density" in stats:
                    a["densities"].append(float(stats["dag_density"]))
    out = {}
    for name, algo in algos.items():
        algo.stop()
        a = acc[name]
        out[name] = {"steps_per_s": a["steps"] / a["wall"], "steps_per_cpu_s": a["steps"] / a["cpu"],
                     "optimizer_steps": a["adam"] / iterations, "env_steps_per_iter": a["steps"] / iterations}
        if a["densities"]:
            out[name]["max_dag_density"] = max(a["densities"])
    return out


def stock_ppo(args, matched: bool = True):
    from mpe2 import simple_spread_v3
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    register_env("pz_simple_spread", lambda cfg: ParallelPettingZooEnv(simple_spread_v3.parallel_env(**cfg)))
    config = (
        PPOConfig()
        .environment("pz_simple_spread", env_config=ENV_KWARGS)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.envs, rollout_fragment_length="auto")
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda aid, *a, **k: "shared")
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh"))
        .training(
            train_batch_size=args.batch, num_epochs=args.epochs, lr=5e-4,
            **({"minibatch_size": N_AGENTS * args.minibatch, **MATCHED_PPO} if matched
               else {"minibatch_size": args.minibatch}),
        )
        .debugging(seed=0, log_level="ERROR")
    )
    return config.build_algo()


def anneal_to_empty(module) -> None:
    """The learned DAG as annealing leaves it: every pair's edge logit far below its no-edge
    logit in every context, so each sampled graph is empty. Done on the context network's last
    layer (its bias; the weights as trained so far), the layer annealing's density term acts on
    through ρ (Chen & Zhang 2023, §4.3)."""
    import torch

    for mid in module.keys():
        graph = getattr(module[mid].unwrapped(), "graph", None)
        if graph is None or not hasattr(graph, "context"):
            continue
        with torch.no_grad():
            bias = graph.context[-1].bias.view(graph.n, graph.n, 2)
            bias[..., 0] = ANNEALED_LOGIT_GAP / 2  # class 0: no edge
            bias[..., 1] = -ANNEALED_LOGIT_GAP / 2


def project_mappo(args, graph_mode: str = "empty", env_config: str | None = None, annealed: bool = False):
    from marl.algorithms import build_algorithm_config
    from marl.config import load_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    overrides = [
        f"algo.train_batch_size={args.batch}",
        f"algo.minibatch_size={args.minibatch}",
        f"algo.num_epochs={args.epochs}",
        f"runners.num_envs_per_env_runner={args.envs}",
        "runners.num_env_runners=0",
        f"model.graph.mode={graph_mode}",
    ]
    if annealed:  # a budget of one iteration: the schedule is at its end (τ = 0, α = α_target)
        overrides.append(f"train.total_env_steps={args.batch}")
    path = configs / "env" / f"{env_config}.yaml" if env_config else configs / "mappo_simple_spread.yaml"
    cfg = load_config(path, overrides)
    algo = build_algorithm_config(cfg).build_algo()
    if annealed:
        algo.learner_group.foreach_learner(lambda learner: anneal_to_empty(learner.module))
        algo.env_runner_group.foreach_env_runner(lambda runner: anneal_to_empty(runner.module))
    return algo


def suite(args) -> dict:
    from marl.config import load_config

    configs = Path(__file__).resolve().parent.parent / "configs" / "env"
    out = {}
    for name, cfg_name in SUITE.items():
        env = load_config(configs / f"{cfg_name}.yaml").env
        raw = raw_env_steps_per_s(args.raw_seconds / 2, env.import_, env.kwargs)
        train = time_algos({"mappo": project_mappo(args, env_config=cfg_name)}, 3)["mappo"]["steps_per_s"]
        out[name] = {"raw": round(raw, 1), "mappo": round(train, 1)}
        print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--envs", type=int, default=16, help="vectorised envs per env runner")
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--minibatch", type=int, default=500, help="team steps (MAPPO); stock PPO: see above")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--raw-seconds", type=float, default=10.0)
    p.add_argument("--suite", action="store_true", help="also measure every env of the README table")
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    import ray
    import torch

    torch.set_num_threads(1)  # as the trainer does (runners.torch_threads)
    global ADAM
    ADAM = AdamStepCounter()

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)

    builders = {
        "rllib_ppo": lambda: stock_ppo(args, matched=True),
        "rllib_ppo_defaults": lambda: stock_ppo(args, matched=False),
        "mappo": lambda: project_mappo(args),
        "bn_mappo": lambda: project_mappo(args, "learned"),
        "bn_mappo_annealed": lambda: project_mappo(args, "learned", annealed=True),
    }
    raw_cpu = raw_env_steps_per_s(args.raw_seconds, cpu=True)
    out = {"raw": round(raw_env_steps_per_s(args.raw_seconds), 1)}
    details = time_algos({name: build() for name, build in builders.items()}, args.iterations)
    print(json.dumps(details), file=sys.stderr, flush=True)
    for name, d in details.items():
        out[name] = round(d["steps_per_s"], 1)
    out["optimizer_steps"] = {k: round(v["optimizer_steps"], 2) for k, v in details.items()}
    out["env_steps_per_iter"] = {k: round(v["env_steps_per_iter"], 1) for k, v in details.items()}
    out["annealed_max_dag_density"] = details["bn_mappo_annealed"].get("max_dag_density")
    cpu = {"raw": raw_cpu, **{k: v["steps_per_cpu_s"] for k, v in details.items()}}
    out["per_cpu_s"] = {k: round(v, 1) for k, v in cpu.items()}
    for table, rate in (("ratios", out), ("ratios_per_cpu_s", cpu)):
        out[table] = {
            "mappo_vs_rllib_ppo": round(rate["mappo"] / rate["rllib_ppo"], 3),
            "mappo_vs_rllib_ppo_defaults": round(rate["mappo"] / rate["rllib_ppo_defaults"], 3),
            "mappo_vs_raw": round(rate["mappo"] / rate["raw"], 3),
            "bn_mappo_vs_mappo": round(rate["bn_mappo"] / rate["mappo"], 3),
            "bn_mappo_annealed_vs_mappo": round(rate["bn_mappo_annealed"] / rate["mappo"], 3),
        }
    out["settings"] = {k: getattr(args, k) for k in ("envs", "batch", "minibatch", "epochs", "iterations")}
    if args.suite:
        out["suite"] = suite(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
