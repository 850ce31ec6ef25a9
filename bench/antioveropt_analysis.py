"""The analysis half of bench/bench_antioveropt.py: logs of the runs -> tables, one JSON, one figure.

Definitions (stated once, used for every table):
  gold curve      lab/gold (the gold judge on the iteration's own 64 rollouts), smoothed by a centred moving
                  average of SMOOTH iterations
  gold peak       the LAST iteration at which the smoothed gold is within DROP of its maximum: after it gold
                  never comes back (on a plateau followed by a fall, the end of the plateau, where hacking starts
                  to cost gold; the argmax of a noisy plateau would be an arbitrary point on it)
  over-optimised  the smoothed gold at the end lies more than DROP below its maximum
  sqrt(KL)        sqrt of objective/kl, the sequence KL to the SFT model (nats), smoothed the same way
  firing          minirlhf.monitor.first_firing at z in Z_FIRE: the signal, z-scored against its first 10
                  iterations, has stayed past z in its hacking direction for 3 iterations in a row; the firing
                  iteration is the third of them, where `--early_stop SIGNAL:z` stops (EarlyStop calls the same
                  function), so the lead and the gold if stopped are those of the stop a run would make
  lead time       gold-peak iteration - firing iteration (> 0: it warned before gold started to fall)
  false alarm     a signal that fires on a run that is not over-optimised
  gold if stopped the smoothed gold at the firing iteration (the final gold where it never fires), averaged
                  over all runs, over-optimised or not: the policy --early_stop SIGNAL:z would have handed back.
                  The yardsticks: no early stop (the final gold) and an oracle that stops at the gold maximum.
"""

import json
import math
import os
import platform
import statistics
import time

from minirlhf.monitor import SIGNALS, first_firing

SMOOTH, DROP, Z_FIRE = 11, 0.05, (2.0, 3.0)
AGGREGATES = ("single", "mean", "min", "uwo")


def smooth(xs, w=SMOOTH):
    h = w // 2
    return [sum(xs[max(0, i - h): i + h + 1]) / len(xs[max(0, i - h): i + h + 1]) for i in range(len(xs))]


def read_log(path):
    return [json.loads(line) for line in open(path)]


def summarise(stage, log):
    gold = smooth([r["lab/gold"] for r in log])
    kl = smooth([max(r["objective/kl"], 0.0) for r in log])
    top = max(gold)
    peak = max(i for i, g in enumerate(gold) if g >= top - DROP)
    last = log[-10:]
    row = {**stage.meta, "name": stage.name.split()[-1], "iters": len(log),
           "gold_start": gold[0], "gold_max": top, "gold_peak": gold[peak], "peak_iter": peak + 1, "gold_end": gold[-1],
           "sqrt_kl_at_peak": math.sqrt(kl[peak]), "sqrt_kl_end": math.sqrt(kl[-1]),
           "proxy_end": sum(r["objective/rm_score"] for r in last) / len(last),
           "kl_end": sum(r["objective/kl"] for r in last) / len(last),
           "seconds": log[-1]["time/elapsed"]}
    row["over_optimised"] = top - row["gold_end"] > DROP
    row["curve"] = {"iter": [r["step"] for r in log], "gold": gold, "sqrt_kl": [math.sqrt(k) for k in kl],
                    "proxy": smooth([r["objective/rm_score"] for r in log]), "seconds": [r["time/elapsed"] for r in log]}
    row["firing"] = {z: {} for z in Z_FIRE}
    for z in Z_FIRE:
        for signal, direction in SIGNALS.items():
            if all(signal in r for r in log):
                fired = first_firing([r[signal] for r in log], z, direction)
                row["firing"][z][signal] = None if fired is None else fired + 1  # 1-based iteration, as logged
    return row


def at(curve, key, x, value="gold"):
    """The smoothed `value` at the first point where curve[key] reaches x (None if it never does)."""
    for k, v in zip(curve[key], curve[value]):
        if k >= x:
            return v
    return None


def gold_if_stopped(r, fired):
    return r["curve"]["gold"][-1] if fired is None else r["curve"]["gold"][fired - 1]


def signal_table(rows, z):
    over = [r for r in rows if r["over_optimised"]]
    calm = [r for r in rows if not r["over_optimised"]]
    table = {"(no early stop)": {"gold_if_stopped": sum(r["gold_end"] for r in rows) / len(rows)},
             "(oracle: stop at the gold maximum)": {"gold_if_stopped": sum(r["gold_max"] for r in rows) / len(rows)}}
    for signal in SIGNALS:
        o = [r for r in over if signal in r["firing"][z]]
        c = [r for r in calm if signal in r["firing"][z]]
        if not o and not c:
            continue
        leads = {r["name"]: r["peak_iter"] - r["firing"][z][signal] for r in o if r["firing"][z][signal] is not None}
        table[signal] = {"over_runs": len(o), "fired": len(leads), "leads": leads,
                         "median_lead": sorted(leads.values())[len(leads) // 2] if leads else None,
                         "warned_before_peak": sum(x > 0 for x in leads.values()),
                         "calm_runs": len(c), "false_alarms": sum(r["firing"][z][signal] is not None for r in c)}
        if len(o) + len(c) == len(rows):  # logged by every run: comparable with the yardsticks
            table[signal]["gold_if_stopped"] = sum(gold_if_stopped(r, r["firing"][z][signal]) for r in rows) / len(rows)
    return table


def restate_signals(json_path, patience=3):
    """Results written before first_firing returned the iteration at which --early_stop stops (the last of the
    `patience` iterations in a row) held the first of them: move each stored firing to the last (+ patience - 1,
    exact, as both mark the same run of iterations), and redo the signal tables from the stored curves."""
    with open(json_path) as f:
        res = json.load(f)
    if res.get("firing_rule") == "last":
        return res
    for r in res["runs"]:
        r["firing"] = {z: {s: None if it is None else it + patience - 1 for s, it in fired.items()}
                       for z, fired in r["firing"].items()}
    res["signals"] = {z: signal_table(res["runs"], z) for z in res["signals"]}
    res["firing_rule"] = "last"
    res["note"] += (f"; firings restated {time.strftime('%Y-%m-%d')} to the iteration at which --early_stop stops "
                    "(restate_signals)")
    with open(json_path, "w") as f:
        json.dump(res, f, indent=1)
    return res


def dpo_points(out, stages):
    """DPO's one point per seed: held-out gold and KL to SFT (tax.py), seconds of its whole command."""
    from minirlhf.stages import marker_path
    path = f"{out}/runs/dpo_eval.json"
    if not os.path.exists(path):
        return []
    ev = json.load(open(path))
    points = []
    for st in stages:
        name = os.path.basename(st.resume_dir)
        if name in ev:
            marker = json.load(open(marker_path(f"{out}/stages/{name}", st.name)))
            points.append({**st.meta, "name": name, "gold": ev[name]["gold"], "kl": ev[name]["kl"],
                           "sqrt_kl": math.sqrt(max(ev[name]["kl"], 0.0)), "seconds": marker["seconds"],
                           "sft_gold": ev["SFT"]["gold"]})
    return points


def spread(xs):
    """'mean +- sd (min .. max)' over seeds; sd with n - 1."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": statistics.fmean(xs), "sd": sd, "min": min(xs), "max": max(xs), "n": len(xs)}


def algorithm_summary(compare, dpo):
    """Per algorithm, over seeds: mean, sd and range of each comparison column; and, against DPO's point of the
    same seed, each RL method's gold at DPO's seconds and at DPO's sqrt(KL)."""
    by_seed_dpo = {p["seed"]: p for p in dpo}
    summary = {}
    for algo in sorted({c["algo"] for c in compare}, key=("ppo", "rloo", "grpo").index):
        cs = [c for c in compare if c["algo"] == algo]
        for c in cs:
            p = by_seed_dpo.get(c["seed"])
            if p:
                c["gold_at_dpo_time"] = at(c["curve"], "seconds", p["seconds"])
                c["gold_at_dpo_kl"] = at(c["curve"], "sqrt_kl", p["sqrt_kl"])
        summary[algo] = {k: spread([c.get(k) for c in cs]) for k in (
            "gold_start", "gold_max", "gold_gain", "gold_max_within_equal_time", "gold_at_equal_time", "gold_at_equal_kl",
            "sqrt_kl_at_peak", "sec_per_iter", "seconds_to_gold_max", "gold_at_dpo_time", "gold_at_dpo_kl")}
        summary[algo]["seeds"] = sorted(c["seed"] for c in cs)
    if dpo:
        summary["dpo"] = {"gold": spread([p["gold"] for p in dpo]), "sft_gold": spread([p["sft_gold"] for p in dpo]),
                          "gold_gain": spread([p["gold"] - p["sft_gold"] for p in dpo]),
                          "sqrt_kl": spread([p["sqrt_kl"] for p in dpo]), "seconds": spread([p["seconds"] for p in dpo]),
                          "seeds": sorted(p["seed"] for p in dpo)}
    return summary


def ensemble_summary(rows):
    """PPO at kl_coef 0 against one reward model and each aggregate of the ensemble, per label set, over seeds:
    gold at start / max / end, where gold peaked, and gold at equal sqrt(KL) (per seed, the smallest final sqrt(KL)
    of that seed's runs, so every aggregate is read at a KL it reached)."""
    summary = {}
    for noise in ("flip", "clean"):
        runs = [r for r in rows if r["algo"] == "ppo" and r["noise"] == noise and r["kl_coef"] == 0.0]
        for seed in {r["seed"] for r in runs}:
            mine = [r for r in runs if r["seed"] == seed]
            d = min(r["curve"]["sqrt_kl"][-1] for r in mine)
            for r in mine:
                r["equal_sqrt_kl"], r["gold_at_equal_kl"] = d, at(r["curve"], "sqrt_kl", d)
        for agg in AGGREGATES:
            mine = [r for r in runs if r["agg"] == agg]
            if mine:
                summary[f"{noise}/{agg}"] = {"seeds": sorted(r["seed"] for r in mine), **{k: spread([r[k] for r in mine]) for k in (
                    "gold_start", "gold_max", "gold_end", "sqrt_kl_at_peak", "sqrt_kl_end", "gold_at_equal_kl", "seconds")}}
    return summary


def analyse(out, stages, json_path, plot_path, dpo=(), note=""):
    rows = []
    for st in stages:
        path = f"{st.resume_dir}/log.jsonl"
        if os.path.exists(path) and len(read_log(path)) >= 20:
            rows.append(summarise(st, read_log(path)))
    print(f"{'run':<34}{'iters':>6}{'gold0':>7}{'max':>7}{'@it':>5}{'end':>7}{'sqrtKL*':>8}{'sqrtKL':>7}{'proxy':>7}{'sec':>6}  over")
    for r in rows:
        print(f"{r['name']:<34}{r['iters']:>6}{r['gold_start']:>7.3f}{r['gold_max']:>7.3f}{r['peak_iter']:>5}{r['gold_end']:>7.3f}"
              f"{r['sqrt_kl_at_peak']:>8.2f}{r['sqrt_kl_end']:>7.2f}{r['proxy_end']:>7.2f}{r['seconds']:>6.0f}  {r['over_optimised']}")
    # critic-free against PPO on the noisy labels: equal wall time and equal KL, per seed
    algos = {}
    for r in rows:
        if r["noise"] == "flip" and r["agg"] == "single" and r["kl_coef"] == 0.0:
            algos.setdefault(r["seed"], {})[r["algo"]] = r
    compare = []
    for seed, by in sorted(algos.items()):
        if len(by) < 2:
            continue
        t = min(r["curve"]["seconds"][-1] for r in by.values())
        k = min(r["curve"]["sqrt_kl"][-1] for r in by.values())
        for algo, r in by.items():
            compare.append({"seed": seed, "algo": algo, "equal_time_s": t, "gold_at_equal_time": at(r["curve"], "seconds", t),
                            "proxy_at_equal_time": at(r["curve"], "seconds", t, "proxy"),
                            "sqrt_kl_at_equal_time": at(r["curve"], "seconds", t, "sqrt_kl"),
                            "equal_sqrt_kl": k, "gold_at_equal_kl": at(r["curve"], "sqrt_kl", k),
                            "gold_start": r["gold_start"], "gold_max": r["gold_max"], "gold_gain": r["gold_max"] - r["gold_start"],
                            "sqrt_kl_at_peak": r["sqrt_kl_at_peak"], "sec_per_iter": r["seconds"] / r["iters"], "curve": r["curve"],
                            "gold_max_within_equal_time": max(g for g, sec in zip(r["curve"]["gold"], r["curve"]["seconds"]) if sec <= t),
                            "seconds_to_gold_max": r["curve"]["seconds"][r["curve"]["gold"].index(r["gold_max"])]})
    for c in compare:
        print(f"seed {c['seed']} {c['algo']:<5} gold@{c['equal_time_s']:.0f}s {c['gold_at_equal_time']:.3f} "
              f"(sqrtKL {c['sqrt_kl_at_equal_time']:.2f})  gold@sqrtKL {c['equal_sqrt_kl']:.2f} {c['gold_at_equal_kl']:.3f}  "
              f"max {c['gold_max']:.3f}  {c['sec_per_iter']:.2f} s/iter")
    points = dpo_points(out, dpo)
    summary = algorithm_summary(compare, points)
    for c in compare:
        del c["curve"]  # in runs already
    for p in points:
        print(f"seed {p['seed']} dpo   held-out gold {p['gold']:.3f} (SFT {p['sft_gold']:.3f})  sqrtKL {p['sqrt_kl']:.2f}  {p['seconds']:.0f} s")
    for algo, v in summary.items():
        print(f"{algo:<5} over seeds {v['seeds']}: " + "  ".join(
            f"{k} {x['mean']:.3f}+-{x['sd']:.3f}" for k, x in v.items() if isinstance(x, dict)))
    ensembles = ensemble_summary(rows)
    for key, v in ensembles.items():
        print(f"{key:<13} seeds {v['seeds']}: " + "  ".join(
            f"{k} {x['mean']:.3f}+-{x['sd']:.3f}" for k, x in v.items() if isinstance(x, dict)))
    signals = {z: signal_table(rows, z) for z in Z_FIRE}
    for z in Z_FIRE:
        print(f"early warning at z = {z}: lead = gold-peak iteration - firing iteration (> 0 warns before the fall)")
        for s, v in signals[z].items():
            if "fired" not in v:
                print(f"  {s:<26} gold if stopped {v['gold_if_stopped']:.3f}")
                continue
            print(f"  {s:<26} gold if stopped {v.get('gold_if_stopped', float('nan')):.3f}; fired {v['fired']}/{v['over_runs']} over-optimised runs, leads {v['leads']}, before the "
                  f"peak {v['warned_before_peak']}; false alarms {v['false_alarms']}/{v['calm_runs']}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
              "note": note, "smooth": SMOOTH, "drop": DROP, "firing_rule": "last",
              "z_fire": Z_FIRE, "runs": rows, "algorithms": compare, "dpo": points, "algorithm_summary": summary,
              "ensemble_summary": ensembles,
              "signals": signals}
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, plot_path, points)
    print(f"wrote {json_path} and {plot_path}")
    return result


def plot(rows, path, dpo=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colours = {"single": "k", "mean": "tab:blue", "min": "tab:red", "uwo": "tab:green",
               "ppo": "k", "rloo": "tab:orange", "grpo": "tab:purple"}
    for r in rows:
        c = r["curve"]
        if r["algo"] == "ppo" and r["seed"] == 0:
            style = "-" if r["noise"] == "flip" else "--"
            colour = colours[r["agg"]] if r["kl_coef"] == 0.0 else "grey"
            axes[0].plot(c["sqrt_kl"], c["gold"], style, color=colour, label=f"{r['agg']}, {r['noise']}, kl_coef {r['kl_coef']}")
        if r["noise"] == "flip" and r["agg"] == "single" and r["kl_coef"] == 0.0:
            lab = r["algo"] if r["seed"] == 0 else None
            axes[1].plot(c["sqrt_kl"], c["gold"], color=colours[r["algo"]], label=lab, alpha=0.8)
            axes[2].plot(c["seconds"], c["gold"], color=colours[r["algo"]], label=lab, alpha=0.8)
    for i, p in enumerate(dpo):  # one point per seed; its gold is on held-out prompts (the runs': their rollouts)
        lab = "DPO (held-out gold)" if i == 0 else None
        axes[1].plot([p["sqrt_kl"]], [p["gold"]], "x", color="tab:cyan", markersize=9, mew=2, label=lab)
        axes[2].plot([p["seconds"]], [p["gold"]], "x", color="tab:cyan", markersize=9, mew=2, label=lab)
    axes[0].set_title("PPO, seed 0: one reward model vs ensembles of 4\n(solid: 25 % flipped labels, dashed: clean)")
    axes[1].set_title("PPO vs RLOO vs GRPO, 25 % flipped labels")
    axes[2].set_title("the same against wall time (2 runs at a time on 2 cores)")
    for ax, xl in zip(axes, ("sqrt(KL to SFT)  (nats^0.5)", "sqrt(KL to SFT)  (nats^0.5)", "seconds")):
        ax.set_xlabel(xl)
        ax.set_ylabel("gold (smoothed, 11 iterations)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bon_study(out, json_path, ns=(1, 2, 4, 8, 16, 32, 64), n_per_family=20, seed=0, noises=("flip", "clean")):
    """Best-of-n against one reward model and the ensembles' mean / min / uwo, clean and noisy labels.

    One set of max(ns) SFT samples per held-out prompt (minirlhf.lab.bestofn), each scored once by every
    member (EnsembleScorer, no_eos_score for an unfinished response as in PPO); the aggregates are taken on
    those scores (minirlhf.ensemble.aggregate), so every curve ranks the same samples. Curves already in
    json_path are kept (the same seed draws the same samples), so the clean labels can come later."""
    import torch

    from minirlhf.checkpoint import load_model
    from bench.ensembles_analysis import EnsembleScorer
    from minirlhf.ensemble import aggregate
    from minirlhf.lab.bestofn import bon_curve, sample_groups, score_groups
    from minirlhf.lab.world import eval_tasks
    model, tok, _ = load_model(f"{out}/sft/ckpt.pt", expect="gpt")
    prompts = [t.prompt for t in eval_tasks(seed, n_per_family)]
    groups = sample_groups(model, tok, prompts, max(ns), temperature=0.7, max_new_tokens=32, batch_size=256, seed=seed)
    result = {"n_prompts": len(prompts), "n_samples": max(ns), "seed": seed, "curves": {}}
    if os.path.exists(json_path):
        result["curves"] = json.load(open(json_path))["curves"]
    for noise in noises:
        if not all(os.path.exists(f"{out}/rm_{noise}{s}/ckpt.pt") for s in range(4)):
            print(f"best-of-n: skipping {noise} (its four reward models are not all trained)")
            continue
        members = [torch.tensor(score_groups(EnsembleScorer(load_model(f"{out}/rm_{noise}{s}/ckpt.pt", expect="scalar")[0], tok), groups))
                   for s in range(4)]  # (prompts, N) each
        scores = torch.stack(members)  # (k, prompts, N)
        for agg in ("single", "mean", "min", "uwo"):
            proxy = scores[0] if agg == "single" else aggregate(scores, agg, 0.5)
            rows = bon_curve(groups, proxy.tolist(), list(ns))
            result["curves"][f"{noise}/{agg}"] = rows
            print(f"best-of-n {noise:<5} {agg:<6} " + "  ".join(f"n={r['n']} {r['gold']:.3f}" for r in rows))
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def markdown(json_path, bon_path=None):
    """The README's tables from the results JSON (python -c 'from bench.antioveropt_analysis import markdown; ...')."""
    res = json.load(open(json_path))
    out = ["| run | algorithm | labels | reward | kl_coef | seed | gold at start | gold max | gold at end | sqrt(KL) at end "
           "| proxy at end | seconds | over-optimised |", "|" + "---|" * 13]
    for r in res["runs"]:
        out.append(f"| {r['name']} | {r['algo']} | {r['noise']} | {r['agg']} | {r['kl_coef']} | {r['seed']} | {r['gold_start']:.3f} "
                   f"| {r['gold_max']:.3f} | {r['gold_end']:.3f} | {r['sqrt_kl_end']:.2f} | {r['proxy_end']:.2f} "
                   f"| {r['seconds']:.0f} | {'yes' if r['over_optimised'] else 'no'} |")
    out += ["", "| seed | algorithm | gold max (seconds to it) | best gold within equal time | gold at equal time (s) "
            "| sqrt(KL) then | gold at equal sqrt(KL) | s / iteration |", "|" + "---|" * 8]
    for c in res["algorithms"]:
        out.append(f"| {c['seed']} | {c['algo']} | {c['gold_max']:.3f} ({c['seconds_to_gold_max']:.0f}) | {c['gold_max_within_equal_time']:.3f} "
                   f"| {c['gold_at_equal_time']:.3f} ({c['equal_time_s']:.0f}) "
                   f"| {c['sqrt_kl_at_equal_time']:.2f} | {c['gold_at_equal_kl']:.3f} (at {c['equal_sqrt_kl']:.2f}) | {c['sec_per_iter']:.1f} |")
    pm = lambda x, f=".3f": "-" if not x else f"{x['mean']:{f}} ± {x['sd']:{f}}"  # noqa: E731
    ensembles = res.get("ensemble_summary", {})
    if ensembles:
        out += ["", "PPO at kl_coef 0, one reward model or an ensemble of 4 (mean ± sd over seeds):", "",
                "| labels / reward | seeds | gold at start | gold max | gold at end | sqrt(KL) at the peak | sqrt(KL) at end "
                "| gold at equal sqrt(KL) |", "|" + "---|" * 8]
        for key, v in ensembles.items():
            out.append(f"| {key} | {v['seeds']} | {pm(v['gold_start'])} | {pm(v['gold_max'])} | {pm(v['gold_end'])} "
                       f"| {pm(v['sqrt_kl_at_peak'], '.2f')} | {pm(v['sqrt_kl_end'], '.2f')} | {pm(v['gold_at_equal_kl'])} |")
    summary = res.get("algorithm_summary", {})
    if summary:
        out += ["", "Over seeds (mean ± sd): gold from the runs' own rollouts (training prompts); DPO's from the "
                "held-out prompts, beside the SFT's there.", "",
                "| algorithm | seeds | gold at start | gold max | gain at max | sqrt(KL) at the peak | gold at equal sqrt(KL) "
                "| gold at DPO's seconds | gold at DPO's sqrt(KL) | s / iteration |", "|" + "---|" * 10]
        for algo, v in summary.items():
            if algo == "dpo":
                out.append(f"| DPO (200 steps) | {v['seeds']} | {pm(v['sft_gold'])} (SFT, held-out) | {pm(v['gold'])} (held-out) "
                           f"| {pm(v['gold_gain'])} | {pm(v['sqrt_kl'], '.2f')} | | | | {pm(v['seconds'], '.0f')} s in all |")
                continue
            out.append(f"| {algo} | {v['seeds']} | {pm(v['gold_start'])} | {pm(v['gold_max'])} | {pm(v['gold_gain'])} "
                       f"| {pm(v['sqrt_kl_at_peak'], '.2f')} | {pm(v['gold_at_equal_kl'])} | {pm(v['gold_at_dpo_time'])} "
                       f"| {pm(v['gold_at_dpo_kl'])} | {pm(v['sec_per_iter'], '.2f')} |")
    for z, table in res["signals"].items():
        out += ["", f"Early warning, firing at z = {z}:", "",
                "| signal | fired in over-optimised runs | lead (iterations; > 0 = before the gold peak) | false alarms "
                "| gold if stopped |", "|" + "---|" * 5]
        for s, v in table.items():
            g = f"{v['gold_if_stopped']:.3f}" if "gold_if_stopped" in v else "-"
            if "fired" not in v:
                out.append(f"| {s} | | | | {g} |")
                continue
            leads = ", ".join(f"{x:+d}" for x in v["leads"].values()) or "-"
            out.append(f"| `{s}` | {v['fired']}/{v['over_runs']} | {leads} | {v['false_alarms']}/{v['calm_runs']} | {g} |")
    if bon_path and os.path.exists(bon_path):
        bon = json.load(open(bon_path))
        ns = [r["n"] for r in next(iter(bon["curves"].values()))]
        out += ["", f"Best-of-n gold ({bon['n_prompts']} held-out prompts, {bon['n_samples']} SFT samples each, seed {bon['seed']}):", "",
                "| labels / reward | " + " | ".join(f"n={n}" for n in ns) + " |", "|" + "---|" * (len(ns) + 1)]
        for key, rows in bon["curves"].items():
            out.append(f"| {key} | " + " | ".join(f"{r['gold']:.3f}" for r in rows) + " |")
        out.append("| KL analytic (nats) | " + " | ".join(f"{r['kl_analytic']:.2f}" for r in rows) + " |")
    return "\n".join(out)
