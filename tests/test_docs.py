"""docs/ is checked like the README's table: every generated table in docs/*.md equals what bench/docs_check.py
writes from its results file under bench/results/, and a changed cell or a moved result is caught; and every
file, `python X.py` / `python -m module` command, --flag, logged metric and relative link that README.md and
docs/ name exists (flags looked up in the command's own source), so a rename elsewhere shows up here. Text only:
no training.

    python -m pytest tests/test_docs.py -q
"""

import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import docs_check  # noqa: E402


def test_docs_tables_are_the_committed_results():
    assert docs_check.check() == ""


def test_every_block_has_its_page():
    for name, (page, results, _) in docs_check.BLOCKS.items():
        assert os.path.exists(os.path.join(ROOT, "bench", "results", results)), results
        with open(os.path.join(ROOT, "docs", page)) as f:
            assert name in docs_check.blocks_in(f.read()), f"docs/{page} lacks block {name}"


def test_a_changed_cell_is_caught(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(os.path.join(ROOT, "docs"), docs)
    page = docs / "study.md"
    text = page.read_text()
    block = docs_check.blocks_in(text)["study_levers"]
    row = next(line for line in block.splitlines() if line.startswith("| baseline |"))
    cell = row.split(" | ")[3]  # the baseline's gold, "0.874 ± 0.007" in the committed run
    page.write_text(text.replace(row, row.replace(cell, "0.999 ± 0.007", 1)))
    problem = docs_check.check(str(docs))
    assert "study_levers" in problem and "differs" in problem and f"+{row}" in problem

    page.write_text(text.replace(docs_check.begin_marker("study_levers"), "", 1))
    assert "study_levers" in docs_check.check(str(docs)) and "missing" in docs_check.check(str(docs))


def test_a_moved_result_is_caught(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(os.path.join(ROOT, "bench", "results"), results)
    study = json.loads((results / "study_full.json").read_text())
    study["levers"][0]["gold"] += 0.01  # a rerun that moved one number
    (results / "study_full.json").write_text(json.dumps(study))
    kl = json.loads((results / "kl_estimate_cpu.json").read_text())
    kl["per_response"]["correlation"] += 0.1
    (results / "kl_estimate_cpu.json").write_text(json.dumps(kl))
    monkeypatch.setattr(docs_check, "RESULTS", str(results))
    problem = docs_check.check()
    assert "'study_levers' differs" in problem and "'kl_estimate' differs" in problem
    assert "'study_tax' differs" not in problem  # the tax table does not read the levers
    # the cell comes from the file: the baseline's gold, 3 decimals, then its standard deviation
    assert f"| {study['levers'][0]['gold']:.3f} ± " in docs_check.study_levers()


def test_every_named_file_command_flag_and_link_exists():
    assert docs_check.missing_references(docs_check.pages()) == []


def test_a_missing_file_command_flag_or_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(  # the page lies outside the repository: its link to the README is absolute
        "Run `python train_ppo.py --kl_coef 0.1 --no_such_flag 1` and `python -m minirlhf.lab.nowhere`, then\n"
        "\n    python bench/not_a_bench.py --seed 0\n    python sample.py --ckpt a.pt --n 2\n\n"
        "Watch `objective/kl` and `policy/no_such_metric`. Read `minirlhf/no_such_module.py`, `bench/results/study_quick.{json,nope}` and `--not_any_flag`; see\n"
        f"[the README]({ROOT}/README.md#no-such-heading), [a page](missing.md) and [a site](https://example.org).\n")
    found = "\n".join(docs_check.missing_references([str(page)]))
    for expected in ("train_ppo.py has no flag --no_such_flag", "`minirlhf.lab.nowhere` does not exist",
                     "`bench/not_a_bench.py` does not exist", "minirlhf/no_such_module.py does not exist",
                     "bench/results/study_quick.nope does not exist", "no command has the flag --not_any_flag",
                     "no heading #no-such-heading", "link missing.md leads nowhere",
                     "no script logs policy/no_such_metric"):
        assert expected in found, expected
    # and what exists is not reported
    for fine in ("--kl_coef", "sample.py", "study_quick.json", "example.org", "--seed", "objective/kl"):
        assert fine not in found, fine
