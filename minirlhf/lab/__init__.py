"""The lab: an offline RLHF environment whose "human" is a known function (the gold judge).

    world.py      prompt families, tables, templates, the train / held-out split, the demonstrator
    gold.py       gold(prompt, response, ended=True) -> Judgement (score and per-behaviour flags)
    sampling.py   sampling responses from a checkpoint; sequence log-probs and reward-model scores
    annotate.py   simulated / human / reward-model labellers; `python -m minirlhf.lab.annotate sample|label`
    evaluate.py   the report table and the gold-vs-proxy plot; `python -m minirlhf.lab.evaluate CKPT ...`
    make_data.py  SFT data and prompt files; `python -m minirlhf.lab.make_data --out_dir data/lab`
"""

from minirlhf.lab.gold import Judgement, gold
from minirlhf.lab.world import FAMILIES, Task, demonstrate, eval_tasks, ideal_response, parse_prompt, split_prompts

__all__ = ["FAMILIES", "Judgement", "Task", "demonstrate", "eval_tasks", "gold", "ideal_response", "parse_prompt",
           "split_prompts"]
