"""docs/stopping_and_seeds.md's tables are its results files, not copies: each sits between two markers and is
regenerated from its file by the project's own report code, then compared (as bench/bench_lab.py checks the
README's quick-start table).

    python bench/stopping_docs.py --check      # exit 1, with a diff, when a table differs from its results file
    python bench/stopping_docs.py --update     # rewrite the tables from the results files

A table in the page:

    <!-- table: NAME (from bench/results/FILE; python bench/stopping_docs.py --update) -->
    ...
    <!-- end table: NAME -->
"""

import argparse
import difflib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS, PAGE = os.path.join(ROOT, "bench", "results"), os.path.join(ROOT, "docs", "stopping_and_seeds.md")


def _load(name):
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def seed_fits():
    from minirlhf.lab.study_report import seeds_markdown
    return "\n".join(seeds_markdown(_load("study_seeds.json"))[2:])  # without the report's own heading


def early_stop_restated():
    from bench.antioveropt_analysis import markdown
    text = markdown(os.path.join(RESULTS, "antioveropt_cpu.json"))
    return text.split("Early warning, firing at z = 2.0:\n\n", 1)[1].split("\n\n", 1)[0]


def gold_audit():
    from bench.gold_audit import markdown
    return markdown(_load("gold_audit_cpu.json"))


BLOCKS = {"seed_fits": ("study_seeds.json", seed_fits), "early_stop_restated": ("antioveropt_cpu.json", early_stop_restated),
          "gold_audit": ("gold_audit_cpu.json", gold_audit)}
BLOCK_RE = re.compile(r"<!-- table: ([\w-]+) .*?-->\n(.*?)\n?<!-- end table: \1 -->", re.S)  # empty when new


def check(page=PAGE):
    """'' when every table in the page equals what its generator writes now, else the differences."""
    with open(page) as f:
        found = {m.group(1): m.group(2) for m in BLOCK_RE.finditer(f.read())}
    problems = [f"{page}: table {name!r} is missing" for name in BLOCKS if name not in found]
    for name, text in found.items():
        want = BLOCKS[name][1]()
        if text != want:
            diff = difflib.unified_diff(text.splitlines(), want.splitlines(), page, BLOCKS[name][0], lineterm="")
            problems.append(f"{page}: table {name!r} differs from bench/results/{BLOCKS[name][0]}:\n" + "\n".join(diff))
    return "\n".join(problems)


def update(page=PAGE):
    with open(page) as f:
        text = f.read()
    new = BLOCK_RE.sub(lambda m: m.group(0).split("\n", 1)[0] + "\n" + BLOCKS[m.group(1)][1]() + f"\n<!-- end table: {m.group(1)} -->", text)
    with open(page, "w") as f:
        f.write(new)
    return new != text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--update", action="store_true")
    a = p.parse_args()
    if a.update:
        print("updated" if update() else "unchanged")
    problems = check()
    if problems:
        print(problems)
        sys.exit(1)
    print(f"{PAGE}: every table matches its results file")


if __name__ == "__main__":
    main()
