"""Issue 8's attack suite: one victim, several adversaries, several attack seeds -> one report.

For each adversary and seed it runs ``run.py attack`` as a subprocess (at most ``--parallel``
at a time, 2 at most), with the same evaluation episodes for every attack and the same
attacker budget (``train.total_env_steps``) for every attack that trains (gleave, ami);
random and obs_pgd do not train and only evaluate. The victim is pinned to one checkpoint
(a run directory's latest at the first call, remembered in ``RUNS/suite.json``) so that every
attack, including ones re-run after an interruption, faces the same team.

Re-runnable: an (adversary, seed) whose run directory holds ``attack_eval.json`` is skipped;
one that stopped after writing a checkpoint is resumed (``run.py resume``); anything else is
started afresh. Then ``run.py report`` writes report.md, report.json and PNGs into ``--report``
(replaced as a whole); GIFs are dropped from it when they weigh more than 2 MB together.
The last stdout line is one JSON object: per attack, the victim's return (and win rate where
the env reports wins) mean and 95% CI over attack seeds.

    python benchmarks/attack_suite.py VICTIM --runs DIR --report benchmarks/results/attacks/NAME \\
        [--adversaries random gleave obs_pgd ami] [--seeds 0 1 2] [--budget 100000] [--episodes 32] \\
        [--parallel 2] [--gif] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINS = {"gleave", "ami", "gap"}  # the adversaries that train an attacker (the others only evaluate)
EVAL_FILE = "attack_eval.json"
GIF_LIMIT = 2 * 1024 * 1024


def pinned_victim(victim: Path, runs: Path) -> Path:
    """The victim checkpoint every attack of this suite uses (chosen once, then remembered)."""
    state = runs / "suite.json"
    if state.is_file():
        return Path(json.loads(state.read_text())["victim_checkpoint"])
    if (victim / "checkpoints").is_dir():  # a run directory: its latest checkpoint, now
        found = sorted(p for p in (victim / "checkpoints").iterdir() if p.name.startswith("iter_"))
        if not found:
            sys.exit(f"error: run directory '{victim}' has no checkpoint under checkpoints/")
        victim = found[-1]
    runs.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"victim_checkpoint": str(victim.resolve())}, indent=2) + "\n")
    return victim.resolve()


def run_dirs(out: Path) -> list[Path]:
    return sorted(d for d in out.iterdir() if d.is_dir()) if out.is_dir() else []


def finished(out: Path) -> Path | None:
    done = [d for d in run_dirs(out) if (d / EVAL_FILE).is_file()]
    return done[-1] if done else None


def one_attack(victim: Path, adversary: str, seed: int, args, runs: Path) -> Path | None:
    out = runs / f"{adversary}-s{seed}"
    done = finished(out)
    if done is not None:
        print(f"[suite] {adversary} seed {seed}: done already ({done})", flush=True)
        return done
    log = runs / f"{adversary}-s{seed}.log"
    partial = [d for d in run_dirs(out) if any((d / "checkpoints").glob("iter_*"))]
    if adversary in TRAINS and partial:
        cmd = [sys.executable, "run.py", "resume", str(partial[-1])]
    else:
        cmd = [sys.executable, "run.py", "attack", str(victim), "--adversary", adversary,
               f"seed={seed}", f"eval.episodes={args.episodes}", f"output_dir={out}",
               f"name={adversary}-s{seed}", "train.progress=log", f"eval.gif={str(args.gif).lower()}",
               *args.overrides]
        if adversary in TRAINS:
            cmd.append(f"train.total_env_steps={args.budget}")
    print(f"[suite] {adversary} seed {seed}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    done = finished(out)
    print(f"[suite] {adversary} seed {seed}: exit {rc} after {time.time() - t0:.0f}s"
          f"{'' if done else f' (no {EVAL_FILE}; see {log})'}", flush=True)
    return done


def write_report(done: list[Path], report: Path) -> dict:
    tmp = report.with_name(report.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "run.py", "report", *map(str, done), "--out", str(tmp)], cwd=ROOT, check=True)
    gifs = list(tmp.glob("*.gif"))
    if sum(g.stat().st_size for g in gifs) > GIF_LIMIT:  # too heavy to commit: keep the tables and PNGs
        for g in gifs:
            g.unlink()
        md = tmp / "report.md"
        md.write_text("\n".join(line for line in md.read_text().splitlines() if ".gif)" not in line) + "\n")
    shutil.rmtree(report, ignore_errors=True)
    tmp.rename(report)
    return json.loads((report / "report.json").read_text())


def summary(data: dict) -> dict:
    """Per victim and attack: the victim's return (and win rate) mean and 95% CI; `none` is clean."""
    out = {}
    for slug, v in data["victims"].items():
        rows = {}
        clean = [a["return_clean"] for a in v["attacks"]]
        if clean:
            rows["none"] = {"return": {"mean": sum(c["mean"] for c in clean) / len(clean)}}
        for a in v["attacks"]:
            row = {"return": a["return_attacked"], "seeds": a["seeds"],
                   "attack_env_steps": sorted(set(a["attack_env_steps"]))}
            if "win_rate_attacked" in a:
                row["win_rate"] = a["win_rate_attacked"]
            rows[a["adversary"] + (" (white-box)" if a["white_box"] else "")] = row
        out[slug] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("victim", type=Path, help="a victim checkpoint or run directory (its latest checkpoint)")
    p.add_argument("--runs", type=Path, required=True, help="where the attack run directories go")
    p.add_argument("--report", type=Path, required=True, help="the report directory (replaced)")
    p.add_argument("--adversaries", nargs="+", default=["random", "gleave", "obs_pgd", "ami"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=100_000, help="env steps of every trained attacker")
    p.add_argument("--episodes", type=int, default=32, help="paired evaluation episodes of every attack")
    p.add_argument("--parallel", type=int, default=1, choices=(1, 2))
    p.add_argument("--gif", action="store_true", help="GIFs where the env renders (MPE)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="overrides for every attack")
    args = p.parse_args()

    runs = args.runs.resolve()
    victim = pinned_victim(args.victim, runs)
    print(f"[suite] victim checkpoint {victim}", flush=True)
    jobs = [(a, s) for a in args.adversaries for s in args.seeds]
    # Seed by seed, so that an interrupted suite still has every attack at its first seeds;
    # within a seed the trained attacks first (they take longest).
    jobs.sort(key=lambda j: (args.seeds.index(j[1]), j[0] not in TRAINS))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with ThreadPoolExecutor(args.parallel) as pool:
        done = list(pool.map(lambda j: one_attack(victim, j[0], j[1], args, runs), jobs))
    missing = [f"{a}-s{s}" for (a, s), d in zip(jobs, done, strict=True) if d is None]
    ok = [d for d in done if d is not None]
    if not ok:
        sys.exit("error: no attack run finished")
    data = write_report(ok, args.report)
    print(json.dumps({"victim": str(victim), "budget": args.budget, "episodes": args.episodes,
                      "missing": missing, "attacks": summary(data)}))


if __name__ == "__main__":
    main()
