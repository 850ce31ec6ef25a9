"""The whole RLHF pipeline on the lab, on a CPU, in a few minutes: the README's main command.

    python quickstart.py              # lab data -> SFT -> labelled SFT samples -> RM -> PPO -> labelled PPO samples
                                      #   -> RM (continued) -> PPO (continued) -> report
    python quickstart.py --bias 1.0   # biased annotators who like filler: watch the proxy rise, gold fall
    python quickstart.py --rounds 1 --rm_steps 400 --ppo_iters 40   # one round: the textbook pipeline
    python quickstart.py --out_dir out/qs2 --sft_steps 2000 --rounds 3   # longer

Each stage is one of the project's own commands, printed before it runs, so this file is also the recipe:
copy a line to rerun or change one stage. Outputs land in out_dir (default out/quickstart):
data/ (JSONL), sft/, rm/, ppo/ (ckpt.pt + log.jsonl each; the last round's), round1/ (the first round's rm/
and ppo/), report.json, gold_vs_kl.png. A stage counts as done only once its command finished
(minirlhf/stages.py), so a stopped quick start, rerun with the same flags, skips the finished stages and
resumes the unfinished one from its last checkpoint (delete out_dir to start over).

Two rounds of iterated RLHF, not one: the first round's PPO policy finds responses its reward model
overrates (on this lab, mostly wrong sums), and labelling the policy's own samples puts such responses
in front of the annotators. The README shows one round against two.

Each stage runs torch on the cores free when it starts (training.set_cpu_threads: two for the lab's small
models on a quiet 2-core machine, one beside a busy core); the digits do not depend on that count
(tests/test_threads.py), so a rerun on the same machine gives the same report, busy or not.
`python bench/bench_lab.py` measures the quick start's wall time, on a quiet machine and beside a busy core.
"""

import argparse
import json
import os
import sys
import time

from minirlhf.flags import number
from minirlhf.stages import Stage, run_stages

ROOT = os.path.dirname(os.path.abspath(__file__))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="out/quickstart")
    p.add_argument("--seed", type=number(int, ge=0), default=0)
    p.add_argument("--model", default="small", choices=["tiny", "small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"],
                   help="GPTConfig preset of the model SFT trains from scratch: tiny, small (the default), or a GPT-2 "
                        "size (gpt2 ... gpt2-xl: GPT-2's shape, randomly initialised, far slower on a CPU)")
    p.add_argument("--sft_steps", type=number(int, ge=1), default=1000)
    p.add_argument("--sft_lr", type=number(float, gt=0), default=2e-3)
    p.add_argument("--sft_batch_size", type=number(int, ge=1), default=32, help="SFT examples per step")
    p.add_argument("--micro_batch_size", type=number(int, ge=0), default=0,
                   help="SFT examples and reward-model pairs per forward pass (0 = the whole step's batch); a step's "
                        "examples are sorted by length before they are cut, so micro-batches pad less")
    p.add_argument("--samples_per_prompt", type=number(int, ge=2), default=4, help="SFT samples per prompt to pair up for labelling")
    p.add_argument("--label_prompts", type=number(int, ge=1), default=1200, help="prompts whose samples are labelled")
    p.add_argument("--annotator_temperature", type=number(float, ge=0), default=0.1,
                   help="the simulated annotators' noise, annotate.py's label --temperature (0 = always agree with gold)")
    p.add_argument("--flip_rate", type=number(float, ge=0, le=1), default=0.0, help="annotator label flips")
    p.add_argument("--bias", type=number(float), default=0.0, help="annotator liking for filler (> 0: reward hacking)")
    p.add_argument("--families", default="", help="annotator coverage, comma-separated ('' = all families)")
    p.add_argument("--rounds", type=number(int, ge=1), default=2,
                   help="rounds of iterated RLHF: reward model + PPO, then new pairs from the PPO policy, ...")
    p.add_argument("--rm_steps", type=number(int, ge=1), default=300, help="reward-model steps in the first round")
    p.add_argument("--rm_steps_next", type=number(int, ge=1), default=150, help="in each later round, continuing the last one")
    p.add_argument("--rm_batch_size", type=number(int, ge=1), default=64, help="preference pairs per reward-model step")
    p.add_argument("--ppo_iters", type=number(int, ge=1), default=20, help="PPO iterations per round")
    p.add_argument("--ppo_epochs", type=number(int, ge=1), default=4, help="PPO passes over each iteration's rollouts")
    p.add_argument("--n_eval_prompts", type=number(int, ge=1), default=100,
                   help="held-out prompts per lab family, for the report (and PPO's evaluation at the end of a round)")
    p.add_argument("--eval_samples", type=number(int, ge=1), default=4,
                   help="the report's responses per held-out prompt (with one, a row of the same models moved by up to "
                        "0.2 from one sampling seed to the next: bench/bench_eval_noise.py)")
    p.add_argument("--kl_coef", type=number(float, ge=0), default=0.2,
                   help="PPO's beta; higher than the usual 0.05 as a guard against this small reward model's blind "
                        "spots, which PPO can find at 0.05 (see the README)")
    args = p.parse_args()

    out = args.out_dir
    data = os.path.join(out, "data")
    py = sys.executable

    def micro(batch_size):  # --micro_batch_size for a stage whose steps take batch_size examples
        return str(min(args.micro_batch_size or batch_size, batch_size))

    stages = [
        Stage("lab data",
         [py, "-m", "minirlhf.lab.make_data", "--out_dir", data, "--seed", str(args.seed),
          "--n_eval_prompts", str(args.n_eval_prompts)]),
        Stage("SFT",
         [py, "train_sft.py", "--train_data", f"{data}/sft.jsonl", "--eval_data", f"{data}/sft_eval.jsonl",
          "--out_dir", f"{out}/sft", "--init_from", f"scratch:{args.model}", "--max_steps", str(args.sft_steps),
          "--lr", str(args.sft_lr), "--batch_size", str(args.sft_batch_size),
          "--micro_batch_size", micro(args.sft_batch_size),
          "--log_interval", "100", "--eval_interval", str(max(1, args.sft_steps // 2)),
          "--ckpt_interval", str(max(1, args.sft_steps // 2)), "--seed", str(args.seed)],
         resume_dir=f"{out}/sft"),
    ]
    # Iterated RLHF (the "iterated online RLHF" of Bai et al. 2022; Llama 2's rounds): each round trains a reward
    # model on every pair labelled so far and runs PPO against it; the next round labels samples of *that* PPO
    # policy, which is where the last reward model's mistakes in the policy's favour show up, and goes on from
    # there. The last round writes rm/ and ppo/; earlier ones write roundN/rm and roundN/ppo.
    prefs, prev_rm, prev_ppo, ppo_logs = [], None, None, []
    for r in range(1, args.rounds + 1):
        last, tag = r == args.rounds, "" if r == 1 else f" {r}"
        rm_dir, ppo_dir = (f"{out}/rm", f"{out}/ppo") if last else (f"{out}/round{r}/rm", f"{out}/round{r}/ppo")
        round_seed = str(args.seed + r - 1)
        # pairs of samples from the current policy (SFT in the first round), labelled by the annotators
        suffix = "" if r == 1 else f"_round{r}"
        samples, new_prefs = f"{data}/samples{suffix}.jsonl", f"{data}/prefs{suffix}.jsonl"
        prefs.append(new_prefs)
        stages += [
            Stage(f"sample pairs{tag}",
             [py, "-m", "minirlhf.lab.annotate", "sample", "--ckpt", prev_ppo or f"{out}/sft/ckpt.pt",
              "--prompts", f"{data}/prompts_train.jsonl", "--out", samples, "--k", str(args.samples_per_prompt),
              "--n_prompts", str(args.label_prompts), "--temperature", "1.0", "--seed", round_seed]),
            Stage(f"label pairs{tag}",
             [py, "-m", "minirlhf.lab.annotate", "label", "--samples", samples, "--out", new_prefs,
              "--labeller", "sim", "--temperature", str(args.annotator_temperature), "--flip_rate", str(args.flip_rate),
              "--bias", str(args.bias), "--seed", round_seed]
             + (["--families", args.families] if args.families else [])),
            Stage(f"reward model{tag}",
             [py, "train_rm.py", "--train_data", ",".join(prefs), "--sft_ckpt", f"{out}/sft/ckpt.pt",
              "--out_dir", rm_dir, "--max_steps", str(args.rm_steps if r == 1 else args.rm_steps_next),
              "--batch_size", str(args.rm_batch_size), "--micro_batch_size", micro(args.rm_batch_size),
              "--log_interval", "50", "--eval_interval", "1000", "--ckpt_interval", "1000", "--seed", round_seed]
             + (["--init_from", prev_rm] if prev_rm else []), resume_dir=rm_dir),
            Stage(f"PPO{tag}",
             [py, "train_ppo.py", "--prompts", f"{data}/prompts_train.jsonl",  # the last round's held-out gold is
              "--eval_prompts", "" if last else f"{data}/prompts_eval.jsonl",  # the report's: not measured twice
              "--sft_ckpt", f"{out}/sft/ckpt.pt",
              "--rm_ckpt", f"{rm_dir}/ckpt.pt", "--out_dir", ppo_dir, "--num_iters", str(args.ppo_iters),
              "--kl_coef", str(args.kl_coef), "--ppo_epochs", str(args.ppo_epochs),
              "--eval_interval", str(args.ppo_iters), "--ckpt_interval", str(max(1, args.ppo_iters // 2)),
              "--log_samples", "1", "--seed", round_seed]
             + (["--policy_ckpt", prev_ppo] if prev_ppo else []), resume_dir=ppo_dir)]
        prev_rm, prev_ppo = f"{rm_dir}/ckpt.pt", f"{ppo_dir}/ckpt.pt"
        ppo_logs.append(f"{ppo_dir}/log.jsonl")
    stages.append(
        Stage("evaluation",
         [py, "-m", "minirlhf.lab.evaluate", f"SFT={out}/sft/ckpt.pt", f"PPO={out}/ppo/ckpt.pt",
          "--rm", f"{out}/rm/ckpt.pt", "--ref", f"{out}/sft/ckpt.pt", "--prompts", f"{data}/prompts_eval.jsonl",
          "--samples_per_prompt", str(args.eval_samples), "--json", f"{out}/report.json",
          "--plot", ",".join(ppo_logs), "--plot_out", f"{out}/gold_vs_kl.png"]))  # the plot: all rounds as one run
    t_start = time.time()
    timings = run_stages(stages, state_dir=out, cwd=ROOT)
    total = time.time() - t_start
    print("\n=== wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
          + f"; total {total:.0f} s")
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump({**timings, "total": round(total, 1)}, f)
    print(f"\nTalk to your models (SFT and PPO side by side; the reward model's score and the gold score each):\n"
          f"    python sample.py --ckpt SFT={out}/sft/ckpt.pt --ckpt PPO={out}/ppo/ckpt.pt --rm {out}/rm/ckpt.pt\n"
          f"    python sample.py --ckpt SFT={out}/sft/ckpt.pt --ckpt PPO={out}/ppo/ckpt.pt --rm {out}/rm/ckpt.pt "
          f"--prompt 'What is 3 + 4? I think it is 8.' --n 3")


if __name__ == "__main__":
    main()
