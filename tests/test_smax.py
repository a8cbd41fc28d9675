"""JaxMARL SMAX through envs.smax and the team adapter: masks, state, deaths, wins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jaxmarl")
from envs import TeamEnv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def play(env, episodes, seed=0):
    """Random legal actions; yields (obs, infos, terminated, truncated) per step."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        while True:
            mask = obs["team_0"]["action_mask"]
            joint = np.array([rng.choice(np.nonzero(row)[0]) for row in mask])
            obs, rew, term, trunc, info = env.step({"team_0": joint})
            yield obs, info, term["__all__"], trunc["__all__"]
            if term["__all__"] or trunc["__all__"]:
                obs, _ = env.reset()
                break


@pytest.mark.parametrize("map_name, n, obs_dim, n_actions, state_dim", [("3m", 3, 75, 8, 72), ("smacv2_5_units", 5, 127, 10, 120)])
def test_smax_spaces_masks_and_state(map_name, n, obs_dim, n_actions, state_dim):
    env = TeamEnv({"import": "envs.smax", "kwargs": {"map_name": map_name}})
    spec = env.specs["team_0"]
    assert (spec.n_agents, spec.obs_dim, spec.n_actions, spec.state_dim) == (n, obs_dim, n_actions, state_dim)
    obs, _ = env.reset(seed=0)
    smax = env.env
    avail = smax._jax.device_get(smax._env.get_avail_actions(smax._state))
    np.testing.assert_array_equal(obs["team_0"]["action_mask"], np.stack([avail[a] for a in smax.possible_agents]))
    np.testing.assert_array_equal(obs["team_0"]["state"], smax.state())


def test_smax_deaths_and_battle_outcome():
    env = TeamEnv({"import": "envs.smax", "kwargs": {"map_name": "3m"}})
    saw_death = saw_end = False
    for obs, info, terminated, truncated in play(env, episodes=8):
        alive = obs["team_0"]["alive"]
        if 0 < alive.sum() < 3 and not (terminated or truncated):
            saw_death = True
            dead = np.nonzero(alive == 0)[0]
            np.testing.assert_array_equal(obs["team_0"]["action_mask"][dead], [[1] + [0] * 7] * len(dead))
        if terminated or truncated:
            saw_end = True
            assert "won" in info["team_0"]
    assert saw_death and saw_end


@pytest.mark.slow
def test_smax_trains_and_evaluates_win_rate(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "train", "configs/env/smax_3m.yaml", "model.graph.mode=empty",
         "algo.train_batch_size=400", "algo.minibatch_size=200", "runners.num_envs_per_env_runner=4",
         "train.total_env_steps=800", f"output_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["win_rate"] <= 1.0 for r in rows if r.get("win_rate") is not None)
    assert any("win_rate" in r for r in rows)
    ev = subprocess.run([sys.executable, "run.py", "evaluate", str(run_dir), "--episodes", "3"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads(ev.stdout)
    assert 0.0 <= result["win_rate"] <= 1.0 and result["episodes"] == 3


def test_smax_team_reward_is_paid_once():
    from envs.smax import SmaxParallelEnv

    env = SmaxParallelEnv("3m")
    rng = np.random.default_rng(1)
    _, infos = env.reset(seed=1)
    for _ in range(60):
        if not env.agents:
            _, infos = env.reset()
        acts = {a: int(rng.choice(np.nonzero(infos[a]["action_mask"])[0])) for a in env.agents}
        _, rew, _, _, infos = env.step(acts)
        assert sum(1 for r in rew.values() if r != 0.0) <= 1


def _raw_world_state(env):
    """SMAX's own world state of the env's current state (jitted once: eager JAX is slow)."""
    fn = _RAW_STATE.setdefault(id(env._env), env._jax.jit(env._env.get_world_state))
    return np.asarray(env._jax.device_get(fn(env._state)), np.float32)


_RAW_STATE: dict = {}


def test_smax_world_state_is_smax_state_rescaled_into_unit_range():
    """SMAX's own world state holds raw map positions and a cooldown timer that falls without
    bound; ``state()`` rescales them as SMAC's state does (envs/smax.py) and keeps the layout;
    ``world_state="raw"`` is SMAX's own."""
    from envs.smax import SmaxParallelEnv

    raw_env = SmaxParallelEnv("3m")  # the default: a run made before the rescaling resumes on it
    raw_env.reset(seed=2)  # reset only: a second compiled step would cost seconds
    np.testing.assert_array_equal(raw_env.state(), _raw_world_state(raw_env))
    env = SmaxParallelEnv("3m", world_state="normalized")
    n_units, n_types, half = 6, 6, 16.0  # 3m: 3 + 3 marines on a 32 x 32 map
    rng = np.random.default_rng(2)
    _, infos = env.reset(seed=2)
    raw_max = 0.0
    for _ in range(80):
        if not env.agents:
            _, infos = env.reset()
        state, raw = env.state(), _raw_world_state(env)
        raw_max = max(raw_max, float(np.abs(raw).max()))
        assert state.shape == raw.shape == (n_units * (4 + n_types) + 2 * n_units,)
        assert np.abs(state).max() <= 1.0
        units, want = raw[: n_units * 10].reshape(n_units, 10), state[: n_units * 10].reshape(n_units, 10)
        alive = units[:, 0] > 0
        np.testing.assert_allclose(want[:, 0], units[:, 0], atol=1e-6)  # health fraction
        np.testing.assert_allclose(want[alive, 1:3], (units[alive, 1:3] - half) / half, atol=1e-5)
        np.testing.assert_allclose(want[alive, 3], np.clip(units[alive, 3] / 0.61, 0, 1), atol=1e-5)
        np.testing.assert_array_equal(want[:, 4:], units[:, 4:])  # type one-hot
        np.testing.assert_array_equal(want[~alive], 0.0)
        np.testing.assert_array_equal(state[n_units * 10:], raw[n_units * 10:] / np.r_[[1] * n_units, [n_types - 1] * n_units])
        acts = {a: int(rng.choice(np.nonzero(infos[a]["action_mask"])[0])) for a in env.agents}
        _, _, _, _, infos = env.step(acts)
    assert raw_max > 10  # the raw state does hold features far outside [-1, 1]


def test_smax_unknown_world_state_is_a_config_error(tmp_path, capsys):
    from tests.test_bad_input import run_main

    code, lines = run_main(capsys, ["train", "configs/env/smax_3m.yaml", "env.kwargs.world_state=rescaled",
                                    f"output_dir={tmp_path}/r"])
    assert code == 2 and lines[0].startswith("error: config key 'env.kwargs'") and "world_state" in lines[0]
    assert not (tmp_path / "r").exists()
