"""Config composition details that users see: the default run name."""

from __future__ import annotations

import pytest

from marl.config import load_config


@pytest.mark.parametrize(
    ("config", "overrides", "name"),
    [
        (None, [], "bn_mappo-learned-simple_spread"),
        (None, ["env.import=mpe2.simple_speaker_listener_v4", "env.kwargs={}"], "bn_mappo-learned-simple_speaker_listener"),
        ("configs/mappo_simple_spread.yaml", [], "mappo-simple_spread"),
        ("configs/ippo_simple_spread.yaml", [], "ippo-simple_spread"),
        ("configs/bn/coordination3_full.yaml", [], "bn_mappo-full-coordination_game"),
        ("configs/mappo_simple_spread.yaml", ["name=mine"], "mine"),
    ],
)
def test_default_run_name_follows_algorithm_graph_and_env(config, overrides, name):
    assert load_config(config, overrides).name == name
