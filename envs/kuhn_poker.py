"""Kuhn poker (Kuhn 1950) as a two-player PettingZoo ParallelEnv over OpenSpiel's ``kuhn_poker``.

Three cards (J=0, Q=1, K=2), one dealt to each player, an ante of 1; the players then pass or
bet in turn (at most three decisions). OpenSpiel's game (Lanctot et al. 2019, ``pyspiel``) holds
the rules; this module only turns its turn-based tree into simultaneous steps:

- agents ``player_0`` and ``player_1`` (seat 0 acts first);
- observation: OpenSpiel's ``information_state_tensor`` of that player (11 numbers: seat,
  own card, the betting so far), in PettingZoo's ``Dict(observation, action_mask)`` form;
- actions: 0 = pass, 1 = bet (OpenSpiel's action ids) and 2 = :data:`NOOP`. The player to act
  has the mask [1, 1, 0]; the other has only the no-op, [0, 0, 1]. An action outside the mask
  counts as pass (always legal in Kuhn), so a sampler that ignores masks cannot stall a hand;
- rewards: zero until the hand ends, then OpenSpiel's returns (zero-sum); every agent
  terminates at the end of the hand;
- chance: the deal is drawn from ``reset(seed=...)`` (a reset without a seed continues the
  env's own generator).

For exact game analysis (marl/exploitability.py, envs/kuhn_exploitability.py) the env exposes
:func:`information_states`: every decision point of either seat as (agent, OpenSpiel
information-state string, observation, mask), so a trained module can be queried at each one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.errors import MissingDependency

GAME = "kuhn_poker"
AGENTS = ("player_0", "player_1")  # seat s is AGENTS[s]
PASS, BET, NOOP = 0, 1, 2
N_ACTIONS = 3
GAME_ACTIONS = (PASS, BET)  # OpenSpiel's action ids; the policy table keeps this order


def load_game():
    """OpenSpiel's Kuhn poker; MissingDependency without the ``games`` extra."""
    try:
        import pyspiel
    except ModuleNotFoundError as e:
        raise MissingDependency(
            f"Kuhn poker needs OpenSpiel ({e}); install it: pip install -e '.[games]'"
        ) from None
    return pyspiel.load_game(GAME)


def observation(state, seat: int) -> tuple[np.ndarray, np.ndarray]:
    """The env's observation and action mask of ``seat`` at an OpenSpiel state.

    Used both by the env and by policy-table extraction, so a module sees the same input in
    training and at every information state of the exact analysis."""
    obs = np.asarray(state.information_state_tensor(seat), np.float32)
    mask = np.zeros(N_ACTIONS, np.int8)
    if not state.is_terminal() and state.current_player() == seat:
        mask[list(state.legal_actions(seat))] = 1
    else:
        mask[NOOP] = 1
    return obs, mask


@dataclass(frozen=True)
class InformationState:
    """One decision point of a seat: what the env shows its agent there."""

    agent: str
    seat: int
    key: str  # OpenSpiel's information-state string, e.g. '0', '1pb'
    obs: np.ndarray
    mask: np.ndarray


def information_states(game=None) -> list[InformationState]:
    """Every information state at which a player acts, both seats, by a walk of the tree.

    Ordered as first reached by a depth-first walk (deal 0..2 to seat 0, then to seat 1)."""
    game = game or load_game()
    found: dict[str, InformationState] = {}

    def walk(state):
        if state.is_terminal():
            return
        if state.is_chance_node():
            for action, _ in state.chance_outcomes():
                walk(state.child(action))
            return
        seat = state.current_player()
        key = state.information_state_string(seat)
        if key not in found:
            obs, mask = observation(state, seat)
            found[key] = InformationState(AGENTS[seat], seat, key, obs, mask)
        for action in state.legal_actions():
            walk(state.child(action))

    walk(game.new_initial_state())
    return list(found.values())


class KuhnPokerEnv(ParallelEnv):
    metadata = {"name": "kuhn_poker_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, render_mode: str | None = None):
        self.game = load_game()
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self.render_mode = render_mode
        self._rng = np.random.default_rng()
        self.state_ = None
        self._dim = int(self.game.information_state_tensor_shape()[0])

    @functools.cache  # noqa: B019
    def observation_space(self, agent):
        return spaces.Dict({
            "observation": spaces.Box(0.0, 1.0, (self._dim,), np.float32),
            "action_mask": spaces.MultiBinary(N_ACTIONS),
        })

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Discrete(N_ACTIONS)

    def _observations(self) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for seat, agent in enumerate(self.possible_agents):
            obs, mask = observation(self.state_, seat)
            out[agent] = {"observation": obs, "action_mask": mask}
        return out

    def _deal(self):
        """Play chance nodes (the deal) from the env's generator."""
        while self.state_.is_chance_node():
            outcomes, probs = zip(*self.state_.chance_outcomes(), strict=True)
            self.state_.apply_action(int(self._rng.choice(outcomes, p=np.asarray(probs))))

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.state_ = self.game.new_initial_state()
        self._deal()
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, int]):
        seat = self.state_.current_player()
        action = int(actions.get(self.possible_agents[seat], PASS))
        if action not in self.state_.legal_actions(seat):
            action = PASS  # outside the mask (e.g. an unmasked sampler's no-op): pass
        self.state_.apply_action(action)
        self._deal()
        done = self.state_.is_terminal()
        returns = self.state_.returns() if done else [0.0, 0.0]
        rewards = {a: float(returns[s]) for s, a in enumerate(self.possible_agents)}
        terms = dict.fromkeys(self.possible_agents, done)
        truncs = dict.fromkeys(self.possible_agents, False)
        obs = self._observations()
        infos = {a: {} for a in self.possible_agents}
        if done:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def render(self):
        return str(self.state_) if self.render_mode == "ansi" else None

    def close(self):
        pass


def parallel_env(**kwargs) -> KuhnPokerEnv:
    return KuhnPokerEnv(**kwargs)
