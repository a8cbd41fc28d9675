"""JointPolicyModule: one RLlib module per team, acting for all of the team's agents.

- Actor: one MLP shared by every agent. Agent i's input is [o_i, onehot(i), parents' actions],
  where the parents' actions are the team's one-hot actions masked by column i of the DAG G
  (Chen & Zhang 2023, eq. 1: π_i(a_i | o_i, a_Pa(i))). Under the empty graph that input is all
  zeros and the policy is MAPPO's (Yu et al. 2022) parameter-shared actor.
- Sampling: agents are sampled in a topological order of G, one position at a time, each
  child reading the actions its parents have just sampled. With the empty graph every agent
  is sampled in one batched pass: the order cannot matter.
- Critic: centralised V(s) on the global state (MAPPO), or, with ``critic: decentralized``,
  one V(o_i, i) per agent (IPPO). Outputs are normalised values (see ``ValueNorm``);
  ``compute_values`` returns them in return units.

- Agent modelling (``agent_modeling``, e.g. CLAM, Ma et al. 2024): agent i's representation
  z_i of the other agents, encoded by the agent model's EMA encoder from the episode prefix in
  ``obs["history"]``, L2-normalised and detached, is appended to the actor's input (and to the
  critic's: all agents' z under a centralised critic, z_i under IPPO). The z each step acted
  with is stored with the step (``AGENT_REPR``) and reused by the learner, so the PPO ratio
  compares the same inputs even though the EMA encoder moves between rollout and update. Only
  the agent model's own loss (the learner's) trains its encoder. Without ``agent_modeling`` no
  part of it exists: same parameters, same inputs, same losses.

- Recurrence (``recurrent: {cell: gru, hidden: H}``, rMAPPO of Yu et al. 2022): a GRU cell sits
  between the MLP trunk and the output layer of the actor (and of the critic, with
  ``critic: true``). Each agent has its own hidden state, [n, H] per team (the critic's: [1, H]
  centralised, [n, H] per agent), so the module is a stateful RLlib RLModule: RLlib's
  connectors carry ``STATE_IN``/``STATE_OUT`` per env step, start each episode from
  ``get_initial_state()`` (zeros), and train on zero-padded sequences of ``max_seq_len`` steps.
  Agent i's recurrent step reads the same input as the feed-forward actor, parents' actions of
  that step included, so under a DAG it runs at i's position in the sampling order; the
  learner replays the same steps teacher-forced over each sequence (stored DAG noise and
  actions), so its first-epoch ratio is 1 as without recurrence. A dead agent's state stops:
  h_t = h_{t-1} wherever ``alive`` is 0, in acting and in training alike.
  Without ``recurrent`` no part of it exists: same parameters, same inputs, same losses.

Shapes: B batch, n agents, d observation size, A actions (the largest agent's).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchMultiCategorical
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from torch import nn

from marl.agent_modeling import make_agent_model
from marl.graphs import FixedGraph, GraphSample, make_graph
from marl.modules.action_heads import CategoricalHead, GaussianHead
from marl.modules.value_norm import ValueNorm

# Extra columns a learned graph stores with each step: the Gumbel noise it sampled with.
DAG_NOISE = {"perm": "dag_noise_perm", "edge": "dag_noise_edge"}
DAG_DENSITY = "dag_density"
# The agent model's representation each step acted with: [B, n·repr_dim].
AGENT_REPR = "agent_repr"
# AgentModelingConfig keys the agent model's constructor takes (the rest are the learner's).
AGENT_MODEL_KEYS = ("repr_dim", "width", "heads", "temperature", "momentum", "crop_min", "crop_max", "mask_fraction")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
# Recurrent cells by config name (``model.recurrent.cell``); each maps [*, in] and a state
# [*, H] to the next state [*, H].
CELLS = {"gru": nn.GRUCell}


def trunk(in_dim: int, hidden: int, layers: int, act: str) -> nn.Sequential:
    """``layers`` hidden layers (orthogonal weights, gain √2; zero biases)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        lin = nn.Linear(d, hidden)
        nn.init.orthogonal_(lin.weight, gain=2**0.5)
        nn.init.zeros_(lin.bias)
        mods += [lin, ACTIVATIONS[act]()]
        d = hidden
    return nn.Sequential(*mods)


def forward_narrow(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x')`` where x' is ``x`` followed by zeros up to the width net's first layer takes
    (the empty graph's parent-action columns, ``JointPolicyModule.actor_inputs``). Those
    columns' products with the first layer's weights are zeros, so they are skipped: the same
    output and gradients, a narrower first matmul."""
    first = net[0] if len(net) else None
    if x.shape[-1] == getattr(first, "in_features", x.shape[-1]):
        return net(x)
    if not isinstance(first, nn.Linear):
        raise ValueError(f"input width {x.shape[-1]} does not match the network's")
    y = F.linear(x, first.weight[:, : x.shape[-1]], first.bias)
    for layer in list(net)[1:]:
        y = layer(y)
    return y


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int, act: str, out_gain: float) -> nn.Sequential:
    body = trunk(in_dim, hidden, layers, act)
    head = nn.Linear(hidden if layers else in_dim, out_dim)
    nn.init.orthogonal_(head.weight, gain=out_gain)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*body, head)


class RecurrentNet(nn.Module):
    """MLP trunk -> recurrent cell -> linear output (rMAPPO's actor and critic, Yu et al. 2022;
    orthogonal weights and zero biases in the cell, as there).

    ``step`` advances one env step; ``sequence`` runs a [B, T] sequence from its first state.
    Both freeze the state of a row whose ``alive`` is 0, and both apply the same cell, so a
    sequence gives the per-step outputs of stepping one step at a time."""

    def __init__(self, in_dim: int, hidden: int, layers: int, state: int, out_dim: int, act: str,
                 out_gain: float, cell: str = "gru"):
        super().__init__()
        self.trunk = trunk(in_dim, hidden, layers, act)
        self.cell = CELLS[cell](hidden, state)
        for name, p in self.cell.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
        self.out = nn.Linear(state, out_dim)
        nn.init.orthogonal_(self.out.weight, gain=out_gain)
        nn.init.zeros_(self.out.bias)
        self.state_size = state

    def _cell(self, z: torch.Tensor, h: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
        new = self.cell(z.reshape(-1, z.shape[-1]), h.reshape(-1, h.shape[-1])).reshape(h.shape)
        if alive is None:
            return new
        return torch.where(alive.unsqueeze(-1) > 0, new, h)  # a dead agent's state stops

    def step(self, x: torch.Tensor, h: torch.Tensor, alive: torch.Tensor | None = None):
        """x [*, in], h [*, H], alive [*] -> (output [*, out], next state [*, H])."""
        h = self._cell(forward_narrow(self.trunk, x), h, alive)
        return self.out(h), h

    def sequence(self, x: torch.Tensor, h: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, *, in], h [B, *, H] (the state before step 0), alive [B, T, *] ->
        outputs [B, T, *, out]."""
        z = forward_narrow(self.trunk, x)
        states = []
        for t in range(x.shape[1]):
            h = self._cell(z[:, t], h, None if alive is None else alive[:, t])
            states.append(h)
        return self.out(torch.stack(states, dim=1))


# Columns of a learner batch that have no time dimension.
UNTIMED = (Columns.STATE_IN, Columns.NEXT_STATE_IN, Columns.SEQ_LENS)


def flatten_time(batch: dict[str, Any], b: int, t: int) -> dict[str, Any]:
    """Every [B, T, ...] tensor of a (nested) batch as [B·T, ...]; ``STATE_IN`` and
    ``SEQ_LENS`` (per sequence) are kept as they are."""

    def flat(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: flat(v) for k, v in x.items()}
        if isinstance(x, torch.Tensor) and x.dim() >= 2 and tuple(x.shape[:2]) == (b, t):
            return x.reshape(b * t, *x.shape[2:])
        return x

    return {k: (v if k in UNTIMED else flat(v)) for k, v in batch.items()}


def _do(actions: torch.Tensor, intervene: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Replace the masked entries of ``actions`` by the intervention's fixed actions."""
    if intervene is None:
        return actions
    mask, fixed = intervene
    mask = mask.bool().reshape(mask.shape + (1,) * (actions.dim() - mask.dim()))
    return torch.where(mask, fixed.to(actions.dtype), actions)


class JointPolicyModule(TorchRLModule, ValueFunctionAPI):
    """model_config keys: hidden, layers, activation, critic ('centralized'|'decentralized'),
    value_normalization (bool), graph (dict: mode, edges, ...)."""

    def setup(self):
        mc = self.model_config
        obs_space = self.observation_space
        self.n, self.d = obs_space["obs"].shape
        self.state_dim = obs_space["state"].shape[0]
        if isinstance(self.action_space, gym.spaces.MultiDiscrete):
            self.head = CategoricalHead(int(self.action_space.nvec.max()))
        else:  # Box [n, k]
            self.head = GaussianHead(int(self.action_space.shape[-1]))
        self.A = self.head.param_dim  # distribution inputs per agent
        hidden, layers, act = mc.get("hidden", 64), mc.get("layers", 2), mc.get("activation", "tanh")
        self.centralized = mc.get("critic", "centralized") == "centralized"
        rec = mc.get("recurrent")
        self.recurrent = dict(rec) if rec else None
        if self.recurrent is not None:  # RLlib's connectors read it from here
            self.model_config["max_seq_len"] = int(self.recurrent.get("max_seq_len", 20))

        self.graph = make_graph(self.n, self.d, dict(mc.get("graph") or {}))
        am = mc.get("agent_modeling")
        self.z_dim, self.critic_z = 0, False
        if am:
            spec = {k: am[k] for k in AGENT_MODEL_KEYS if k in am}
            hist = obs_space["history"].shape  # [n, T, f]
            self.agent_model = make_agent_model({"name": am["name"], **spec, "max_len": hist[1]}, hist[2])
            self.z_dim, self.critic_z = self.agent_model.repr_dim, bool(am.get("critic", True))
        actor_in = self.d + self.n + self.z_dim + self.n * self.head.code_dim
        critic_in = self.state_dim if self.centralized else self.d + self.n
        if self.critic_z:
            critic_in += self.n * self.z_dim if self.centralized else self.z_dim
        rec = self.recurrent
        if rec is None:
            self.actor = mlp(actor_in, hidden, layers, self.head.out_dim, act, 0.01)
            self.critic = mlp(critic_in, hidden, layers, 1, act, 1.0)
        else:
            cell, size = rec.get("cell", "gru"), int(rec.get("hidden", 64))
            self.actor = RecurrentNet(actor_in, hidden, layers, size, self.head.out_dim, act, 0.01, cell)
            if rec.get("critic", True):
                self.critic = RecurrentNet(critic_in, hidden, layers, size, 1, act, 1.0, cell)
            else:
                self.critic = mlp(critic_in, hidden, layers, 1, act, 1.0)
        self.value_norm = ValueNorm(1 if self.centralized else self.n)
        self.use_value_norm = bool(mc.get("value_normalization", True))
        self.register_buffer("agent_ids", torch.eye(self.n), persistent=False)

    # ----------------------------------------------------------------------- pieces
    @property
    def models_agents(self) -> bool:
        return self.z_dim > 0

    def _actor_base(self, obs: dict) -> torch.Tensor:
        """[B, n, d + n (+ z)]: observation, one-hot agent id (and the representation z_i)."""
        o = obs["obs"]
        parts = [o, self.agent_ids.expand(o.shape[0], -1, -1)]
        if self.models_agents:
            parts.append(obs[AGENT_REPR])
        return torch.cat(parts, dim=-1)

    def with_representation(self, batch: dict[str, Any]) -> dict:
        """The observation dict, plus ``AGENT_REPR`` [B, n, z] when agents are modelled: the
        stored one where the batch has it (the learner), else encoded now by the EMA encoder
        from each agent's episode prefix (acting)."""
        obs = batch[Columns.OBS]
        if not self.models_agents:
            return obs
        b = obs["obs"].shape[0]
        if AGENT_REPR in batch:
            z = batch[AGENT_REPR].reshape(b, self.n, self.z_dim)
        else:
            hist = obs["history"]  # [B, n, T, f]
            lengths = obs["history_len"].reshape(b, 1).expand(b, self.n).reshape(-1).long().clamp(min=1)
            z = self.agent_model.represent(hist.reshape(b * self.n, *hist.shape[2:]), lengths)
            z = z.reshape(b, self.n, self.z_dim)
        return {**obs, AGENT_REPR: z}

    def conditional_logits(
        self, obs: dict, actions: torch.Tensor, graph: GraphSample, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced distribution inputs of π_i(· | o_i, a_Pa(i)) for every agent at once:
        [B, n, A] (A = logits per agent, or [mean, log_std] for continuous actions).

        ``actions`` ([B, n] or [B, n, k]) are the team's actions; only parents' reach agent i.
        A recurrent module takes ``hidden`` [B, n, H], each agent's state before this step
        (None: the initial state), and applies one recurrent step.
        """
        x = self.actor_inputs(obs, actions, graph)
        out, _ = self._actor(x, obs["alive"], hidden)
        return self.head.dist_inputs(out, obs["action_mask"])

    def actor_inputs(self, obs: dict, actions: torch.Tensor, graph: GraphSample) -> torch.Tensor:
        """[B, n, in]: every agent's actor input [o_i, onehot(i) (, z_i), parents' actions].

        Under the empty graph the parents' actions are all zeros and are left out (the actor
        applies its first layer to the columns given, ``forward_narrow``)."""
        base = self._actor_base(obs)
        if graph.empty:
            return base
        code = self.head.encode(actions, base.dtype)  # [B, n(j), c]
        # parents[b, i, j, :] = G[b, j, i] * code[b, j, :]
        parents = graph.adjacency.transpose(1, 2).unsqueeze(-1) * code.unsqueeze(1)
        parents = parents.reshape(base.shape[0], self.n, self.n * self.head.code_dim)
        return torch.cat([base, parents], dim=-1)

    def _actor(self, x: torch.Tensor, alive: torch.Tensor, hidden: torch.Tensor | None):
        """The actor on inputs [*, in]: (outputs, next hidden state), or (outputs, None) when
        it is feed-forward."""
        if self.recurrent is None:
            return forward_narrow(self.actor, x), None
        if hidden is None:
            hidden = x.new_zeros(*x.shape[:-1], self.actor.state_size)
        return self.actor.step(x, hidden, alive)

    def sample_joint(
        self, obs: dict, graph: GraphSample, deterministic: bool = False,
        intervene: tuple[torch.Tensor, torch.Tensor] | None = None,
        hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Sample the joint action in DAG order. Returns (actions, dist inputs [B, n, A]), and
        for a recurrent module also the agents' next hidden states [B, n, H] (``hidden``: the
        states before this step; None = the initial state).

        When no sampled graph of the batch has an edge (the empty graph, or a learned graph
        annealed to density 0) every agent is sampled in one batched pass: that is the cost of
        decentralised execution. Only sampling takes this shortcut; the learner's
        ``conditional_logits`` keeps the straight-through path through the edge mask.

        ``intervene = (mask [B, n], actions)`` is Pearl's do(a_K): the masked agents' actions
        are fixed to ``actions`` (same shape as the joint action) instead of sampled, and are
        written into the parents' code, so their children in the sampled DAG condition on them.
        Their returned dist inputs are their own policy's, unused by the caller."""
        if self.recurrent is not None and hidden is None:
            hidden = obs["obs"].new_zeros(obs["obs"].shape[0], self.n, self.actor.state_size)
        if graph.empty or not bool(graph.adjacency.detach().any()):
            dummy = self.head.empty_actions(obs["alive"].shape, obs["alive"].device)
            x = self.actor_inputs(obs, dummy, graph)
            out, next_hidden = self._actor(x, obs["alive"], hidden)
            params = self.head.dist_inputs(out, obs["action_mask"])
            actions = self.head.dead_action(self.head.sample(params, deterministic), obs["alive"])
            actions = _do(actions, intervene)
            return (actions, params) if next_hidden is None else (actions, params, next_hidden)

        base = self._actor_base(obs)
        b = base.shape[0]
        rows = torch.arange(b, device=base.device)
        actions = self.head.empty_actions((b, self.n), base.device)
        code = base.new_zeros(b, self.n, self.head.code_dim)
        params = base.new_zeros(b, self.n, self.A)
        next_hidden = None if hidden is None else hidden.clone()
        for pos in range(self.n):
            i = graph.order[:, pos]  # [B]: the agent each env samples now
            col = graph.adjacency[rows, :, i]  # [B, n]: parents of agent i
            parents = (col.unsqueeze(-1) * code).reshape(b, self.n * self.head.code_dim)
            # Agent i's (recurrent) step, on its parents' actions of this very step.
            out, h_i = self._actor(
                torch.cat([base[rows, i], parents], dim=-1), obs["alive"][rows, i],
                None if hidden is None else hidden[rows, i],
            )
            if h_i is not None:
                next_hidden[rows, i] = h_i
            p = self.head.dist_inputs(out, obs["action_mask"][rows, i])
            a = self.head.dead_action(self.head.sample(p, deterministic), obs["alive"][rows, i])
            if intervene is not None:  # do(a_i): the fixed action, not the sampled one
                a = _do(a, (intervene[0][rows, i], intervene[1][rows, i]))
            actions[rows, i] = a
            code[rows, i] = self.head.encode(a, base.dtype)
            params[rows, i] = p
        return (actions, params) if next_hidden is None else (actions, params, next_hidden)

    def agent_logp(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-agent conditional log-probs [B, n]."""
        return self.head.logp(params, actions)

    # --------------------------------------------------------------------- RLlib API
    @property
    def learns_graph(self) -> bool:
        return hasattr(self.graph, "sample_noise")

    def decentralize(self) -> None:
        """Force the empty graph: every agent acts on its own observation (MAPPO execution)."""
        self.graph = FixedGraph(self.n, []).to(self.agent_ids.device)

    # ------------------------------------------------------------------ recurrence
    def get_initial_state(self) -> dict[str, torch.Tensor]:
        """Zeros per agent: {"actor": [n, H]} (+ "critic": [1 or n, H] with a recurrent
        critic). Empty without ``recurrent``, which keeps the module stateless for RLlib."""
        if self.recurrent is None:
            return {}
        state = {"actor": torch.zeros(self.n, self.actor.state_size)}
        if self.recurrent_critic:
            state["critic"] = torch.zeros(1 if self.centralized else self.n, self.critic.state_size)
        return state

    @property
    def recurrent_critic(self) -> bool:
        return isinstance(self.critic, RecurrentNet)

    def has_time_dim(self, batch: dict[str, Any]) -> bool:
        """Whether the batch's columns are [B, T, ...] (RLlib adds T for stateful modules:
        T = 1 on EnvRunners, ``max_seq_len`` zero-padded in the learner)."""
        return self.recurrent is not None and batch[Columns.OBS]["obs"].dim() == 4

    def state_in(self, batch: dict[str, Any], b: int) -> dict[str, torch.Tensor]:
        """The batch's ``STATE_IN`` ([B, ...] per key), or the initial state for B rows."""
        state = batch.get(Columns.STATE_IN)
        if state:
            return state
        device = batch[Columns.OBS]["obs"].device
        return {k: v.to(device).expand(b, *v.shape).clone() for k, v in self.get_initial_state().items()}

    def critic_inputs(self, obs: dict) -> torch.Tensor:
        """[B, k, in]: the critic's input, k = 1 (the state, centralised) or n (per agent)."""
        if self.centralized:
            state = obs["state"]
            if self.critic_z:
                z = obs[AGENT_REPR]
                state = torch.cat([state, z.reshape(z.shape[0], -1)], dim=-1)
            return state.unsqueeze(1)
        base = torch.cat([obs["obs"], self.agent_ids.expand(obs["obs"].shape[0], -1, -1)], dim=-1)
        if self.critic_z:
            base = torch.cat([base, obs[AGENT_REPR]], dim=-1)
        return base

    def critic_alive(self, obs: dict) -> torch.Tensor | None:
        """Rows whose critic state advances: every step centralised, living agents per agent."""
        return None if self.centralized else obs["alive"]

    def _act(self, batch: dict[str, Any], deterministic: bool) -> dict[str, Any]:
        if self.has_time_dim(batch):  # an EnvRunner's [B, 1, ...] batch
            b, t = batch[Columns.OBS]["obs"].shape[:2]
            out = self._act(flatten_time(batch, b, t), deterministic)
            return {k: v if k == Columns.STATE_OUT else v.reshape(b, t, *v.shape[1:]) for k, v in out.items()}
        obs = self.with_representation(batch)
        out: dict[str, Any] = {}
        if self.models_agents:
            out[AGENT_REPR] = obs[AGENT_REPR].reshape(obs["obs"].shape[0], -1)
        if self.learns_graph:
            b = obs["obs"].shape[0]
            noise = self.graph.sample_noise(b, obs["obs"].device)
            if deterministic:  # the most likely graph: no Gumbel perturbation
                noise = {k: torch.zeros_like(v) for k, v in noise.items()}
            graph = self.graph(obs["obs"], noise)
            for key, col in DAG_NOISE.items():
                out[col] = noise[key].reshape(b, -1)
        else:
            graph = self.graph(obs["obs"])
        if self.recurrent is None:
            actions, logits = self.sample_joint(obs, graph, deterministic)
        else:
            state = self.state_in(batch, obs["obs"].shape[0])
            actions, logits, hidden = self.sample_joint(obs, graph, deterministic, hidden=state["actor"])
            out[Columns.STATE_OUT] = {"actor": hidden}
            if self.recurrent_critic:  # stepped while acting: the learner needs its state too
                _, out[Columns.STATE_OUT]["critic"] = self.critic.step(
                    self.critic_inputs(obs), state["critic"], self.critic_alive(obs)
                )
        out[Columns.ACTIONS] = actions
        # Joint log-prob of the living agents (a dead agent's action is fixed, not chosen).
        out[Columns.ACTION_LOGP] = (self.agent_logp(logits, actions) * obs["alive"]).sum(-1)
        out[Columns.ACTION_DIST_INPUTS] = logits.reshape(logits.shape[0], -1)
        return out

    def train_graph(self, batch: dict[str, Any]) -> GraphSample:
        """The graph each stored step was sampled with, rebuilt at the current parameters from
        the stored Gumbel noise (so the first PPO epoch's ratio is exactly 1). Without stored
        noise (e.g. a hand-made batch), fresh noise is drawn."""
        obs = batch[Columns.OBS]["obs"]
        if not self.learns_graph:
            return self.graph(obs)
        noise = None
        if all(col in batch for col in DAG_NOISE.values()):
            shapes = self.graph.noise_shapes()
            noise = {k: batch[col].reshape(obs.shape[0], *shapes[k]) for k, col in DAG_NOISE.items()}
        return self.graph(obs, noise)

    # Acting never needs gradients: without no_grad every rollout step built an autograd
    # graph, and the learned DAG ran Sinkhorn (needed only for the straight-through gradient).
    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, deterministic=True)

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return self._act(batch, deterministic=False)

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        if self.has_time_dim(batch):
            return self._forward_train_sequences(batch)
        if self.recurrent is not None:
            raise ValueError("a recurrent module trains on [B, T] sequences (RLlib's learner connectors add T)")
        obs = self.with_representation(batch)
        graph = self.train_graph(batch)
        logits = self.conditional_logits(obs, batch[Columns.ACTIONS], graph)
        out = {
            Columns.ACTION_DIST_INPUTS: logits.reshape(logits.shape[0], -1),
            Columns.VF_PREDS: self.normalized_values(batch),
        }
        if self.learns_graph:
            out[DAG_DENSITY] = self.graph.density(graph.adjacency)
            self.graph.record(graph.adjacency)
        return out

    def _forward_train_sequences(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A recurrent module on RLlib's zero-padded [B, T] sequences, each starting from its
        ``STATE_IN``: every step teacher-forced on the stored actions and DAG noise, as the
        rollout sampled it (so the first epoch's ratio is 1)."""
        b, t = batch[Columns.OBS]["obs"].shape[:2]
        flat = flatten_time(batch, b, t)
        obs = self.with_representation(flat)
        graph = self.train_graph(flat)
        x = self.actor_inputs(obs, flat[Columns.ACTIONS], graph)
        state = self.state_in(batch, b)
        out = self.actor.sequence(x.reshape(b, t, self.n, -1), state["actor"], obs["alive"].reshape(b, t, self.n))
        logits = self.head.dist_inputs(out.reshape(b * t, self.n, -1), obs["action_mask"])
        result = {
            Columns.ACTION_DIST_INPUTS: logits.reshape(b, t, -1),
            Columns.VF_PREDS: self._sequence_values(obs, state, b, t),
        }
        if self.learns_graph:
            result[DAG_DENSITY] = self.graph.density(graph.adjacency).reshape(b, t)
            real = flat.get(Columns.LOSS_MASK)  # edge statistics of real steps only
            self.graph.record(graph.adjacency if real is None else graph.adjacency[real.bool()])
        return result

    def _sequence_values(self, obs: dict, state: dict, b: int, t: int) -> torch.Tensor:
        """Normalised values [B, T, k] of a recurrent module's sequences (``obs`` flattened to
        [B·T, ...], with the representation where agents are modelled)."""
        x = self.critic_inputs(obs)
        x = x.reshape(b, t, *x.shape[1:])
        if not self.recurrent_critic:
            return self.critic(x).squeeze(-1)
        alive = self.critic_alive(obs)
        alive = None if alive is None else alive.reshape(b, t, -1)
        return self.critic.sequence(x, state["critic"], alive).squeeze(-1)

    def normalized_values(self, batch: dict[str, Any]) -> torch.Tensor:
        """Critic output in normalised units: [B, 1] centralised or [B, n] per agent; a
        recurrent module's on [B, T] sequences: [B, T, 1] or [B, T, n] (on a [B] batch: one
        step from ``STATE_IN``, or from the initial state)."""
        if self.recurrent is not None:
            if self.has_time_dim(batch):
                b, t = batch[Columns.OBS]["obs"].shape[:2]
                flat = flatten_time(batch, b, t)
                return self._sequence_values(self.with_representation(flat), self.state_in(batch, b), b, t)
            obs = self.with_representation(batch)
            x = self.critic_inputs(obs)
            if not self.recurrent_critic:
                return self.critic(x).squeeze(-1)
            state = self.state_in(batch, x.shape[0])
            return self.critic.step(x, state["critic"], self.critic_alive(obs))[0].squeeze(-1)
        obs = batch[Columns.OBS]
        if self.centralized:
            state = obs["state"]
            if self.critic_z:
                z = self.with_representation(batch)[AGENT_REPR]
                state = torch.cat([state, z.reshape(z.shape[0], -1)], dim=-1)
            return self.critic(state)
        base = torch.cat([obs["obs"], self.agent_ids.expand(obs["obs"].shape[0], -1, -1)], dim=-1)
        if self.critic_z:
            base = torch.cat([base, self.with_representation(batch)[AGENT_REPR]], dim=-1)
        return self.critic(base).squeeze(-1)

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        v = self.normalized_values(batch)
        if self.use_value_norm:
            v = self.value_norm.denormalize(v)
        return v.squeeze(-1) if self.centralized else v

    def _dist_cls(self):
        # RLlib's view of the joint action for discrete teams; EnvRunners never need it since
        # the module returns actions and log-probs itself.
        if not self.head.discrete:
            raise NotImplementedError("continuous teams return actions and log-probs directly")
        return TorchMultiCategorical.get_partial_dist_cls(input_lens=[self.A] * self.n)

    def get_inference_action_dist_cls(self):
        return self._dist_cls()

    def get_exploration_action_dist_cls(self):
        return self._dist_cls()

    def get_train_action_dist_cls(self):
        return self._dist_cls()
