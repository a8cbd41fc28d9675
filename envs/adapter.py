"""PettingZoo ParallelEnv -> RLlib MultiAgentEnv with one RLlib agent per team.

A Bayesian-network policy samples a child's action after its parents' (DESIGN.md, "Teams: one
RLlib agent per team"), so RLlib cannot batch a team's agents itself. The adapter therefore
groups every team into a single RLlib agent whose

- observation is a dict: ``obs`` [n, d] local observations, zero-padded to the largest agent's
  size; ``state`` [S] the global state (``env.state()`` where the env has it, else the
  concatenated padded observations); ``action_mask`` [n, A] (1 = allowed); ``alive`` [n];
- action is the joint action: [n] for discrete actions (agents with fewer actions than A have
  the extra actions masked out), or [n, k] for continuous ones (a Box with each agent's bounds);
- reward is the team reward: the **sum** of its agents' rewards at that step.

With ``history: {length: T, last_actions: bool}`` in the config, each team's observation also
holds ``history`` [n, T, f]: agent i's per-step features of the others over the episode so far
(the latest T steps, oldest first, the current step included, left-aligned), and
``history_len`` [1], the number of valid rows (1 at the first step). The features are the env's
own ``model_features(agent)`` where it has one (what the agent observes of the others, e.g.
their relative positions and last actions), else the agent's local observation followed, with
``last_actions``, by the one-hot last actions of every other discrete agent. Agent-modelling
encoders read it (marl/agent_modeling); the buffer is written in place and copied once per
step, so no prefix is ever rebuilt from Python lists.

Agents are ordered as the env lists them in ``possible_agents`` (a list, so deterministic),
and a dead agent keeps its slot: zero observation, ``alive`` 0, and only action 0 allowed.

Non-finite output (NaN or inf in an agent's observation or reward, or in the global state) is
caught here, where it enters, rather than left to surface later as a non-finite loss. With the
config key ``nonfinite: error`` (the default) the adapter raises ``NonFiniteOutput`` naming the
env, the agent, the key and the episode step; with ``nonfinite: end_episode`` that step ends the
episode instead (truncated, the bad values replaced by finite zeros) and every team's info of
that step holds ``nonfinite``, so a learner can count such endings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from envs.errors import NonFiniteOutput

DEFAULT_TEAM = "team_0"


class TeamGroupingError(ValueError):
    """``env.teams`` does not split the env's agents into disjoint, covering teams."""
WIN_INFO_KEYS = ("battle_won", "won")
# Per-episode behaviour type of the scripted others (envs/predator_prey.py, ...), passed on to
# the team's info for evaluation (linear probes, detection); no learner reads it.
TYPE_INFO = "type"
# Per-agent info: False when the env executed another action than the agent's (partial
# control). Teams get an [n] array; learners leave unexecuted actions out of the surrogate.
EXECUTED_INFO = "executed"
# Team info of a step whose env output held NaN or inf (``nonfinite: end_episode``): the
# episode ended there. The value names the agent and key, e.g. "agent_0 reward".
NONFINITE_INFO = "nonfinite"
NONFINITE_MODES = ("error", "end_episode")


def resolve_env_factory(import_path: str) -> Callable[..., Any]:
    """Return the callable that builds a ParallelEnv for ``import_path``.

    ``pkg.module`` means ``pkg.module.parallel_env``; ``pkg.module:fn`` names the callable.
    Raises ``ImportError`` or ``AttributeError`` with a readable message.
    """
    module_name, _, attr = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        # `pkg.name` where `name` is an attribute of pkg (gymnasium_robotics.mamujoco_v1).
        parent, _, name = module_name.rpartition(".")
        if not parent:
            raise
        try:
            module = getattr(importlib.import_module(parent), name)
        except (ModuleNotFoundError, AttributeError):
            raise ModuleNotFoundError(f"No module named '{module_name}'") from None
    attr = attr or "parallel_env"
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AttributeError(f"module '{module_name}' has no callable '{attr}'")
    return factory


def _flat_dim(space: gym.Space) -> int:
    return int(gym.spaces.flatdim(space))


@dataclass
class TeamSpec:
    """Shapes of one team as the learner sees them."""

    name: str
    agents: list[str]
    obs_dim: int
    n_actions: int
    state_dim: int
    agent_n_actions: list[int] = field(default_factory=list)
    continuous: bool = False  # Box actions [n, k]; the action mask is then [n, 1] of ones

    @property
    def n_agents(self) -> int:
        return len(self.agents)


def _split_obs_space(space: gym.Space) -> tuple[gym.Space, bool]:
    """PettingZoo's action-mask convention: Dict(observation=..., action_mask=...)."""
    if isinstance(space, gym.spaces.Dict) and "observation" in space.spaces:
        return space["observation"], "action_mask" in space.spaces
    return space, False


class TeamEnv(MultiAgentEnv):
    """RLlib view of a PettingZoo ParallelEnv, one RLlib agent per team.

    ``config`` keys: ``import`` (str), ``kwargs`` (dict) and optionally ``teams``
    (team name -> list of agent names or name prefixes; default: one team with every agent),
    ``history`` and ``nonfinite`` (``error`` | ``end_episode``; module docstring).
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = dict(config or {})
        self.import_path = config["import"]
        self.nonfinite = config.get("nonfinite") or "error"
        if self.nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES} (got {self.nonfinite!r})")
        self._bad: list[str] = []  # "agent key" of this step's non-finite values
        self.t = 0  # steps into the episode
        factory = resolve_env_factory(config["import"])
        self.env = factory(**dict(config.get("kwargs") or {}))
        names = list(self.env.possible_agents)
        self.teams = self._group(names, config.get("teams"))
        self._obs_spaces = {a: _split_obs_space(self.env.observation_space(a)) for a in names}

        self.env.reset(seed=config.get("seed"))
        self._has_state = self._probe_state()
        self._state_row = max(_flat_dim(self._obs_spaces[a][0]) for a in names)
        self.specs: dict[str, TeamSpec] = {}
        self.action_spaces = {}
        for team, members in self.teams.items():
            spaces = [self.env.action_space(a) for a in members]
            obs_dim = max(_flat_dim(self._obs_spaces[a][0]) for a in members)
            state_dim = self._state_dim(names)
            if all(isinstance(sp, gym.spaces.Discrete) for sp in spaces):
                n_acts = [int(sp.n) for sp in spaces]
                self.action_spaces[team] = gym.spaces.MultiDiscrete([max(n_acts)] * len(members))
                spec = TeamSpec(team, members, obs_dim, max(n_acts), state_dim, n_acts)
            elif all(isinstance(sp, gym.spaces.Box) and sp.shape == spaces[0].shape for sp in spaces):
                # Continuous: one Box [n, k] with each agent's own bounds.
                low = np.stack([sp.low.reshape(-1) for sp in spaces]).astype(np.float32)
                high = np.stack([sp.high.reshape(-1) for sp in spaces]).astype(np.float32)
                self.action_spaces[team] = gym.spaces.Box(low, high, dtype=np.float32)
                spec = TeamSpec(team, members, obs_dim, 1, state_dim, [1] * len(members), continuous=True)
            else:
                kinds = sorted({type(sp).__name__ + str(getattr(sp, "shape", "")) for sp in spaces})
                raise ValueError(
                    f"team '{team}' mixes action spaces {kinds}; a team needs all Discrete, "
                    "or all Box of one shape"
                )
            self.specs[team] = spec

        self._all_agents = names
        self._dead: set[str] = set()
        self.history = EpisodeHistory.from_config(config.get("history"), self) if config.get("history") else None
        self.possible_agents = list(self.teams)
        self.agents = list(self.teams)
        self.observation_spaces = {t: self._team_obs_space(s) for t, s in self.specs.items()}

    # ----------------------------------------------------------------- construction helpers
    @staticmethod
    def _group(names: list[str], teams: dict[str, list[str]] | None) -> dict[str, list[str]]:
        """Teams by agent name or name prefix; every agent in exactly one team."""
        if not teams:
            return {DEFAULT_TEAM: names}
        grouped: dict[str, list[str]] = {}
        for team, patterns in teams.items():
            members = [n for n in names if any(n == p or n.startswith(p) for p in patterns)]
            if not members:
                raise TeamGroupingError(f"team '{team}' matches no agent of {names}")
            grouped[team] = members
        counts = {n: sum(n in m for m in grouped.values()) for n in names}
        if any(c > 1 for c in counts.values()) or any(c == 0 for c in counts.values()):
            twice = [n for n, c in counts.items() if c > 1]
            none = [n for n, c in counts.items() if c == 0]
            raise TeamGroupingError(
                f"every agent must be in exactly one team; in several: {twice}, in none: {none}"
            )
        return grouped

    def _probe_state(self) -> bool:
        try:
            np.asarray(self.env.state())
            return True
        except (NotImplementedError, AttributeError):
            return False

    def _state_dim(self, names: list[str]) -> int:
        if self._has_state:
            return int(np.asarray(self.env.state()).size)
        return len(names) * self._state_row

    def _team_obs_space(self, spec: TeamSpec) -> gym.spaces.Dict:
        n, d, a = spec.n_agents, spec.obs_dim, spec.n_actions
        inf = np.float32(np.inf)
        spaces = {
            "obs": gym.spaces.Box(-inf, inf, (n, d), np.float32),
            "state": gym.spaces.Box(-inf, inf, (spec.state_dim,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (n, a), np.float32),
            "alive": gym.spaces.Box(0.0, 1.0, (n,), np.float32),
        }
        if self.history is not None:
            spaces.update(self.history.spaces(spec.name))
        return gym.spaces.Dict(spaces)

    # --------------------------------------------------------------------- translation
    def _agent_obs(self, agent: str, raw: Any, info: dict) -> tuple[np.ndarray, np.ndarray | None]:
        space, has_mask = self._obs_spaces[agent]
        mask = None
        if has_mask:
            mask = np.asarray(raw["action_mask"], np.float32)
            raw = raw["observation"]
        elif isinstance(info, dict) and "action_mask" in info:
            mask = np.asarray(info["action_mask"], np.float32)
        return np.asarray(gym.spaces.flatten(space, raw), np.float32), mask

    def _observe(self, obs: dict, infos: dict) -> dict[str, dict[str, np.ndarray]]:
        """Every team's observation dict. Each agent is flattened once per step, and the
        global state is computed once and shared by all teams."""
        flat = {
            agent: self._agent_obs(agent, obs[agent], infos.get(agent, {}))
            for agent in self._all_agents if agent in obs
        }
        for agent, (vec, mask) in flat.items():
            flat[agent] = (self._finite(vec, agent, "observation"), mask)
        if self._has_state:
            state = self._finite(np.asarray(self.env.state(), np.float32).reshape(-1), None, "state")
        else:  # concatenated observations, each padded to the widest
            state = np.zeros((len(self._all_agents), self._state_row), np.float32)
            for k, agent in enumerate(self._all_agents):
                if agent in flat:
                    state[k, : flat[agent][0].size] = flat[agent][0]
            state = state.reshape(-1)
        teams = {team: self._team_obs(team, flat, state) for team in self.teams}
        if self.history is not None:
            self.history.record(flat)
            for team, team_obs in teams.items():
                team_obs.update(self.history.observe(team))
        return teams

    def _finite(self, value: np.ndarray, agent: str | None, key: str) -> np.ndarray:
        """``value`` if all finite; else raise (``nonfinite: error``) or note it and return it
        with finite zeros in place of the bad entries (``end_episode``)."""
        ok = np.isfinite(value)
        if ok.all():
            return value
        where = "the global state" if agent is None else f"agent '{agent}'s {key}"
        if self.nonfinite == "error":
            raise NonFiniteOutput(
                f"env '{self.import_path}' returned {value[~ok].flat[0]} in {where} at step {self.t} "
                "of an episode"
            )
        self._bad.append(key if agent is None else f"{agent} {key}")
        return np.where(ok, value, 0).astype(value.dtype)

    def _team_obs(self, team: str, flat: dict, state: np.ndarray) -> dict[str, np.ndarray]:
        spec = self.specs[team]
        o = np.zeros((spec.n_agents, spec.obs_dim), np.float32)
        m = np.zeros((spec.n_agents, spec.n_actions), np.float32)
        alive = np.zeros(spec.n_agents, np.float32)
        for i, agent in enumerate(spec.agents):
            if agent in flat and agent not in self._dead:
                vec, mask = flat[agent]
                o[i, : vec.size] = vec
                if mask is None:
                    m[i, : spec.agent_n_actions[i]] = 1.0
                else:
                    m[i, : mask.size] = mask
                alive[i] = 1.0
            else:
                m[i, 0] = 1.0  # a dead agent can only take the no-op
        return {"obs": o, "state": state, "action_mask": m, "alive": alive}

    def _team_info(self, team: str, infos: dict) -> dict:
        out: dict[str, Any] = {}
        executed = []
        for agent in self.specs[team].agents:
            info = infos.get(agent) or {}
            for key in WIN_INFO_KEYS:
                if key in info:
                    out["won"] = bool(out.get("won", False) or info[key])
            executed.append(info.get(EXECUTED_INFO))
            if TYPE_INFO in info:
                out[TYPE_INFO] = info[TYPE_INFO]
        if any(e is not None for e in executed):  # an agent's action was replaced: say whose
            out[EXECUTED_INFO] = np.array([True if e is None else bool(e) for e in executed])
        return out

    # -------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, infos = self.env.reset(seed=seed, options=options)
        infos = infos or {}
        self._dead = set()
        self.t, self._bad = 0, []
        if self.history is not None:
            self.history.reset()
        team_obs = self._observe(obs, infos)
        team_info = {t: self._team_info(t, infos) for t in self.teams}
        if self._bad:  # nothing to end yet: the zeros stand in, and the start is counted
            for info in team_info.values():
                info[NONFINITE_INFO] = ", ".join(self._bad)
        return team_obs, team_info

    def step(self, action_dict: dict[str, np.ndarray]):
        live = set(self.env.agents)
        actions = {}
        for team, joint in action_dict.items():
            spec = self.specs[team]
            joint = np.asarray(joint)
            for i, agent in enumerate(spec.agents):
                if agent in live:
                    actions[agent] = joint[i].astype(np.float32) if spec.continuous else self._own_action(spec, i, joint[i])
        if self.history is not None:
            self.history.last_actions = actions
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        infos = infos or {}
        self.t += 1
        self._bad = []
        rewards = {a: float(self._finite(np.asarray(r, np.float64), a, "reward")) for a, r in rewards.items()}
        done = len(self.env.agents) == 0
        if not done:  # at the episode's end every agent terminates; deaths are the absent ones
            self._dead |= {a for a, t in terms.items() if t and not truncs.get(a, False)}
        truncated = done and any(truncs.get(a, False) for a in truncs)
        terminated = done and not truncated
        team_obs, team_rew, team_info = self._observe(obs, infos), {}, {}
        for team, spec in self.specs.items():
            team_rew[team] = float(sum(rewards.get(a, 0.0) for a in spec.agents))
            team_info[team] = self._team_info(team, infos)
        if self._bad:  # nonfinite: end_episode: this step ends the episode (truncated)
            terminated, truncated = False, True
            for info in team_info.values():
                info[NONFINITE_INFO] = ", ".join(self._bad)
        term = {t: terminated for t in self.teams}
        trunc = {t: truncated for t in self.teams}
        term["__all__"] = terminated
        trunc["__all__"] = truncated
        return team_obs, team_rew, term, trunc, team_info

    @staticmethod
    def _own_action(spec: TeamSpec, i: int, action) -> int:
        """Agent i's action inside its own space. The padded team space admits actions an agent
        lacks; a masked policy never picks them, but an unmasked sampler (RLlib's env
        pre-check samples the MultiDiscrete) can. Such an action becomes the no-op 0, as for a
        dead agent, so the env never sees an action outside the agent's space."""
        a = int(action)
        return a if 0 <= a < spec.agent_n_actions[i] else 0

    def close(self):
        self.env.close()


class EpisodeHistory:
    """Per-team buffers of the agents' per-step features of the others (module docstring).

    ``features(agent)`` of one step: the env's ``model_features(agent)`` if it has one, else the
    agent's flattened observation plus, with ``last_actions``, the one-hot last actions of the
    other discrete agents (zeros before the first step and for agents without an action)."""

    def __init__(self, env: TeamEnv, length: int, last_actions: bool):
        self.env, self.length, self.with_actions = env, int(length), bool(last_actions)
        self.own = callable(getattr(env.env, "model_features", None))
        names = env._all_agents
        self._n_act = {a: int(env.env.action_space(a).n) for a in names
                       if isinstance(env.env.action_space(a), gym.spaces.Discrete)}
        if self.own:
            dims = {a: int(np.asarray(env.env.model_features(a), np.float32).size) for a in names}
        else:
            acts = sum(self._n_act.values()) if self.with_actions else 0
            dims = {a: _flat_dim(env._obs_spaces[a][0]) + acts - self._own_actions(a) for a in names}
        self.dim = {t: max(dims[a] for a in spec.agents) for t, spec in env.specs.items()}
        self.buffers = {t: np.zeros((spec.n_agents, self.length, self.dim[t]), np.float32)
                        for t, spec in env.specs.items()}
        self.count = 0
        self.last_actions: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: dict, env: TeamEnv) -> EpisodeHistory:
        return cls(env, cfg.get("length", 50), cfg.get("last_actions", True))

    def _own_actions(self, agent: str) -> int:
        return self._n_act.get(agent, 0) if self.with_actions else 0

    def spaces(self, team: str) -> dict[str, gym.Space]:
        n = self.env.specs[team].n_agents
        inf = np.float32(np.inf)
        return {
            "history": gym.spaces.Box(-inf, inf, (n, self.length, self.dim[team]), np.float32),
            "history_len": gym.spaces.Box(0.0, float(self.length), (1,), np.float32),
        }

    def reset(self) -> None:
        for buf in self.buffers.values():
            buf[:] = 0.0
        self.count = 0
        self.last_actions = {}

    def features(self, agent: str, flat: dict) -> np.ndarray:
        if self.own:
            return np.asarray(self.env.env.model_features(agent), np.float32).reshape(-1)
        obs = flat[agent][0] if agent in flat else np.zeros(_flat_dim(self.env._obs_spaces[agent][0]), np.float32)
        if not self.with_actions:
            return obs
        parts = [obs]
        for other, n_act in self._n_act.items():
            if other != agent:
                onehot = np.zeros(n_act, np.float32)
                if other in self.last_actions:
                    onehot[int(self.last_actions[other])] = 1.0
                parts.append(onehot)
        return np.concatenate(parts)

    def record(self, flat: dict) -> None:
        """Append this step's features; past ``length`` steps the window slides by one."""
        slot = min(self.count, self.length - 1)
        for team, buf in self.buffers.items():
            if self.count >= self.length:
                buf[:, :-1] = buf[:, 1:]
            buf[:, slot] = 0.0
            for i, agent in enumerate(self.env.specs[team].agents):
                if agent in flat and agent not in self.env._dead:
                    vec = self.features(agent, flat)
                    buf[i, slot, : vec.size] = vec
        self.count += 1

    def observe(self, team: str) -> dict[str, np.ndarray]:
        # A copy: RLlib keeps every step's observation, and the buffer changes in place.
        return {
            "history": self.buffers[team].copy(),
            "history_len": np.array([min(self.count, self.length)], np.float32),
        }
