"""Training runs: run directory, RLlib's Algorithm driving the loop, checkpoints and resume.

Run directory (DESIGN.md, "Contracts")::

    runs/<name>-<YYYYmmdd-HHMMSS>/
        config.yaml           resolved config
        metrics.jsonl         one JSON object per iteration
        tb/                   TensorBoard events
        checkpoints/iter_000010/   RLlib checkpoint + teams/ (safe weights) + run_state.json
                                   + rng_state.json + config.yaml (see marl/checkpoints.py)
        plots/

A checkpoint is written to a temporary name and renamed into place, so a kill never leaves a
half-written one under a real name. Resume restores RLlib's state (weights, optimizer, step
counters, schedules) plus this process's RNG state, and cuts metrics.jsonl back to the
checkpoint's iteration.

When things fail (README, "When things fail"): an env whose step raises is recreated and its
episode dropped (marl/runners.py), counted as ``env_faults``, with one warning line; past
``runners.max_env_faults_per_iteration`` or ``runners.max_env_faults`` the run stops
(``EnvFaultsExceeded``). Non-finite env output stops it (``EnvOutputNotFinite``) unless the
config ends such episodes instead. Any other failure during a run writes its traceback to
``RUN_DIR/error.log`` and ends in ``RunCrashed``, whose one line says how to resume. Every stop
keeps the last good checkpoint.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from marl.checkpoints import (
    CHECKPOINT_PREFIX,
    checkpoints,
    has_team_weights,
    latest_checkpoint,
    save_team_weights,
)
from marl.config import Config
from marl.errors import (
    BuildFailed,
    EnvFaultsExceeded,
    EnvOutputNotFinite,
    RunCrashed,
    RunStopped,
    TrainingDiverged,
    UserError,
    describe_exception,
)
from marl.progress import Progress
from marl.resources import check_cluster

RUN_STATE = "run_state.json"
RNG_STATE = "rng_state.json"
ERROR_LOG = "error.log"
# Per-iteration counts in metrics.jsonl and TensorBoard: sub-environments recreated after they
# raised (marl/runners.py), and episodes ended at a non-finite env output (marl/callbacks.py).
ENV_FAULTS = "env_faults"
ENV_NONFINITE = "env_nonfinite"
ENV_RUNNERS_LOST = "env_runners_lost"  # remote EnvRunner processes that died (restarted)
KEEP_CHECKPOINTS = 5
# Learner metrics copied into metrics.jsonl (and TensorBoard) under the same names.
LEARNER_KEYS = {
    "policy_loss": "policy_loss",
    "vf_loss": "vf_loss",
    "entropy": "entropy",
    "approx_kl": "approx_kl",
    "clip_fraction": "clip_fraction",
    "vf_explained_var": "vf_explained_var",
    "total_loss": "total_loss",
    "default_optimizer_learning_rate": "lr",
    "curr_entropy_coeff": "entropy_coeff",
    "dag_density": "dag_density",
    "dag_mode_share": "dag_mode_share",
    "dag_tau": "dag_tau",
    "dag_alpha": "dag_alpha",
}


@dataclass
class RunState:
    iteration: int = 0
    env_steps: int = 0
    time_s: float = 0.0
    env_faults: int = 0  # sub-environments recreated over the run (runners.max_env_faults)


# ------------------------------------------------------------------------ run directory
def create_run_dir(cfg: Config) -> Path:
    """A new directory under output_dir; never reuses an existing one."""
    root = Path(cfg.output_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        path = root / (f"{cfg.name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot create a new run directory under '{root}'")


def write_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain JSON (no pickle)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def read_rng_state(ckpt: Path) -> dict[str, Any] | None:
    """The RNG state saved with a checkpoint, or None for one written before rng_state.json
    (its rng_state.pkl is never unpickled; the process is then re-seeded instead)."""
    if (ckpt / RNG_STATE).is_file():
        return json.loads((ckpt / RNG_STATE).read_text())
    return None


# ---------------------------------------------------------------------------- trainer
def init_ray() -> None:
    """Start Ray for a run, or join the cluster the user named.

    By default a run starts its own private Ray instance (``address="local"``) and ignores any
    other Ray cluster on the machine, including the stale pointer ``ray start`` leaves behind.
    ``RAY_ADDRESS`` (set by ``run.py ... --address``, and by Ray Jobs inside a submitted job)
    joins that cluster instead: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``, with the cluster's
    token where it has one (marl/cluster.py)."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        else:
            from marl.cluster import check_joinable

            check_joinable(address)  # a missing or refused token: one line, exit 2
            try:
                ray.init(address=address, **quiet)
            except ConnectionError as e:
                raise UserError(
                    f"--address/RAY_ADDRESS '{address}': no Ray cluster could be joined there "
                    f"({describe_exception(e)}); start one with `ray start --head`, or leave "
                    "--address and RAY_ADDRESS unset to run on a private local Ray instance"
                ) from None
    for name in ("ray", "ray.rllib"):  # RLlib sets its own level; keep the terminal quiet
        logging.getLogger(name).setLevel(logging.ERROR)
    # A lost remote EnvRunner: the Trainer reports it in one line (env_runners_lost, or the
    # fault limit it hit); RLlib's actor manager would add tracebacks, some of them of the
    # exception the run is stopping with.
    logging.getLogger("ray.rllib.utils.actor_manager").setLevel(logging.CRITICAL)


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def _is_number(x: Any) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class Trainer:
    """Drives ``Algorithm.train()`` until the env-step budget is spent."""

    def __init__(self, cfg: Config, run_dir: Path, state: RunState | None = None, build_config=None,
                 on_row: Callable[[dict[str, Any]], None] | None = None):
        """``build_config(cfg) -> AlgorithmConfig`` (default: the ``algo.name`` registry);
        other run types (an attack) pass their own builder and config. ``on_row(row)`` is called
        with each metrics.jsonl row once it is written (and its checkpoint, if any, saved): a
        sweep trial reports it to Ray Tune (marl/sweep.py)."""
        self.cfg, self.run_dir = cfg, run_dir
        self.build_config = build_config
        self.on_row = on_row
        self.state = state or RunState()
        self.algo = None
        self.writer = None
        self._tb_extra: dict[str, Any] = {}
        self._runner_restarts = 0  # remote EnvRunners RLlib restarted, as last seen
        from marl.defenses import defense_for

        self.defense = defense_for(cfg)  # None without one (and for attack runs)

    # .............................................................. construction
    def build(self, resume_from: Path | None = None) -> None:
        from marl.algorithms import build_algorithm_config
        from marl.runners import freeze_long_lived_objects

        torch.set_num_threads(self.cfg.runners.torch_threads)
        init_ray()
        check_cluster(self.cfg.runners)  # a config the cluster cannot serve: UserError, exit 2
        algo_cfg = (self.build_config or build_algorithm_config)(self.cfg)
        if resume_from is not None:
            # Fresh env seeds after a resume, derived from (seed, iteration), so the envs do
            # not replay the episodes they started the run with.
            algo_cfg.debugging(seed=self.cfg.seed + 7919 * self.state.iteration)
        self.algo = algo_cfg.build_algo()
        if resume_from is None:
            seed_everything(self.cfg.seed)
        else:
            self.algo.restore_from_path(str(resume_from.resolve()))
            state = read_rng_state(resume_from)
            if state is not None:
                set_rng_state(state)
            else:  # an older checkpoint: fresh but reproducible, from (seed, iteration)
                seed_everything(self.cfg.seed + 7919 * self.state.iteration)
            if not has_team_weights(resume_from):  # written before safe weights existed
                save_team_weights(self.algo, resume_from)
        freeze_long_lived_objects()  # the algorithm and its local runner and learner
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.state.iteration + 1)

    # .................................................................. the loop
    def run(self) -> Path:
        for stale in (self.run_dir / "checkpoints").glob(".tmp-*"):  # left by a killed save
            shutil.rmtree(stale, ignore_errors=True)
        total = self.cfg.train.total_env_steps
        every = self.cfg.train.checkpoint_every
        last_ckpt = latest_checkpoint(self.run_dir)
        metrics_path = self.run_dir / "metrics.jsonl"
        with Progress(total, self.cfg.train.progress, start=self.state.env_steps) as bar, open(
            metrics_path, "a"
        ) as metrics_file:
            while self.state.env_steps < total:
                t0 = time.perf_counter()
                result = self._train_iteration(last_ckpt)
                dt = time.perf_counter() - t0
                row = self._record(result, dt)
                if not self._healthy(row):
                    raise TrainingDiverged(
                        f"non-finite loss or weights at iteration {row['iteration']}; "
                        f"training stopped; {_last_good(last_ckpt)}"
                    )
                self._check_env_faults(row, last_ckpt)
                done = self.state.env_steps >= total
                at_checkpoint = done or self.state.iteration % every == 0
                if at_checkpoint:  # agent models: a linear probe of their representation
                    row.update(self._probe_agent_models(final=done))
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                self._log_tb(row)
                bar.update(row)
                if at_checkpoint:
                    last_ckpt = self.save_checkpoint()
                    self._draw_graphs()
                if self.on_row is not None:
                    self.on_row(row)
        self.writer.close()
        return self.run_dir

    def _train_iteration(self, last_ckpt: Path | None) -> dict[str, Any]:
        """``Algorithm.train()``; the env failures it cannot recover from become one line."""
        from envs.errors import NonFiniteOutput
        from marl.runners import REPORT_KEY, pop_remote_fault_limit

        env = f"env '{getattr(self.cfg.env, 'import_', '?')}'"
        try:
            result = self.algo.train()
        except Exception as e:
            cause = _cause(e, (NonFiniteOutput, EnvFaultsExceeded))
            if isinstance(cause, NonFiniteOutput):
                raise EnvOutputNotFinite(
                    f"{cause} (iteration {self.state.iteration + 1}); training stopped; "
                    f"{_last_good(last_ckpt)}; runners.nonfinite_env_output=end_episode ends such "
                    "episodes instead"
                ) from e
            if isinstance(cause, EnvFaultsExceeded):
                self._print_faults(self._pop_fault_lines()[:-1], self.state.iteration + 1)
                raise EnvFaultsExceeded(
                    f"{env} keeps failing: {cause} (iteration {self.state.iteration + 1}); "
                    f"training stopped; {_last_good(last_ckpt)}"
                ) from e
            raise
        # A remote runner past the limit was restarted by RLlib; it left its line behind.
        remote = pop_remote_fault_limit((self.algo.config.learner_config_dict or {}).get(REPORT_KEY))
        if remote is not None:
            raise EnvFaultsExceeded(
                f"{env} keeps failing: {remote} (iteration {self.state.iteration + 1}); "
                f"training stopped; {_last_good(last_ckpt)}"
            )
        return result

    def _pop_fault_lines(self) -> list[str]:
        """The faults each EnvRunner saw since last asked (marl/runners.py)."""
        try:
            per_runner = self.algo.env_runner_group.foreach_env_runner(
                lambda r: r.pop_faults() if hasattr(r, "pop_faults") else [], local_env_runner=True
            )
        except Exception:  # a runner that died with its record: the count still stands
            return []
        return [line for lines in per_runner or [] for line in lines or []]

    def _print_faults(self, lines: list[str], iteration: int) -> None:
        env = getattr(self.cfg.env, "import_", "?")
        for line in lines:
            print(
                f"warning: env '{env}' raised in iteration {iteration} ({line}); it was "
                "recreated and the episodes in progress were dropped from the batch", file=sys.stderr,
            )

    def _check_env_faults(self, row: dict[str, Any], last_ckpt: Path | None) -> None:
        """One warning line per fault; past the limits, stop."""
        faults = row.get(ENV_FAULTS, 0)
        if not faults:
            return
        lines = self._pop_fault_lines()
        self._print_faults(lines, row["iteration"])
        r = self.cfg.runners
        env = f"env '{getattr(self.cfg.env, 'import_', '?')}'"
        last = f"the last: {lines[-1]}" if lines else "its runner was lost"
        if faults > r.max_env_faults_per_iteration:
            raise EnvFaultsExceeded(
                f"{env} failed {faults} times in iteration {row['iteration']} "
                f"(runners.max_env_faults_per_iteration: {r.max_env_faults_per_iteration}); {last}; "
                f"training stopped; {_last_good(last_ckpt)}"
            )
        if self.state.env_faults > r.max_env_faults:
            raise EnvFaultsExceeded(
                f"{env} failed {self.state.env_faults} times in this run (runners.max_env_faults: "
                f"{r.max_env_faults}); {last}; training stopped; {_last_good(last_ckpt)}"
            )

    def _record(self, result: dict[str, Any], dt: float) -> dict[str, Any]:
        er = result.get("env_runners", {})
        sampled = int(_num(er.get("num_env_steps_sampled")) or 0)  # NaN: no runner returned a sample
        self.state.iteration += 1
        self.state.env_steps += sampled
        self.state.time_s += dt
        row: dict[str, Any] = {
            "iteration": self.state.iteration,
            "env_steps": self.state.env_steps,
            "episode_return_mean": _num(er.get("episode_return_mean")),
            "episode_len_mean": _num(er.get("episode_len_mean")),
            "time_s": round(self.state.time_s, 3),
            "env_steps_per_s": round(sampled / dt, 1) if dt > 0 else None,
        }
        faults = int(_num(er.get(ENV_FAULTS)) or 0)
        self.state.env_faults += faults
        row[ENV_FAULTS] = faults
        if self.cfg.runners.nonfinite_env_output == "end_episode":
            row[ENV_NONFINITE] = int(_num(er.get(ENV_NONFINITE)) or 0)
        if self.cfg.runners.num_env_runners:  # remote EnvRunner processes lost and restarted
            restarts = self.algo.env_runner_group.num_remote_worker_restarts()
            row[ENV_RUNNERS_LOST] = restarts - self._runner_restarts
            self._runner_restarts = restarts
            if row[ENV_RUNNERS_LOST]:
                print(
                    f"warning: {row[ENV_RUNNERS_LOST]} EnvRunner process(es) lost in iteration "
                    f"{row['iteration']}; RLlib restarted them", file=sys.stderr,
                )
        if "win_rate" in er:  # envs that report wins (SMAX, SMACv2)
            row["win_rate"] = _num(er["win_rate"])
        if len(self.algo.config.policies) > 1:  # competitive: each team's own return
            for team, ret in (er.get("module_episode_returns_mean") or {}).items():
                row[f"{team}/episode_return_mean"] = _num(ret)
        learners = result.get("learners", {})
        self._nonfinite = False
        self._tb_extra = {}
        for module_id, stats in learners.items():
            if module_id.startswith("__") or not isinstance(stats, dict):
                continue
            if "num_module_steps_trained" in stats and not _num(stats["num_module_steps_trained"]):
                # The module sat this update out (a slower timescale, or no steps of it in the
                # batch): RLlib reports its emptied means as NaN. It has no metrics this time.
                continue
            prefix = "" if len(self.algo.config.policies) == 1 else f"{module_id}/"
            for src, dst in LEARNER_KEYS.items():
                if src in stats:
                    self._nonfinite |= not _finite(stats[src])
                    row[prefix + dst] = _num(stats[src])
            for key, value in stats.items():
                if key.startswith("edge_freq/"):  # n(n-1) of them: TensorBoard only
                    self._tb_extra[prefix + key] = _num(value)
                elif "/" in key and _is_number(value):
                    # Namespaced metrics of auxiliary learners (e.g. an attack's "ami/maa_loss").
                    self._nonfinite |= not _finite(value)
                    row[prefix + key] = _num(value)
        if self.defense is not None:  # e.g. the attacker's return, the share of replaced steps
            self.defense.record(result, row)
        return row

    def _healthy(self, row: dict[str, Any]) -> bool:
        if self._nonfinite:
            return False
        for module_id in self.algo.config.policies:
            module = self.algo.get_module(module_id)
            if any(not torch.isfinite(p).all() for p in module.parameters()):
                return False
        return True

    def _log_tb(self, row: dict[str, Any]) -> None:
        step = row["iteration"]
        for key, value in {**row, **self._tb_extra}.items():
            if key != "iteration" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _draw_graphs(self) -> None:
        """At each checkpoint, a PNG of each learned DAG's most frequent graph."""
        from marl.graphs.draw import draw_dag

        for module_id in self.algo.config.policies:
            module = self.algo.get_module(module_id)
            graph = getattr(module, "graph", None)
            if graph is None or not hasattr(graph, "mode_graph"):
                continue
            share = float(graph.mode_share)
            draw_dag(
                graph.mode_graph.cpu().numpy(), graph.edge_freq.cpu().numpy(),
                self.run_dir / "plots" / f"dag_{module_id}_iter_{self.state.iteration:06d}.png",
                title=f"{module_id}, iteration {self.state.iteration}: most frequent DAG ({share:.0%} of steps)",
            )

    def _probe_agent_models(self, final: bool) -> dict[str, Any]:
        """Held-out accuracy of a linear probe from each agent model's representation to the
        others' behaviour type, where the env reports types (marl/agent_modeling/probe.py);
        with ``final``, the accuracy-against-t and PCA pictures in plots/."""
        am = self.cfg.model.agent_modeling
        if am is None or not am.probe_episodes:
            return {}
        from marl.agent_modeling import probe
        from marl.config import build_env

        modules = {m: self.algo.get_module(m) for m in self.algo.config.policies}
        env = build_env(self.cfg.env)
        if set(modules) != set(env.teams):  # not a team run (an attacker): no probe here
            env.close()
            return {}
        try:
            data = probe.rollout_representations(env, modules, am.probe_episodes, seed=10_000 + self.state.iteration)
        finally:
            env.close()
        row: dict[str, Any] = {}
        for team, d in data.items():
            prefix = "" if len(modules) == 1 else f"{team}/"
            curve = probe.probe_curve(d["z"], d["valid"], d["types"], seed=self.cfg.seed)
            if not curve:  # the env reports no behaviour types
                continue
            row[prefix + "agent_model/probe_accuracy"] = float(np.mean(list(curve.values())))
            for t in (1, 10, max(curve)):
                if t in curve:
                    row[prefix + f"agent_model/probe_accuracy_t{t}"] = curve[t]
            if final:
                plots = self.run_dir / "plots"
                n_types = len(np.unique(d["types"][d["types"] >= 0]))
                probe.plot_probe({team: curve}, n_types, plots / f"probe_accuracy_{team}.png")
                last = d["valid"].sum(1) - 1
                z_end = d["z"][np.arange(len(last)), last, 0]
                probe.plot_pca(z_end, d["types"], plots / f"representations_pca_{team}.png")
                (plots / f"probe_accuracy_{team}.json").write_text(json.dumps(curve))
        return row

    # ............................................................. checkpoints
    def save_checkpoint(self) -> Path:
        ckpt_root = self.run_dir / "checkpoints"
        ckpt_root.mkdir(exist_ok=True)
        final = ckpt_root / f"{CHECKPOINT_PREFIX}{self.state.iteration:06d}"
        tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.algo.save_to_path(str(tmp.resolve()))
        save_team_weights(self.algo, tmp)
        (tmp / RUN_STATE).write_text(json.dumps(asdict(self.state)))
        (tmp / RNG_STATE).write_text(json.dumps(rng_state()))
        write_config(self.cfg, tmp / "config.yaml")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints(self.run_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def stop(self) -> None:
        if self.algo is not None:
            self.algo.stop()
        if self.writer is not None:
            self.writer.close()
        gc.unfreeze()  # what build() froze may be garbage now (several runs in one process)


def _last_good(ckpt: Path | None) -> str:
    return f"the last good checkpoint is '{ckpt}'" if ckpt else "no checkpoint was written yet"


def _cause(error: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first exception of ``kinds`` in ``error``'s chain (RLlib and Ray wrap them)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kinds):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) if isinstance(getattr(error, "cause", None), BaseException) \
            else (error.__cause__ or error.__context__)
    return None


@contextmanager
def crash_reported(run_dir: Path, what: str = "training") -> Iterator[None]:
    """Any failure that is not already a one-line stop: its traceback appended to
    ``RUN_DIR/error.log``, and a ``RunCrashed`` naming what failed, the log, and how to resume."""
    try:
        yield
    except (RunStopped, UserError):
        raise
    except Exception as e:
        log = run_dir / ERROR_LOG
        with open(log, "a") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {what} failed:\n{traceback.format_exc()}\n")
        ckpt = latest_checkpoint(run_dir)
        then = (
            f"continue from its last checkpoint ({ckpt.name}) with: run.py resume {run_dir}"
            if ckpt else f"no checkpoint was written yet; start again with run.py train (run.py resume {run_dir} needs one)"
        )
        raise RunCrashed(f"{what} failed: {describe_exception(e)}; the traceback is in {log}; {then}") from e


# ------------------------------------------------------------------------ entry points
def train(cfg: Config, run_dir: Path | None = None, on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A new run: in a new directory under ``cfg.output_dir``, or at ``run_dir`` (which must
    not exist yet: a sweep names its trials' directories). ``on_row``: see ``Trainer``."""
    init_ray()  # before the run directory: a cluster that cannot be joined leaves nothing behind
    if run_dir is None:
        run_dir = create_run_dir(cfg)
    else:
        run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "plots").mkdir()
    write_config(cfg, run_dir / "config.yaml")
    trainer = Trainer(cfg, run_dir, on_row=on_row)
    try:
        try:
            trainer.build()
        except UserError:  # e.g. more runners or GPUs than the cluster has: exit 2
            trainer.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        except Exception as e:  # nothing was trained: leave no run directory behind
            trainer.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise BuildFailed(describe_build_failure(cfg, e)) from e
        print(f"run directory: {run_dir}", file=sys.stderr)
        with crash_reported(run_dir):
            return trainer.run()
    finally:
        trainer.stop()


def describe_build_failure(cfg: Config, error: BaseException) -> str:
    """One line: the env, the check that failed, and the root cause RLlib wrapped."""
    root = error
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)
    check = "RLlib's environment check" if "gymnasium-style API" in str(error) or "check" in first.lower() else "building the algorithm"
    cause = f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}"
    if root is error:
        cause = f"{type(error).__name__}: {first}"
    return f"env '{cfg.env.import_}' failed {check}: {cause}; no run directory was kept"


def load_run(run_dir: Path) -> tuple[Config, Path]:
    """The config of a run and its last checkpoint, or a UserError naming what is missing."""
    from marl.config import config_from_file

    if not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' does not exist")
    cfg = config_from_file(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"run directory '{run_dir}' has no checkpoint under checkpoints/ to resume from")
    if not (ckpt / RUN_STATE).is_file():
        raise UserError(f"checkpoint '{ckpt}' lacks {RUN_STATE}; it was not written by run.py train")
    try:
        RunState(**json.loads((ckpt / RUN_STATE).read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"'{ckpt / RUN_STATE}' is not a valid run state ({e})") from None
    return cfg, ckpt


def resume(run_dir: Path, on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
    cfg, ckpt = load_run(run_dir)
    state = RunState(**json.loads((ckpt / RUN_STATE).read_text()))
    init_ray()
    check_cluster(cfg.runners)  # before anything in the run directory changes
    truncate_metrics(run_dir / "metrics.jsonl", state.iteration)
    print(f"resuming {run_dir} from {ckpt.name} (env step {state.env_steps})", file=sys.stderr)
    trainer = Trainer(cfg, run_dir, state, on_row=on_row)
    try:
        with crash_reported(run_dir, "resuming the run"):
            trainer.build(resume_from=ckpt)
        with crash_reported(run_dir):
            return trainer.run()
    finally:
        trainer.stop()


def truncate_metrics(path: Path, iteration: int) -> None:
    """Drop rows written after the checkpoint (they are re-done) and any torn last line."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get("iteration", 0) > iteration:
            break
        keep.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)
