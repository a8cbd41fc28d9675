"""One learning agent among scripted MPE agents of a per-episode behaviour type: the machinery
that envs/predator_prey.py and envs/adhoc_spread.py share (the setting of CLAM, Ma et al., 2024:
an ego agent facing other agents whose policy type changes from episode to episode).

**World.** An mpe2 raw AEC env holds every body and its physics; only the ego is a PettingZoo
agent (one ParallelEnv agent). Each step, the scripted agents' actions are computed from the
world state, then all actions go through one AEC cycle of mpe2 (one world step).

**Types.** A subclass lists its behaviours in ``BEHAVIOURS`` (a registry, name -> behaviour;
``TYPES`` is its key order, the index space of ``infos[ego]["type"]``). ``reset`` draws one
type per episode, uniformly over the env's ``types`` (a list of names; ``None`` = all), from the
env's own generator (seeded by ``reset(seed=...)``); every scripted agent follows it for the
whole episode. A behaviour maps a :class:`Scene` to one target point per scripted agent.

**Controller.** A target becomes MPE's discrete action (0 no-op, 1 −x, 2 +x, 3 −y, 4 +y): the
desired velocity is ``gain·(target − pos)`` clipped to the agent's top speed; the steering is
desired minus current velocity; the action is the move best aligned with the steering, or the
no-op when the steering is under half the velocity change one action makes in one step.

**Ego's view of the others** (the CLAM encoder's per-step input, Ma et al. 2024):
:meth:`ScriptedOthersEnv.model_features` = the scripted agents' positions relative to the ego
(2 each) then their last actions as one-hots (5 each; zeros before the first step).

**Oracle.** ``oracle=True`` appends the one-hot of the episode's type (over all ``TYPES``) to
the ego's observation and to ``state()``: the upper-bound baseline of agent modelling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

N_MOVES = 5  # MPE discrete actions: no-op, left (−x), right (+x), down (−y), up (+y)
MOVE_DIRECTIONS = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], np.float64)
DEFAULT_ACCEL = 5.0  # mpe2's action sensitivity when an agent sets no accel
DEFAULT_MAX_SPEED = 1.0  # the controller's cruise speed for agents mpe2 leaves uncapped


@dataclass(frozen=True)
class Scene:
    """The world as a behaviour sees it. Agents are in mpe2's order."""

    pos: np.ndarray  # [n_agents, 2] positions
    vel: np.ndarray  # [n_agents, 2] velocities
    landmarks: np.ndarray  # [n_landmarks, 2] positions
    ego: int  # index of the learning agent
    scripted: tuple[int, ...]  # indices of the scripted agents, in order
    t: int  # world steps taken so far in the episode
    dt: float  # seconds per world step

    @property
    def others(self) -> np.ndarray:
        """[n_scripted, 2] positions of the scripted agents."""
        return self.pos[list(self.scripted)]


Behaviour = Callable[[Scene], np.ndarray]  # scene -> [n_scripted, 2] target points


def steer(pos: np.ndarray, vel: np.ndarray, target: np.ndarray, max_speed: float, gain: float,
          deadband: float) -> int:
    """The discrete move best aligned with the steering toward ``target`` (see module doc)."""
    desired = gain * (np.asarray(target, np.float64) - pos)
    speed = float(np.hypot(*desired))
    if speed > max_speed:
        desired *= max_speed / speed
    steering = desired - vel
    if float(np.hypot(*steering)) < deadband:
        return 0
    return int(np.argmax(MOVE_DIRECTIONS @ steering))


def resolve_types(types: Sequence[str] | None, known: tuple[str, ...]) -> tuple[str, ...]:
    """The env's type names (``None`` = all), checked against ``known``."""
    if types is None:
        return known
    if isinstance(types, str):
        types = [types]
    names = tuple(types)
    if not names:
        raise ValueError(f"types must name at least one of {list(known)} (got an empty list)")
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ValueError(f"unknown type(s) {unknown}; expected names from {list(known)}")
    return names


class ScriptedOthersEnv(ParallelEnv):
    """Base class. A subclass sets ``BEHAVIOURS``, ``EGO`` (the PettingZoo name of the learner),
    ``MPE_EGO`` (its name inside mpe2) and ``GAIN``, builds the mpe2 raw env, and may add to the
    ego's reward in :meth:`_ego_reward`."""

    BEHAVIOURS: dict[str, Behaviour] = {}
    EGO = "ego"
    MPE_EGO = "agent_0"
    GAIN = 3.0

    def __init__(self, mpe_env, types: Sequence[str] | None, oracle: bool, render_mode: str | None):
        self.TYPES = tuple(self.BEHAVIOURS)
        self.types = resolve_types(types, self.TYPES)
        self.oracle = bool(oracle)
        self.render_mode = render_mode
        self._mpe = mpe_env
        self.world = mpe_env.world
        names = [a.name for a in self.world.agents]
        self._mpe_names = names
        self._ego = names.index(self.MPE_EGO)
        self._scripted = tuple(i for i in range(len(names)) if i != self._ego)
        self.possible_agents = [self.EGO]
        self.agents: list[str] = []
        self.rng = np.random.default_rng()
        self.type_index = 0
        self.t = 0
        self.last_actions = np.full(len(self._scripted), -1, np.int64)  # −1: none yet
        self._base_obs_dim = int(mpe_env.observation_space(self.MPE_EGO).shape[0])

    # ----------------------------------------------------------------------- spaces
    @functools.cache  # noqa: B019 - spaces are fixed per instance
    def observation_space(self, agent):
        dim = self._base_obs_dim + (len(self.TYPES) if self.oracle else 0)
        return spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(N_MOVES)

    # ------------------------------------------------------------------------ views
    @property
    def type_name(self) -> str:
        return self.TYPES[self.type_index]

    def scene(self) -> Scene:
        agents, landmarks = self.world.agents, self.world.landmarks
        return Scene(
            pos=np.array([a.state.p_pos for a in agents], np.float64),
            vel=np.array([a.state.p_vel for a in agents], np.float64),
            landmarks=np.array([lm.state.p_pos for lm in landmarks], np.float64).reshape(-1, 2),
            ego=self._ego, scripted=self._scripted, t=self.t, dt=float(self.world.dt),
        )

    def _type_one_hot(self) -> np.ndarray:
        one_hot = np.zeros(len(self.TYPES), np.float32)
        one_hot[self.type_index] = 1.0
        return one_hot

    def _obs(self) -> dict[str, np.ndarray]:
        obs = np.asarray(self._mpe.observe(self.MPE_EGO), np.float32)
        if self.oracle:
            obs = np.concatenate([obs, self._type_one_hot()])
        return {self.EGO: obs}

    def _infos(self) -> dict[str, dict]:
        return {self.EGO: {"type": self.type_index, "type_name": self.type_name}}

    def state(self) -> np.ndarray:
        """Every agent's position and velocity, then every landmark's position (then the
        type's one-hot when ``oracle``)."""
        parts = [np.concatenate([a.state.p_pos, a.state.p_vel]) for a in self.world.agents]
        parts += [lm.state.p_pos for lm in self.world.landmarks]
        if self.oracle:
            parts.append(self._type_one_hot())
        return np.concatenate(parts).astype(np.float32)

    def model_features_dim(self, agent: str | None = None) -> int:
        return len(self._scripted) * (2 + N_MOVES)

    def model_features(self, agent: str | None = None) -> np.ndarray:
        """What the ego observes of the others now (Ma et al. 2024, the encoder's per-step
        input): their positions relative to the ego, then their last actions as one-hots."""
        if agent is not None and agent != self.EGO:
            raise ValueError(f"model_features is defined for the ego '{self.EGO}' only (got {agent!r})")
        agents = self.world.agents
        ego = agents[self._ego].state.p_pos
        rel = np.concatenate([agents[i].state.p_pos - ego for i in self._scripted])
        one_hot = np.zeros((len(self._scripted), N_MOVES), np.float32)
        taken = self.last_actions >= 0
        one_hot[np.flatnonzero(taken), self.last_actions[taken]] = 1.0
        return np.concatenate([rel.astype(np.float32), one_hot.reshape(-1)])

    # ------------------------------------------------------------------- scripting
    def scripted_actions(self) -> np.ndarray:
        """This step's action of every scripted agent under the episode's type."""
        scene = self.scene()
        targets = self.BEHAVIOURS[self.type_name](scene)
        actions = np.zeros(len(self._scripted), np.int64)
        for k, i in enumerate(self._scripted):
            body = self.world.agents[i]
            dv = (body.accel or DEFAULT_ACCEL) * self.world.dt / body.mass  # one action's Δv
            actions[k] = steer(scene.pos[i], scene.vel[i], targets[k], body.max_speed or DEFAULT_MAX_SPEED,
                               self.GAIN, 0.5 * dv)
        return actions

    def _ego_reward(self, mpe_reward: float) -> float:
        return mpe_reward

    # -------------------------------------------------------------------------- API
    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._mpe.reset(seed=seed)
        self.type_index = self.TYPES.index(self.types[int(self.rng.integers(len(self.types)))])
        self.agents = list(self.possible_agents)
        self.t = 0
        self.last_actions[:] = -1
        return self._obs(), self._infos()

    def step(self, actions):
        action = int(actions[self.EGO])
        if not 0 <= action < N_MOVES:
            raise ValueError(f"action of {self.EGO} must be in 0..{N_MOVES - 1} (got {action})")
        scripted = self.scripted_actions()
        joint = np.empty(len(self._mpe_names), np.int64)
        joint[self._ego] = action
        joint[list(self._scripted)] = scripted
        for name, a in zip(self._mpe_names, joint, strict=True):  # one AEC cycle = one world step
            assert self._mpe.agent_selection == name
            self._mpe.step(int(a))
        self.t += 1
        self.last_actions[:] = scripted
        reward = self._ego_reward(float(self._mpe.rewards[self.MPE_EGO]))
        terminated = bool(self._mpe.terminations[self.MPE_EGO])
        truncated = bool(self._mpe.truncations[self.MPE_EGO])
        obs, infos = self._obs(), self._infos()
        if terminated or truncated:
            self.agents = []
        return obs, {self.EGO: reward}, {self.EGO: terminated}, {self.EGO: truncated}, infos

    def render(self):
        if self.render_mode != "rgb_array":
            raise ValueError(f"render() needs render_mode='rgb_array' (got {self.render_mode!r})")
        return self._mpe.render()

    def close(self):
        self._mpe.close()
