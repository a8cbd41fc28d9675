"""MPE predator–prey with the prey as the one learning agent, against three scripted predators
of one behaviour type per episode: the competitive setting of CLAM (Ma et al., 2024, "Contrastive
learning-based agent modeling for deep reinforcement learning"), on mpe2's ``simple_tag``.

- **Agents.** One PettingZoo agent, ``prey`` (mpe2's ``agent_0``; fast: top speed 1.3). The
  three predators (mpe2's ``adversary_0..2``; top speed 1.0) and ``num_obstacles`` obstacles
  live in the world; the predators are scripted (envs/scripted_mpe.py: a type per episode, a
  target point per predator, the discrete move best aligned with the steering toward it).
- **Observation.** simple_tag's prey observation (14 numbers: own velocity and position, the
  obstacles' and the predators' positions relative to the prey), plus the type's one-hot when
  ``oracle``. **Actions:** Discrete(5), MPE's no-op, −x, +x, −y, +y. 50 steps (``max_cycles``).
- **Reward** (Ma et al. 2024's modified simple_tag): −10 per predator touching the prey and the
  boundary penalty, both as simple_tag computes them, plus **+3 per pair of predators that
  collide** (the predators' −3 is theirs; they are scripted, so only the prey's side is paid).
- **Types** (``TYPES``, the paper's four, then three of ours): ``chase_prey``,
  ``chase_farthest``, ``chase_closest``, ``follow_leader``, ``intercept``, ``surround``,
  ``patrol`` (each behaviour's docstring says what it does). ``infos["prey"]`` holds ``type``
  (index into ``TYPES``) and ``type_name``: for evaluation only.
- **Ego's view of the others** (``model_features``, 21 numbers): the three predators'
  positions relative to the prey (6) and their last actions as one-hots (15).
"""

from __future__ import annotations

import numpy as np
from mpe2 import simple_tag_v3

from envs.scripted_mpe import Scene, ScriptedOthersEnv

CAPTURE_PENALTY = -10.0  # simple_tag's, per predator touching the prey (paid by mpe2)
PREDATOR_COLLISION_BONUS = 3.0  # Ma et al. 2024: the prey earns +3 when two predators collide
PREDATOR_SPEED = 1.0  # simple_tag's adversary max_speed
INTERCEPT_HORIZON = 1.0  # s: the farthest ahead `intercept` extrapolates the prey
SURROUND_RADIUS = 0.3  # `surround`: the predators' posts around the prey
PATROL_RADIUS = 0.6  # `patrol`: the circle about the arena's centre
PATROL_SPEED = 0.5  # `patrol`: tangential speed along it
PATROL_LEAD = 0.3  # s: how far along the circle a patroller aims ahead of its post


def _pairwise(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)


def chase_prey(s: Scene) -> np.ndarray:
    """Every predator heads straight for the prey."""
    return np.repeat(s.pos[s.ego][None], len(s.scripted), axis=0)


def chase_farthest(s: Scene) -> np.ndarray:
    """Every predator heads for the other predator farthest from it."""
    others = s.others
    d = _pairwise(others)
    np.fill_diagonal(d, -np.inf)
    return others[np.argmax(d, axis=1)]


def chase_closest(s: Scene) -> np.ndarray:
    """Every predator heads for the other predator closest to it."""
    others = s.others
    d = _pairwise(others)
    np.fill_diagonal(d, np.inf)
    return others[np.argmin(d, axis=1)]


def follow_leader(s: Scene) -> np.ndarray:
    """Predator 0 (the leader) chases the prey; the others head for the leader."""
    targets = np.repeat(s.others[:1], len(s.scripted), axis=0)
    targets[0] = s.pos[s.ego]
    return targets


def intercept(s: Scene) -> np.ndarray:
    """Every predator heads for where the prey will be when the predator could get there at
    top speed, extrapolating the prey's velocity (at most INTERCEPT_HORIZON ahead)."""
    prey, prey_vel = s.pos[s.ego], s.vel[s.ego]
    lead = np.minimum(np.linalg.norm(s.others - prey, axis=1) / PREDATOR_SPEED, INTERCEPT_HORIZON)
    return prey + lead[:, None] * prey_vel


def surround(s: Scene) -> np.ndarray:
    """Predator k holds a post SURROUND_RADIUS from the prey at bearing 90° + 120°·k, so the
    three close in from three sides instead of in a line."""
    angles = np.pi / 2 + 2 * np.pi * np.arange(len(s.scripted)) / len(s.scripted)
    return s.pos[s.ego] + SURROUND_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def patrol(s: Scene) -> np.ndarray:
    """The predators circle the arena's centre counter-clockwise at PATROL_RADIUS, 120° apart,
    ignoring the prey: a catch happens only when the prey crosses their round."""
    omega = PATROL_SPEED / PATROL_RADIUS
    angles = 2 * np.pi * np.arange(len(s.scripted)) / len(s.scripted) + omega * (s.t * s.dt + PATROL_LEAD)
    return PATROL_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


BEHAVIOURS = {
    "chase_prey": chase_prey,
    "chase_farthest": chase_farthest,
    "chase_closest": chase_closest,
    "follow_leader": follow_leader,
    "intercept": intercept,
    "surround": surround,
    "patrol": patrol,
}
TYPES = tuple(BEHAVIOURS)


class PredatorPrey(ScriptedOthersEnv):
    metadata = {"name": "predator_prey_v0", "render_modes": ["rgb_array"], "render_fps": 10}
    BEHAVIOURS = BEHAVIOURS
    EGO = "prey"
    MPE_EGO = "agent_0"
    GAIN = 3.0  # aim at full speed until 1/3 of a unit from the target

    def __init__(self, types=None, max_cycles: int = 50, oracle: bool = False, num_obstacles: int = 2,
                 render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array' (got {render_mode!r})")
        if not max_cycles > 0:
            raise ValueError(f"max_cycles must be positive (got {max_cycles})")
        mpe = simple_tag_v3.raw_env(num_good=1, num_adversaries=3, num_obstacles=int(num_obstacles),
                                    max_cycles=int(max_cycles), continuous_actions=False,
                                    render_mode=render_mode)
        super().__init__(mpe, types, oracle, render_mode)
        self.predators = list(self._scripted)

    def predator_collisions(self) -> int:
        """How many pairs of predators touch now (simple_tag's collision test)."""
        bodies = [self.world.agents[i] for i in self.predators]
        pos = np.array([b.state.p_pos for b in bodies])
        size = np.array([b.size for b in bodies])
        d = _pairwise(pos)
        touching = d < size[:, None] + size[None, :]
        return int(np.triu(touching, k=1).sum())

    def _ego_reward(self, mpe_reward: float) -> float:
        # simple_tag's prey reward (−10 per capture, boundary penalty) + Ma et al.'s +3 per
        # colliding predator pair.
        return mpe_reward + PREDATOR_COLLISION_BONUS * self.predator_collisions()


def parallel_env(**kwargs) -> PredatorPrey:
    return PredatorPrey(**kwargs)
