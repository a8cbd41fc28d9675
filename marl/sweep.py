"""Sweeps: a grid of configs, each grid point one normal training run, on Ray Tune.

``run.py sweep CONFIG --grid seed=0,1,2 algo.lr=3e-4,5e-4 [--samples N] [k=v ...]``

Sweep directory::

    SWEEP_DIR/
        sweep.json            the plan: config, overrides, grid, samples, trials (name, params)
        configs/<trial>.yaml  each trial's resolved config, validated before anything ran
        trials/<trial>/       each trial a normal run directory (config.yaml, metrics.jsonl,
                              tb/, checkpoints/, plots/): run.py resume / evaluate work on it
        tune/attempt-N/       Ray Tune's own experiment directory, one per invocation
        summary.md, summary.json, summary.png

How it runs. ``tune.Tuner`` over a function trainable with one ``tune.grid_search`` over the
trials still to run; each Tune trial runs the project's own ``Trainer`` in its worker process
(in-process sampling by default, so 1 CPU per trial; plus a CPU per remote EnvRunner) and
reports each metrics.jsonl row with ``tune.report``. Tune schedules them on whatever Ray
cluster ``init_ray`` started or joined. A trial's own record is its run directory: it is
finished once its last checkpoint holds ``train.total_env_steps``.

Resume. ``run.py sweep --resume SWEEP_DIR`` reads sweep.json (JSON, never a pickle: Tune's
``Tuner.restore`` would unpickle ``tuner.pkl``, and results are untrusted input here), skips
the finished trials (they are not started at all), continues each started one from its last
checkpoint exactly as ``run.py resume`` does, and starts the rest. A trial killed before its
first checkpoint starts again from scratch.

Summary (``summarise``): per configuration (a grid point without its seed), the final return
of each finished trial (``win_rate`` instead where the env reports wins, as ``evaluate`` and
the attack report do) across seeds: n, mean, IQM and percentile-bootstrap 95% CIs
(marl/stats.py); and the curves of that metric against env steps, mean and 95% t band over seeds.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from marl.errors import ConfigError, RunStopped, UserError

SWEEP_FILE = "sweep.json"
CONFIGS, TRIALS, TUNE = "configs", "trials", "tune"
SUMMARY_MD, SUMMARY_JSON, SUMMARY_PNG = "summary.md", "summary.json", "summary.png"
LOCK = ".lock"
SWEEP_VERSION = 1
RESERVED = {"output_dir": "every trial is a run directory under SWEEP_DIR/trials (output_dir=DIR places the sweep)"}


@dataclass
class Trial:
    name: str  # its run directory's name under trials/
    params: dict[str, str]  # grid key -> the value as given on the command line


@dataclass
class Plan:
    config: str | None  # the experiment file (absolute), or None for configs/default.yaml
    overrides: list[str]  # k=v applied to every trial
    grid: dict[str, list[str]]  # grid axes, in the order given (seed included with --samples)
    samples: int
    trials: list[Trial]

    def to_json(self) -> dict[str, Any]:
        return {"version": SWEEP_VERSION, **asdict(self)}


# --------------------------------------------------------------------------------- the grid
def split_values(text: str) -> list[str]:
    """``a,b,[1,2]`` -> ['a', 'b', '[1,2]']: commas inside brackets, braces or quotes do not
    split, so list values stay whole."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    out.append(cur)
    return out


def parse_grid(items: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``--grid`` items -> (axes, overrides). An item with one value is an override of every
    trial, the same as ``k=v`` outside ``--grid``."""
    axes: dict[str, list[str]] = {}
    overrides: list[str] = []
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key or key.strip() != key:
            raise UserError(f"--grid item '{item}' must look like key.sub=v1,v2,...")
        if key in axes or any(o.partition("=")[0] == key for o in overrides):
            raise UserError(f"--grid: key '{key}' is given twice; list all its values in one item, {key}=v1,v2")
        values = split_values(text)
        if any(not v.strip() for v in values):
            raise UserError(f"--grid item '{item}': empty value; expected {key}=v1,v2,... with no empty entries")
        if len(set(values)) < len(values):
            dup = next(v for v in values if values.count(v) > 1)
            raise UserError(f"--grid item '{item}': the value '{dup}' is listed twice")
        if len(values) == 1:
            overrides.append(item)
        else:
            axes[key] = values
    return axes, overrides


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text)


def expand(axes: dict[str, list[str]]) -> list[Trial]:
    """The grid points, the first axis varying slowest, each with a unique run directory name."""
    trials = []
    keys = list(axes)
    for k, values in enumerate(itertools.product(*(axes[key] for key in keys))):
        params = dict(zip(keys, values, strict=True))
        label = "_".join(f"{key}={v}" for key, v in params.items())
        trials.append(Trial(f"{k:03d}_{_slug(label)}"[:120], params))
    return trials


def configuration(params: dict[str, Any]) -> str:
    """The label of a trial's configuration: its grid point without the seed."""
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or "(one configuration)"


def plan_sweep(config: str | None, overrides: list[str], grid_items: list[str], samples: int) -> tuple[Plan, list, Any]:
    """Validate the grid and every trial's config (nothing is created): the plan, the trials'
    resolved configs and the first of them, or a UserError naming the key or value at fault."""
    from marl.config import load_config

    if samples < 1:
        raise UserError(f"--samples must be a positive integer (got {samples})")
    if not grid_items and samples == 1:
        raise UserError("--grid is required: e.g. --grid seed=0,1,2 algo.lr=3e-4,5e-4 (or --samples N for N seeds)")
    axes, fixed = parse_grid(grid_items)
    overrides = [*overrides, *fixed]
    keys = [o.partition("=")[0] for o in overrides]
    for key in axes:
        if key in RESERVED:
            raise UserError(f"--grid: '{key}' cannot be a grid axis: {RESERVED[key]}")
    for key in axes:
        if key in keys:
            raise UserError(f"key '{key}' is both a --grid axis and an override; give it once")
    if samples > 1 and "seed" in axes:
        raise UserError("--samples N runs seeds seed..seed+N-1 of each grid point; it cannot be combined with a seed axis in --grid")
    if not axes and samples == 1:
        raise UserError("--grid has no axis with two or more values; a sweep of one run is run.py train")
    configs = []
    for params in itertools.product(*axes.values()):
        point = [f"{k}={v}" for k, v in zip(axes, params, strict=True)]
        try:
            configs.append(load_config(config, [*overrides, *point]))
        except ConfigError as e:
            raise ConfigError(f"--grid point {' '.join(point) or '(no axis)'}: {e}") from None
    if samples > 1:  # a seed axis, varying fastest: the seed takes no part in validation
        seeds = [configs[0].seed + k for k in range(samples)]
        axes["seed"] = [str(s) for s in seeds]
        configs = [c.model_copy(update={"seed": s}, deep=True) for c in configs for s in seeds]
    trials = expand(axes)
    path = str(Path(config).resolve()) if config else None
    return Plan(path, overrides, axes, samples, trials), configs, configs[0]


# ----------------------------------------------------------------------- the sweep directory
def default_sweep_dir(cfg) -> Path:
    return Path(cfg.output_dir) / f"sweep-{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_new_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' exists and is not an empty directory; name a new one (nothing is overwritten)")


def create_sweep(plan: Plan, configs: list, out: Path) -> Path:
    from marl.train import write_config

    check_new_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIGS).mkdir()
    (out / TRIALS).mkdir()
    trials_dir = str((out / TRIALS).resolve())
    for trial, cfg in zip(plan.trials, configs, strict=True):
        cfg.output_dir = trials_dir
        write_config(cfg, out / CONFIGS / f"{trial.name}.yaml")
    tmp = out / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
    os.replace(tmp, out / SWEEP_FILE)  # written last: a directory with sweep.json is complete
    return out


def load_sweep(sweep_dir: Path) -> Plan:
    """The plan of a sweep directory, or a UserError saying why it is not one."""
    from marl.config import config_from_file

    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory '{sweep_dir}' does not exist")
    file = sweep_dir / SWEEP_FILE
    if not file.is_file():
        raise UserError(f"'{sweep_dir}' is not a sweep directory: it has no {SWEEP_FILE} (made by run.py sweep)")
    try:
        data = json.loads(file.read_text())
        if data.get("version") != SWEEP_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {SWEEP_VERSION}")
        trials = [Trial(str(t["name"]), {str(k): str(v) for k, v in t["params"].items()}) for t in data["trials"]]
        plan = Plan(data["config"], list(data["overrides"]), dict(data["grid"]), int(data["samples"]), trials)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"'{file}' is not a valid sweep file ({type(e).__name__}: {e})") from None
    for t in plan.trials:
        if t.name != _slug(t.name) or t.name in ("", ".", ".."):
            raise UserError(f"'{file}': trial name '{t.name}' is not a plain directory name")
        if not (sweep_dir / CONFIGS / f"{t.name}.yaml").is_file():
            raise UserError(f"'{sweep_dir}' lacks {CONFIGS}/{t.name}.yaml, the config of trial '{t.name}'")
        config_from_file(sweep_dir / CONFIGS / f"{t.name}.yaml")
    return plan


def trial_config(sweep_dir: Path, name: str):
    from marl.config import config_from_file

    return config_from_file(sweep_dir / CONFIGS / f"{name}.yaml")


def trial_status(run_dir: Path, total_env_steps: int) -> str:
    """``finished`` (its last checkpoint holds the whole budget), ``started`` (a checkpoint to
    continue from) or ``new`` (nothing to continue: no directory, or killed before its first
    checkpoint)."""
    from marl.checkpoints import latest_checkpoint
    from marl.train import RUN_STATE

    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if ckpt is None or not (ckpt / RUN_STATE).is_file():
        return "new"
    try:
        steps = json.loads((ckpt / RUN_STATE).read_text())["env_steps"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return "new"
    return "finished" if steps >= total_env_steps else "started"


# ------------------------------------------------------------------------------- running
def _report_row(row: dict[str, Any]) -> None:
    from ray import tune

    tune.report({k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)})


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: one trial, a normal run directory under SWEEP_DIR/trials.
    Inside a Tune worker Ray is already up: ``init_ray`` (in train/resume) leaves it be."""
    from marl.train import resume, train

    sweep_dir, name = Path(config["sweep_dir"]), config["trial"]
    if config.get("cwd") and Path(config["cwd"]).is_dir():
        os.chdir(config["cwd"])  # relative paths in configs mean what they mean to run.py train
    cfg = trial_config(sweep_dir, name)
    run_dir = sweep_dir / TRIALS / name
    status = trial_status(run_dir, cfg.train.total_env_steps)
    if status == "finished":  # never re-run; report where it ended
        rows = read_metrics(run_dir)
        if rows:
            _report_row(rows[-1])
        return
    if status == "started":
        resume(run_dir, on_row=_report_row)
        return
    if run_dir.exists():  # killed before its first checkpoint: nothing to continue from
        shutil.rmtree(run_dir)
    train(cfg, run_dir=run_dir, on_row=_report_row)


def _resources(sweep_dir: Path):
    """A placement group per trial, the bundles RLlib asks for (marl/resources.py counts the
    same): the trainer's process (its torch threads, and the GPU of an in-process learner),
    one bundle per remote EnvRunner (a CPU and its GPUs) and per remote Learner; RLlib starts
    them inside the trial's group, so a bundle left out would leave the trial pending."""
    from ray.tune import PlacementGroupFactory

    from marl.resources import CPUS_PER_ENV_RUNNER, demand

    def bundle(cpus: float, gpus: float) -> dict[str, float]:
        return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v}

    def per_trial(config: dict[str, Any]):
        r = trial_config(sweep_dir, config["trial"]).runners
        d = demand(r)
        head = bundle(max(1, r.torch_threads), d.driver_gpus)
        runners = [bundle(CPUS_PER_ENV_RUNNER, r.num_gpus_per_env_runner)] * r.num_env_runners
        learners = [bundle(d.learner_cpus / r.num_learners, r.num_gpus_per_learner)] * r.num_learners \
            if r.num_learners else []
        return PlacementGroupFactory([head, *runners, *[b for b in learners if b]])

    return per_trial


def _callback(log: Callable[[str], None]):
    from ray import tune

    class Log(tune.Callback):
        """One line per trial event and per iteration, on stderr (Tune's own table is off)."""

        def on_trial_start(self, iteration, trials, trial, **info):
            log(f"trial {trial.config['trial']}: started")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            ret = result.get("win_rate", result.get("episode_return_mean"))
            what = "win rate" if "win_rate" in result else "return"
            shown = "-" if ret is None else f"{ret:.3f}"
            log(f"trial {trial.config['trial']}: iteration {result.get('iteration')}  env steps "
                f"{result.get('env_steps')}  {what} {shown}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            log(f"trial {trial.config['trial']}: finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"trial {trial.config['trial']}: failed")

    return Log()



def _lock(sweep_dir: Path):
    """Held while this process runs the sweep: a second ``run.py sweep`` on the same directory
    is refused instead of running its trials twice. The kernel drops it if the process dies."""
    handle = open(sweep_dir / LOCK, "w")  # noqa: SIM115 (kept open while the sweep runs)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"sweep '{sweep_dir}' is being run by another process; wait for it to end") from None
    return handle


def run_sweep(sweep_dir: Path, plan: Plan, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict[str, Any]:
    """Run the trials not finished yet on Ray Tune, then write the summary."""
    lock = _lock(sweep_dir)
    try:
        from marl.train import init_ray

        totals = {t.name: trial_config(sweep_dir, t.name).train.total_env_steps for t in plan.trials}
        status = {t.name: trial_status(sweep_dir / TRIALS / t.name, totals[t.name]) for t in plan.trials}
        todo = [t.name for t in plan.trials if status[t.name] != "finished"]
        done = len(plan.trials) - len(todo)
        started = sum(status[n] == "started" for n in todo)
        log(f"sweep {sweep_dir}: {len(plan.trials)} trials; {done} finished already (not re-run), "
            f"{started} continue from their last checkpoint, {len(todo) - started} start")
        failed: dict[str, str] = {}
        if todo:
            init_ray()
            check_fits([trial_config(sweep_dir, name) for name in todo])
            failed = _fit(sweep_dir, todo, log)
        summary = write_summary(sweep_dir, plan)
    finally:
        lock.close()
    if failed:
        first = next(iter(failed.items()))
        raise RunStopped(
            f"{len(failed)} of {len(plan.trials)} trials failed (trial {first[0]}: {first[1]}); each keeps "
            f"its run directory under {sweep_dir / TRIALS}; the summary covers the finished ones; "
            f"continue with: run.py sweep --resume {sweep_dir}"
        )
    return summary


def check_fits(configs: list) -> None:
    """A trial the attached cluster cannot hold would wait in Tune forever: refuse it first
    (exit 2, naming the key). Its trainer runs in a Tune worker, so a GPU anywhere in the
    cluster serves an in-process learner. Ray must be up."""
    import ray

    from marl.resources import check_resources

    have = ray.cluster_resources()
    for cfg in configs:
        check_resources(cfg.runners, have, int(have.get("GPU", 0)))


def _fit(sweep_dir: Path, todo: list[str], log: Callable[[str], None]) -> dict[str, str]:
    """One Tune experiment over the trials in ``todo``: {trial: why it failed}."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune tables on stdout: our lines on stderr
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # trials keep the working directory (see run_trial)
    from ray import tune

    from marl.errors import describe_exception
    from marl.train import _cause

    sweep_dir = sweep_dir.resolve()
    root = sweep_dir / TUNE
    attempt = 1 + sum(1 for d in root.glob("attempt-*")) if root.is_dir() else 1
    tuner = tune.Tuner(
        tune.with_resources(run_trial, _resources(sweep_dir)),
        param_space={"trial": tune.grid_search(todo), "sweep_dir": str(sweep_dir), "cwd": os.getcwd()},
        run_config=tune.RunConfig(
            name=f"attempt-{attempt}", storage_path=str(root), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0), callbacks=[_callback(log)],
        ),
    )
    for name in ("ray.tune", "ray.air", "ray.train"):  # a failed trial is reported once, below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    results = tuner.fit()
    failed = {}
    for result in results:
        if result.error is not None:
            error = result.error
            while isinstance(getattr(error, "cause", None), BaseException):  # Ray's wrappers
                error = error.cause
            cause = _cause(error, (RunStopped,)) or error
            failed[result.config["trial"]] = str(cause) if isinstance(cause, RunStopped) else describe_exception(cause)
    return failed


# ------------------------------------------------------------------------------- summary
def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows, up to a torn last line of a killed run."""
    rows = []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def _lookup(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


METRICS = ("win_rate", "episode_return_mean")  # the first a run reports is its final figure


def _trial_records(sweep_dir: Path, plan: Plan) -> list[dict[str, Any]]:
    """Each trial: status, seed, params, and its curve of each metric (env steps, value)."""
    records = []
    for t in plan.trials:
        cfg = trial_config(sweep_dir, t.name)
        run_dir = sweep_dir / TRIALS / t.name
        rows = read_metrics(run_dir)
        resolved = cfg.to_dict()
        curves = {m: [(r["env_steps"], r[m]) for r in rows if r.get(m) is not None] for m in METRICS}
        records.append({
            "name": t.name, "run_dir": f"{TRIALS}/{t.name}",
            "status": trial_status(run_dir, cfg.train.total_env_steps),
            "configuration": configuration(t.params), "seed": cfg.seed,
            "params": {k: _lookup(resolved, k) for k in t.params},
            "env_steps": rows[-1]["env_steps"] if rows else 0, "curves": curves,
        })
    return records


def summarise(sweep_dir: Path, plan: Plan) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per configuration, the final metric of its finished trials across seeds (see the module
    docstring), and the trial records. A trial's final figure is the metric's value at its last
    iteration, which RLlib already averages over the last 100 episodes. The metric is
    ``win_rate`` where every finished trial of the configuration reports it, else
    ``episode_return_mean``."""
    from marl.stats import iqm_ci, mean_ci

    records = _trial_records(sweep_dir, plan)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["configuration"], []).append(r)
    configs = []
    for label, rs in groups.items():
        done = [r for r in rs if r["status"] == "finished" and r["curves"]["episode_return_mean"]]
        metric = "win_rate" if done and all(r["curves"]["win_rate"] for r in done) else "episode_return_mean"
        finals = [r["curves"][metric][-1][1] for r in done]
        left_out = {r["name"]: "not finished" if r["status"] != "finished" else "no episode ended"
                    for r in rs if r not in done}
        entry: dict[str, Any] = {
            "configuration": label, "params": {k: v for k, v in rs[0]["params"].items() if k != "seed"},
            "metric": metric, "trials": [r["name"] for r in rs], "seeds": [r["seed"] for r in done],
            "finals": finals, "left_out": left_out,
            "n": len(finals), "mean": None, "ci95": None, "iqm": None, "iqm_ci95": None,
        }
        if finals:
            m, q = mean_ci(finals), iqm_ci(finals)
            entry.update(mean=m["mean"], ci95=m["ci95"], iqm=q["iqm"], iqm_ci95=q["ci95"])
        configs.append(entry)
    summary = {
        "sweep_dir": str(sweep_dir), "config": plan.config, "overrides": plan.overrides, "grid": plan.grid,
        "samples": plan.samples, "configurations": configs,
        "trials": [{k: v for k, v in r.items() if k != "curves"} for r in records],
        "png": SUMMARY_PNG if any(c["n"] for c in configs) else None,
    }
    return summary, records


def _fmt(value: float | None, ci: list[float] | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}g}"
    return text + (f" [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else "")


def _left_out(left_out: dict[str, str]) -> str:
    reasons = list(left_out.values())
    return ", ".join(f"{reasons.count(r)} {r}" for r in dict.fromkeys(reasons))


def markdown_table(summary: dict[str, Any]) -> str:
    head = "| configuration | metric | n | mean [95% CI] | IQM [95% CI] | per seed | left out |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in summary["configurations"]:
        per_seed = ", ".join(f"{s}: {v:.4g}" for s, v in zip(c["seeds"], c["finals"], strict=True)) or "—"
        lines.append(
            f"| {c['configuration']} | {c['metric']} | {c['n']} | {_fmt(c['mean'], c['ci95'])} | "
            f"{_fmt(c['iqm'], c['iqm_ci95'])} | {per_seed} | {_left_out(c['left_out'])} |"
        )
    return "\n".join(lines) + "\n"


def _markdown(summary: dict[str, Any]) -> str:
    grid = " ".join(f"{k}={','.join(v)}" for k, v in summary["grid"].items())
    lines = [
        "# Sweep summary", "",
        f"Config `{summary['config'] or 'configs/default.yaml'}`, grid `{grid}`"
        + (f", overrides `{' '.join(summary['overrides'])}`" if summary["overrides"] else "") + ".", "",
        "Final figure of each finished trial: the metric at its last iteration (RLlib's mean over",
        "the last 100 episodes; `win_rate` where the env reports wins, else the team return summed",
        "over agents and time). Across the seeds of each configuration: mean and interquartile mean",
        "(IQM) with percentile-bootstrap 95% CIs (scipy.stats.bootstrap, 5000 resamples; none for",
        "one seed). Left out: trials not finished, or in which no episode ended.", "",
        markdown_table(summary),
    ]
    if summary["png"]:
        lines += ["![learning curves: mean and 95% t band over seeds](summary.png)", ""]
    lines += ["Trials (each a run directory: `run.py resume` / `run.py evaluate` work on it):", ""]
    lines += [f"- `{t['run_dir']}`: {t['status']}, {t['env_steps']} env steps" for t in summary["trials"]]
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], records: list[dict[str, Any]], path: Path) -> None:
    """Per metric a panel: per configuration, its finished seeds' curves (thin), their mean and
    95% t band against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marl.stats import curve_band

    by_name = {r["name"]: r for r in records}
    configs = [c for c in summary["configurations"] if c["n"]]
    metrics = list(dict.fromkeys(c["metric"] for c in configs))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for k, c in enumerate(x for x in configs if x["metric"] == metric):
            curves = [by_name[n]["curves"][metric] for n in c["trials"] if n not in c["left_out"]]
            x, mean, half = curve_band(curves)
            color = f"C{k % 10}"
            for curve in curves:
                ax.plot([p[0] for p in curve], [p[1] for p in curve], color=color, alpha=0.25, lw=0.8)
            ax.plot(x, mean, color=color, lw=2, marker="o", ms=3, label=f"{c['configuration']} ({c['n']} seeds)")
            if half is not None:
                ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.2)
        ax.set_xlabel("env steps")
        ax.set_ylabel("win rate" if metric == "win_rate" else "episode return (team, summed over agents)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("sweep: mean and 95% t band over seeds (thin: each seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(sweep_dir: Path, plan: Plan) -> dict[str, Any]:
    """summary.json, summary.md and summary.png (written to temporary names, then renamed)."""
    summary, records = summarise(sweep_dir, plan)
    if summary["png"]:
        tmp = sweep_dir / f".tmp-{SUMMARY_PNG}"
        _plot(summary, records, tmp)
        os.replace(tmp, sweep_dir / SUMMARY_PNG)
    else:  # no finished trial: no curves (and none left from an earlier summary)
        (sweep_dir / SUMMARY_PNG).unlink(missing_ok=True)
    for name, text in ((SUMMARY_JSON, json.dumps(summary, indent=2) + "\n"), (SUMMARY_MD, _markdown(summary))):
        tmp = sweep_dir / f".tmp-{name}"
        tmp.write_text(text)
        os.replace(tmp, sweep_dir / name)
    return summary
