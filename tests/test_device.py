"""The module and learner on an accelerator, checked on a CPU-only machine (issue 11).

This machine has no GPU, so the checks use two honest stand-ins:

- **PyTorch's ``meta`` device**: a real non-CPU device to torch's dispatcher (shapes and
  dtypes, no data). Every op that mixes a CPU tensor of one or more dimensions with a meta
  one raises, and so does every read of a value on the host (``.item()``, ``bool()``,
  ``float()``, ``.cpu()``, ``.numpy()``, ``.tolist()``) and every op whose output shape depends
  on the data (``torch.unique``): on CUDA those are the host-device copies and the
  synchronisations that stall a GPU learner. The module's forward_train, the team PPO loss
  (value normalisation, density term, the graph's record), its backward pass and an Adam step
  run there whole, for every graph mode, both action heads, both critics and CLAM's
  contrastive loss. A 0-d CPU tensor would still mix silently (torch treats it as a scalar),
  and random ops ignore a generator's device there: those two are not covered.
- **A recording TorchFunctionMode around a real RLlib learner update**: the minibatch steps
  of an ``Algorithm.train()`` (forward_train and ``compute_loss_for_module``, the CLAM
  encoder step with its episode buffer included) run under a mode that records every call,
  made from the project's own code (``marl/``), of a host read or a transfer, and every tensor
  factory called without a device. It sees RLlib's real batches and code paths; it cannot see
  a CUDA-only failure, which is what benchmarks/gpu.sh is for on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.evaluation.postprocessing import Postprocessing
from torch.overrides import TorchFunctionMode

from marl.graphs.learned import graph_counts
from marl.learners.joint_ppo import JointPPOLearner, joint_ppo_loss
from marl.modules import JointPolicyModule
from marl.modules.joint_policy import AGENT_REPR, DAG_NOISE

N, D, S = 3, 5, 7
MARL = str(Path(__file__).resolve().parent.parent / "marl")

CASES = {
    "mappo": ({"mode": "empty"}, "centralized", "discrete", False),
    "ippo": ({"mode": "empty"}, "decentralized", "discrete", False),
    "bn_learned": ({"mode": "learned", "order": "learned", "context_hidden": 16}, "centralized", "discrete", False),
    "bn_learned_fixed_order": ({"mode": "learned", "order": "fixed", "context_hidden": 16}, "centralized",
                               "discrete", False),
    "bn_full_continuous": ({"mode": "full"}, "centralized", "continuous", False),
    "mappo_clam": ({"mode": "empty"}, "centralized", "discrete", True),
}
CLAM = {"name": "clam", "width": 16, "heads": 2, "repr_dim": 6, "crop_min": 2, "crop_max": 6}
HIST_T, HIST_F = 8, 4


def build(graph, critic, actions, clam) -> JointPolicyModule:
    torch.manual_seed(0)
    spaces = {
        "obs": gym.spaces.Box(-np.inf, np.inf, (N, D), np.float32),
        "state": gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
        "action_mask": gym.spaces.Box(0, 1, (N, 4), np.float32),
        "alive": gym.spaces.Box(0, 1, (N,), np.float32),
    }
    if clam:
        spaces["history"] = gym.spaces.Box(-np.inf, np.inf, (N, HIST_T, HIST_F), np.float32)
        spaces["history_len"] = gym.spaces.Box(0, HIST_T, (1,), np.float32)
    action_space = gym.spaces.MultiDiscrete([4] * N) if actions == "discrete" else \
        gym.spaces.Box(-1, 1, (N, 2), np.float32)
    mc = {"hidden": 16, "layers": 2, "critic": critic, "graph": graph}
    if clam:
        mc["agent_modeling"] = CLAM
    return RLModuleSpec(module_class=JointPolicyModule, observation_space=gym.spaces.Dict(spaces),
                        action_space=action_space, model_config=mc).build()


def batch_for(module: JointPolicyModule, b: int = 32, padded: bool = False) -> dict:
    """A learner minibatch as RLlib hands it over (on CPU; moved by the test). ``padded``: with
    the loss mask RLlib adds when it zero-pads sequences (absent for these feed-forward
    modules)."""
    g = torch.Generator().manual_seed(1)
    obs = {"obs": torch.randn(b, N, D, generator=g), "state": torch.randn(b, S, generator=g),
           "action_mask": torch.ones(b, N, 4), "alive": torch.ones(b, N)}
    obs["alive"][: b // 4, 2] = 0.0
    if module.models_agents:
        obs["history"] = torch.randn(b, N, HIST_T, HIST_F, generator=g)
        obs["history_len"] = torch.full((b, 1), float(HIST_T))
    with torch.no_grad():
        acted = module.forward_exploration({Columns.OBS: obs})
    batch = {Columns.OBS: obs, Postprocessing.ADVANTAGES: torch.randn(b, generator=g),
             Postprocessing.VALUE_TARGETS: torch.randn(b, *(() if module.centralized else (N,)), generator=g)}
    if padded:
        batch[Columns.LOSS_MASK] = torch.ones(b, dtype=torch.bool)
        batch[Columns.LOSS_MASK][-2:] = False  # padding rows
    for key in (Columns.ACTIONS, Columns.ACTION_DIST_INPUTS, AGENT_REPR, *DAG_NOISE.values()):
        if key in acted:
            batch[key] = acted[key]
    return batch


def tensors_of(module: torch.nn.Module):
    """Every tensor a module and its submodules hold: parameters, buffers, and plain tensor
    attributes (which ``Module.to`` would leave behind)."""
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Tensor):
                yield f"{name}.{key}", value
        for key, value in [*sub._parameters.items(), *sub._buffers.items()]:
            if value is not None:
                yield f"{name}.{key}", value


def to_meta(tree):
    if isinstance(tree, dict):
        return {k: to_meta(v) for k, v in tree.items()}
    return tree.to("meta")


@pytest.mark.parametrize("case", CASES)
def test_module_moved_to_a_device_holds_every_tensor_there(case):
    module = build(*CASES[case]).to("meta")
    misplaced = [name for name, t in tensors_of(module) if t.device.type != "meta"]
    assert not misplaced, f"left on the CPU by Module.to: {misplaced}"


@pytest.mark.parametrize("case", CASES)
def test_update_runs_on_a_non_cpu_device_without_host_reads(case):
    """forward_train, the PPO loss with the density term and value normalisation, backward
    and an Adam step, all on ``meta``: a CPU tensor mixed in, or a value read on the host,
    raises."""
    module = build(*CASES[case])
    batch = to_meta(batch_for(module, padded=case == "ippo"))
    module = module.to("meta")
    optimizer = torch.optim.Adam(module.parameters())
    fwd = module.forward_train(batch)
    loss, stats = joint_ppo_loss(module, batch, fwd, clip_param=0.2, vf_loss_coeff=1.0,
                                 entropy_coeff=0.01, density=(0.5, 0.1))
    if module.models_agents:
        hist = torch.randn(16, HIST_T, HIST_F, device="meta")
        term, extra = module.agent_model.contrastive_loss(hist, torch.full((16,), HIST_T, device="meta"), None)
        loss = loss + term
        stats.update(extra)
    loss.backward()
    optimizer.step()
    on_device = [v for v in stats.values() if isinstance(v, torch.Tensor)]
    assert loss.device.type == "meta" and on_device and all(v.device.type == "meta" for v in on_device)
    if module.learns_graph:
        assert module.graph.batch_mode_share.device.type == "meta"


def test_graph_counts_equal_torch_unique_counts():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 8, 10):  # 10 agents: 100 bits, two 52-bit keys per graph
        for b in (1, 7, 300):
            flat = (torch.rand(b, n * n, generator=g) < 0.05).float()
            flat[: b // 2] = flat[0]
            _, inverse, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
            assert torch.equal(graph_counts(flat), counts[inverse])


# ------------------------------------------------------------- a real learner, recorded
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
              torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__}
FACTORIES = {torch.tensor, torch.as_tensor, torch.from_numpy, torch.zeros, torch.ones, torch.full,
             torch.empty, torch.arange, torch.eye, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.linspace}


class HostTraffic(TorchFunctionMode):
    """Records calls made directly from ``marl/`` code of a host read, a ``.to("cpu")``, or a
    tensor factory without ``device=`` (which would put the tensor on the CPU whatever device
    the module is on)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1)
        if caller.f_code.co_filename.startswith(MARL):
            where = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"
            # .to("cpu") spelt out (a device variable that is the CPU here is the module's own)
            to_cpu = func is torch.Tensor.to and "cpu" in [*args[1:], kwargs.get("device")]
            if func in HOST_READS or to_cpu:
                self.calls.append(f"{getattr(func, '__name__', func)} at {where}")
            elif func in FACTORIES and "device" not in kwargs:
                self.calls.append(f"{func.__name__} without device at {where}")
        return func(*args, **kwargs)


@pytest.mark.slow
def test_a_real_learner_update_makes_no_host_reads_in_its_minibatch_steps(tmp_path, monkeypatch):
    """An iteration of BN-MAPPO (learned graph) with CLAM through RLlib, the learner in this
    process: every minibatch step (module forward_train, the loss, the CLAM encoder step and
    its buffer draw) runs under ``HostTraffic``; none of it reads a value back or builds a
    tensor off the module's device."""
    from marl.algorithms import build_algorithm_config
    from marl.config import load_config
    from marl.modules.joint_policy import JointPolicyModule as Module
    from marl.train import init_ray

    mode = HostTraffic()
    steps = {"forward": 0, "loss": 0}

    def recorded(method, key):
        def wrapper(self, *args, **kwargs):
            steps[key] += 1
            with mode:
                return method(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(Module, "_forward_train", recorded(Module._forward_train, "forward"))
    monkeypatch.setattr(JointPPOLearner, "compute_loss_for_module",
                        recorded(JointPPOLearner.compute_loss_for_module, "loss"))
    cfg = load_config("configs/mappo_simple_spread.yaml", [
        "model.graph.mode=learned", "model.agent_modeling.name=clam", "model.agent_modeling.width=32",
        "model.agent_modeling.heads=2", "model.agent_modeling.min_episodes=4",
        "model.agent_modeling.batch_episodes=16", "model.agent_modeling.encoder_every=1",
        "model.agent_modeling.probe_episodes=0", "algo.train_batch_size=200", "algo.minibatch_size=100",
        "algo.num_epochs=1", "runners.num_envs_per_env_runner=2", f"output_dir={tmp_path}",
    ])
    init_ray()
    algo = build_algorithm_config(cfg).build_algo()
    try:
        result = algo.train()  # 8 episodes finish: the encoder trains in this update already
    finally:
        algo.stop()
    stats = result["learners"]["team_0"]
    assert np.isfinite(stats["agent_model/contrastive_loss"]) and np.isfinite(stats["dag_mode_share"])
    assert steps["loss"] >= 2 and steps["forward"] >= 2
    assert not mode.calls, mode.calls
