"""The README's quick-start table is the committed results file, not a copy of it: the table between the README's
markers equals what `python bench/bench_lab.py --table` generates from bench/results/lab_quickstart_cpu.json, and
the check notices a changed cell (so it is not a test that cannot fail). And the README keeps its shape: at most
250 lines, with exactly two set-up commands, the second being the test command that CI (.ci/run) runs.
Text only: no training, milliseconds. (tests/test_docs.py checks the files, commands and links it names.)

    python -m pytest tests/test_readme.py -q
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_lab  # noqa: E402


def test_readme_table_is_the_committed_results():
    assert bench_lab.check_readme() == ""


def test_a_changed_cell_or_result_is_caught(tmp_path):
    readme = open(bench_lab.README).read()
    table = bench_lab.readme_table(readme)
    gold_row = next(line for line in table.splitlines() if line.startswith("| gold score |"))
    changed = tmp_path / "README.md"
    changed.write_text(readme.replace(gold_row, gold_row.replace("| gold score | ", "| gold score | 9", 1)))
    assert "differs" in bench_lab.check_readme(str(changed)) and "+| gold score" in bench_lab.check_readme(str(changed))

    results = json.load(open(bench_lab.RESULTS))
    results["runs"]["0"]["PPO"]["gold"] += 0.001  # a rerun that moved one number
    moved = tmp_path / "results.json"
    moved.write_text(json.dumps(results))
    assert "differs" in bench_lab.check_readme(bench_lab.README, str(moved))
    # the table's cells come from the file: PPO's gold for seed 0, to 3 decimals, bold
    gold_cells = bench_lab.markdown_table(results).splitlines()[2].split(" | ")
    assert gold_cells[2] == f"**{results['runs']['0']['PPO']['gold']:.3f}**"


def test_readme_fits_its_budget_and_names_the_ci_test_command():
    lines = open(bench_lab.README).read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the budget is 250 (move the rest to docs/)"
    quick_start = "\n".join(lines[lines.index("## Quick start"):]).split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines() if line.startswith("    pip install")]
    assert len(commands) == 2 and commands[0].endswith("python quickstart.py"), commands
    # CI may run the parts on lines of their own, quietly (-q) and without standard input (</dev/null)
    plain = lambda cmd: " ".join(w for w in cmd.split() if w not in ("-q", "</dev/null"))  # noqa: E731
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = {plain(part) for line in f if not line.lstrip().startswith("#") for part in line.split("&&")}
    for part in commands[1].split("&&"):
        assert plain(part) in ci, f"the README's test command runs {part.strip()!r}, which .ci/run does not"
