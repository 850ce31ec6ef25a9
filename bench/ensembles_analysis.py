"""The analysis half of bench/bench_ensembles.py: members' errors on gold pairs, best-of-n, PPO's frontier.

Definitions (stated once, used for every table):
  margin           m = r(A) - r(B) of a held-out pair whose better response A the gold judge names (gold ties
                   are not pairs); a member errs on the pair when m < 0 (m = 0 counts half)
  margin error     the part of a member's margins gold does not explain: e = m - b g, with g the gold margin and
                   b = <m, g> / <g, g> (least squares through the origin, per member)
  error corr       mean over member pairs of the Pearson correlation of their margin errors: 0 for independent
                   members, 1 for one model k times. Averaging k members with error correlation rho keeps a
                   fraction (1 + (k - 1) rho) / k of one member's error variance: 1/4 for rho = 0, 1 for rho = 1
  mistake corr     the same for the mistake indicators [m < 0] (the phi coefficient), with P(all members err)
                   beside its value for independent members, prod_i P(member i errs)
  gold curve       lab/gold on each PPO iteration's 64 rollouts, smoothed by a centred moving average of SMOOTH
  sqrt(KL)         sqrt of objective/kl (sequence KL to the SFT model, nats), smoothed the same way
  gold at d        the smoothed gold at the first iteration where the smoothed sqrt(KL) reaches d
  equal KL         per (labels, kl_coef, seed): d = the smallest final sqrt(KL) among the kinds' runs, so every
                   run reaches it; each kind's gold there, minus the single reward model's (paired by seed)
  moves the frontier  the gain over one reward model is positive at every seed and its mean exceeds the seeds'
                   spread (the sd over seeds of the single model's gold at equal KL)
"""

import json
import math
import os
import statistics

import torch

SMOOTH = 5
D_GRID = (0.5, 1.0, 1.5)
KIND_NAMES = {"single": "one reward model (a's member 0)", "a": "(a) fine-tune seeds", "b": "(b) disjoint quarters",
              "c": "(c) SFT (pretraining) seeds", "d": "(d) WARM: weight average of (a)"}


class EnsembleScorer:
    """A reward model or ensemble as a best-of-n scorer: score(prompt, responses, ended) -> [float].

    Scores are read as every lab stage reads them (lab.annotate.RewardModelLabeller, at the last real token);
    a response that never emitted end-of-text gets no_eos_score, as in PPO."""

    def __init__(self, reward_model, tok, no_eos_score=-3.0):
        from minirlhf.lab.annotate import RewardModelLabeller
        self.reader, self.no_eos_score = RewardModelLabeller(reward_model, tok), no_eos_score

    @torch.no_grad()
    def score(self, prompt, responses, ended):
        scores = self.reader.score(prompt, responses, ended)
        return [s if e else self.no_eos_score for s, e in zip(scores, ended)]


# ----------------------------------------------------------------------------- the members' errors


def pearson(x, y):
    """Pearson correlation of two 1-D float64 tensors (0 when either is constant)."""
    x, y = x - x.mean(), y - y.mean()
    den = (x.square().sum() * y.square().sum()).sqrt()
    return 0.0 if den == 0 else (x * y).sum().item() / den.item()


def error_statistics(margins, gold_margins):
    """margins (k, P): each member's r(A) - r(B) on P pairs whose gold margin g (P,) is > 0 -> a dict of the
    members' accuracies and how their errors go together (see the module docstring for every definition)."""
    m, g = margins.double(), gold_margins.double()
    k = m.size(0)
    wrong = (m < 0).double() + 0.5 * (m == 0).double()  # (k, P)
    b = (m @ g) / (g @ g)  # (k,) per-member slope through the origin
    residual = m - b[:, None] * g
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    rho = statistics.fmean(pearson(residual[i], residual[j]) for i, j in pairs) if pairs else float("nan")
    phi = statistics.fmean(pearson(wrong[i], wrong[j]) for i, j in pairs) if pairs else float("nan")
    all_wrong = (wrong == 1).all(0).double().mean().item()
    mean_margin = m.mean(0)
    return {"pairs": m.size(1), "member_accuracy": (1 - wrong.mean(1)).tolist(),
            "mean_member_accuracy": 1 - wrong.mean().item(),
            "mean_accuracy": 1 - ((mean_margin < 0).double() + 0.5 * (mean_margin == 0).double()).mean().item(),
            "min_accuracy": 1 - ((m.min(0).values < 0).double()).mean().item(),
            "error_corr": rho, "mistake_corr": phi,
            "error_variance_kept": (1 + (k - 1) * rho) / k if pairs else 1.0,
            "p_all_wrong": all_wrong, "p_all_wrong_if_independent": math.prod(wrong.mean(1).tolist())}


def heldout_pairs(out, tok):
    """The gold-labelled held-out pairs as (chosen Samples, rejected Samples, gold margins (P,))."""
    from minirlhf.data import read_jsonl
    from minirlhf.lab.gold import gold
    from minirlhf.sampling import Sample

    def sample(prompt, text, ended):
        return Sample(prompt, text, ended, tok.encode(prompt), tok.encode(text) + [tok.eot_token] * ended)

    rows = list(read_jsonl(f"{out}/data/prefs_heldout_gold.jsonl", ("prompt", "chosen", "rejected")))
    chosen = [sample(r["prompt"], r["chosen"], r.get("chosen_ended", True)) for r in rows]
    rejected = [sample(r["prompt"], r["rejected"], r.get("rejected_ended", True)) for r in rows]
    g = [gold(c.prompt, c.text, c.ended).score - gold(r.prompt, r.text, r.ended).score for c, r in zip(chosen, rejected)]
    return chosen, rejected, torch.tensor(g, dtype=torch.float64)


def raw_scores(model, tok, samples):
    """The reward model's score at each sample's last real token (no end-of-text rule): (N,) float64."""
    from minirlhf.sampling import batched, reward_scores
    return batched(lambda ids, mask, _: reward_scores(model, ids, mask), samples, tok.pad_token, 256).double()


# ----------------------------------------------------------------------------- PPO's frontier


def smooth(xs, w=SMOOTH):
    h = w // 2
    return [statistics.fmean(xs[max(0, i - h): i + h + 1]) for i in range(len(xs))]


def ppo_curve(log_path):
    log = [json.loads(line) for line in open(log_path)]
    gold = smooth([r["lab/gold"] for r in log])
    sqrt_kl = [math.sqrt(k) for k in smooth([max(r["objective/kl"], 0.0) for r in log])]
    return {"iter": [r["step"] for r in log], "gold": gold, "sqrt_kl": sqrt_kl,
            "proxy": smooth([r["objective/rm_score"] for r in log]), "seconds": log[-1]["time/elapsed"],
            "gold_mean": statistics.fmean(r["lab/gold"] for r in log),
            "sqrt_kl_mean": math.sqrt(statistics.fmean(max(r["objective/kl"], 0.0) for r in log)),
            "eval_gold_end": log[-1].get("eval/gold")}


def gold_at(curve, d):
    """The smoothed gold where the smoothed sqrt(KL) first reaches d (None if it never does)."""
    return next((g for g, x in zip(curve["gold"], curve["sqrt_kl"]) if x >= d), None)


def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs),
            "values": xs}


# ----------------------------------------------------------------------------- best-of-n and errors, per seed


def model_paths(out, noise):
    """{name: checkpoint} of one label set: a0-a3, b0-b3, c0-c3 (c0 is a0's file) and d; {kind: member names}."""
    from bench.bench_ensembles import KINDS, members
    kinds = {kind: [f"{kind}{j}" for j in range(len(members(out, noise, kind)))] for kind in KINDS}
    paths = {f"{kind}{j}": p for kind in KINDS for j, p in enumerate(members(out, noise, kind))}
    return {**paths, "d": members(out, noise, "d")[0]}, kinds


def cached_groups(path, sample):
    """sample() -> [[Sample] * N] per prompt, kept in a JSON file so that a rerun ranks the very same samples."""
    from minirlhf.sampling import Sample
    if os.path.exists(path):
        return [[Sample(**s) for s in g] for g in json.load(open(path))]
    groups = sample()
    with open(path + ".tmp", "w") as f:
        json.dump([[vars(s) for s in g] for g in groups], f)
    os.replace(path + ".tmp", path)
    return groups


def bon_and_errors(out, noise, seed, ns=(1, 2, 4, 8, 16, 32, 64), n_per_family=20):
    """Best-of-n over one set of SFT samples per seed (every curve ranks the same samples), against one reward
    model, each prediction ensemble's mean / min / uwo (lambda 0.5) and WARM; and every ensemble's error
    statistics on the gold-labelled held-out pairs. -> {out}/analysis/bon_{noise}_s{seed}.json (skipped if there)."""
    from minirlhf.checkpoint import load_model
    from minirlhf.ensemble import aggregate
    from minirlhf.lab.bestofn import bon_curve, sample_groups, score_groups
    from minirlhf.lab.world import eval_tasks
    path = f"{out}/analysis/bon_{noise}_s{seed}.json"
    if os.path.exists(path) and json.load(open(path)).get("complete"):
        return json.load(open(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.set_num_threads(1)
    sft, tok, _ = load_model(f"{out}/sft0/ckpt.pt", expect="gpt")
    prompts = [t.prompt for t in eval_tasks(0, n_per_family)]
    groups = cached_groups(f"{out}/analysis/bon_samples_s{seed}.json", lambda: sample_groups(
        sft, tok, prompts, max(ns), temperature=0.7, max_new_tokens=32, batch_size=256, seed=seed))
    paths, kinds = model_paths(out, noise)
    paths = {n: p for n, p in paths.items() if os.path.exists(p)}  # a kind whose members are not all trained: left out
    kinds = {kind: names for kind, names in kinds.items() if all(n in paths for n in names)}
    margins_path = f"{out}/analysis/margins_{noise}.pt"  # the members are the same for every seed: scored once each
    margins, g = torch.load(margins_path) if os.path.exists(margins_path) else ({}, None)
    if set(paths) - set(margins):
        chosen, rejected, g = heldout_pairs(out, tok)
        for name in sorted(set(paths) - set(margins)):
            m = load_model(paths[name], expect="scalar")[0]
            margins[name] = raw_scores(m, tok, chosen) - raw_scores(m, tok, rejected)  # (P,)
        torch.save((margins, g), margins_path)
    ended = torch.tensor([[s.ended for s in grp] for grp in groups])  # (prompts, N)
    scores_path = f"{out}/analysis/bon_scores_{noise}_s{seed}.pt"
    cached = torch.load(scores_path) if os.path.exists(scores_path) else {}
    bon_scores, scale = {}, {}
    for name, p in sorted(paths.items()):
        same = next((n for n in bon_scores if paths[n] == p), None)  # c0 is a0: scored once
        if same:
            bon_scores[name], scale[name] = bon_scores[same], scale[same]
            continue
        if name not in cached:
            cached[name] = torch.tensor(score_groups(EnsembleScorer(load_model(p, expect="scalar")[0], tok), groups))
            torch.save(cached, scores_path)
        bon_scores[name] = cached[name]  # (prompts, N)
        r = bon_scores[name][ended]  # the raw scores of the policy's (SFT 0's) own finished samples
        scale[name] = {"mean": r.mean().item(), "std": r.std().item()}
        print(f"{noise} s{seed} {name}: gold-pair accuracy {(margins[name] > 0).double().mean().item():.3f}, "
              f"score on SFT samples {scale[name]['mean']:+.2f} +- {scale[name]['std']:.2f}", flush=True)
    result = {"noise": noise, "seed": seed, "n_prompts": len(prompts), "n_samples": max(ns), "curves": {},
              "complete": len(kinds) == 3 and "d" in paths,
              "errors": {}, "accuracy": {n: (m > 0).double().mean().item() for n, m in margins.items()}, "scale": scale}
    result["curves"]["single"] = bon_curve(groups, bon_scores["a0"].tolist(), list(ns))
    if "d" in paths:
        result["curves"]["d"] = bon_curve(groups, bon_scores["d"].tolist(), list(ns))
    for kind, names in kinds.items():
        stacked = torch.stack([bon_scores[n] for n in names])  # (k, prompts, N)
        for agg in ("mean", "min", "uwo"):
            result["curves"][f"{kind}/{agg}"] = bon_curve(groups, aggregate(stacked, agg, 0.5).tolist(), list(ns))
        result["errors"][kind] = error_statistics(torch.stack([margins[n] for n in names]), g)
    if "d" in paths:
        result["errors"]["single+d"] = error_statistics(torch.stack([margins["a0"], margins["d"]]), g)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


# ----------------------------------------------------------------------------- over seeds: one JSON, tables, figure


def ppo_table(out, stages):
    """Every finished PPO run -> its row; then, per (labels, kl_coef, seed), each kind's gold at equal KL."""
    rows = []
    for st in stages:
        log = f"{st.resume_dir}/log.jsonl"
        if not os.path.exists(log) or not os.path.exists(f"{st.resume_dir}/ckpt.pt"):
            continue
        curve = ppo_curve(log)
        if len(curve["iter"]) < int(st.cmd[st.cmd.index("--num_iters") + 1]):
            continue  # unfinished
        rows.append({**st.meta, "name": os.path.basename(st.resume_dir), "gold_start": curve["gold"][0],
                     "gold_max": max(curve["gold"]), "gold_end": curve["gold"][-1], "sqrt_kl_end": curve["sqrt_kl"][-1],
                     "gold_mean": curve["gold_mean"], "sqrt_kl_mean": curve["sqrt_kl_mean"],
                     "eval_gold_end": curve["eval_gold_end"],
                     **{f"gold_at_{d}": gold_at(curve, d) for d in D_GRID}, "curve": curve})
    groups = {}
    for r in rows:
        groups.setdefault((r["noise"], r["kl_coef"], r["seed"]), {})[r["kind"]] = r
    for runs in groups.values():
        d = min(r["sqrt_kl_end"] for r in runs.values())
        single = gold_at(runs["single"]["curve"], d) if "single" in runs else None
        for r in runs.values():
            r["equal_sqrt_kl"], r["gold_at_equal_kl"] = d, gold_at(r["curve"], d)
            r["gain_at_equal_kl"] = None if single is None else r["gold_at_equal_kl"] - single
            r["gain_mean"] = r["gold_mean"] - runs["single"]["gold_mean"] if "single" in runs else None
    return rows


def ppo_summary(rows):
    """{'flip/kl0.01/a': mean and sd over seeds of each number, and the verdict}."""
    out = {}
    for key in sorted({(r["noise"], r["kl_coef"], r["kind"]) for r in rows}, key=lambda k: (k[0] != "flip", -k[1], list(KIND_NAMES).index(k[2]))):
        rs = sorted((r for r in rows if (r["noise"], r["kl_coef"], r["kind"]) == key), key=lambda r: r["seed"])
        v = {"seeds": [r["seed"] for r in rs]}
        for field in ("gold_max", "gold_end", "sqrt_kl_end", "gold_mean", "sqrt_kl_mean", "eval_gold_end",
                      "gold_at_equal_kl", "gain_at_equal_kl", "gain_mean",
                      *[f"gold_at_{d}" for d in D_GRID]):
            v[field] = mean_sd([r[field] for r in rs])
        out["/".join((key[0], f"kl{key[1]}", key[2]))] = v
    for key, v in out.items():
        single = out.get(key.rsplit("/", 1)[0] + "/single")
        gain, spread = v["gain_at_equal_kl"], single and single["gold_at_equal_kl"]
        v["moves_frontier"] = bool(gain and spread and key.split("/")[-1] != "single" and gain["n"] >= 3
                                   and min(gain["values"]) > 0 and gain["mean"] > spread["sd"])
    return out


def bon_summary(per_seed):
    """Best-of-n gold per curve and n, and errors per kind: mean and sd over seeds, per label set."""
    out = {}
    for noise in sorted({r["noise"] for r in per_seed}, key=lambda n: n != "flip"):
        rs = [r for r in per_seed if r["noise"] == noise]
        ns = [row["n"] for row in rs[0]["curves"]["single"]]
        curves = {key: {str(n): mean_sd([r["curves"][key][i]["gold"] for r in rs]) for i, n in enumerate(ns)}
                  for key in rs[0]["curves"]}
        gains = {key: {str(n): mean_sd([r["curves"][key][i]["gold"] - r["curves"]["single"][i]["gold"] for r in rs])
                       for i, n in enumerate(ns)} for key in rs[0]["curves"] if key != "single"}
        errors = {kind: {f: mean_sd([r["errors"][kind][f] for r in rs]) for f in rs[0]["errors"][kind]
                         if f not in ("member_accuracy", "pairs")} for kind in rs[0]["errors"]}
        accuracy = {name: mean_sd([r["accuracy"][name] for r in rs]) for name in rs[0]["accuracy"]}
        out[noise] = {"seeds": [r["seed"] for r in rs], "ns": ns, "n_prompts": rs[0]["n_prompts"],
                      "pairs": rs[0]["errors"]["a"]["pairs"], "gold": curves, "gain_over_single": gains,
                      "errors": errors, "accuracy": accuracy,
                      "scale": {name: mean_sd([r["scale"][name]["mean"] for r in rs]) for name in rs[0]["scale"]}}
    return out


def analyse(out, stages, seeds, noises, json_path, note=""):
    import platform
    import time
    per_seed = [json.load(open(f"{out}/analysis/bon_{n}_s{s}.json")) for n in noises for s in seeds
                if os.path.exists(f"{out}/analysis/bon_{n}_s{s}.json")]
    rows = ppo_table(out, stages)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), "
              f"torch {torch.__version__}", "note": note, "smooth": SMOOTH, "d_grid": D_GRID,
              "bon": bon_summary(per_seed) if per_seed else {}, "ppo": ppo_summary(rows),
              "runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
              "curves": {r["name"]: r["curve"] for r in rows}}
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(json_path.replace(".json", ".md"), "w") as f:
        f.write(md + "\n")
    plot(result, json_path.replace(".json", ".png"))
    print(md)
    return result


def pm(x, f=".3f"):
    """mean ± sd over seeds; one seed: its value alone."""
    if not x:
        return "-"
    return f"{x['mean']:{f}}" if x["n"] == 1 else f"{x['mean']:{f}} ± {x['sd']:{f}}"


def markdown(res):
    """The tables of docs/ensembles.md, from the results JSON."""
    out = []
    for noise, b in res["bon"].items():
        out += [f"Members' errors on {b['pairs']} gold-labelled held-out pairs, {noise} labels (best-of-n seeds "
                f"{', '.join(map(str, b['seeds']))}; the members and pairs are the same for every seed):", "",
                "| ensemble | member accuracy | accuracy of the mean | accuracy of the min | error corr | mistake corr "
                "| error variance kept by the mean | P(all members wrong) | if independent |", "|" + "---|" * 9]
        for kind, e in b["errors"].items():
            name = KIND_NAMES.get(kind, "one reward model and WARM (2 members)")
            out.append(f"| {name} | {pm(e['mean_member_accuracy'])} | {pm(e['mean_accuracy'])} | {pm(e['min_accuracy'])} "
                       f"| {pm(e['error_corr'], '.2f')} | {pm(e['mistake_corr'], '.2f')} | {pm(e['error_variance_kept'], '.2f')} "
                       f"| {pm(e['p_all_wrong'])} | {pm(e['p_all_wrong_if_independent'])} |")
        out += ["", f"WARM's accuracy {pm(b['accuracy']['d'])} against its members' (a0-a3) "
                f"{', '.join(pm(b['accuracy'][f'a{j}']) for j in range(4))}.", ""]
        out += [f"Best-of-n gold, {noise} labels ({b['n_prompts']} held-out prompts, {b['ns'][-1]} SFT samples each; "
                "mean ± sd over seeds; in brackets the mean gain over one reward model):", "",
                "| reward | " + " | ".join(f"n={n}" for n in b["ns"]) + " |", "|" + "---|" * (len(b["ns"]) + 1)]
        for key, cells in b["gold"].items():
            kind, _, agg = key.partition("/")
            name = KIND_NAMES[kind] + (f", {agg}" if agg else "")
            gains = b["gain_over_single"].get(key)
            out.append(f"| {name} | " + " | ".join(
                pm(cells[str(n)]) + (f" ({gains[str(n)]['mean']:+.3f})" if gains else "") for n in b["ns"]) + " |")
        out.append("")
    if res["ppo"]:
        out += ["PPO against each kind (an ensemble's reward is its members' minimum, WCO; mean ± sd over seeds; "
                "gains paired by seed against one reward model). Gold is the rollouts' (training prompts), the "
                "held-out gold is train_ppo.py's evaluation at the last iteration. Gold at equal sqrt(KL): per seed, "
                "at the smallest final sqrt(KL) among that seed's runs. 'Moves the frontier': a gain at equal KL at "
                "every seed whose mean exceeds the seeds' spread (the sd of one reward model's gold there).", "",
                "| labels / kl_coef / reward | seeds | gold max | mean gold over the run | gain | sqrt(mean KL) "
                "| gold at end | sqrt(KL) at end | held-out gold at end | gold at equal sqrt(KL) | gain | moves the frontier |",
                "|" + "---|" * 12]
        for key, v in res["ppo"].items():
            noise, kl, kind = key.split("/")
            gain = (lambda x: "" if kind == "single" else pm(x))  # noqa: E731
            out.append(f"| {noise} / {kl[2:]} / {KIND_NAMES[kind]} | {', '.join(map(str, v['seeds']))} | {pm(v['gold_max'])} "
                       f"| {pm(v['gold_mean'])} | {gain(v['gain_mean'])} | {pm(v['sqrt_kl_mean'], '.2f')} "
                       f"| {pm(v['gold_end'])} | {pm(v['sqrt_kl_end'], '.2f')} | {pm(v['eval_gold_end'])} "
                       f"| {pm(v['gold_at_equal_kl'])} | {gain(v['gain_at_equal_kl'])} "
                       f"| {'' if kind == 'single' else '**yes**' if v['moves_frontier'] else 'no'} |")
    if res["runs"]:
        out += ["", "Per seed (PPO's seed; the members are shared):", "",
                "| labels / kl_coef | seed | reward | equal sqrt(KL) | gold there | mean gold over the run "
                "| sqrt(mean KL) | held-out gold at end |", "|" + "---|" * 8]
        order = list(KIND_NAMES)
        for r in sorted(res["runs"], key=lambda r: (r["noise"] != "flip", -r["kl_coef"], r["seed"], order.index(r["kind"]))):
            held = "-" if r["eval_gold_end"] is None else f"{r['eval_gold_end']:.3f}"
            out.append(f"| {r['noise']} / {r['kl_coef']} | {r['seed']} | {KIND_NAMES[r['kind']]} | {r['equal_sqrt_kl']:.2f} "
                       f"| {r['gold_at_equal_kl']:.3f} | {r['gold_mean']:.3f} | {r['sqrt_kl_mean']:.2f} | {held} |")
    return "\n".join(out).rstrip()


def plot(res, path):
    """One row per label set: best-of-n gold against n (one model, WARM, each ensemble's min), then PPO's gold
    against sqrt(KL) at each kl_coef (every seed a line)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"single": "black", "a": "tab:blue", "b": "tab:orange", "c": "tab:green", "d": "tab:red"}
    noises = sorted({r["noise"] for r in res["runs"]} | set(res["bon"]), key=lambda n: n != "flip")
    kls = sorted({r["kl_coef"] for r in res["runs"]}, reverse=True)
    fig, axes = plt.subplots(len(noises), 1 + len(kls), figsize=(4.3 * (1 + len(kls)), 3.6 * len(noises)), squeeze=False)
    for row, noise in zip(axes, noises):
        b = res["bon"].get(noise)
        for key, cells in (b["gold"].items() if b else []):
            kind, _, agg = key.partition("/")
            if agg in ("", "min"):
                row[0].plot([math.log2(n) for n in b["ns"]], [cells[str(n)]["mean"] for n in b["ns"]], "o-", ms=3,
                            color=colors[kind], label=KIND_NAMES[kind] + (" (min)" if agg else ""))
        row[0].set(title=f"best-of-n, {noise} labels", xlabel="log2 n")
        for ax, kl in zip(row[1:], kls):
            labelled = set()
            for r in res["runs"]:
                if (r["noise"], r["kl_coef"]) == (noise, kl):
                    c = res["curves"][r["name"]]
                    ax.plot(c["sqrt_kl"], c["gold"], color=colors[r["kind"]], alpha=0.7, lw=1,
                            label=None if r["kind"] in labelled else KIND_NAMES[r["kind"]])
                    labelled.add(r["kind"])
            ax.set(title=f"PPO, {noise} labels, kl_coef {kl}", xlabel="sqrt(KL to SFT)")
        for ax in row:
            ax.set_ylabel("gold (held-out prompts)" if ax is row[0] else "gold (rollouts, smoothed)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
