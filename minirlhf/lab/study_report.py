"""The study's numbers, report and figures, from the outputs of study.py's stages (read only; cheap; rerun freely).

    write_report(out_dir, preset, P, LEVERS, LEFT_OUT) -> [study.json, report.md, overopt.png, levers.png]

Over-optimisation, per seed (each seed its own labels, reward model, best-of-n samples and PPO runs; one SFT
model). R is the gold gained over the SFT policy. Best-of-n: on the held-out prompts, from N SFT samples per
prompt, R = gold minus best-of-1's, at d = sqrt(analytic KL) (as in Gao et al.), the measured-KL fit beside it.
PPO: every few iterations the policy was kept (study.py snapshots) and judged on the held-out prompts, k samples
each (tax.py: gold, KL to SFT, proxy), beside the SFT model judged the same way (iteration 0, the paired start):
R = gold minus iteration 0's, at d = sqrt(held-out KL). A run without kept policies (an older study) falls back to
its log: one line per iteration with the KL and gold of that iteration's own rollouts (training prompts, one
batch: noisy), averaged in bins of `BIN` iterations, with the SFT's best-of-1 gold as the start, and a second
fit that also fits the start r0 (overopt.fit(intercept=True)). Each run is fitted alone, and all kl_coefs of one
reward model together (Gao et al.: the KL penalty does not move the gold-vs-KL frontier). Over seeds: every
fitted and measured number as mean ± sd (study.json: overopt_seeds, overopt_summary); the first seed's entry is
also study.json's overopt (the single-seed report's tables).
"""

import json
import math
import os
import statistics

from minirlhf.lab.overopt import fit, measured_peak, predict

BIN = 5  # PPO iterations averaged per point
TAX_KEYS = [("gold", "gold"), ("kl", "KL to SFT"), ("diversity", "distinct / k"), ("over_refusal_rate", "over-refusal"),
            ("demo_logprob", "demo log-lik / token"), ("filler_rate", "filler")]


def _load(path):
    with open(path) as f:
        return json.load(f)


def _ppo_points(log_path):
    with open(log_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "lab/gold" in r and "objective/kl" in r]
    pts = []
    for i in range(0, len(rows), BIN):
        chunk = rows[i:i + BIN]
        mean = lambda key: statistics.fmean(r[key] for r in chunk)  # noqa: E731
        pts.append({"iter": chunk[-1].get("step", i + len(chunk)), "kl": mean("objective/kl"),
                    "gold": mean("lab/gold"), "proxy": mean("objective/rm_score")})
    return pts


def _safe_fit(form, ds, rs, intercept=False):
    try:
        return fit(form, ds, rs, intercept)
    except ValueError as e:
        return {"error": str(e)}


def _heldout_points(path):
    """Kept policies judged on held-out prompts (tax.py JSON {itN: metrics}) -> points by iteration, it0 = SFT."""
    ev = _load(path)
    pts = [{"iter": int(name[2:]), "kl": max(m["kl"], 0.0), "gold": m["gold"], "proxy": m.get("rm_score")}
           for name, m in ev.items() if name.startswith("it")]
    return sorted(pts, key=lambda p: p["iter"])


def overopt_entry(out, P, rm, seed):
    """Best-of-n and the long PPO runs of one reward model and seed: curves, Gao fits, measured peaks."""
    bon_path = f"{out}/bon/{rm}_s{seed}.json"
    if not os.path.exists(bon_path):
        return None
    curve = _load(bon_path)["curve"]
    g0 = curve[0]["gold"] if curve[0]["n"] == 1 else float("nan")
    ds = [math.sqrt(r["kl_analytic"]) for r in curve]
    dm = [math.sqrt(max(r["kl_measured"], 0)) for r in curve]
    gains = [r["gold"] - g0 for r in curve]
    kl_best, g_best = measured_peak([r["kl_analytic"] for r in curve], [r["gold"] for r in curve])
    entry = {"seed": seed, "sft_gold": g0, "bon": {"curve": curve, "fit": _safe_fit("bon", ds, gains),
                                                   "fit_measured_kl": _safe_fit("bon", dm, gains),
                                                   "measured_peak": {"kl": kl_best, "gold": g_best,
                                                                     "n": curve[[r["gold"] for r in curve].index(g_best)]["n"]}},
             "ppo": {}}
    pooled_d, pooled_r = [], []
    for r2, kl_coef in P["oo_runs"]:
        name = f"{rm}_s{seed}_kl{kl_coef:g}_long"
        held_out, log = f"{out}/eval/oo_{name}.json", f"{out}/ppo/{name}/log.jsonl"
        kept = "oo_every" in P  # a study whose long runs keep policies (study.py snapshots) waits for their judging
        if r2 != rm or not (os.path.exists(held_out) or (os.path.exists(log) and not kept)):
            continue  # not run, or not finished
        if os.path.exists(held_out):
            pts, source = _heldout_points(held_out), "held-out"
            start = pts[0]["gold"] if pts and pts[0]["iter"] == 0 else g0
        else:
            pts, source, start = _ppo_points(log), "training rollouts", g0
        d = [math.sqrt(max(p["kl"], 0)) for p in pts]
        r = [p["gold"] for p in pts]
        keep = [i for i, x in enumerate(d) if x > 0]
        pooled_d += [d[i] for i in keep]
        pooled_r += [r[i] - start for i in keep]
        kl_best, g_best = measured_peak([p["kl"] for p in pts], [p["gold"] for p in pts])
        fitted = _safe_fit("rl", [d[i] for i in keep], [r[i] - start for i in keep])
        if "alpha" in fitted:
            fitted["start"] = start
        entry["ppo"][f"{kl_coef:g}"] = {"points": pts, "source": source, "start_gold": start, "fit": fitted,
                                        "fit_free_start": _safe_fit("rl", [d[i] for i in keep], [r[i] for i in keep], True),
                                        "measured_peak": {"kl": kl_best, "gold": g_best},
                                        "gold_falls": pts[-1]["gold"] < g_best - 0.05 if pts else None,
                                        "final": pts[-1] if pts else None}
    if len(pooled_d) >= 2:
        entry["ppo_pooled_fit"] = _safe_fit("rl", pooled_d, pooled_r)
        if "alpha" in entry["ppo_pooled_fit"]:  # the runs of one seed share their start (the SFT, judged alike)
            entry["ppo_pooled_fit"]["start"] = start
    return entry


def overoptimisation(out, P):
    """{rm: {seed: entry}} over the preset's seeds (overopt_entry)."""
    res = {}
    for rm in ("clean", "flip25"):
        per_seed = {str(s): e for s in P["seeds"] if (e := overopt_entry(out, P, rm, s)) is not None}
        if per_seed:
            res[rm] = per_seed
    return res


FIT_KEYS = ("alpha", "beta", "r2", "kl_peak")


def overopt_summary(by_seed):
    """Mean ± sd over seeds of each fit's coefficients, R^2 and peak, and of the measured best and last gold."""
    out = {}
    for rm, seeds in by_seed.items():
        entries = list(seeds.values())
        rows = {"best-of-n": [e["bon"]["fit"] for e in entries]}
        summary = {"seeds": [e["seed"] for e in entries]}
        for kl in entries[0]["ppo"]:
            rows[f"PPO beta {kl}"] = [e["ppo"][kl]["fit"] for e in entries if kl in e["ppo"]]
        for name, fits in rows.items():
            fits = [f for f in fits if "alpha" in f]
            summary[name] = {k: _spread([f[k] for f in fits if math.isfinite(f[k])]) for k in FIT_KEYS}
            summary[name]["n_fits"] = len(fits)
        summary["best-of-n"]["measured_best_gold"] = _spread([e["bon"]["measured_peak"]["gold"] for e in entries])
        for kl in entries[0]["ppo"]:
            runs = [e["ppo"][kl] for e in entries if kl in e["ppo"]]
            summary[f"PPO beta {kl}"].update(
                measured_best_gold=_spread([r["measured_peak"]["gold"] for r in runs]),
                final_gold=_spread([r["final"]["gold"] for r in runs]),
                final_kl=_spread([r["final"]["kl"] for r in runs]),
                gold_falls=sum(bool(r["gold_falls"]) for r in runs))
        out[rm] = summary
    return out


def _spread(xs):
    mean, sd = _stats(xs)
    return {"mean": mean, "sd": sd, "n": len(xs)}


def _stats(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def levers(out, P, LEVERS, LEFT_OUT):
    rows = []
    for lever, setting, rm, kl, expect in LEVERS:
        per_seed = []
        for s in P["seeds"]:
            path = f"{out}/eval/{rm}_s{s}.json"
            if not os.path.exists(path):
                continue
            ev = _load(path)
            m = ev.get(f"{rm}_s{s}_kl{kl:g}")
            if m:
                per_seed.append({"seed": s, "rm_accuracy": ev.get("rm", {}).get("rm_accuracy"), "gold": m["gold"],
                                 "gold_affected": m[f"gold/{LEFT_OUT}"], "kl": m["kl"], "filler": m["filler_rate"]})
        row = {"lever": lever, "setting": setting, "rm": rm, "kl_coef": kl, "expect": expect, "seeds": per_seed}
        for key in ("rm_accuracy", "gold", "gold_affected", "kl", "filler"):
            row[key], row[key + "_std"] = _stats([r[key] for r in per_seed])
        rows.append(row)
    base = rows[0]
    for row in rows[1:]:
        if base["gold"] is None or row["gold"] is None:
            row["verdict"] = "not run"
            continue
        n = max(len(row["seeds"]), 1)
        noise = math.sqrt((row["gold_std"] ** 2 + base["gold_std"] ** 2) / n)
        key = "gold_affected" if row["expect"] == "down on the family" else "gold"
        delta = row[key] - base[key]
        row["delta"] = delta
        if row["expect"] == "closer to SFT":
            moved = row["kl"] < base["kl"]
            row["verdict"] = (f"yes: KL {row['kl']:.2f} vs {base['kl']:.2f}" if moved else "no: KL not lower") + \
                f", gold {delta:+.3f}"
        else:
            ok = delta < 0
            within = abs(delta) <= noise
            row["verdict"] = ("yes" if ok else "no") + (" (within seed spread)" if within and n > 1 else "") + \
                f": {delta:+.3f}" + (" (1 seed)" if n == 1 else "")
    return rows


def tax(out, P):
    cols = {}
    base = f"{out}/eval/base.json"
    if os.path.exists(base):
        b = _load(base)
        cols.update({k: v for k, v in b.items() if k != "rm"})
    for path, prefix in ((f"{out}/eval/clean_s0.json", "clean_s0_kl"),):
        if os.path.exists(path):
            ev = _load(path)
            for name, m in sorted(ev.items()):
                if name.startswith(prefix):
                    kl = name[len(prefix):]
                    cols[f"PPO beta {kl.replace('_long', '')}" + (" (long)" if kl.endswith("_long") else "")] = m
    return cols


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{nd}f}"


def markdown(study, LEFT_OUT):
    lines = [f"# The lab as an instrument: preset `{study['preset']}`", "",
             f"Seeds {study['seeds']}; wall time of this invocation {study['wall_s']} s.", "", "## Over-optimisation", ""]
    lines += ["| proxy RM | policy | alpha | beta | start r0 | R^2 | fitted gold-peak KL (nats) | measured best: KL, gold |",
              "|---|---|---|---|---|---|---|---|"]
    for rm, e in study["overopt"].items():
        def row(name, f, mp):
            if "error" in f:
                return f"| {rm} | {name} | {f['error']} | | | | | |"
            start = f"{f['r0']:.3f} (fitted)" if f["r0"] else f"{f.get('start', e['sft_gold']):.3f} (SFT)"
            return (f"| {rm} | {name} | {f['alpha']:.3f} | {f['beta']:.3f} | {start} | {f['r2']:.3f} | "
                    f"{_fmt(f['kl_peak'], 2)} | "
                    + (f"{mp['kl']:.2f}, {mp['gold']:.3f} |" if mp else "|"))
        lines.append(row("best-of-n (analytic KL)", e["bon"]["fit"], e["bon"]["measured_peak"]))
        lines.append(row("best-of-n (measured KL)", e["bon"]["fit_measured_kl"], None))
        for kl, r in e["ppo"].items():
            lines.append(row(f"PPO beta {kl}", r["fit"], r["measured_peak"]))
            lines.append(row(f"PPO beta {kl}, start fitted", r["fit_free_start"], None))
        if "ppo_pooled_fit" in e:
            lines.append(row("PPO, all betas pooled", e["ppo_pooled_fit"], None))
    lines += ["", f"SFT gold (best-of-1): " + ", ".join(f"{rm} {e['sft_gold']:.3f}" for rm, e in study["overopt"].items()),
              "", "Best-of-n: gold, proxy, KL analytic and measured", "",
              "| proxy RM | n | gold | proxy | KL analytic | KL measured |", "|---|---|---|---|---|---|"]
    for rm, e in study["overopt"].items():
        for r in e["bon"]["curve"]:
            lines.append(f"| {rm} | {r['n']} | {r['gold']:.3f} | {r['proxy']:.3f} | {r['kl_analytic']:.3f} | "
                         f"{r['kl_measured']:.3f} |")
    lines += ["", "PPO (long runs): first and last bin, and the bin where gold peaked", "",
              "| proxy RM | beta | iters | KL start -> end | gold start -> peak -> end | proxy start -> end |",
              "|---|---|---|---|---|---|"]
    for rm, e in study["overopt"].items():
        for kl, r in e["ppo"].items():
            pts = r["points"]
            peak = max(pts, key=lambda p: p["gold"])
            lines.append(f"| {rm} | {kl} | {pts[-1]['iter']} | {pts[0]['kl']:.2f} -> {pts[-1]['kl']:.2f} | "
                         f"{pts[0]['gold']:.3f} -> {peak['gold']:.3f} (KL {peak['kl']:.2f}) -> {pts[-1]['gold']:.3f} | "
                         f"{_fmt(pts[0]['proxy'], 2)} -> {_fmt(pts[-1]['proxy'], 2)} |")
    lines += seeds_markdown(study)
    if study["levers"]:
        lines += levers_markdown(study, LEFT_OUT)
    if study["tax"]:
        lines += tax_markdown(study)
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in study["stage_seconds"].items())]
    return "\n".join(lines) + "\n"


def levers_markdown(study, LEFT_OUT):
    lines = ["", "## The four levers", "",
              f"Mean ± std over seeds {study['seeds']}; gold of the final PPO policy on held-out prompts; "
              f"affected family: {LEFT_OUT}; RM accuracy against gold labels on held-out SFT pairs.", "",
              "| lever | setting | RM acc. vs gold | gold | gold: affected | KL to SFT | filler | moved gold as the textbook says? |",
              "|---|---|---|---|---|---|---|---|"]
    for r in study["levers"]:
        pm = lambda k: f"{_fmt(r[k])} ± {_fmt(r[k + '_std'])}" if r[k] is not None else "-"  # noqa: E731
        lines.append(f"| {r['lever']} | {r['setting']} | {pm('rm_accuracy')} | {pm('gold')} | {pm('gold_affected')} | "
                     f"{pm('kl')} | {pm('filler')} | {r.get('verdict', 'baseline')} |")
    return lines


def tax_markdown(study):
    lines = ["", "## The alignment tax", "", "| metric | " + " | ".join(study["tax"]) + " |",
             "|---|" + "---|" * len(study["tax"])]
    fams = sorted({k for m in study["tax"].values() for k in m if k.startswith("gold/")})
    for key, label in TAX_KEYS + [(f, f) for f in fams]:
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key)) for m in study["tax"].values()) + " |")
    return lines


def seeds_markdown(study):
    """Per-seed Gao fits and their mean ± sd (only in a study run with kept policies or several seeds)."""
    by_seed, summary = study.get("overopt_seeds"), study.get("overopt_summary")
    if not by_seed:
        return []
    lines = ["", "### Every seed", "",
             "PPO's points: the kept policies judged on the held-out prompts (R over the SFT judged the same way); "
             "best-of-n: held-out, analytic KL. Gold falls: the last point lies more than 0.05 below the best.", "",
             "| seed | proxy RM | policy | alpha | beta | R^2 | fitted gold-peak KL (nats) | measured best gold | last point: KL, gold |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rm, seeds in by_seed.items():
        for s, e in seeds.items():
            runs = [("best-of-n", e["bon"]["fit"], e["bon"]["measured_peak"]["gold"], None)]
            runs += [(f"PPO beta {kl}" + (", gold falls" if r.get("gold_falls") else ""), r["fit"],
                      r["measured_peak"]["gold"], r["final"]) for kl, r in e["ppo"].items()]
            for name, f, best, last in runs:
                fit = (f"{f['alpha']:.3f} | {f['beta']:.3f} | {f['r2']:.3f} | {_fmt(f['kl_peak'], 2)}" if "alpha" in f
                       else f"{f.get('error', '-')} | | |")
                tail = f"{last['kl']:.2f}, {last['gold']:.3f}" if last else ""
                lines.append(f"| {s} | {rm} | {name} | {fit} | {best:.3f} | {tail} |")
    lines += ["", "Over seeds (mean ± sd):", "",
              "| proxy RM | policy | seeds fitted | alpha | beta | R^2 | fitted gold-peak KL (nats; finite ones) | measured best gold "
              "| last gold | gold falls in |", "|---|---|---|---|---|---|---|---|---|---|"]
    pm = lambda x, nd=3: "-" if not x or x["mean"] is None else f"{_fmt(x['mean'], nd)} ± {_fmt(x['sd'], nd)}"  # noqa: E731
    for rm, sm in summary.items():
        for name, v in sm.items():
            if name == "seeds":
                continue
            falls = f"{v['gold_falls']}/{len(sm['seeds'])}" if "gold_falls" in v else ""
            lines.append(f"| {rm} | {name} | {v['n_fits']}/{len(sm['seeds'])} | {pm(v['alpha'])} | {pm(v['beta'])} "
                         f"| {pm(v['r2'])} | {pm(v['kl_peak'], 2)} | {pm(v.get('measured_best_gold'))} "
                         f"| {pm(v.get('final_gold'))} | {falls} |")
    return lines


def _band(ax, xs_by_seed, ys_by_seed, colour, label):
    """Mean over seeds (a line) with a band of ± one sd (when there are several seeds), point by point."""
    import statistics as st
    n = min(len(x) for x in xs_by_seed)
    xs = [st.fmean(x[i] for x in xs_by_seed) for i in range(n)]
    ys = [st.fmean(y[i] for y in ys_by_seed) for i in range(n)]
    ax.plot(xs, ys, "-o", color=colour, ms=3, lw=1.2, label=label)
    if len(ys_by_seed) > 1:
        sd = [st.stdev(y[i] for y in ys_by_seed) for i in range(n)]
        ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)], color=colour, alpha=0.2)


def figures(out, study):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    oo = study.get("overopt_seeds") or {rm: {"0": e} for rm, e in study["overopt"].items()}
    fig, axes = plt.subplots(2, max(1, len(oo)), figsize=(5.5 * max(1, len(oo)), 7), squeeze=False)
    for j, (rm, seeds) in enumerate(oo.items()):
        ax_g, ax_p = axes[0][j], axes[1][j]
        entries = list(seeds.values())
        tag = f"{len(entries)} seed{'s' if len(entries) > 1 else ''}" + (", mean ± sd" if len(entries) > 1 else "")
        curves = [e["bon"]["curve"] for e in entries]
        ds = [[math.sqrt(r["kl_analytic"]) for r in c] for c in curves]
        _band(ax_g, ds, [[r["gold"] - e["sft_gold"] for r in c] for c, e in zip(curves, entries)], "k", "best-of-n gold")
        _band(ax_p, ds, [[r["proxy"] - c[0]["proxy"] for r in c] for c in curves], "k", "best-of-n proxy")
        grid = [max(ds[0]) * i / 100 for i in range(101)]
        for e in entries:
            f = e["bon"]["fit"]
            if "alpha" in f:
                ax_g.plot(grid, [predict("bon", f["alpha"], f["beta"], d) for d in grid], "k-", lw=0.6, alpha=0.5)
        for i, kl in enumerate(entries[0]["ppo"]):
            runs, c = [e["ppo"][kl] for e in entries if kl in e["ppo"]], f"C{i}"
            d = [[math.sqrt(max(p["kl"], 0)) for p in r["points"]] for r in runs]
            _band(ax_g, d, [[p["gold"] - r["start_gold"] for p in r["points"]] for r in runs], c,
                  f"PPO beta {kl} gold ({runs[0]['source']})")
            if all(p.get("proxy") is not None for r in runs for p in r["points"]):
                _band(ax_p, d, [[p["proxy"] - r["points"][0]["proxy"] for p in r["points"]] for r in runs], c,
                      f"PPO beta {kl} proxy")
            for r, dd in zip(runs, d):
                f = r["fit"]
                if "alpha" in f and max(dd) > 0:
                    g = [max(dd) * (k + 1) / 100 for k in range(100)]
                    ax_g.plot(g, [predict("rl", f["alpha"], f["beta"], x) for x in g], "--", color=c, lw=0.6, alpha=0.6)
        ax_g.set_title(f"proxy RM: {rm} labels ({tag}); thin: each seed's Gao fit", fontsize=9)
        ax_g.set_ylabel("gold gained over SFT")
        ax_p.set_ylabel("proxy (RM score) gained")
        for ax in (ax_g, ax_p):
            ax.set_xlabel("d = sqrt(KL to SFT), sqrt(nats)")
            ax.axhline(0, color="grey", lw=0.5)
            ax.legend(fontsize=6)
    fig.tight_layout()
    p1 = os.path.join(out, "overopt.png")
    fig.savefig(p1, dpi=90)
    plt.close(fig)

    if not study["levers"]:  # --parts without the levers
        return [p1]
    rows = [r for r in study["levers"][1:] if r.get("delta") is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["setting"] for r in rows], [r["delta"] for r in rows],
            xerr=[r["gold_std"] or 0 for r in rows], color=["C3" if r["delta"] < 0 else "C2" for r in rows])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("gold minus baseline's (coverage row: on the left-out family)")
    ax.set_title(f"the four levers (seeds {study['seeds']})")
    ax.invert_yaxis()
    fig.tight_layout()
    p2 = os.path.join(out, "levers.png")
    fig.savefig(p2, dpi=90)
    plt.close(fig)
    return [p1, p2]


def write_report(out, preset, P, LEVERS, LEFT_OUT, wall_s=None):
    stage_seconds = {}
    stages = os.path.join(out, "stages")
    for name in sorted(os.listdir(stages)) if os.path.isdir(stages) else []:
        m = _load(os.path.join(stages, name))
        stage_seconds[m["name"]] = m.get("seconds")
    by_seed = overoptimisation(out, P)
    first = {rm: seeds[min(seeds, key=int)] for rm, seeds in by_seed.items()}
    study = {"preset": preset, "seeds": P["seeds"], "settings": P, "wall_s": wall_s, "stage_seconds": stage_seconds,
             "overopt": first, "overopt_seeds": by_seed, "overopt_summary": overopt_summary(by_seed),
             "levers": levers(out, P, LEVERS, LEFT_OUT) if LEVERS else [], "tax": tax(out, P)}
    paths = [os.path.join(out, "study.json"), os.path.join(out, "report.md")]
    with open(paths[0], "w") as f:
        json.dump(study, f, indent=1, default=lambda x: None)
    with open(paths[1], "w") as f:
        f.write(markdown(study, LEFT_OUT))
    return paths + figures(out, study)
