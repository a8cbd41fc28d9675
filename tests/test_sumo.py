"""The two-player sumo arena (envs/sumo.py): PettingZoo API, outcomes, symmetry, bounds,
rendering, and one tiny self-play training run through the project's trainer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from pettingzoo.test import parallel_api_test, parallel_seed_test  # noqa: E402

from envs import TeamEnv  # noqa: E402
from envs.sumo import AGENTS, BODY_RADIUS, SumoEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
R = 1.5
FORWARD = np.array([1.0, 0.0, 0.0], np.float32)
IDLE = np.zeros(3, np.float32)


def test_parallel_api_and_seeding():
    parallel_api_test(SumoEnv(max_steps=60), num_cycles=200)
    parallel_seed_test(lambda: SumoEnv(max_steps=60))


def test_reset_seed_fixes_the_start_and_noise_varies_it():
    env = SumoEnv()
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    for agent in AGENTS:
        np.testing.assert_array_equal(a[agent], b[agent])
    assert not np.allclose(a["player_0"], c["player_0"])
    for seed in range(20):
        env.reset(seed=seed)
        dist = np.linalg.norm(env.positions(), axis=1)
        assert np.all(np.abs(dist - env.start_distance) < 0.1)


def push_state(pusher: int) -> np.ndarray:
    """The victim just inside the edge on the +x axis, the pusher touching it from the centre
    side and facing +x."""
    victim = 1 - pusher
    qpos = np.zeros((2, 3))
    qpos[victim] = [R - 0.1, 0.0, math.pi / 2]
    qpos[pusher] = [R - 0.1 - 2 * BODY_RADIUS - 0.01, 0.0, 0.0]
    return qpos.reshape(-1)


@pytest.mark.parametrize("pusher", [0, 1])
def test_push_out_is_a_win_for_the_pusher_and_a_loss_for_the_other(pusher):
    env = SumoEnv(ring_radius=R)
    env.reset(seed=0)
    env.set_state(push_state(pusher))
    names = {"pusher": AGENTS[pusher], "victim": AGENTS[1 - pusher]}
    for _ in range(30):
        _, rew, term, trunc, infos = env.step({names["pusher"]: FORWARD, names["victim"]: IDLE})
        if not env.agents:
            break
    assert not env.agents and all(term.values()) and not any(trunc.values())
    assert np.linalg.norm(env.positions()[1 - pusher]) > R > np.linalg.norm(env.positions()[pusher])
    assert rew == {names["pusher"]: 1.0, names["victim"]: -1.0}
    assert infos[names["pusher"]] == {"won": True, "outcome": "win"}
    assert infos[names["victim"]] == {"won": False, "outcome": "loss"}


def test_push_out_through_the_team_adapter_reports_the_winner():
    env = TeamEnv({"import": "envs.sumo", "teams": {p: [p] for p in AGENTS}})
    env.reset(seed=0)
    env.env.set_state(push_state(0))
    for _ in range(30):
        _, rew, term, trunc, infos = env.step({"player_0": FORWARD[None], "player_1": IDLE[None]})
        if term["__all__"] or trunc["__all__"]:
            break
    assert term["__all__"] and not trunc["__all__"]
    assert infos["player_0"]["won"] and not infos["player_1"]["won"]
    assert rew == {"player_0": 1.0, "player_1": -1.0}


def test_time_limit_is_a_tie():
    env = SumoEnv(max_steps=5)
    env.reset(seed=1)
    for t in range(5):
        assert env.agents
        _, rew, term, trunc, infos = env.step({a: IDLE for a in AGENTS})
        assert all(i["won"] is False for i in infos.values())
        assert ("outcome" in infos["player_0"]) == (t == 4)
    assert not env.agents and all(term.values()) and not any(trunc.values())  # a game's end, not a cut
    assert rew == {"player_0": 0.0, "player_1": 0.0}
    assert {i["outcome"] for i in infos.values()} == {"tie"}


def test_both_out_at_once_is_a_tie():
    env = SumoEnv(ring_radius=R)
    env.reset(seed=0)
    env.set_state([R + 0.1, 0, 0, -R - 0.1, 0, 0])
    _, rew, term, trunc, infos = env.step({a: IDLE for a in AGENTS})
    assert all(term.values()) and not any(trunc.values())
    assert rew == {"player_0": 0.0, "player_1": 0.0}
    assert infos == {a: {"won": False, "outcome": "tie"} for a in AGENTS}


def test_shaping_is_zero_sum_and_telescopes_to_the_potential_difference():
    env = SumoEnv(ring_radius=R, shaping=0.5)
    env.reset(seed=0)
    env.set_state(push_state(0))
    sq = np.sum(env.positions() ** 2, axis=1)
    phi0 = (sq[1] - sq[0]) / R**2
    total, shaped = 0.0, []
    while env.agents:
        _, rew, *_ = env.step({"player_0": FORWARD, "player_1": IDLE})
        assert rew["player_0"] == pytest.approx(-rew["player_1"])
        total += rew["player_0"]
        shaped.append(rew["player_0"])
    sq = np.sum(env.positions() ** 2, axis=1)
    assert total == pytest.approx(1.0 + 0.5 * ((sq[1] - sq[0]) / R**2 - phi0), abs=1e-9)
    assert sum(shaped[:-1]) > 0.01  # pushing outward pays along the way, not only at the end


def random_state(rng) -> tuple[np.ndarray, np.ndarray]:
    qpos = np.concatenate([[*rng.uniform(-1, 1, 2), rng.uniform(-np.pi, np.pi)] for _ in range(2)])
    return qpos, rng.normal(size=6)


def swap(x: np.ndarray) -> np.ndarray:
    return x.reshape(2, 3)[::-1].reshape(-1)


def rotate(qpos: np.ndarray, qvel: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    q, v = qpos.reshape(2, 3).copy(), qvel.reshape(2, 3).copy()
    q[:, :2] = q[:, :2] @ rot.T
    v[:, :2] = v[:, :2] @ rot.T
    q[:, 2] += angle
    return q.reshape(-1), v.reshape(-1)


def test_observations_are_egocentric_and_symmetric_between_seats():
    env = SumoEnv(ring_radius=R)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        qpos, qvel = random_state(rng)
        obs = env.set_state(qpos, qvel)
        mirrored = env.set_state(swap(qpos), swap(qvel))  # the players trade places
        np.testing.assert_allclose(mirrored["player_0"], obs["player_1"], atol=1e-6)
        np.testing.assert_allclose(mirrored["player_1"], obs["player_0"], atol=1e-6)
        turned = env.set_state(*rotate(qpos, qvel, rng.uniform(0, 2 * np.pi)))  # the whole arena
        for agent in AGENTS:
            np.testing.assert_allclose(turned[agent], obs[agent], atol=1e-5)


def test_observation_layout_on_a_hand_checked_state():
    env = SumoEnv(ring_radius=R, max_steps=10)
    env.reset(seed=0)
    # Back to back: player_0 at (0, 0.5) facing +y, moving +y at 1 m/s, turning at 0.2 rad/s;
    # player_1 at (0, -0.5) facing -y, still. Own frame: x ahead, y to the left.
    obs = env.set_state([0, 0.5, math.pi / 2, 0, -0.5, -math.pi / 2], [0, 1, 0.2, 0, 0, 0])
    expected_0 = [0.5, 0, 1, 0, 0.2, -1, 0, -1, 0, -1, 0, 0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(obs["player_0"], expected_0, atol=1e-6)
    # player_1 sees player_0 one metre behind it, moving away at 1 m/s, turning at 0.2.
    expected_1 = [0.5, 0, 0, 0, 0, -1, 0, -1, 0, -1, 0, 0.2, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(obs["player_1"], expected_1, atol=1e-6)


def test_actions_are_clipped_to_the_bounds_and_must_be_finite():
    def rollout(scale: float) -> np.ndarray:
        env = SumoEnv()
        env.reset(seed=2)
        rng = np.random.default_rng(0)
        for _ in range(10):
            env.step({a: scale * np.sign(rng.uniform(-1, 1, 3)) for a in AGENTS})
        return env.data.qpos.copy()

    at_bounds = rollout(1.0)
    np.testing.assert_array_equal(rollout(10.0), at_bounds)
    assert not np.allclose(rollout(0.5), at_bounds)  # inside the bounds, the action matters
    env = SumoEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="player_1"):
        env.step({"player_0": IDLE, "player_1": np.array([0.0, np.nan, 0.0])})


def test_render_needs_rgb_array_mode():
    env = SumoEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="rgb_array"):
        env.render()


RENDER_SCRIPT = """
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("sumo", "envs/sumo.py")  # not envs/: no Ray import
sumo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sumo)
SumoEnv = sumo.SumoEnv
env = SumoEnv(render_mode="rgb_array", width=160, height=120)
env.reset(seed=0)
try:
    a = env.render()
except RuntimeError as e:
    print(json.dumps({"no_gl": str(e)}))
    sys.exit(0)
env.set_state([1.2, 0, 0, -1.2, 0, 0])
b = env.render()
env.close()
print(json.dumps({"shape": a.shape, "dtype": str(a.dtype), "std": float(a.std()),
                  "changed": float(np.abs(a.astype(int) - b).mean())}))
"""


def test_render_returns_rgb_frames():
    # In a fresh process: MuJoCo picks its OpenGL backend from MUJOCO_GL when first imported,
    # and other tests import it first.
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([sys.executable, "-c", RENDER_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "no_gl" in out:
        pytest.skip(f"no OpenGL backend here (MUJOCO_GL={env['MUJOCO_GL']}): {out['no_gl']}")
    assert out["shape"] == [120, 160, 3] and out["dtype"] == "uint8"
    assert out["std"] > 5  # a picture, not a blank frame
    assert out["changed"] > 0.5  # moving the players changes it


@pytest.mark.parametrize("kwargs, key", [({"max_steps": 0}, "max_steps"), ({"ring_radius": -1.0}, "ring_radius"),
                                         ({"start_distance": 1.5}, "start_distance")])
def test_bad_kwargs_are_a_config_error_naming_them(kwargs, key):
    from marl.config import EnvConfig, build_env
    from marl.errors import ConfigError

    with pytest.raises(ConfigError, match=f"env.kwargs.*{key}"):
        build_env(EnvConfig.model_validate({"import": "envs.sumo", "kwargs": kwargs}))


def test_without_mujoco_the_config_error_names_the_extra(monkeypatch):
    from marl.config import EnvConfig, build_env
    from marl.errors import ConfigError

    monkeypatch.setitem(sys.modules, "mujoco", None)  # `import mujoco` now fails
    with pytest.raises(ConfigError, match=r"envs.sumo needs the package 'mujoco' .*'\.\[mujoco\]'"):
        build_env(EnvConfig.model_validate({"import": "envs.sumo", "kwargs": {}}))


@pytest.mark.slow
def test_selfplay_config_trains_both_seats_in_process(tmp_path):
    from marl.config import load_config
    from marl.train import train

    cfg = load_config(ROOT / "configs" / "sumo_selfplay.yaml", [
        "algo.train_batch_size=400", "algo.minibatch_size=200", "algo.num_epochs=1",
        "runners.num_envs_per_env_runner=4", "train.total_env_steps=800", "train.progress=log",
        "env.kwargs.max_steps=40", f"output_dir={tmp_path}",
    ])
    run_dir = train(cfg)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [400, 800]
    for seat in AGENTS:  # two modules, each with its own learner stats every iteration
        assert all(r.get(f"{seat}/policy_loss") is not None for r in rows)
    assert 0.0 <= rows[-1]["win_rate"] <= 1.0
    assert (run_dir / "checkpoints" / "iter_000002").is_dir()
