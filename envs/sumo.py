"""A small two-player sumo arena in MJCF on ``mujoco``: the stand-in for RoboSumo (Al-Shedivat
et al., ICLR 2018; used by Liu, Chakraborty, Sun and Huang, ICLR 2024), which does not install
today. A PettingZoo ParallelEnv with agents ``player_0`` and ``player_1``.

**Bodies.** Each player is a sphere (radius 0.25 m, mass 1 kg) on three planar joints: slide x,
slide y and a yaw hinge, so it has a heading (drawn as a nose) but cannot tip over. Viscous
joint damping stands in for ground friction; the floor has no contacts, so the only collision
is sphere against sphere (cheap: thousands of env steps per second on one core).

**Actions.** ``Box(-1, 1, (3,))``: forward thrust, sideways thrust (both in the player's own
frame, ``max_force`` N at 1) and yaw torque (``max_torque`` N·m at 1). Actions are clipped to
the bounds; a non-finite action raises ``ValueError``. One env step holds the action for
``frame_skip`` physics steps of 0.01 s.

**Observations** (15 floats, each player in its own egocentric frame: rotated by minus its
heading, so the two seats are symmetric and a rotation of the whole arena changes nothing):
own position from the ring centre (2), own velocity (2), own yaw rate (1), opponent position
relative to own (2), opponent velocity relative to own (2), cos/sin of the opponent's heading
relative to own (2), opponent yaw rate (1), own and opponent distance to the ring edge
(``R − |p|``, 2), fraction of the time limit left (1).

**Outcome.** After every env step, a player whose centre is beyond the ring radius ``R``
(``ring_radius``) has left the ring and loses: the episode terminates, the other player wins.
The bodies cannot fall (planar joints), so leaving the ring is the only way to lose; both out
at the same step is a tie. At ``max_steps`` the game ends (terminates) in a tie. Every step's
info has ``won`` (bool; the team adapter reads it, ``envs.adapter.WIN_INFO_KEYS``); the last
step's info also has ``outcome``: ``"win"``, ``"loss"`` or ``"tie"``.

**Reward.** Sparse and zero-sum: +1 win, −1 loss, 0 tie, paid at the last step. With
``shaping`` = c > 0 each step also pays c·(Φ(s′) − Φ(s)) with the potential
Φ_i = (|p_opp|² − |p_i|²)/R² (potential-based shaping, Ng, Harada & Russell, ICML 1999,
with γ = 1: push the opponent outward, stay central). Squared distances, so that pushing the
opponent outward along a radius pays even though the pusher follows it (with plain distances
the two terms would cancel). Φ_0 = −Φ_1, so the shaped game stays zero-sum, and over an
episode the shaping sums to c·(Φ_T − Φ_0), at most about 2c. Default ``shaping=0``.

**Reset.** ``reset(seed)`` seeds the env's generator. The players start on a diameter at
``start_distance`` from the centre, facing each other, the diameter's angle uniform in
[0, 2π); each position gets uniform noise in ±``init_noise`` per axis and each heading ±0.3 rad.

**Rendering.** ``render_mode="rgb_array"``: ``render()`` returns an [H, W, 3] uint8 frame from
``mujoco.Renderer`` (an OpenGL context; headless, set ``MUJOCO_GL=egl`` or ``osmesa`` before
``mujoco`` is first imported).
"""

from __future__ import annotations

import functools
import importlib
import math

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

AGENTS = ("player_0", "player_1")
OBS_DIM = 15
ACT_DIM = 3
TIMESTEP = 0.01
BODY_RADIUS = 0.25
HEADING_NOISE = 0.3


def _mujoco():
    """The ``mujoco`` package (an optional extra), imported when an env is built: without it,
    importing this module still works and building the env raises ModuleNotFoundError naming
    'mujoco', which the config layer reports with the extra to install."""
    return importlib.import_module("mujoco")


def sumo_mjcf(ring_radius: float, max_force: float, max_torque: float, damping: float,
              yaw_damping: float, width: int, height: int) -> str:
    """The arena: a floor, the ring (a flat visual disk) and two players. Joint order in qpos:
    x, y, yaw of player_0, then of player_1."""
    colours = ("0.85 0.2 0.2 1", "0.2 0.35 0.85 1")
    players = []
    for i, rgba in enumerate(colours):
        players.append(f"""
    <body name="player_{i}" pos="0 0 {BODY_RADIUS}">
      <joint name="p{i}_x" type="slide" axis="1 0 0" damping="{damping}"/>
      <joint name="p{i}_y" type="slide" axis="0 1 0" damping="{damping}"/>
      <joint name="p{i}_yaw" type="hinge" axis="0 0 1" damping="{yaw_damping}"/>
      <geom name="p{i}_torso" type="sphere" size="{BODY_RADIUS}" mass="1" rgba="{rgba}"/>
      <geom name="p{i}_nose" type="box" pos="{BODY_RADIUS} 0 0.05" size="0.08 0.04 0.04"
            mass="0" contype="0" conaffinity="0" rgba="0.95 0.95 0.95 1"/>
      <site name="p{i}_thrust" pos="0 0 0" size="0.01"/>
    </body>""")
    motors = []
    for i in range(2):
        motors.append(f"""
    <motor name="p{i}_forward" site="p{i}_thrust" gear="{max_force} 0 0 0 0 0"/>
    <motor name="p{i}_sideways" site="p{i}_thrust" gear="0 {max_force} 0 0 0 0"/>
    <motor name="p{i}_turn" joint="p{i}_yaw" gear="{max_torque}"/>""")
    cam_h = 2.6 * ring_radius
    return f"""<mujoco model="sumo">
  <option timestep="{TIMESTEP}" integrator="implicitfast"/>
  <visual><global offwidth="{width}" offheight="{height}"/></visual>
  <worldbody>
    <light pos="0 0 {2 * cam_h}" dir="0 0 -1" directional="true"/>
    <camera name="top" pos="0 {-0.75 * cam_h} {cam_h}" xyaxes="1 0 0 0 0.8 0.6"/>
    <geom name="floor" type="plane" size="{2 * ring_radius} {2 * ring_radius} 0.1"
          contype="0" conaffinity="0" rgba="0.2 0.2 0.22 1"/>
    <geom name="ring" type="cylinder" size="{ring_radius} 0.005" pos="0 0 0.005"
          contype="0" conaffinity="0" rgba="0.85 0.78 0.6 1"/>{"".join(players)}
  </worldbody>
  <actuator>{"".join(motors)}
  </actuator>
</mujoco>"""


class SumoEnv(ParallelEnv):
    metadata = {"name": "sumo_v0", "render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, ring_radius: float = 1.5, max_steps: int = 250, frame_skip: int = 5,
                 max_force: float = 5.0, max_torque: float = 0.5, damping: float = 2.0,
                 yaw_damping: float = 0.1, start_distance: float = 0.6, init_noise: float = 0.05,
                 shaping: float = 0.0, render_mode: str | None = None, width: int = 320,
                 height: int = 320):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array' (got {render_mode!r})")
        for key, value in (("ring_radius", ring_radius), ("max_steps", max_steps), ("frame_skip", frame_skip),
                           ("max_force", max_force), ("max_torque", max_torque)):
            if not value > 0:
                raise ValueError(f"{key} must be positive (got {value})")
        if start_distance + init_noise * np.sqrt(2) >= ring_radius:
            raise ValueError("start_distance + init_noise must keep the players inside the ring")
        self.ring_radius, self.max_steps, self.frame_skip = ring_radius, max_steps, frame_skip
        self.start_distance, self.init_noise, self.shaping = start_distance, init_noise, shaping
        self.render_mode, self.width, self.height = render_mode, width, height
        self._mj = mujoco = _mujoco()
        self.model = mujoco.MjModel.from_xml_string(
            sumo_mjcf(ring_radius, max_force, max_torque, damping, yaw_damping, width, height))
        self.data = mujoco.MjData(self.model)
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self.rng = np.random.default_rng()
        self.t = 0
        self._renderer = None

    @functools.cache  # noqa: B019 - spaces are fixed per instance
    def observation_space(self, agent):
        return spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)

    @functools.cache  # noqa: B019
    def action_space(self, agent):
        return spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    # ------------------------------------------------------------------------ state
    def positions(self) -> np.ndarray:
        """[2, 2]: each player's (x, y) in the world frame (ring centre at the origin)."""
        return self.data.qpos.reshape(2, 3)[:, :2].copy()

    def set_state(self, qpos, qvel=None) -> dict[str, np.ndarray]:
        """Set (x, y, yaw) of player_0 then player_1 and their velocities (default zero);
        returns the players' observations of that state."""
        self.data.qpos[:] = np.asarray(qpos, np.float64).reshape(6)
        self.data.qvel[:] = 0.0 if qvel is None else np.asarray(qvel, np.float64).reshape(6)
        self._mj.mj_forward(self.model, self.data)
        return self._obs()

    def _obs(self) -> dict[str, np.ndarray]:
        """Both players' egocentric observations (see the module docstring), in plain floats:
        a dozen tiny numpy calls per player would cost more than the physics."""
        q, v = self.data.qpos.tolist(), self.data.qvel.tolist()
        dist = [math.hypot(q[0], q[1]), math.hypot(q[3], q[4])]
        left = 1.0 - self.t / self.max_steps
        out = {}
        for i, agent in enumerate(AGENTS):
            o, j = 3 * i, 3 * (1 - i)
            c, s = math.cos(q[o + 2]), math.sin(q[o + 2])

            def own(x, y, c=c, s=s):  # world vector -> own frame: R(-heading)
                return (c * x + s * y, -s * x + c * y)

            rel = q[j + 2] - q[o + 2]
            out[agent] = np.array([
                *own(q[o], q[o + 1]), *own(v[o], v[o + 1]), v[o + 2],
                *own(q[j] - q[o], q[j + 1] - q[o + 1]), *own(v[j] - v[o], v[j + 1] - v[o + 1]),
                math.cos(rel), math.sin(rel), v[j + 2],
                self.ring_radius - dist[i], self.ring_radius - dist[1 - i], left,
            ], np.float32)
        return out

    def _potential(self) -> np.ndarray:
        """Φ_i = (|p_opp|² − |p_i|²)/R² for both players (Ng et al. 1999 shaping potential)."""
        sq = np.sum(self.positions() ** 2, axis=1)
        return (sq[::-1] - sq) / self.ring_radius**2

    # -------------------------------------------------------------------------- API
    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self._mj.mj_resetData(self.model, self.data)
        angle = self.rng.uniform(0.0, 2 * np.pi)
        qpos = np.zeros((2, 3))
        for i in range(2):
            direction = angle + np.pi * i
            qpos[i, :2] = self.start_distance * np.array([np.cos(direction), np.sin(direction)])
            qpos[i, :2] += self.rng.uniform(-self.init_noise, self.init_noise, 2)
            qpos[i, 2] = direction + np.pi + self.rng.uniform(-HEADING_NOISE, HEADING_NOISE)
        return self.set_state(qpos.reshape(-1)), {a: {} for a in self.agents}

    def step(self, actions):
        ctrl = np.zeros((2, ACT_DIM))
        for i, agent in enumerate(AGENTS):
            if agent in actions:
                a = np.asarray(actions[agent], np.float64).reshape(ACT_DIM)
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"action of {agent} is not finite: {a}")
                ctrl[i] = np.clip(a, -1.0, 1.0)
        before = self._potential()
        self.data.ctrl[:] = ctrl.reshape(-1)
        self._mj.mj_step(self.model, self.data, nstep=self.frame_skip)
        self.t += 1

        out = np.linalg.norm(self.positions(), axis=1) > self.ring_radius
        # The time limit is a rule of the game (a tie), and the time left is observed: the
        # game terminates there, with nothing to bootstrap, as it does when a player is out.
        terminated = bool(out.any()) or self.t >= self.max_steps
        truncated = False
        if out.any() and not out.all():
            outcome = ["loss" if out[i] else "win" for i in range(2)]
        elif terminated:
            outcome = ["tie", "tie"]
        else:
            outcome = [None, None]
        score = {"win": 1.0, "loss": -1.0, "tie": 0.0, None: 0.0}
        shaped = self.shaping * (self._potential() - before)  # Ng et al. 1999: F = γΦ(s′) − Φ(s), γ = 1
        obs = self._obs()
        rewards, infos = {}, {}
        for i, agent in enumerate(AGENTS):
            rewards[agent] = float(score[outcome[i]] + shaped[i])
            infos[agent] = {"won": outcome[i] == "win"}
            if outcome[i] is not None:
                infos[agent]["outcome"] = outcome[i]
        terms = {a: terminated for a in AGENTS}
        truncs = {a: truncated for a in AGENTS}
        if terminated or truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def render(self):
        if self.render_mode != "rgb_array":
            raise ValueError("render() needs SumoEnv(render_mode='rgb_array')")
        if self._renderer is None:
            try:
                self._renderer = self._mj.Renderer(self.model, self.height, self.width)
            except Exception as e:  # no OpenGL context (headless without EGL/OSMesa)
                raise RuntimeError(
                    f"cannot open an OpenGL context for mujoco.Renderer ({e}); on a headless "
                    "machine set MUJOCO_GL=egl or MUJOCO_GL=osmesa before mujoco is imported"
                ) from e
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render().copy()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def parallel_env(**kwargs) -> SumoEnv:
    return SumoEnv(**kwargs)
