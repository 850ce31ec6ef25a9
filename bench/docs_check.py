"""The tables in docs/ are the committed results files, not copies of them: each sits between two markers that name
the block, and this script regenerates every block from its results file and compares, as bench/bench_lab.py does
for the README's quick-start table.

    python bench/docs_check.py --check          # exit 1, with a diff, when a docs/ table differs from its file
    python bench/docs_check.py --update         # rewrite every block in docs/ from the results files
    python bench/docs_check.py --print levers   # print one block; --list names them all

A block in a page looks like this (NAME is a key of BLOCKS below; the generator is the project's own report code
where there is one: minirlhf/lab/study_report.py for the study, bench/antioveropt_analysis.py for the
over-optimisation counter-measures, bench/ensembles_analysis.py and bench/gold_audit.py for theirs). A block may
stand in more than one page; every copy is checked:

    <!-- begin generated: NAME, from bench/results/FILE by `python bench/docs_check.py --update`; do not edit by hand -->
    ...
    <!-- end generated: NAME -->

A rerun that writes a new results file changes the tables with `--update`; the prose around them cites numbers
from the same files and is the writer's to keep in step. tests/test_docs.py runs the check.
"""

import argparse
import difflib
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))  # the benchmarks' own report code
RESULTS = os.path.join(ROOT, "bench", "results")
DOCS = os.path.join(ROOT, "docs")


def _load(name):
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _section(text, first_line_prefix):
    """The paragraph block of `text` (blocks are separated by blank lines) whose first line starts with the prefix."""
    blocks = text.split("\n\n")
    for i, block in enumerate(blocks):
        if block.startswith(first_line_prefix):
            return block
    raise KeyError(f"no block starting with {first_line_prefix!r}")


# ---- the study (python study.py; its report is minirlhf/lab/study_report.py's markdown) -----------------------

def _study(name):
    from minirlhf.lab.study_report import markdown
    return markdown(_load(name), "unknown_fact")  # study.py's LEFT_OUT: the family the coverage lever never labels


def study_fits(name="study_full.json"):
    text = _study(name)
    return _section(text, "| proxy RM | policy |") + "\n\n" + _section(text, "SFT gold (best-of-1)")


def study_bestofn(name="study_full.json"):
    return _section(_study(name), "| proxy RM | n |")


def study_ppo_long(name="study_full.json"):
    return _section(_study(name), "| proxy RM | beta | iters |")


def study_levers(name="study_full.json"):
    text = _study(name)
    return _section(text, "Mean ± std over seeds") + "\n\n" + _section(text, "| lever |")


def study_tax(name="study_full.json"):
    return _section(_study(name), "| metric | SFT |")


# ---- against over-optimisation (bench/bench_antioveropt.py; tables from bench/antioveropt_analysis.py) ---------

def _antioveropt():
    from antioveropt_analysis import markdown
    return markdown(os.path.join(RESULTS, "antioveropt_cpu.json"), os.path.join(RESULTS, "antioveropt_cpu_bon.json"))


def antioveropt_ensembles():
    return _section(_antioveropt(), "| labels / reward | seeds |")


def antioveropt_algorithms():
    return _section(_antioveropt(), "| algorithm | seeds |")


def antioveropt_signals(z="2.0"):
    text = _antioveropt().split(f"Early warning, firing at z = {z}:\n\n", 1)[1]
    return text.split("\n\n", 1)[0]


def antioveropt_bestofn():
    text = _antioveropt()
    return _section(text, "Best-of-n gold (") + "\n\n" + _section(text, "| labels / reward | n=")


def seed_fits():
    """study.py --seeds: Gao et al.'s fits per seed and over seeds (the report's tables, without its heading)."""
    from minirlhf.lab.study_report import seeds_markdown
    return "\n".join(seeds_markdown(_load("study_seeds.json"))[2:])


def gold_audit():
    """bench/gold_audit.py: the gold-audit stop against labels spent, beside the label-free stop."""
    from gold_audit import markdown
    return markdown(_load("gold_audit_cpu.json"))


def ensembles():
    """bench/bench_ensembles.py --phase analyse: the members' errors, best-of-n and PPO against each kind."""
    from ensembles_analysis import markdown
    return markdown(_load("ensembles_cpu.json"))


# ---- single measurements --------------------------------------------------------------------------------------

def kl_estimate():
    """bench/kl_estimate.py's two views of k1 against the exact KL."""
    r = _load("kl_estimate_cpu.json")
    a, it = r["args"], r["per_iteration"]
    rows = ["| | n | sampled estimate (k1), mean (std) | exact, mean (std) | mean &#124;estimate - exact&#124; "
            "| correlation |", "|---|---|---|---|---|---|"]
    for label, v in ((f"per response, at temperature {a['temperature']}", r["per_response"]),
                     ("per PPO iteration (its rollouts' mean)", it)):
        rows.append(f"| {label} | {v['n']} | {v['mean_estimate']:.3f} ({v['std_estimate']:.2f}) "
                    f"| {v['mean_exact']:.3f} ({v['std_exact']:.2f}) | {v['mean_abs_diff']:.3f} | {v['correlation']:.2f} |")
    rows += ["", f"Tokens with a negative log-ratio: {r['per_response']['negative_token_fraction']:.0%}. "
                 f"Seed {a['seed']}, {r['date']}, torch {r['torch']}."]
    return "\n".join(rows)


def ppo_vs_trl():
    """bench/bench_ppo_vs_trl.py: seconds per PPO iteration, ours and TRL's, alternating rounds."""
    r = _load("ppo_vs_trl_cpu.json")
    t, m = r["trl"], r["minirlhf"]
    rows = ["| round | train_ppo.py (s / iteration) | TRL PPOTrainer (s / iteration) | ratio |", "|---|---|---|---|"]
    rows += [f"| {i + 1} | {x['minirlhf']:.2f} | {x['trl']:.2f} | {x['minirlhf'] / x['trl']:.2f} |"
             for i, x in enumerate(r["rounds"])]
    rows += [f"| median over the rounds | {m['s_per_iter']:.2f} | {t['s_per_iter']:.2f} | {r['ratio']:.2f} |", "",
             f"Settings: {t['n_layer']} layers, width {t['n_embd']}, vocabulary {t['vocab']}, {t['batch_size']} rollouts "
             f"of {t['prompt_len']} + {t['response_len']} tokens, {t['ppo_epochs']} epochs x {t['num_mini_batches']} "
             f"minibatches, {t['precision']}, {t['threads']} threads; TRL {t['trl']} ({t['api']}), transformers "
             f"{t['transformers']}, torch {t['torch']}; {r['cpu_count']} cores, {r['date']}."]
    return "\n".join(rows)


def generation():
    """bench/bench_generate.py: KV-cache sampling against recomputing the prefix for every token."""
    with open(os.path.join(RESULTS, "generate.jsonl")) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    rows = ["| model | batch | prompt + new tokens | KV cache (tokens/s) | recompute (tokens/s) | speed-up | threads |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['model']} | {r['batch_size']} | {r['prompt_len']} + {r['new_tokens']} | {r['kv_cache_tok_s']:,.1f} "
             f"| {r['recompute_tok_s']:,.1f} | {r['speedup']:.1f}x | {r['threads']} |" for r in runs]
    return "\n".join(rows)


def quickstart_stages():
    """bench/bench_lab.py: the quick start's wall time per stage, seed 0, quiet and beside a busy core, now and before
    threads followed the free cores (lab_quickstart_before_cpu.json: the version of 61617f2, run in the same hour as
    now, one run after the other); now, also the other seeds that ran alone on the machine."""
    from bench_lab import threads_said
    now, before = _load("lab_quickstart_cpu.json"), _load("lab_quickstart_before_cpu.json")
    quiet = [str(seed) for seed in now.get("quiet_seeds", [0])]  # the other seeds show how much a quiet run varies
    columns = [("before, quiet", before["runs"]["0"]["timings"]), ("before, busy core", before["busy_core"]["timings"]),
               ("now, quiet", now["runs"]["0"]["timings"]), ("now, busy core", now["busy_core"]["timings"])]
    columns += [(f"now, quiet, seed {seed}", now["runs"][seed]["timings"]) for seed in quiet if seed != "0"]
    rows = ["| stage | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for stage in before["runs"]["0"]["timings"]:
        label = "**total**" if stage == "total" else stage
        rows.append(f"| {label} | " + " | ".join(f"{t.get(stage, 0):.1f}" for _, t in columns) + " |")
    busy = threads_said([now["busy_core"].get("threads")], "")
    rows += ["", f"Seconds of wall time, seed 0 unless named, default flags, {now['cpu_count']} cores, torch {now['torch']}; "
                 f"before: {before['date']} (61617f2: {before['torch_threads']} threads, OMP_WAIT_POLICY=PASSIVE), now: "
                 f"{now['date']} ({threads_said([r.get('threads') for r in now['runs'].values()], '')} quiet, {busy} "
                 f"beside the busy core)."]
    return "\n".join(rows)


def micro_batches():
    """bench/bench_micro_batches.py: an SFT step of the lab's model by batch and micro-batch."""
    r = _load("micro_batches_cpu.json")
    rows = ["| examples per step | per forward (sorted by length when less) | ms per step | positions per real token |",
            "|---|---|---|---|"]
    rows += [f"| {x['batch_size']} | {x['micro_batch_size']} | {x['ms_per_step']:.1f} | {x['positions_per_token']:.3f} |"
             for x in r["rows"]]
    rows += ["", f"The lab's `{r['model']}` model, {r['steps']} steps each, {r['threads']} threads, torch {r['torch']}, "
                 f"{r['cpu_count']} cores, {r['date']}."]
    return "\n".join(rows)


def quickstart_cuts():
    """bench/quickstart_cuts.py: cheaper quick starts, per seed, and the rows on which PPO lost to SFT."""
    # the cuts ran on the version of 61617f2: their defaults are that version's quick start, not today's
    cuts, default = _load("quickstart_cuts_cpu.json"), _load("lab_quickstart_61617f2_cpu.json")
    rows = ["| quick start | what it saves | seed | gold: SFT -> PPO | arithmetic: SFT -> PPO | rows where PPO lost to SFT |",
            "|---|---|---|---|---|---|"]
    from quickstart_cuts import wrong_rows
    for seed, run in default["runs"].items():
        lost = ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, a, b in wrong_rows(run)) or "none"
        rows.append(f"| defaults | - | {seed} | {run['SFT']['gold']:.3f} -> {run['PPO']['gold']:.3f} | "
                    f"{run['SFT']['gold/arithmetic']:.3f} -> {run['PPO']['gold/arithmetic']:.3f} | {lost} |")
    for name, cut in cuts["cuts"].items():
        for seed, run in cut["seeds"].items():
            lost = ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, a, b in run["wrong_rows"]) or "none"
            rows.append(f"| `{' '.join(cut['flags'])}` | {cut['saves']} | {seed} | {run['gold'][0]:.3f} -> "
                        f"{run['gold'][1]:.3f} | {run['gold/arithmetic'][0]:.3f} -> {run['gold/arithmetic'][1]:.3f} | {lost} |")
    return "\n".join(rows)


def eval_noise():
    """bench/bench_eval_noise.py: the report's rows under other sampling seeds, one and four samples per prompt."""
    r = _load("eval_noise_cpu.json")
    ks = r["samples"]
    rows = ["| row | " + " | ".join(f"{k} sample{'s' if k > 1 else ''} per prompt: SFT's spread | PPO's gain, min to max | "
                                   f"seeds where PPO was not better" for k in ks) + " |",
            "|---|" + "---|---|---|" * len(ks)]
    for row in r["rows"]:
        cells = [f"{row[f'k{k}']['sft_spread']:.3f} | {row[f'k{k}']['gain_min']:+.3f} to {row[f'k{k}']['gain_max']:+.3f} | "
                 f"{row[f'k{k}']['seeds_ppo_worse']} of {len(r['seeds'])}" for k in ks]
        rows.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    rows += ["", f"The same SFT and PPO checkpoints (`{r['run']}`), {r['prompts_per_family']} held-out prompts per family, "
                 f"sampling seeds {', '.join(map(str, r['seeds']))}; spread: largest minus smallest value over the seeds; "
                 f"gain: PPO's move the right way. {r['threads']} threads, torch {r['torch']}, {r['date']}."]
    return "\n".join(rows)


def lora_memory():
    """bench/bench_memory.py: memory per stage with and without LoRA, GPU arithmetic and CPU measurements."""
    from bench_memory import docs_tables
    return docs_tables(_load("memory_cpu.json"))


def lora_lab():
    """bench/bench_lora_lab.py: LoRA against full fine-tuning on the lab, per seed."""
    from bench_lora_lab import table_md
    return table_md(_load("lora_lab_cpu.json"))


# name -> (the page that holds it, its results file, the function that writes it)
BLOCKS = {
    "kl_estimate": ("lab_results.md", "kl_estimate_cpu.json", kl_estimate),
    "study_fits": ("study.md", "study_full.json", study_fits),
    "study_bestofn": ("study.md", "study_full.json", study_bestofn),
    "study_ppo_long": ("study.md", "study_full.json", study_ppo_long),
    "study_levers": ("study.md", "study_full.json", study_levers),
    "study_tax": ("study.md", "study_full.json", study_tax),
    "antioveropt_ensembles": ("overoptimisation.md", "antioveropt_cpu.json", antioveropt_ensembles),
    "antioveropt_bestofn": ("overoptimisation.md", "antioveropt_cpu_bon.json", antioveropt_bestofn),
    "antioveropt_algorithms": ("overoptimisation.md", "antioveropt_cpu.json", antioveropt_algorithms),
    "antioveropt_signals": ("overoptimisation.md", "antioveropt_cpu.json", antioveropt_signals),
    "ppo_vs_trl": ("speed.md", "ppo_vs_trl_cpu.json", ppo_vs_trl),
    "generation": ("speed.md", "generate.jsonl", generation),
    "quickstart_stages": ("speed.md", "lab_quickstart_cpu.json", quickstart_stages),
    "quickstart_cuts": ("speed.md", "quickstart_cuts_cpu.json", quickstart_cuts),
    "eval_noise": ("lab_results.md", "eval_noise_cpu.json", eval_noise),
    "micro_batches": ("speed.md", "micro_batches_cpu.json", micro_batches),
    "lora_memory": ("lora.md", "memory_cpu.json", lora_memory),
    "lora_lab": ("lora.md", "lora_lab_cpu.json", lora_lab),
    "seed_fits": ("stopping_and_seeds.md", "study_seeds.json", seed_fits),
    "gold_audit": ("stopping_and_seeds.md", "gold_audit_cpu.json", gold_audit),
    "ensembles": ("ensembles.md", "ensembles_cpu.json", ensembles),
}
BLOCK_RE = re.compile(r"<!-- begin generated: ([\w-]+), .*?-->\n(.*?)<!-- end generated: \1 -->", re.S)


def begin_marker(name):
    return (f"<!-- begin generated: {name}, from bench/results/{BLOCKS[name][1]} by "
            f"`python bench/docs_check.py --update`; do not edit by hand -->")


def blocks_in(text):
    """{name: the text between its markers} for every generated block in a page."""
    return {m.group(1): m.group(2).removesuffix("\n") for m in BLOCK_RE.finditer(text)}


def check(docs_dir=DOCS, generators=None):
    """'' when every block in docs_dir equals what its generator writes now, else the problems with diffs."""
    generators = generators or {name: fn for name, (_, _, fn) in BLOCKS.items()}
    problems, seen = [], set()
    for path in sorted(glob.glob(os.path.join(docs_dir, "*.md"))):
        with open(path) as f:
            found = blocks_in(f.read())
        for name, text in found.items():
            if name not in generators:
                problems.append(f"{path}: unknown generated block {name!r}")
                continue
            seen.add(name)
            want = generators[name]()
            if text != want:
                diff = difflib.unified_diff(text.splitlines(), want.splitlines(), path, BLOCKS[name][1], lineterm="")
                problems.append(f"{path}: block {name!r} differs from bench/results/{BLOCKS[name][1]}:\n"
                                + "\n".join(diff))
    for name in sorted(set(generators) - seen):
        problems.append(f"{docs_dir}/{BLOCKS[name][0]}: block {name!r} is missing (markers: {begin_marker(name)!r})")
    return "\n".join(problems)


def update(docs_dir=DOCS):
    """Rewrite every block in docs_dir from its results file; returns the pages changed."""
    changed = []
    for path in sorted(glob.glob(os.path.join(docs_dir, "*.md"))):
        with open(path) as f:
            text = f.read()
        new = BLOCK_RE.sub(lambda m: f"{begin_marker(m.group(1))}\n{BLOCKS[m.group(1)][2]()}\n"
                                     f"<!-- end generated: {m.group(1)} -->", text)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            changed.append(path)
    return changed


# ---- every file, command, flag and link that the README and docs/ name exists -----------------------------------

TOP = ("minirlhf", "bench", "tests", "docs", "data", "runs", ".ci")  # paths are checked when they start here
PLACEHOLDER = re.compile(r"[<>*]|\bVENV\b|path/to|^data/lab/|^out/|out_dir/")  # names a reader fills in or runs write
CODE = re.compile(r"```.*?```|`[^`\n]+`|^(?:    |\t)[^\n]*$", re.S | re.M)  # fenced blocks, code spans, indented lines
SCRIPT = re.compile(r"\b(?:python|torchrun)\b[^|;&#\n]*?(?:-m\s+([\w.]+)|([\w./-]+\.py))((?:[^|;&#\n])*)")
PATH = re.compile(r"(?<![\w./-])((?:\.ci|minirlhf|bench|tests|docs|data|runs)/[\w./{},<>*-]*|[\w-]+\.(?:py|sh))(?![\w-])")
LINK = re.compile(r"\]\(([^)\s]+)\)")
METRIC = re.compile(r"^((?:objective|policy|value|rollout|time|lab|eval|train|rewards|monitor)/[\w/]+)$")


def _expand(path):
    """bench/results/study_quick.{json,md} -> both names."""
    m = re.search(r"\{([^{}]*)\}", path)
    return [path] if not m else [x for alt in m.group(1).split(",") for x in _expand(path[:m.start()] + alt + path[m.end():])]


def _module_file(module):
    base = os.path.join(ROOT, *module.split("."))
    return next((p for p in (base + ".py", os.path.join(base, "__init__.py")) if os.path.exists(p)), None)


def _flag_defined(flag, source):
    """A flag exists if the command declares it: a dataclass field (parse_args) or an argparse --name."""
    name = flag[2:]
    return re.search(rf"^\s+{re.escape(name)}\s*:", source, re.M) or re.search(rf"[\"']--{re.escape(name)}[\"']", source)


def _anchors(path):
    """GitHub's anchors for a markdown file's headings: lower case, punctuation dropped, spaces to dashes."""
    with open(path) as f:
        heads = [line.lstrip("#").strip() for line in f if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def _walk():
    """os.walk of the repository, without hidden folders, out/ (runs write there) and build leftovers."""
    for d, dirs, names in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("out", "__pycache__")
                   and not x.endswith(".egg-info")]
        yield d, dirs, names


def missing_references(pages):
    """Problems, one per line, with every `python X.py` / `python -m mod`, its --flags, every repository path,
    every logged metric (`objective/kl`) and every relative link in the pages that does not exist."""
    files = [os.path.join(d, f) for d, _, names in _walk() for f in names]
    basenames = {os.path.basename(f) for f in files}
    all_sources = "\n".join(open(f).read() for f in files  # what the code declares: flags, metric names
                            if f.endswith(".py") and os.path.relpath(f, ROOT).split(os.sep)[0] != "tests")
    problems = []
    for page in pages:
        with open(page) as f:
            text = f.read()
        here, name = os.path.dirname(page), os.path.relpath(page, ROOT)
        for code in CODE.findall(text):
            code = code.strip("`").replace("\\\n", " ")
            for module, script, rest in SCRIPT.findall(code):
                if module and module.split(".")[0] not in TOP:
                    continue  # another package's module (python -m pytest)
                target = _module_file(module) if module else os.path.join(ROOT, script)
                if not target or not os.path.exists(target):
                    problems.append(f"{name}: `{module or script}` does not exist")
                    continue
                source = open(target).read()
                for flag in re.findall(r"(?<![\w-])--\w+", rest):
                    if flag != "--help" and not _flag_defined(flag, source):
                        problems.append(f"{name}: {module or script} has no flag {flag}")
            for flag in re.findall(r"(?<![\w-])--\w+", code):  # a flag on its own: some command declares it
                if not SCRIPT.search(code) and flag != "--help" and not _flag_defined(flag, all_sources):
                    problems.append(f"{name}: no command has the flag {flag}")
            metric = METRIC.match(code)  # a logged metric: its name in the source, or its prefix and its key
            if metric and not (f'"{metric[1]}' in all_sources or f"'{metric[1]}" in all_sources or (
                    f"{metric[1].split('/')[0]}/" in all_sources and re.search(rf"\b{metric[1].split('/', 1)[1]}\b", all_sources))):
                problems.append(f"{name}: no script logs {metric[1]}")
            for path in PATH.findall(code):
                if PLACEHOLDER.search(path):
                    continue
                for p in _expand(path.rstrip(".,:")):
                    found = os.path.exists(os.path.join(ROOT, p)) or os.path.exists(os.path.join(here, p)) \
                        or ("/" not in p and p in basenames)  # a file named alone: train_ppo.py, hh_rlhf.sh
                    if not found:
                        problems.append(f"{name}: {p} does not exist")
        for link in LINK.findall(CODE.sub("", text)):
            if re.match(r"[a-z]+:", link):
                continue  # a web address
            target, _, anchor = link.partition("#")
            target = os.path.normpath(os.path.join(here, target)) if target else page
            if not os.path.exists(target):
                problems.append(f"{name}: link {link} leads nowhere")
            elif anchor and target.endswith(".md") and anchor not in _anchors(target):
                problems.append(f"{name}: link {link}: no heading #{anchor} in {os.path.relpath(target, ROOT)}")
    return sorted(set(problems))


def pages():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(DOCS, "*.md")))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a docs/ table differs from its results file, or "
                                                        "README.md or docs/ names a file, command, flag or link that is not there")
    p.add_argument("--update", action="store_true", help="rewrite every docs/ table from its results file")
    p.add_argument("--print", metavar="NAME", choices=sorted(BLOCKS), help="print one block with its markers")
    p.add_argument("--list", action="store_true", help="list the blocks: name, page, results file")
    args = p.parse_args()
    if args.list:
        for name, (page, results, _) in BLOCKS.items():
            print(f"{name:<24} docs/{page:<22} bench/results/{results}")
    if args.print:
        print(f"{begin_marker(args.print)}\n{BLOCKS[args.print][2]()}\n<!-- end generated: {args.print} -->")
    if args.update:
        print("\n".join(f"{path}: tables written" for path in update()) or "docs/: every table already matches")
    if args.check:
        problem = "\n".join(x for x in (check(), "\n".join(missing_references(pages()))) if x)
        print(problem or "docs/: every generated table matches its results file; every named file, command, flag "
                         "and link in README.md and docs/ exists")
        sys.exit(1 if problem else 0)


if __name__ == "__main__":
    main()
