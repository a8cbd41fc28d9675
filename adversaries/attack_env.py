"""The attack env: the victim team's env with the frozen victims folded in (Gleave et al. 2020).

An RLlib MultiAgentEnv with ONE agent, ``attacker``. Each step (ATTACK_API.md):

1. the attacker acts first, for the attacked agents (it does not see this step's victim actions);
2. the victim team acts with do(a_attacked): the attacked agents' actions are fixed to the
   attacker's and a Bayesian-network victim samples the others in its DAG order, so the
   attacked agents' children condition on them (DESIGN.md, "BN victims");
3. the team env steps; the attacker is paid r_adv = −r_team (zero-sum, Gleave et al. 2020).

Two teams are named: the victim team, whose reward the attacker minimises, and α's team, the
team of the attacked agents (``adversary_team``; by default the victim team itself, the
cooperative case). In a competitive env α may be the victim's opponent, as in Liu et al.
(ICLR 2024): the attacker then observes and acts as α's team does and is paid −r_victim.

Threat models: ``takeover`` (the attacker's action replaces the agent's at every step),
``partial_control`` (with probability ε per step: π_α = (1−ε)·π̂_α + ε·π̃, Liu et al. 2024;
the infos say on which steps the attacker's action ran, ``executed``), ``observation`` (no
attacker action: a white-box ``perturb`` changes the attacked agents' observations before
their team acts).
A step with no attacker action (``action_dict`` without ``attacker``) is a clean step: the
paired clean episodes of the evaluation run through this same code.

The env holds the victims as ``BlackBoxVictim``s: an ``act`` callable, never a module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from adversaries.base import ATTACKER
from adversaries.victims import BlackBoxVictim, frozen_teams, load_victim_checkpoint
from envs.adapter import EXECUTED_INFO, TeamEnv

COIN_STREAM = 0x9A9  # the partial-control coin's seed-sequence key (its own stream)


@functools.cache
def _victim(checkpoint: str):
    """One loaded copy per process, shared by the vectorised envs of an EnvRunner."""
    return load_victim_checkpoint(Path(checkpoint))


RNG_KEY = 0xA77AC  # this env's draws (the attacked agent) never repeat an env's default_rng(seed)


class AttackEnv(MultiAgentEnv):
    """``config`` keys: ``env`` (the team env's config: import, kwargs, teams), ``team``
    (the victim team: the attacker is paid −its reward), ``adversary_team`` (α's team, that
    of the attacked agents; absent or None = ``team``), ``checkpoint`` (the victim),
    ``attacked`` (ids in α's team, or None = one drawn per episode), ``threat_model``,
    ``budget``, ``deterministic`` (victims take their most likely actions), ``seed``.

    Randomness: the attacked agent's draw (``rng``) follows the episode seed; the partial-
    control coin (``coin_rng``) is a stream of its own, so the coin flips never touch the
    victims' sampling (torch's stream): at ε = 0 the victims' rollouts are those of no attack.
    """

    def __init__(self, config: dict | None = None, perturb: Callable | None = None):
        super().__init__()
        c = dict(config or {})
        self.env = TeamEnv(c["env"])
        self.team = c["team"]  # the victim team (reward)
        self.adv_team = c.get("adversary_team") or self.team  # α's team (observation, action)
        self.team_spec = self.env.specs[self.adv_team]
        self.threat_model = c.get("threat_model", "takeover")
        self.budget = c.get("budget")
        self.fixed_attacked = c.get("attacked")
        self.perturb = perturb  # observation threat model: white-box, evaluation only
        victim = _victim(str(c["checkpoint"]))
        self.victims = {
            t: BlackBoxVictim(f) for t, f in frozen_teams(victim, self.env, bool(c.get("deterministic"))).items()
        }
        self.rng = np.random.default_rng([c.get("seed", 0), RNG_KEY])
        self.coin_rng = np.random.default_rng(np.random.SeedSequence([c.get("seed", 0), COIN_STREAM]))
        self.k = 1 if self.fixed_attacked is None else len(self.fixed_attacked)
        self.n = self.team_spec.n_agents
        team_space = self.env.action_spaces[self.adv_team]
        self.team_space = team_space
        self.possible_agents = [ATTACKER]
        self.agents = [ATTACKER]
        self.observation_spaces = {ATTACKER: self._obs_space()}
        self.action_spaces = {ATTACKER: self._action_space(team_space)}
        self.attacked: list[int] = list(self.fixed_attacked or [0])
        self._team_obs: dict[str, dict[str, np.ndarray]] = {}
        self._prev = self._zero_joint()
        self.last_joint: np.ndarray | None = None  # α's team's executed joint action, last step
        self.last_executed: np.ndarray | None = None  # [k]: the attacker's action ran (last step)
        self.last_rewards: dict[str, float] = {}
        self.last_perturbed: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------- spaces
    def _obs_space(self) -> gym.spaces.Dict:
        s, k, n = self.team_spec, self.k, self.n
        inf = np.float32(np.inf)
        box = functools.partial(gym.spaces.Box, dtype=np.float32)
        if s.continuous:
            prev = box(-inf, inf, (n, self.team_space.shape[-1]))
        else:
            prev = gym.spaces.Box(0, s.n_actions - 1, (n,), np.int64)
        history = {}
        if self.env.history is not None:  # an attacker's agent model reads its agents' prefixes
            team_hist = self.env.observation_spaces[self.adv_team]["history"]
            history = {"history": box(-inf, inf, (k, *team_hist.shape[1:])),
                       "history_len": self.env.observation_spaces[self.adv_team]["history_len"]}
        return gym.spaces.Dict({
            **history,
            "obs": box(-inf, inf, (k, s.obs_dim)),
            "state": box(-inf, inf, (s.state_dim,)),
            "action_mask": box(0.0, 1.0, (k, s.n_actions)),
            "alive": box(0.0, 1.0, (k,)),
            "prev_joint_action": prev,
            "joint_action_mask": box(0.0, 1.0, (n, s.n_actions)),
            "attacked": box(0.0, 1.0, (n,)),
            "victim_visible": box(0.0, 1.0, (n,)),
        })

    def _action_space(self, team_space: gym.Space) -> gym.Space:
        if isinstance(team_space, gym.spaces.MultiDiscrete):
            return gym.spaces.MultiDiscrete([int(team_space.nvec.max())] * self.k)
        ids = self.fixed_attacked
        if ids is None:  # any agent may be drawn: the widest bounds (each agent's are clipped)
            low, high = team_space.low.min(0, keepdims=True), team_space.high.max(0, keepdims=True)
        else:
            low, high = team_space.low[ids], team_space.high[ids]
        return gym.spaces.Box(low, high, dtype=np.float32)

    def _zero_joint(self) -> np.ndarray:
        if self.team_spec.continuous:
            return np.zeros((self.n, self.team_space.shape[-1]), np.float32)
        return np.zeros(self.n, np.int64)

    # -------------------------------------------------------------- observation
    def _attacker_obs(self) -> dict[str, np.ndarray]:
        o = self._team_obs[self.adv_team]
        ids = self.attacked
        marks = np.zeros(self.n, np.float32)
        marks[ids] = 1.0
        history = {"history": o["history"][ids], "history_len": o["history_len"]} if "history" in o else {}
        return {
            **history,
            "obs": o["obs"][ids],
            "state": o["state"],
            "action_mask": o["action_mask"][ids],
            "alive": o["alive"][ids],
            "prev_joint_action": self._prev.copy(),
            "joint_action_mask": o["action_mask"],
            "attacked": marks,
            # No env of the suite reports sight yet: every victim counts (AMI's MPE case).
            "victim_visible": np.ones(self.n, np.float32),
        }

    # ---------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:  # the episode seed decides the attacked agent: paired episodes
            self.rng = np.random.default_rng([seed, RNG_KEY])  # not the env's own stream
            self.coin_rng = np.random.default_rng(np.random.SeedSequence([seed, COIN_STREAM]))
        if self.fixed_attacked is None:
            self.attacked = [int(self.rng.integers(self.n))]
        obs, infos = self.env.reset(seed=seed, options=options)
        for victim in self.victims.values():  # recurrent victims start the episode afresh
            victim.reset()
        self._team_obs = obs
        self._prev = self._zero_joint()
        return {ATTACKER: self._attacker_obs()}, {ATTACKER: dict(infos.get(self.team, {}))}

    def step(self, action_dict: dict[str, Any]):
        attack = action_dict.get(ATTACKER)
        team_obs = self._team_obs[self.adv_team]
        intervention = None
        self.last_perturbed = None
        self.last_executed = None
        if self.threat_model == "observation" and self.perturb is not None:
            team_obs = self.perturb(team_obs, list(self.attacked))
            self.last_perturbed = team_obs
        elif attack is not None:
            attack = np.asarray(attack)
            if self.team_spec.continuous:  # each agent's own bounds
                lo, hi = self.team_space.low[self.attacked], self.team_space.high[self.attacked]
                attack = np.clip(attack.reshape(self.k, -1), lo, hi)
            take = np.ones(self.k, bool)
            if self.threat_model == "partial_control":  # with probability ε per step, per agent
                take = self.coin_rng.random(self.k) < float(self.budget)
            self.last_executed = take
            # do(a_α) on the steps the attacker controls: the intervention path of a takeover,
            # so α's children in a BN team's DAG condition on the executed action.
            intervention = {i: attack[j] for j, i in enumerate(self.attacked) if take[j]}
        actions = {
            t: v.act(team_obs if t == self.adv_team else self._team_obs[t],
                     intervention if t == self.adv_team else None)
            for t, v in self.victims.items()
        }
        obs, rew, term, trunc, infos = self.env.step(actions)
        self._team_obs = obs
        self.last_joint = actions[self.adv_team]
        self._prev = np.asarray(actions[self.adv_team], self._prev.dtype).reshape(self._prev.shape)
        self.last_rewards = rew  # every team's reward of the last step
        r_team = float(rew[self.team])
        info = {"team_reward": r_team, **infos.get(self.team, {})}
        info.pop(EXECUTED_INFO, None)  # the victim team's own flags are not the attacker's
        if self.threat_model == "partial_control" and self.last_executed is not None:
            # Which of the attacker's sampled actions ran (marl/learners/executed.py): its PPO
            # surrogate keeps those steps only; its critic learns from every step.
            info[EXECUTED_INFO] = self.last_executed.copy()
        done_term, done_trunc = bool(term["__all__"]), bool(trunc["__all__"])
        return (
            {ATTACKER: self._attacker_obs()},
            {ATTACKER: -r_team},  # r_adv = −r_team (Gleave et al. 2020)
            {ATTACKER: done_term, "__all__": done_term},
            {ATTACKER: done_trunc, "__all__": done_trunc},
            {ATTACKER: info},
        )

    def render(self):
        return self.env.env.render()

    def close(self):
        self.env.close()
