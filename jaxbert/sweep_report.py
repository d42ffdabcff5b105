"""A sweep's results: per-trial and per-setting tables, a plot, and the best trial.

A setting is a trial's overrides without its seed; its seeds are summarised by
their median (and min, max). The best setting has the best median; the best
trial is that setting's best seed, whose workdir W/best links to.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import numpy as np

from jaxbert.checkpoint import write_json_atomic

SEED_KEY = "train.seed"


def _rank(value: float, higher_is_better: bool) -> float:
  """Larger is better; a NaN (a diverged trial) ranks last."""
  if math.isnan(value):
    return -math.inf
  return value if higher_is_better else -value


def summarize_settings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per setting, in first-seen order: its trials and their median, min, max."""
  settings: dict[str, dict[str, Any]] = {}
  for r in records:
    setting = {k: v for k, v in r["overrides"].items() if k != SEED_KEY}
    entry = settings.setdefault(json.dumps(setting, sort_keys=True, default=str),
                                {"overrides": setting, "trials": [], "values": []})
    entry["trials"].append(r["id"])
    entry["values"].append(r["value"])
  higher = records[0]["higher_is_better"] if records else True
  for entry in settings.values():
    values = np.asarray(entry["values"], np.float64)
    entry.update(median=float(np.median(values)), min=float(values.min()),
                 max=float(values.max()), seeds=len(values),
                 # NaNs rank below every number, also inside the median.
                 rank=float(np.median([_rank(v, higher) for v in values])))
  return list(settings.values())


def select_best(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(best setting by median over seeds, best trial within it)."""
  settings = summarize_settings(records)
  best_setting = max(settings, key=lambda s: s["rank"])  # first of equals wins
  by_id = {r["id"]: r for r in records}
  trials = [by_id[t] for t in best_setting["trials"]]
  best_trial = max(trials, key=lambda r: _rank(r["value"], r["higher_is_better"]))
  return best_setting, best_trial


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return "" if v is None else str(v)


def _overrides_text(overrides: dict[str, Any]) -> str:
  return ", ".join(f"{k}={_fmt(v)}" for k, v in overrides.items()) or "(no swept keys)"


def write(workdir: str, records: list[dict[str, Any]], swept: list[str], *,
          task: str = "") -> dict[str, Any]:
  """Writes results.csv, results.md, plot.png, best.json and the W/best link; returns best.json.

  Diverged trials are listed (status `diverged`, objective NaN) but never chosen as best;
  with no other trial there is no best yet ({} is returned, no best.json or W/best).
  """
  finished = [r for r in records if status(r) != "diverged"]
  if not finished:
    _write_csv(os.path.join(workdir, "results.csv"), records, swept, None)
    _write_markdown(os.path.join(workdir, "results.md"), records, swept, None, task)
    return {}
  best_setting, best_trial = select_best(finished)
  metric, higher = best_trial["metric"], best_trial["higher_is_better"]
  best = {"trial": best_trial["id"], "workdir": os.path.join(workdir, "trials", best_trial["id"]),
          "metric": metric, "value": best_trial["value"], "higher_is_better": higher,
          "overrides": best_trial["overrides"], "setting": best_setting["overrides"],
          "setting_median": best_setting["median"], "setting_min": best_setting["min"],
          "setting_max": best_setting["max"], "setting_seeds": best_setting["seeds"],
          "trials_finished": len(finished), "trials_diverged": len(records) - len(finished)}
  _write_csv(os.path.join(workdir, "results.csv"), records, swept, best_trial["id"])
  _write_markdown(os.path.join(workdir, "results.md"), records, swept, best, task)
  plot(os.path.join(workdir, "plot.png"), records, swept, best_trial["id"])
  write_json_atomic(os.path.join(workdir, "best.json"), best)
  link, tmp = os.path.join(workdir, "best"), os.path.join(workdir, ".best.tmp")
  if os.path.lexists(tmp):
    os.remove(tmp)
  os.symlink(os.path.join("trials", best_trial["id"]), tmp)
  os.replace(tmp, link)  # atomic: W/best always names a finished trial
  return best


def status(record: dict[str, Any]) -> str:
  """finished, stopped_early or diverged (records written before statuses: finished)."""
  return record.get("status", "finished")


def _objective(records) -> str:
  """The objective's name (a trial that diverged before its first evaluation has none)."""
  return next((r["metric"] for r in records if r["metric"]), "")


def _metric_names(records) -> list[str]:
  first = _objective(records)
  return [first] + sorted({k for r in records for k in r["metrics"]} - {first})


def _write_csv(path, records, swept, best_id) -> None:
  settings = {t: s for s in summarize_settings(records) for t in s["trials"]}
  names = _metric_names(records)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["trial", *swept, *names, "setting_median", "status", "steps", "stopped_early",
                "mode", "wall_s", "best"])
    for r in records:
      w.writerow([r["id"], *(r["overrides"].get(k) for k in swept),
                  *(r["metrics"].get(m) for m in names), settings[r["id"]]["median"],
                  status(r), r["steps"], r["stopped_early"], r["mode"], r["wall_s"],
                  "best" if r["id"] == best_id else ""])
  os.replace(tmp, path)


def _write_markdown(path, records, swept, best, task) -> None:
  metric, higher = _objective(records), records[0]["higher_is_better"]
  setting_keys = [k for k in swept if k != SEED_KEY]
  names = _metric_names(records)
  diverged = [r["id"] for r in records if status(r) == "diverged"]
  lines = [f"# Sweep results{': ' + task if task else ''}", "",
           f"Objective: validation `{metric}` ({'higher' if higher else 'lower'} is better); "
           "a setting's seeds are summarised by their median.", ""]
  if diverged:
    lines += [f"- Diverged (stopped unsaved, never best): {', '.join(f'`{d}`' for d in diverged)}"]
  if best is None:
    best = {"setting": None, "trial": None}
    lines += ["- No trial has finished without diverging: no best yet"]
  else:
    lines += [
           f"- Best setting: {_overrides_text(best['setting'])}: median {_fmt(best['setting_median'])}"
           f" (min {_fmt(best['setting_min'])}, max {_fmt(best['setting_max'])}, "
           f"{best['setting_seeds']} seed(s))",
           f"- Best trial: `{best['trial']}`, {metric} {_fmt(best['value'])}; its checkpoint: "
           f"`jaxbert export-hf {os.path.join(os.path.dirname(path), 'best')} --out DIR`",
           f"- Trials finished: {len(records) - len(diverged)}"]
  lines += ["", "## Settings", "",
           "| | " + " | ".join(setting_keys + ["seeds", f"median {metric}", "min", "max"]) + " |",
           "|---" * (len(setting_keys) + 5) + "|"]
  for s in summarize_settings(records):
    mark = "**best**" if s["overrides"] == best["setting"] else ""
    lines.append(f"| {mark} | " + " | ".join(
        [_fmt(s["overrides"].get(k)) for k in setting_keys]
        + [str(s["seeds"]), _fmt(s["median"]), _fmt(s["min"]), _fmt(s["max"])]) + " |")
  lines += ["", "## Trials", "",
            "| | trial | " + " | ".join(swept + names + ["status", "steps", "stopped early", "mode"])
            + " |", "|---" * (len(swept) + len(names) + 6) + "|"]
  for r in records:
    mark = "**best**" if r["id"] == best["trial"] else ""
    lines.append(f"| {mark} | `{r['id']}` | " + " | ".join(
        [_fmt(r["overrides"].get(k)) for k in swept] + [_fmt(r["metrics"].get(m)) for m in names]
        + [status(r), _fmt(r["steps"]), "yes" if r["stopped_early"] else "", r["mode"]]) + " |")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, path)


def plot(path: str, records: list[dict[str, Any]], swept: list[str], best_id: str) -> None:
  """The objective against each swept key (seeds pooled): trials, medians, the best trial."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  keys = [k for k in swept if k != SEED_KEY] or list(swept)
  metric = records[0]["metric"]
  fig = Figure(figsize=(4.8 * len(keys), 3.8), layout="constrained")
  axes = fig.subplots(1, len(keys), squeeze=False)[0]
  ys = np.asarray([r["value"] for r in records], np.float64)
  for ax, key in zip(axes, keys):
    xs = [r["overrides"].get(key) for r in records]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    levels = sorted(set(xs)) if numeric else list(dict.fromkeys(map(str, xs)))
    pos = np.asarray(xs if numeric else [levels.index(str(x)) for x in xs], np.float64)
    level_pos = np.asarray(levels if numeric else range(len(levels)), np.float64)
    medians = [float(np.median(ys[pos == p])) for p in level_pos]
    ax.scatter(pos, ys, s=22, alpha=0.6, color="C0", label="trial")
    ax.plot(level_pos, medians, "-o", color="C1", label="median over trials")
    b = next(i for i, r in enumerate(records) if r["id"] == best_id)
    ax.scatter([pos[b]], [ys[b]], marker="*", s=220, color="C3", zorder=3, label="best trial")
    if numeric and level_pos.min() > 0 and level_pos.max() >= 3 * level_pos.min():
      ax.set_xscale("log")
    # Ticks at the swept values only (at most 8), written short (3e-5): matplotlib's own
    # ticks for learning rates are long decimals that overlap one another.
    shown = level_pos[np.unique(np.linspace(0, len(level_pos) - 1, 8).round().astype(int))]
    names = [tick_label(levels[int(np.flatnonzero(level_pos == p)[0])]) for p in shown]
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xticks(shown, names, rotation=30 if sum(map(len, names)) > 30 else 0)
    ax.set_xlabel(key)
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize="small")
  fig.savefig(path, dpi=100)


def tick_label(v) -> str:
  """A swept value as a short axis label: 3e-05 -> 3e-5, 0.0001 -> 1e-4, 0.1 -> 0.1."""
  if not isinstance(v, float):
    return str(v)
  if v == 0 or 1e-2 <= abs(v) < 1e4:
    return f"{v:.3g}"
  mantissa, exponent = f"{v:.2e}".split("e")
  return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
