"""Ad hoc teamwork on MPE cooperative navigation: one learning agent and two scripted teammates of
one behaviour type per episode, the cooperative counterpart of envs/predator_prey.py in CLAM's
evaluation (Ma et al., 2024). The paper's cooperative task was not found; this one follows its
description (DESIGN.md, "Method: CLAM agent modelling"), on mpe2's ``simple_spread`` (N = 3).

- **Agents.** One PettingZoo agent, ``agent_0`` (the learner). ``agent_1`` and ``agent_2`` are
  scripted (envs/scripted_mpe.py: a type per episode, a target point per teammate, the discrete
  move best aligned with the steering toward it).
- **Observation.** simple_spread's observation of agent_0 (18 numbers: own velocity and
  position, the 3 landmarks' and the 2 teammates' positions relative to it, the teammates'
  (silent) communication), plus the type's one-hot when ``oracle``. **Actions:** Discrete(5),
  MPE's no-op, −x, +x, −y, +y. 50 steps (``max_cycles``).
- **Reward.** simple_spread's reward of agent_0 as mpe2 computes it: (1 − ``local_ratio``) ×
  the shared coverage term (minus the sum over landmarks of the nearest agent's distance) +
  ``local_ratio`` × its own collision penalty (−1 per agent it touches).
- **Types** (``TYPES``): ``nearest_landmark``, ``fixed_landmark``, ``avoid_learner``,
  ``crowd_learner``, ``follow_learner``, ``still`` (each behaviour's docstring says what it
  does). ``infos["agent_0"]`` holds ``type`` (index into ``TYPES``) and ``type_name``: for
  evaluation only. The best reply differs by type: take the landmark left free, or, against
  teammates that ignore the landmarks, cover what they leave.
- **Ego's view of the others** (``model_features``, 14 numbers): the two teammates' positions
  relative to agent_0 (4) and their last actions as one-hots (10).
"""

from __future__ import annotations

import numpy as np
from mpe2 import simple_spread_v3

from envs.scripted_mpe import Scene, ScriptedOthersEnv

FOLLOW_GAP = 0.4  # `follow_learner`: distance kept from the learner (bodies touch at 0.3)


def _landmark_distances(s: Scene, points: np.ndarray) -> np.ndarray:
    """[n_points, n_landmarks] distances."""
    return np.linalg.norm(points[:, None, :] - s.landmarks[None, :, :], axis=-1)


def nearest_landmark(s: Scene) -> np.ndarray:
    """Each teammate heads for the landmark nearest to itself (greedy: both may pick one)."""
    return s.landmarks[np.argmin(_landmark_distances(s, s.others), axis=1)]


def fixed_landmark(s: Scene) -> np.ndarray:
    """Teammate k (agent_k) heads for landmark k, wherever it is: landmark 0 is left over."""
    return s.landmarks[list(s.scripted)]


def avoid_learner(s: Scene) -> np.ndarray:
    """The teammates take the landmarks farthest from the learner (agent_1 the farthest,
    agent_2 the next), leaving the learner the one nearest to it: the ideal partner."""
    order = np.argsort(-_landmark_distances(s, s.pos[s.ego][None])[0])
    return s.landmarks[order[: len(s.scripted)]]


def crowd_learner(s: Scene) -> np.ndarray:
    """Both teammates head for the landmark nearest to the learner, contesting it."""
    nearest = int(np.argmin(_landmark_distances(s, s.pos[s.ego][None])[0]))
    return np.repeat(s.landmarks[nearest][None], len(s.scripted), axis=0)


def follow_learner(s: Scene) -> np.ndarray:
    """The teammates shadow the learner: each heads for the point FOLLOW_GAP from the learner
    on its own side, just clear of touching it, and so ignores the landmarks."""
    away = s.others - s.pos[s.ego]
    norm = np.linalg.norm(away, axis=1, keepdims=True)
    away = np.where(norm > 1e-9, away / np.maximum(norm, 1e-9), [[1.0, 0.0]])
    return s.pos[s.ego] + FOLLOW_GAP * away


def still(s: Scene) -> np.ndarray:
    """The teammates hold where they are (at rest from the start, so they never move)."""
    return s.others


BEHAVIOURS = {
    "nearest_landmark": nearest_landmark,
    "fixed_landmark": fixed_landmark,
    "avoid_learner": avoid_learner,
    "crowd_learner": crowd_learner,
    "follow_learner": follow_learner,
    "still": still,
}
TYPES = tuple(BEHAVIOURS)


class AdhocSpread(ScriptedOthersEnv):
    metadata = {"name": "adhoc_spread_v0", "render_modes": ["rgb_array"], "render_fps": 10}
    BEHAVIOURS = BEHAVIOURS
    EGO = "agent_0"
    MPE_EGO = "agent_0"
    GAIN = 2.0  # aim at full speed until half a unit from the target, then slow down

    def __init__(self, types=None, max_cycles: int = 50, oracle: bool = False, local_ratio: float = 0.5,
                 render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array' (got {render_mode!r})")
        if not max_cycles > 0:
            raise ValueError(f"max_cycles must be positive (got {max_cycles})")
        if not 0.0 <= local_ratio <= 1.0:
            raise ValueError(f"local_ratio must be in [0, 1] (got {local_ratio})")
        mpe = simple_spread_v3.raw_env(N=3, local_ratio=float(local_ratio), max_cycles=int(max_cycles),
                                       continuous_actions=False, render_mode=render_mode)
        super().__init__(mpe, types, oracle, render_mode)
        self.teammates = list(self._scripted)


def parallel_env(**kwargs) -> AdhocSpread:
    return AdhocSpread(**kwargs)
