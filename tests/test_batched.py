"""Natively batched simulators: SMAX vmapped and VMAS batched (envs/batched.py), stepped by
the batched EnvRunner (marl/batched_runner.py, ``runners.batched``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jaxmarl")
pytest.importorskip("vmas")
from envs import TeamEnv  # noqa: E402
from marl.config import load_config  # noqa: E402
from marl.errors import ConfigError  # noqa: E402

MAP = "3m"  # the map tests/test_smax.py compiles too (a JAX compile costs seconds of CPU)
SEED = 7


def legal_actions(mask: np.ndarray, rng) -> np.ndarray:
    """A random legal action per agent, for masks [B, n, A]."""
    return np.array([[rng.choice(np.flatnonzero(row)) for row in env_mask] for env_mask in mask])


def assert_same_obs(batched: dict, row: int, team_obs: dict, what: str) -> None:
    assert set(batched) == set(team_obs)
    for key, value in team_obs.items():
        np.testing.assert_allclose(batched[key][row], value, rtol=1e-6, atol=1e-6, err_msg=f"{what}: {key}")


@pytest.mark.slow  # JAX compiles the vmapped step: about 10 s of CPU
def test_batched_smax_gives_the_per_env_paths_observations_rewards_and_ends():
    """B copies in one vmapped call against B TeamEnv(SmaxParallelEnv) fed the same actions,
    copy b and env b both seeded with SEED + b; through episode ends and auto-resets."""
    from envs.smax import SmaxBatchedEnv

    b = 3
    batched = SmaxBatchedEnv(b, map_name=MAP)
    per_env = [TeamEnv({"import": "envs.smax", "kwargs": {"map_name": MAP}}) for _ in range(b)]
    obs = batched.reset([SEED + i for i in range(b)])
    for i, env in enumerate(per_env):
        assert_same_obs(obs, i, env.reset(seed=SEED + i)[0]["team_0"], "reset")
    assert batched.observation_space == per_env[0].observation_spaces["team_0"]
    assert batched.action_space == per_env[0].action_spaces["team_0"]
    rng = np.random.default_rng(0)
    ends = 0
    for t in range(90):
        actions = legal_actions(obs["action_mask"], rng)
        step = batched.step(actions)
        for i, env in enumerate(per_env):
            o, r, term, trunc, info = env.step({"team_0": actions[i]})
            assert_same_obs(step.final_obs, i, o["team_0"], f"step {t}, copy {i}")
            assert step.reward[i] == pytest.approx(r["team_0"], abs=1e-6)
            assert (step.terminated[i], step.truncated[i]) == (term["__all__"], trunc["__all__"])
            if term["__all__"] or trunc["__all__"]:
                ends += 1
                assert bool(step.won[i]) == info["team_0"]["won"]
                # RLlib's vector env resets an ended copy without a seed: its key chain goes on.
                assert_same_obs(step.obs, i, env.reset()[0]["team_0"], f"auto-reset at {t}, copy {i}")
            else:
                assert_same_obs(step.obs, i, o["team_0"], f"step {t}, copy {i}")
        obs = step.obs
    assert ends >= 3  # the auto-reset was exercised


def test_vmas_scenarios_in_both_forms_share_spaces_and_end_at_the_time_limit():
    from envs.vmas_env import VmasBatchedEnv

    for scenario, n in (("balance", 3), ("navigation", 4)):
        env = TeamEnv({"import": "envs.vmas_env", "kwargs": {"scenario": scenario, "max_steps": 4}})
        batched = VmasBatchedEnv(5, scenario=scenario, max_steps=4)
        assert env.specs["team_0"].n_agents == n and env.specs["team_0"].continuous
        assert batched.observation_space == env.observation_spaces["team_0"]
        assert batched.action_space == env.action_spaces["team_0"]
        obs, _ = env.reset(seed=0)
        bobs = batched.reset([0] * 5)
        assert {k: v.shape for k, v in obs["team_0"].items()} == {k: v.shape[1:] for k, v in bobs.items()}
        for t in range(1, 9):  # two episodes: the batched copies restart their clocks
            o, r, term, trunc, _ = env.step({"team_0": env.action_spaces["team_0"].sample()})
            step = batched.step(np.stack([batched.action_space.sample() for _ in range(5)]))
            ended = t % 4 == 0
            assert trunc["__all__"] == ended and not term["__all__"], (scenario, t)
            assert step.truncated.all() == ended and not step.terminated.any(), (scenario, t)
            assert np.isfinite(step.reward).all() and np.isfinite(r["team_0"])
            if ended:
                env.reset()
                # the next observation is a fresh episode's, the final one the ended episode's
                assert not np.allclose(step.obs["obs"], step.final_obs["obs"])


def test_batched_config_needs_a_batched_env_and_refuses_what_it_does_not_do():
    with pytest.raises(ConfigError, match=r"runners\.batched.*'mpe2\.simple_spread_v3' has no batched form"):
        load_config(None, ["runners.batched=true"])
    vmas = ["env.import=envs.vmas_env", "env.kwargs={scenario: balance}", "runners.batched=true"]
    assert load_config(None, vmas).runners.batched
    with pytest.raises(ConfigError, match=r"runners\.batched.*model\.agent_modeling"):
        load_config(None, [*vmas, "model.agent_modeling={name: clam}"])
    with pytest.raises(ConfigError, match=r"runners\.batched.*model\.recurrent"):
        load_config(None, [*vmas, "model.recurrent={cell: gru}"])
    with pytest.raises(ConfigError, match=r"runners\.batched.*nonfinite_env_output"):
        load_config(None, [*vmas, "runners.nonfinite_env_output=end_episode"])
    from adversaries.config import ATTACK_BASE, _validate, merge_layers, read_yaml

    attack = merge_layers([read_yaml(ATTACK_BASE), {"victim": {"checkpoint": "x"}, "runners": {"batched": True}}])
    with pytest.raises(ConfigError, match=r"runners\.batched.*attack env"):
        _validate(attack)


def _columns(batch: dict, prefix: str = "") -> dict:
    """Column -> (per-row shape, dtype) of a learner batch."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out.update(_columns(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = (tuple(value.shape[1:]), str(value.dtype))
    return out


@pytest.mark.slow
def test_batched_runner_feeds_the_learner_the_per_env_paths_batch_and_trains():
    """One Ray start: MAPPO with a learned DAG (its noise columns too) on SMAX, per-env and
    batched. The learner connector turns both runners' episodes into batches of the same
    columns, shapes and dtypes; the batched runner's copy b starts from seed + b as RLlib's
    vector env seeds it; one training iteration through it samples the batch and updates."""
    from marl.algorithms import build_algorithm_config
    from marl.train import init_ray

    init_ray()
    b = 4
    tiny = [f"algo.train_batch_size={8 * b}", f"algo.minibatch_size={4 * b}", "algo.num_epochs=1",
            f"runners.num_envs_per_env_runner={b}", "model.graph.mode=learned", f"seed={SEED}"]
    columns, episodes = {}, {}
    for batched in (False, True):
        cfg = load_config(f"configs/env/smax_{MAP}.yaml", [*tiny, f"runners.batched={str(batched).lower()}"])
        algo = build_algorithm_config(cfg).build_algo()
        try:
            eps = algo.env_runner.sample(num_timesteps=120)
            algo.env_runner.get_metrics()  # (what the Algorithm does after each sample)
            learner = algo.learner_group._learner
            batch = learner._learner_connector(rl_module=learner.module, batch={}, episodes=eps,
                                               shared_data={}, metrics=None)
            columns[batched], episodes[batched] = _columns(batch), eps
            if batched:
                assert sum(len(e) for e in eps) == b * 30  # 120 steps: 30 whole steps of 4 copies
                result = algo.train()
                assert result["env_runners"]["num_env_steps_sampled"] == 8 * b
                assert np.isfinite(result["learners"]["team_0"]["total_loss"])
        finally:
            algo.stop()
    assert columns[True] == columns[False]
    assert {"obs/obs", "obs/state", "actions", "action_logp", "dag_noise_edge", "advantages"} <= {
        k.split("/", 1)[1] for k in columns[True]}
    # Seeding: copy b's first observation is TeamEnv's reset with seed SEED + b.
    env = TeamEnv({"import": "envs.smax", "kwargs": dict(cfg.env.kwargs)})  # the config's world_state too
    starts = np.stack([e.agent_episodes["team_0"].get_observations(0)["state"]
                       for e in episodes[True] if e.env_t_started == 0])
    for i in range(b):
        state = env.reset(seed=SEED + i)[0]["team_0"]["state"]
        assert np.isclose(starts, state, atol=1e-6).all(axis=1).any(), f"no episode starts from seed {SEED + i}"


@pytest.mark.slow
def test_batched_env_that_raises_is_a_counted_fault_its_sample_redone_and_bounded():
    """An env whose batched step raises once: counted (``env_faults`` 1 in that iteration), the
    env recreated, the iteration's sample redone from fresh episodes (no chunk of the episodes
    in progress when it raised), the batch full. One that always raises stops past
    ``max_env_faults_per_iteration``."""
    from marl.algorithms import build_algorithm_config
    from marl.errors import EnvFaultsExceeded
    from marl.train import init_ray
    from tests import toy_batched

    init_ray()
    base = ["env.import=tests.toy_batched", "runners.batched=true", "runners.num_envs_per_env_runner=4",
            "algo.train_batch_size=40", "algo.minibatch_size=20", "algo.num_epochs=1"]
    toy_batched.FlakyBatchedEnv.steps_taken = 0
    algo = build_algorithm_config(load_config(None, [*base, "env.kwargs={fail_at: 15}"])).build_algo()
    seen: list[float] = []
    try:
        faults = []
        for _ in range(3):
            eps = algo.env_runner.sample(num_timesteps=40)
            seen += [float(s) for e in eps for s in e.agent_episodes["team_0"].get_observations(slice(0, None))["obs"][:, 0, 1]]
            metrics = algo.env_runner.get_metrics()
            faults.append(int(np.nan_to_num(float(metrics.get("env_faults", 0)))))  # NaN: none this time
            assert sum(len(e) for e in eps) == 40
        assert faults == [0, 1, 0]
        broken = toy_batched.FlakyBatchedEnv.broken
        assert len(broken) == 4 and not set(broken) & set(seen)
        assert max(seen) > max(broken)  # fresh episodes after the fault trained
    finally:
        algo.stop()
    algo = build_algorithm_config(load_config(None, [
        *base, "env.kwargs={fail_at: 5, always: true}", "runners.max_env_faults_per_iteration=2"])).build_algo()
    toy_batched.FlakyBatchedEnv.steps_taken = 0
    try:
        with pytest.raises(EnvFaultsExceeded, match="3 env faults in one iteration"):
            for _ in range(3):
                algo.env_runner.sample(num_timesteps=40)
    finally:
        algo.stop()
