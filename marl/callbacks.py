"""RLlib callbacks of the project."""

from __future__ import annotations

from ray.rllib.callbacks.callbacks import RLlibCallback

WIN_RATE = "win_rate"


def last_infos(episode) -> dict:
    """The infos of an episode's last step, per agent ({} if it has none)."""
    try:
        return episode.get_infos(-1) or {}
    except (IndexError, KeyError, ValueError):
        return {}


class WinRateCallback(RLlibCallback):
    """Logs ``win_rate`` (mean over the last 100 episodes) where the env reports
    wins: the team adapter puts ``won`` in a team's last info (SMAC's ``battle_won``)."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        if metrics_logger is None:
            return
        for info in last_infos(episode).values():
            if isinstance(info, dict) and "won" in info:
                metrics_logger.log_value(WIN_RATE, float(info["won"]), reduce="mean", window=100)
                return
