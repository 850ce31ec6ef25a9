"""Every DDP run of tests/test_ddp.py in one torchrun: the two ranks start once and run the jobs in turn, each as
`torchrun script.py FLAGS` would run it (every main() sets up and tears down its own process group), so the tests
pay for starting torchrun and two interpreters once, not once per job.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py JOBS.json

The first job sets up its process group itself, from torchrun's environment (training.setup_runtime); each later
job finds one already set up here, on a store file of its own (setup_runtime keeps a group it finds): set up
again on torchrun's store, a group would meet the keys the last one left there, and can hang.

JOBS.json holds a list of [name, script, flags]; rank 0 prints "### name" before each job's output. The script
"fixed_rollouts" is fixed_rollout_gradients below (flags: the data folder, the output folder), whose gradients
rank 0 saves to grads.pt in the output folder; tests/test_ddp.py calls it in one process for the reference.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_ppo  # noqa: E402
import train_sft  # noqa: E402
from minirlhf.model import GPT  # noqa: E402
from minirlhf.training import parse_args  # noqa: E402


def fixed_rollout_gradients(d, out):
    """One PPO iteration (train_ppo.main) on 8 fixed responses of very different lengths, rank r of w taking its
    share; -> the gradients of the policy and of the value model after backward, as DDP averaged them."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    responses = torch.load(f"{d}/responses.pt")[rank * 8 // world: (rank + 1) * 8 // world]

    def generate(self, ids, mask, max_new_tokens, pad_token_id, **kw):  # the fixed rollouts, not samples
        return torch.cat([ids, responses], 1), torch.cat([mask, (responses != pad_token_id).long()], 1)

    grads, clip, real_generate = [], torch.nn.utils.clip_grad_norm_, GPT.generate

    def capture(params, *a, **k):  # called once per model after backward: the gradient DDP averaged
        params = list(params)
        grads.append([p.grad.clone() for p in params])
        return clip(params, *a, **k)

    GPT.generate, torch.nn.utils.clip_grad_norm_ = generate, capture
    try:
        train_ppo.main(train_ppo.Args(
            prompts=f"{d}/one_prompt.jsonl", eval_prompts="", sft_ckpt=f"{d}/base.pt", rm_ckpt=f"{d}/rm.pt",
            out_dir=out, num_iters=1, batch_size=8, num_minibatches=1, micro_batch_size=4, ppo_epochs=1,
            max_new_tokens=responses.size(1), log_samples=0, grad_clip=0.0, lr=1e-3, value_lr=1e-3))
    finally:
        GPT.generate, torch.nn.utils.clip_grad_norm_ = real_generate, clip
    return grads


def main(jobs_file):
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with open(jobs_file) as f:
        jobs = json.load(f)
    for i, (name, script, flags) in enumerate(jobs):
        if rank == 0:
            print(f"### {name}", flush=True)
        if i > 0:
            store = f"file://{os.path.dirname(os.path.abspath(jobs_file))}/store_{i}"
            torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
        if script == "fixed_rollouts":
            grads = fixed_rollout_gradients(*flags)
            if rank == 0:
                torch.save(grads, os.path.join(flags[1], "grads.pt"))
        else:
            module = {"train_sft.py": train_sft, "train_ppo.py": train_ppo}[script]
            module.main(parse_args(module.Args, flags))
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
