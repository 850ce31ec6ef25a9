"""docs/ppo_details.md against the code: every detail's marker "[PPO detail N]" is in train_ppo.py, every code line
the page quotes is in train_ppo.py word for word, and every mutation it names is one bench/mutation_check.py makes
(so the page cannot drift from the code). Text only, milliseconds.

    python -m pytest tests/test_ppo_details.py -q
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import mutation_check  # noqa: E402

PAGE = open(os.path.join(ROOT, "docs", "ppo_details.md")).read()
PPO = open(os.path.join(ROOT, "train_ppo.py")).read()
RLOO = open(os.path.join(ROOT, "train_rloo.py")).read()


def test_every_detail_is_marked_in_the_script_and_explained_on_the_page():
    for n in range(1, 11):
        assert f"[PPO detail {n}]" in PPO, n
        assert re.search(rf"^## {n}\. ", PAGE, flags=re.M), n
    for n in (1, 2, 3, 4, 5, 6, 7, 10):  # the details that apply to a critic-free sibling
        assert f"[PPO detail {n}]" in RLOO, n
    assert not re.search(r"\[PPO detail (8|9)\]", RLOO)  # no value model, no whitening


def test_quoted_code_is_the_code():
    quoted = [line.strip() for line in PAGE.splitlines() if line.startswith("    ") and "..." not in line
              and not line.strip().startswith("grep")]
    assert len(quoted) >= 8
    for line in quoted:
        assert line in PPO, line


def test_named_mutations_exist():
    described = [m[3] for m in mutation_check.MUTATIONS]
    named = re.findall(r'"([^"]+)"', PAGE.split("Tests:", 1)[1])
    named = [n for n in named if not n.startswith(("[", "grep"))]
    assert len(named) >= 15
    for name in named:
        assert any(d.startswith(" ".join(name.split())) for d in described), name
