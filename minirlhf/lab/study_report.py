"""The study's numbers, report and figures, from the outputs of study.py's stages (read only; cheap; rerun freely).

    write_report(out_dir, preset, P, LEVERS, LEFT_OUT) -> [study.json, report.md, overopt.png, levers.png]

Over-optimisation. R is the gold gained over the SFT policy: gold minus the SFT's gold at the same temperature
(best-of-1 on the held-out prompts, from its N samples per prompt: the most precise estimate we have). Best-of-n
points are at d = sqrt(analytic KL) (as in Gao et al.), the measured-KL fit beside it. A PPO log holds one
line per iteration with the KL and gold of that iteration's own rollouts (training prompts, one batch: noisy),
so iterations are averaged in bins of `BIN` before fitting R_RL; each run is fitted alone, and all kl_coefs of
one reward model together (Gao et al.: the KL penalty does not move the gold-vs-KL frontier). The PPO fits take
the same start (the SFT's held-out gold); a second fit also fits the start r0 (overopt.fit(intercept=True)), as
the rollouts are on training prompts, on which the SFT model was trained, and its gold there is known only from
the first iteration's single batch.
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


def overoptimisation(out, P):
    res = {}
    for rm in ("clean", "flip25"):
        bon_path = f"{out}/bon/{rm}_s0.json"
        if not os.path.exists(bon_path):
            continue
        curve = _load(bon_path)["curve"]
        g0 = curve[0]["gold"] if curve[0]["n"] == 1 else float("nan")
        ds = [math.sqrt(r["kl_analytic"]) for r in curve]
        dm = [math.sqrt(max(r["kl_measured"], 0)) for r in curve]
        gains = [r["gold"] - g0 for r in curve]
        d_best, g_best = measured_peak([r["kl_analytic"] for r in curve], [r["gold"] for r in curve])
        entry = {"sft_gold": g0, "bon": {"curve": curve, "fit": _safe_fit("bon", ds, gains),
                                         "fit_measured_kl": _safe_fit("bon", dm, gains),
                                         "measured_peak": {"kl": d_best, "gold": g_best}}, "ppo": {}}
        pooled_d, pooled_r = [], []
        for r2, kl_coef in P["oo_runs"]:
            if r2 != rm:
                continue
            log = f"{out}/ppo/{rm}_s0_kl{kl_coef:g}_long/log.jsonl"
            if not os.path.exists(log):
                continue
            pts = _ppo_points(log)
            d = [math.sqrt(max(p["kl"], 0)) for p in pts]
            r = [p["gold"] for p in pts]
            keep = [i for i, x in enumerate(d) if x > 0]
            pooled_d += [d[i] for i in keep]
            pooled_r += [r[i] for i in keep]
            kl_best, g_best = measured_peak([p["kl"] for p in pts], [p["gold"] for p in pts])
            entry["ppo"][f"{kl_coef:g}"] = {"points": pts, "fit": _safe_fit("rl", [d[i] for i in keep], [r[i] - g0 for i in keep]),
                                            "fit_free_start": _safe_fit("rl", [d[i] for i in keep], [r[i] for i in keep], True),
                                            "measured_peak": {"kl": kl_best, "gold": g_best},
                                            "final": pts[-1] if pts else None}
        if len(pooled_d) >= 2:
            entry["ppo_pooled_fit"] = _safe_fit("rl", pooled_d, [x - g0 for x in pooled_r])
        res[rm] = entry
    return res


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
            start = f"{f['r0']:.3f} (fitted)" if f["r0"] else f"{e['sft_gold']:.3f} (SFT)"
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
                         f"{pts[0]['proxy']:.2f} -> {pts[-1]['proxy']:.2f} |")
    lines += ["", "## The four levers", "",
              f"Mean ± std over seeds {study['seeds']}; gold of the final PPO policy on held-out prompts; "
              f"affected family: {LEFT_OUT}; RM accuracy against gold labels on held-out SFT pairs.", "",
              "| lever | setting | RM acc. vs gold | gold | gold: affected | KL to SFT | filler | moved gold as the textbook says? |",
              "|---|---|---|---|---|---|---|---|"]
    for r in study["levers"]:
        pm = lambda k: f"{_fmt(r[k])} ± {_fmt(r[k + '_std'])}" if r[k] is not None else "-"  # noqa: E731
        lines.append(f"| {r['lever']} | {r['setting']} | {pm('rm_accuracy')} | {pm('gold')} | {pm('gold_affected')} | "
                     f"{pm('kl')} | {pm('filler')} | {r.get('verdict', 'baseline')} |")
    lines += ["", "## The alignment tax", "", "| metric | " + " | ".join(study["tax"]) + " |",
              "|---|" + "---|" * len(study["tax"])]
    fams = sorted({k for m in study["tax"].values() for k in m if k.startswith("gold/")})
    for key, label in TAX_KEYS + [(f, f) for f in fams]:
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key)) for m in study["tax"].values()) + " |")
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v}" for k, v in study["stage_seconds"].items())]
    return "\n".join(lines) + "\n"


def figures(out, study):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    oo = study["overopt"]
    fig, axes = plt.subplots(2, max(1, len(oo)), figsize=(5.5 * max(1, len(oo)), 7), squeeze=False)
    for j, (rm, e) in enumerate(oo.items()):
        ax_g, ax_p = axes[0][j], axes[1][j]
        curve = e["bon"]["curve"]
        ds = [math.sqrt(r["kl_analytic"]) for r in curve]
        ax_g.plot(ds, [r["gold"] - e["sft_gold"] for r in curve], "ko", label="best-of-n gold")
        ax_p.plot(ds, [r["proxy"] - curve[0]["proxy"] for r in curve], "ko--", label="best-of-n proxy")
        f = e["bon"]["fit"]
        if "alpha" in f:
            grid = [max(ds) * i / 100 for i in range(101)]
            ax_g.plot(grid, [predict("bon", f["alpha"], f["beta"], d) for d in grid], "k-", lw=1,
                      label=f"fit d(a - b d), R²={f['r2']:.2f}")
        for i, (kl, r) in enumerate(e["ppo"].items()):
            pts, c = r["points"], f"C{i}"
            d = [math.sqrt(max(p["kl"], 0)) for p in pts]
            ax_g.plot(d, [p["gold"] - e["sft_gold"] for p in pts], ".", color=c, alpha=0.7, label=f"PPO beta {kl} gold")
            ax_p.plot(d, [p["proxy"] - pts[0]["proxy"] for p in pts], ".", color=c, alpha=0.7, label=f"PPO beta {kl} proxy")
            if "alpha" in r["fit"] and d:
                grid = [max(d) * (k + 1) / 100 for k in range(100)]
                ax_g.plot(grid, [predict("rl", r["fit"]["alpha"], r["fit"]["beta"], x) for x in grid], "-", color=c, lw=1,
                          label=f"fit d(a - b log d), R²={r['fit']['r2']:.2f}")
        ax_g.set_title(f"proxy RM: {rm} labels")
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
    study = {"preset": preset, "seeds": P["seeds"], "settings": P, "wall_s": wall_s, "stage_seconds": stage_seconds,
             "overopt": overoptimisation(out, P), "levers": levers(out, P, LEVERS, LEFT_OUT), "tax": tax(out, P)}
    paths = [os.path.join(out, "study.json"), os.path.join(out, "report.md")]
    with open(paths[0], "w") as f:
        json.dump(study, f, indent=1, default=lambda x: None)
    with open(paths[1], "w") as f:
        f.write(markdown(study, LEFT_OUT))
    return paths + figures(out, study)
