"""RLlib callbacks of the project."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

from envs.adapter import NONFINITE_INFO

WIN_RATE = "win_rate"
# Episodes the adapter ended at a non-finite env output (runners.nonfinite_env_output:
# end_episode), summed per iteration.
ENV_NONFINITE = "env_nonfinite"  # the same name as marl.train.ENV_NONFINITE


def last_infos(episode) -> dict:
    """The infos of an episode's last step, per agent ({} if it has none)."""
    try:
        return episode.get_infos(-1) or {}
    except (IndexError, KeyError, ValueError):
        return {}


class WinRateCallback(RLlibCallback):
    """Logs ``win_rate`` (mean over the last 100 episodes) where the env reports
    wins: the team adapter puts ``won`` in a team's last info (SMAC's ``battle_won``); and
    ``env_nonfinite``, the episodes the adapter ended at a NaN or inf of the env."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        if metrics_logger is None:
            return
        infos = last_infos(episode)
        if any(isinstance(i, dict) and NONFINITE_INFO in i for i in infos.values()):
            metrics_logger.log_value(ENV_NONFINITE, 1, reduce="sum", clear_on_reduce=True)
        for info in infos.values():
            if isinstance(info, dict) and "won" in info:
                metrics_logger.log_value(WIN_RATE, float(info["won"]), reduce="mean", window=100)
                return
