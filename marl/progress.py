"""Progress display: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, mode: str = "auto", start: int = 0):
        self.total, self.start = total, start
        use_bar = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
        self.bar = None
        if use_bar:
            self.bar = RichProgress(
                TextColumn("env steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("return {task.fields[ret]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, ret="-")
        self.t0 = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, row: dict[str, Any]) -> None:
        ret = row.get("episode_return_mean")
        ret_s = "-" if ret is None else f"{ret:.2f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=min(row["env_steps"], self.total), ret=ret_s)
            return
        done = row["env_steps"] - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - row["env_steps"]) if done > 0 else float("nan")
        print(
            f"iter {row['iteration']:5d}  env_steps {row['env_steps']:>9d}/{self.total}"
            f"  return {ret_s:>9}  steps/s {row.get('env_steps_per_s') or 0:8.0f}  eta {eta:6.0f}s",
            flush=True,
        )
