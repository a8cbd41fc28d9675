"""``run.py report``: attack runs -> ``report.md``, ``report.json`` and PNGs.

Runs are grouped by victim (its checkpoint) and by attack (adversary name, attacked agents,
budget); each group's runs are its attack seeds. Per group, as the adversarial MARL benchmark
(AMB) reports and more:

- the victim team's return and win rate, clean and attacked, as the mean over attack seeds
  with a percentile-bootstrap 95% CI across seeds (``scipy.stats.bootstrap``; a single seed
  has no interval). Each seed's figure is itself the mean over its paired evaluation episodes;
- the drop relative to clean, (clean − attacked) / |clean|, paired per seed;
- the attack learning curves (the attacker's return against its env steps, mean and CI band
  over seeds);
- behaviour: the attacker's action histogram beside that of the agent it replaced;
- stealth (adversaries/stealth.py, measured by every attack run): the action TV between the
  policy in effect for the attacked agent and its own, and the state-distribution shift
  (two-sample classifier AUC, binned-visitation KL), mean and CI across seeds, and one plane
  of attack success against each stealth measure, a point per (victim, attack) with CI bars
  across seeds on both axes (Liu et al., ICLR 2024: success against stealth);
- white-box attacks are labelled as such wherever they appear.

Tables come first in ``report.md``, pictures after, inline, so it reads well on GitHub.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marl.errors import UserError
from marl.stats import curve_band, mean_ci

EVAL_FILE = "attack_eval.json"


@dataclass
class AttackRun:
    path: Path
    eval: dict[str, Any]
    curve: list[tuple[int, float]]

    @property
    def victim(self) -> str:
        return str(self.eval["victim"]["checkpoint"])

    @property
    def attack_key(self) -> tuple:
        adv = self.eval["adversary"]
        return (adv["name"], json.dumps(adv.get("agents")), json.dumps(adv.get("budget")), json.dumps(adv.get("team")))


@dataclass
class Group:
    victim: str
    name: str
    white_box: bool
    threat_model: str
    agents: Any
    budget: Any
    runs: list[AttackRun] = field(default_factory=list)
    team: str | None = None  # α's team where it is not the victim team (competitive)

    @property
    def label(self) -> str:
        extra = f", ε={self.budget}" if self.budget is not None else ""
        extra += f", α in {self.team}" if self.team else ""
        return f"{self.name}{' (white-box)' if self.white_box else ''}{extra}"


# ------------------------------------------------------------------------------- reading
def _read_run(path: Path) -> AttackRun:
    file = path / EVAL_FILE
    if not file.is_file():
        raise UserError(f"'{path}' is not an attack run: it has no {EVAL_FILE} (run `run.py attack` first)")
    try:
        data = json.loads(file.read_text())
        data["victim"]["checkpoint"], data["adversary"]["name"]  # noqa: B018 (required keys)
        data["clean"]["return_mean"], data["attacked"]["return_mean"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"'{file}' is not a valid attack evaluation ({type(e).__name__}: {e})") from None
    curve = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line of a killed run
            if row.get("episode_return_mean") is not None:
                curve.append((int(row["env_steps"]), float(row["episode_return_mean"])))
    return AttackRun(path, data, curve)


def find_runs(paths: list[Path]) -> list[AttackRun]:
    """Attack run directories; a directory that is not one is searched one level down."""
    runs: list[AttackRun] = []
    for p in paths:
        if not p.is_dir():
            raise UserError(f"run directory '{p}' does not exist")
        if (p / EVAL_FILE).is_file():
            runs.append(_read_run(p))
            continue
        found = sorted(d for d in p.iterdir() if (d / EVAL_FILE).is_file())
        if not found:
            raise UserError(f"'{p}' is not an attack run and holds none: no {EVAL_FILE} in it or its subdirectories")
        runs += [_read_run(d) for d in found]
    return runs


def group_runs(runs: list[AttackRun]) -> dict[str, list[Group]]:
    """victim -> its attack groups (attack seeds grouped), in a stable order."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        adv = run.eval["adversary"]
        key = (run.victim, *run.attack_key)
        if key not in groups:
            other = adv.get("team") if adv.get("team") not in (None, run.eval["victim"].get("team")) else None
            groups[key] = Group(run.victim, adv["name"], bool(adv.get("white_box")), adv.get("threat_model", ""),
                                adv.get("agents"), adv.get("budget"), team=other)
        groups[key].runs.append(run)
    by_victim: dict[str, list[Group]] = defaultdict(list)
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        by_victim[key[0]].append(groups[key])
    return dict(by_victim)


def summarise(group: Group) -> dict[str, Any]:
    clean = [r.eval["clean"]["return_mean"] for r in group.runs]
    attacked = [r.eval["attacked"]["return_mean"] for r in group.runs]
    # Drop relative to clean, paired per attack seed (both on the same episode seeds).
    relative = [(c - a) / abs(c) if c else math.nan for c, a in zip(clean, attacked, strict=True)]
    out: dict[str, Any] = {
        "adversary": group.name,
        "adversary_team": group.team,
        "threat_model": group.threat_model,
        "white_box": group.white_box,
        "agents": group.agents,
        "budget": group.budget,
        "seeds": [r.eval.get("seed") for r in group.runs],
        "runs": [str(r.path) for r in group.runs],
        "attack_env_steps": [r.eval.get("attack_env_steps", 0) for r in group.runs],
        "episodes_per_seed": [r.eval.get("episodes") for r in group.runs],
        "return_clean": mean_ci(clean),
        "return_attacked": mean_ci(attacked),
        "drop": mean_ci([c - a for c, a in zip(clean, attacked, strict=True)]),
        "relative_drop": mean_ci(relative) if not any(math.isnan(x) for x in relative) else None,
    }
    if all("win_rate" in r.eval["clean"] for r in group.runs):
        out["win_rate_clean"] = mean_ci([r.eval["clean"]["win_rate"] for r in group.runs])
        out["win_rate_attacked"] = mean_ci([r.eval["attacked"]["win_rate"] for r in group.runs])
    hist = [r.eval.get("action_histogram") for r in group.runs]
    if hist and all(isinstance(h, dict) and isinstance(h.get("attacker"), list) for h in hist):
        out["action_histogram"] = {
            "attacker": np.sum([h["attacker"] for h in hist], 0).tolist(),
            "replaced_agent_clean": np.sum([h["replaced_agent_clean"] for h in hist], 0).tolist(),
        }
    elif hist and all(isinstance(h, dict) for h in hist):  # continuous: per-seed mean and std
        out["action_stats"] = hist
    out["stealth"] = summarise_stealth(group)
    return out


STEALTH_MEASURES = {  # key in a summary's "stealth" -> (axis label, how to read one run's figure)
    "action_tv": ("action TV(π_α, π̂_α)", lambda st: (st.get("action_tv") or {}).get("mean")),
    "state_auc": ("state two-sample AUC", lambda st: st.get("state_auc")),
    "state_kl": ("state visitation KL (nats)", lambda st: st.get("state_kl")),
    "executed_fraction": ("share of steps the attacker controlled", lambda st: st.get("executed_fraction")),
}


def summarise_stealth(group: Group) -> dict[str, Any]:
    """Each stealth measure's mean and CI across the seeds that report it (None: none do)."""
    out: dict[str, Any] = {}
    for key, (_, read) in STEALTH_MEASURES.items():
        vals = [read(r.eval["stealth"]) for r in group.runs if isinstance(r.eval.get("stealth"), dict)]
        vals = [v for v in vals if v is not None]
        out[key] = mean_ci(vals) if vals else None
    return out


# ------------------------------------------------------------------------------- pictures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    """Write the figure as a PNG beside report.md; the name is what the report links."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path.name


def _victim_slug(victim: str, k: int) -> str:
    parts = Path(victim).parts
    name = next((p for p in reversed(parts) if p not in ("checkpoints",) and not p.startswith("iter_")), f"victim{k}")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _plot_returns(slug: str, groups: list[Group], summaries: list[dict], out: Path, key: str, ylabel: str) -> str | None:
    plt = _pyplot()
    if not all(f"{key}_clean" in s for s in summaries):
        return None
    labels = ["clean"] + [g.label for g in groups]
    field = "win_rate" if key == "win_rate" else "return_mean"
    clean = mean_ci([r.eval["clean"][field] for g in groups for r in g.runs])  # every run's clean
    bars = [clean] + [s[f"{key}_attacked"] for s in summaries]
    means = [b["mean"] for b in bars]
    err = np.array([[m - b["ci95"][0], b["ci95"][1] - m] if b["ci95"] else [0, 0] for m, b in zip(means, bars, strict=True)]).T
    err = np.clip(err, 0.0, None)  # matplotlib refuses negative error bars (a CI that rounding puts beside its mean)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.6))
    colors = ["#4c72b0"] + ["#c44e52" if g.white_box else "#dd8452" for g in groups]
    ax.bar(range(len(labels)), means, yerr=err, color=colors, capsize=4)
    for k, g in enumerate(groups, start=1):  # each attack seed as a dot
        ys = [r.eval["attacked"][field] for r in g.runs]
        ax.scatter([k] * len(ys), ys, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{slug}: victim {ylabel}\n(mean, 95% CI over attack seeds; dots: seeds)", fontsize=9)
    return _save(fig, out / f"{slug}_{key}.png")


def _plot_curves(slug: str, groups: list[Group], out: Path) -> str | None:
    plt = _pyplot()
    trained = [g for g in groups if any(r.curve for r in g.runs)]
    if not trained:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for g in trained:
        curves = [r.curve for r in g.runs if r.curve]
        x, mean, half = curve_band(curves)
        for c in curves:
            ax.plot(x, [p[1] for p in c[:len(x)]], alpha=0.25, lw=0.8)
        line = ax.plot(x, mean, lw=2, label=f"{g.label} ({len(curves)} seeds)")[0]
        if half is not None:
            ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("attacker env steps")
    ax.set_ylabel("attacker return (−victim return)")
    ax.set_title(f"{slug}\nattack learning curves (mean, 95% t band)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out / f"{slug}_curves.png")


def _plot_histograms(slug: str, groups: list[Group], summaries: list[dict], out: Path) -> str | None:
    plt = _pyplot()
    pairs = [(g, s["action_histogram"]) for g, s in zip(groups, summaries, strict=True) if "action_histogram" in s]
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3.0), squeeze=False)
    for ax, (g, h) in zip(axes[0], pairs, strict=True):
        a, c = np.asarray(h["attacker"], float), np.asarray(h["replaced_agent_clean"], float)
        idx = np.arange(len(a))
        ax.bar(idx - 0.2, c / max(c.sum(), 1), 0.4, label="replaced agent (clean)")
        ax.bar(idx + 0.2, a / max(a.sum(), 1), 0.4, label="attacker")
        ax.set_title(g.label, fontsize=9)
        ax.set_xlabel("action")
    axes[0][0].set_ylabel("share of steps")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{slug}: actions of the attacked agent", fontsize=10)
    return _save(fig, out / f"{slug}_actions.png")


def _success(summary: dict[str, Any], relative: bool) -> dict[str, Any] | None:
    return summary["relative_drop"] if relative else summary["drop"]


def _plot_stealth_plane(victims: dict[str, dict[str, Any]], out: Path) -> str | None:
    """Attack success against stealth: one panel per stealth measure, one point per (victim,
    attack), with 95% CI bars across seeds on both axes (none for a single seed). Success is
    the relative drop of the victim's return where every point has one, else the drop."""
    plt = _pyplot()
    points = [(slug, s) for slug, v in victims.items() for s in v["attacks"]]
    keys = [k for k in ("action_tv", "state_auc", "state_kl") if any((s.get("stealth") or {}).get(k) for _, s in points)]
    if not keys:
        return None
    relative = all(s["relative_drop"] is not None for _, s in points)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.8), squeeze=False)
    markers = "osD^v<>Pp*X"
    for ax, key in zip(axes[0], keys, strict=True):
        for k, (slug, s) in enumerate(points):
            x, y = (s.get("stealth") or {}).get(key), _success(s, relative)
            if x is None or y is None:
                continue

            def err(m):
                return [[max(m["mean"] - m["ci95"][0], 0.0)], [max(m["ci95"][1] - m["mean"], 0.0)]] if m["ci95"] else None
            label = f"{slug}: {s['adversary']}" + (" (white-box)" if s["white_box"] else "")
            label += (f", ε={s['budget']}" if s["budget"] is not None else "")
            label += (f", α in {s['adversary_team']}" if s.get("adversary_team") else "")
            ax.errorbar(x["mean"], y["mean"], xerr=err(x), yerr=err(y), fmt=markers[k % len(markers)],
                        capsize=3, color="#c44e52" if s["white_box"] else f"C{k % 10}", label=label)
        if key == "state_auc":
            ax.axvline(0.5, color="grey", lw=0.8, ls="--")  # indistinguishable
        ax.set_xlabel(STEALTH_MEASURES[key][0] + ("  (0.5 = stealthy)" if key == "state_auc" else "  (0 = stealthy)"))
        ax.set_ylabel("relative drop of the victim's return" if relative else "drop of the victim's return")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(3, len(labels)), bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("attack success against stealth (mean, 95% CI across seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 3), 1, 1))
    fig.savefig(out / "stealth_plane.png", dpi=110)
    plt.close(fig)
    return "stealth_plane.png"


# --------------------------------------------------------------------------------- writing
def _fmt(s: dict[str, Any] | None, digits: int = 2) -> str:
    if s is None:
        return "—"
    text = f"{s['mean']:.{digits}f}"
    if s.get("ci95"):
        lo, hi = s["ci95"]
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _markdown(victims: dict[str, dict[str, Any]], plane: str | None = None) -> str:
    lines = ["# Adversarial evaluation report", ""]
    lines += [
        "Victim team return (sum over its agents and over time) and win rate, clean and under each",
        "attack: mean over attack seeds, with a percentile-bootstrap 95% CI across seeds in brackets",
        "(none for a single seed). Each seed's figure is the mean over its paired evaluation",
        "episodes (clean and attacked on the same episode seeds). Drop = clean − attacked; relative",
        "drop = drop / |clean|, paired per seed. White-box attacks see the victims' parameters and",
        "gradients; the others only query the victims as a black box.",
        "",
        "Stealth (the same statistics across seeds): *action TV*, the total variation between the",
        "policy in effect for the attacked agent and its own, averaged over the states visited under",
        "attack (≤ ε for partial control); *state AUC*, the held-out ROC AUC of a logistic regression",
        "telling attacked from clean states (0.5 = indistinguishable); *state KL*, KL(attacked ‖ clean)",
        "of binned visitation on a 2-D PCA of both sets' standardised states (nats; 0 = no shift).",
        "",
    ]
    for slug, v in victims.items():
        rows = v["attacks"]
        lines += [f"## Victim `{slug}`", "", f"Checkpoint: `{v['checkpoint']}`", ""]
        has_wins = all("win_rate_clean" in r for r in rows)
        head = "| attack | threat model | seeds | attacker env steps | return clean | return attacked | drop | relative drop |"
        if has_wins:
            head += " win rate clean | win rate attacked |"
        head += " action TV | state AUC | state KL |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            label = r["adversary"] + (" **(white-box)**" if r["white_box"] else "")
            if r["budget"] is not None:
                label += f", ε={r['budget']}"
            if r.get("adversary_team"):
                label += f", α in team `{r['adversary_team']}`"
            steps = sorted(set(r["attack_env_steps"]))
            row = (
                f"| {label} | {r['threat_model']} | {len(r['seeds'])} | {', '.join(str(s) for s in steps)} | "
                f"{_fmt(r['return_clean'])} | {_fmt(r['return_attacked'])} | {_fmt(r['drop'])} | "
                f"{_fmt(r['relative_drop'], 3)} |"
            )
            if has_wins:
                row += f" {_fmt(r['win_rate_clean'], 3)} | {_fmt(r['win_rate_attacked'], 3)} |"
            st = r.get("stealth") or {}
            row += f" {_fmt(st.get('action_tv'), 3)} | {_fmt(st.get('state_auc'), 3)} | {_fmt(st.get('state_kl'), 3)} |"
            lines.append(row)
        lines.append("")
        for title, key in (("Victim return", "returns_png"), ("Victim win rate", "win_rate_png"),
                           ("Attack learning curves", "curves_png"), ("Actions of the attacked agent", "actions_png")):
            if v.get(key):
                lines += [f"**{title}**", "", f"![{title}]({v[key]})", ""]
        for gif in v.get("gifs", []):
            lines += [f"**{gif['title']}**", "", f"![{gif['title']}]({gif['file']})", ""]
    if plane:
        lines += ["## Attack success against stealth", "",
                  "One point per (victim, attack): mean across seeds, with 95% CI bars on both axes.", "",
                  f"![Attack success against stealth]({plane})", ""]
    return "\n".join(lines) + "\n"


def default_out_dir() -> Path:
    from datetime import datetime

    return Path("runs") / f"report-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' exists and is not an empty directory; name a new one (nothing is overwritten)")


def write_report(paths: list[Path], out: Path) -> dict[str, Any]:
    """Attack runs (and folders of them), plus any ``run.py detect`` output directories: their
    detection section (adversaries/detection.py) follows the attacks'."""
    from adversaries.detection import DETECTION_FILE

    detections = [p for p in paths if (p / DETECTION_FILE).is_file()]
    paths = [p for p in paths if p not in detections]
    runs = find_runs(paths) if paths or not detections else []
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    victims: dict[str, dict[str, Any]] = {}
    for k, (victim, groups) in enumerate(group_runs(runs).items()):
        slug = _victim_slug(victim, k)
        while slug in victims:
            slug += "_"
        summaries = [summarise(g) for g in groups]
        entry: dict[str, Any] = {"checkpoint": victim, "attacks": summaries}
        entry["returns_png"] = _plot_returns(slug, groups, summaries, out, "return", "return")
        entry["win_rate_png"] = _plot_returns(slug, groups, summaries, out, "win_rate", "win rate")
        entry["curves_png"] = _plot_curves(slug, groups, out)
        entry["actions_png"] = _plot_histograms(slug, groups, summaries, out)
        gifs = []
        for g in groups:  # one clean and one attacked episode on the same seed, per attack
            run = next((r for r in g.runs if r.eval.get("gifs")), None)
            for rel in (run.eval.get("gifs") or []) if run else []:
                src = run.path / rel
                if src.is_file():
                    dst = f"{slug}_{g.name}_{Path(rel).name}"
                    shutil.copyfile(src, out / dst)
                    kind = "clean" if "clean" in Path(rel).name else "attacked"
                    gifs.append({"title": f"{g.label}: {kind} episode (seed {run.eval['episode_seeds'][0]})", "file": dst})
        entry["gifs"] = gifs
        victims[slug] = entry
    plane = _plot_stealth_plane(victims, out)
    report = {"runs": [str(r.path) for r in runs], "victims": victims, "stealth_png": plane}
    md = _markdown(victims, plane) if runs else "# Adversarial evaluation report\n"
    if detections:
        report["detection"], section = _detection_section(detections, out)
        md += section
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(md)
    return report


def _detection_section(dirs: list[Path], out: Path) -> tuple[list[dict[str, Any]], str]:
    """Attack detection by CLAM (``run.py detect``): AUC against t per attack, with the PNG."""
    from adversaries.detection import DETECTION_FILE, markdown

    entries, lines = [], ["", "## Attack detection (CLAM, a teammate's representation)", ""]
    for k, d in enumerate(dirs):
        result = json.loads((d / DETECTION_FILE).read_text())
        png = None
        if result.get("png") and (d / result["png"]).is_file():
            png = f"detection_{k}.png"
            shutil.copyfile(d / result["png"], out / png)
        entries.append({"dir": str(d), "victim": result["victim"], "attacks": result["attacks"], "png": png})
        lines += [f"Victim `{result['victim']}` (`{d}`). Detection ROC AUC of attacked against clean "
                  "episodes, by the k-NN distance of a teammate's representation to clean episodes; "
                  "mean [95% CI over seeds] (the raw-feature baseline in brackets).", "",
                  markdown(result)]
        if png:
            lines += [f"![detection AUC against t]({png})", ""]
    return entries, "\n".join(lines) + "\n"
