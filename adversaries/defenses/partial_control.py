"""The team env with learning attackers that partly control an agent α (Liu et al., ICLR 2024).

An RLlib MultiAgentEnv around ``envs.adapter.TeamEnv``. Its agents are the env's teams, as in
plain training, plus one attacker agent per defended (victim) team. At each step every team
samples its joint action as usual and the episode's attacker samples an action for the agents
α it attacks, all at once (the attacker does not see that step's team actions). Then, for each
α independently, with probability ε (the budget) the attacker's action replaces α's own:

    π_α = (1 − ε)·π̂_α + ε·π̃        (Liu et al. 2024, the partially controlled policy)

The attacker is paid −r_victim (zero-sum). α is a member of the victim team (a cooperative
env) or the victim's opponent (a two-team competitive env); the env only sees (attacker,
victim team, α's team, α's ids) and handles both alike. With several victim teams (both seats
of a two-team game), each episode draws one of them uniformly, and only that team's attacker
acts in it, so every victim plays its own policy in full while its opponent is partly
controlled.

Which sampled actions were executed is reported per agent in the step's infos, ``executed``
(envs.adapter.EXECUTED_INFO; marl/learners/executed.py leaves unexecuted ones out of the PPO
surrogate): α's slot is False on the steps its action was replaced, and the attacker's flag
is True only on those steps. So the attacker's PPO ratio counts only the actions it played;
the steps π̂_α played enter its loss through the critic (and the advantages) alone.

The replacement draws come from this env's own RNG, seeded from the episode seed.

Limitation: a Bayesian-network team samples its whole joint action before the env step, so
α's children in the team's DAG condition on α's *sampled* action, not on the attacker's
executed one (an attack that runs the victim inside the env, adversaries/attack_env.py, can
intervene with do(a_α) instead; here the team is an RLlib agent that is being trained).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from envs.adapter import EXECUTED_INFO, TeamEnv

REPLACED_FRACTION = "replaced_fraction"  # attacker's last info: share of α's live steps replaced


# Team observation keys of the episode history (envs/adapter.py), present with agent modelling.
HISTORY_KEYS = ("history", "history_len")


@dataclass(frozen=True)
class Attack:
    attacker: str  # the attacker's RLlib agent (and module) id
    victim: str  # the team whose return the attacker minimises
    team: str  # α's team (the victim itself, or its opponent)
    agents: tuple[int, ...]  # α: indices into that team's agents


class PartialControlEnv(MultiAgentEnv):
    """``config`` keys: ``env`` (the team env's config), ``attacks`` (list of mappings with
    the ``Attack`` fields), ``budget`` (ε in (0, 1]), ``seed`` (the RNG before any seeded
    reset)."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        c = dict(config or {})
        self.env = TeamEnv(c["env"])
        self.budget = float(c["budget"])
        self.attacks = [Attack(a["attacker"], a["victim"], a["team"], tuple(a["agents"])) for a in c["attacks"]]
        self.rng = np.random.default_rng(c.get("seed"))
        self.teams = list(self.env.teams)
        self.possible_agents = self.teams + [a.attacker for a in self.attacks]
        self.agents = list(self.possible_agents)
        self.observation_spaces = dict(self.env.observation_spaces)
        self.action_spaces = dict(self.env.action_spaces)
        for a in self.attacks:
            self.observation_spaces[a.attacker] = self._obs_space(a)
            self.action_spaces[a.attacker] = self._action_space(a)
        self.active = self.attacks[0]
        self._obs: dict[str, dict[str, np.ndarray]] = {}
        self._replaced = self._slots = 0

    # ------------------------------------------------------------------- spaces
    def _obs_space(self, a: Attack) -> gym.spaces.Dict:
        """α's rows of its team's observation (obs, action mask, alive) and the global state."""
        space, ids = self.env.observation_spaces[a.team], list(a.agents)
        rows = {key: gym.spaces.Box(space[key].low[ids], space[key].high[ids], dtype=np.float32)
                for key in ("obs", "action_mask", "alive") + HISTORY_KEYS[:1] if key in space.spaces}
        extra = {"history_len": space["history_len"]} if "history_len" in space.spaces else {}
        return gym.spaces.Dict({**rows, **extra, "state": space["state"]})

    def _action_space(self, a: Attack) -> gym.Space:
        space, ids = self.env.action_spaces[a.team], list(a.agents)
        if isinstance(space, gym.spaces.MultiDiscrete):
            return gym.spaces.MultiDiscrete(space.nvec[ids])
        return gym.spaces.Box(space.low[ids], space.high[ids], dtype=np.float32)

    def _attacker_obs(self, a: Attack) -> dict[str, np.ndarray]:
        o, ids = self._obs[a.team], list(a.agents)
        # With agent modelling (model.agent_modeling), α's rows of the episode history too.
        history = {"history": o["history"][ids], "history_len": o["history_len"]} if "history" in o else {}
        return {**history, "obs": o["obs"][ids], "action_mask": o["action_mask"][ids], "alive": o["alive"][ids],
                "state": o["state"]}

    # ---------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:  # the episode seed fixes the draws of this env from here on
            self.rng = np.random.default_rng([seed, 0x5EED])
        self.active = self.attacks[int(self.rng.integers(len(self.attacks)))]
        self.agents = self.teams + [self.active.attacker]
        obs, infos = self.env.reset(seed=seed, options=options)
        self._obs = obs
        self._replaced = self._slots = 0
        return {**obs, self.active.attacker: self._attacker_obs(self.active)}, {**infos, self.active.attacker: {}}

    def step(self, action_dict: dict[str, Any]):
        a = self.active
        ids = list(a.agents)
        actions = {t: np.array(action_dict[t]) for t in self.teams if t in action_dict}
        # With probability ε per agent of α, the attacker's action is executed instead of the
        # one α's own policy sampled (π_α = (1 − ε)·π̂_α + ε·π̃). Dead agents' actions do
        # nothing, so they are never counted as replaced.
        alive = self._obs[a.team]["alive"][ids] > 0
        take = (self.rng.random(len(ids)) < self.budget) & alive
        attack = action_dict.get(a.attacker)
        if attack is None or a.team not in actions:
            take[:] = False
        else:
            attack = np.asarray(attack).reshape((len(ids),) + actions[a.team].shape[1:])
            space = self.env.action_spaces[a.team]
            if isinstance(space, gym.spaces.Box):
                attack = np.clip(attack, space.low[ids], space.high[ids])
            joint = actions[a.team]
            joint[np.asarray(ids)[take]] = attack[take].astype(joint.dtype)
        obs, rew, term, trunc, infos = self.env.step(actions)
        self._obs = obs
        infos = {t: dict(i) for t, i in infos.items()}
        team_info = infos.setdefault(a.team, {})
        n = self.env.specs[a.team].n_agents
        executed = np.asarray(team_info.get(EXECUTED_INFO, np.ones(n, bool)), bool).copy()
        if a.team == a.victim:
            executed[np.asarray(ids)[take]] = False  # α's sampled action did not run
        else:
            # α is the opponent, itself a trained team (self-play). In the episodes where it
            # plays α, an attacker paid −r_victim acts beside it as its ally; learning from
            # them would tune its policy to that alliance. Its policy learns only from the
            # episodes where it is the victim (Liu et al. 2024 keep π̂_α fixed during the
            # defense); its critic still sees every step.
            executed[:] = False
        team_info[EXECUTED_INFO] = executed
        self._replaced += int(take.sum())
        self._slots += int(alive.sum())
        done = bool(term["__all__"] or trunc["__all__"])
        att_info: dict[str, Any] = {EXECUTED_INFO: take.copy()}  # the attacker's action ran
        if done:
            att_info[REPLACED_FRACTION] = self._replaced / max(self._slots, 1)
        obs_out = {**obs, a.attacker: self._attacker_obs(a)}
        rew_out = {**rew, a.attacker: -float(rew[a.victim])}  # zero-sum: r_attacker = −r_victim
        term_out = {**term, a.attacker: bool(term["__all__"])}
        trunc_out = {**trunc, a.attacker: bool(trunc["__all__"])}
        return obs_out, rew_out, term_out, trunc_out, {**infos, a.attacker: att_info}

    def render(self):
        return self.env.env.render()

    def close(self):
        self.env.close()
