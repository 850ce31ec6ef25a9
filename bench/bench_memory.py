"""Memory per stage (SFT, RM, DPO, PPO), with and without LoRA, at GPT-2 124M, 355M, 774M and 1.5B shapes: the
arithmetic for 24 GB and 80 GB GPUs, and CPU measurements (peak RSS) beside the same arithmetic.

    python bench/bench_memory.py                     # arithmetic tables + every CPU case that fits --max_gb
    python bench/bench_memory.py --no_measure        # arithmetic only (instant)
    python bench/bench_memory.py --case ppo:gpt2-xl:16   # one CPU measurement (what each child process runs)

The arithmetic (bytes; C = n_embd, L = n_layer, V = 50258, Np = parameters, Nl = 12 C^2 L of them in the blocks'
four matrices, Na = 16 r C L adapter parameters for targets c_attn, c_proj, c_fc):
  trained, full fine-tuning  16 Np: fp32 weights 4, gradients 4, AdamW's two moments 8; plus the bf16 copies of
                             the weights that autocast makes and autograd keeps for the backward, 2 Np
  frozen, full model         4 Np (fp32: today's PPO reference and reward model)
  frozen trunk under LoRA    2 Nl + 4 (Np - Nl): the blocks' matrices in bf16 (lora.frozen_to), the rest fp32
  trained under LoRA         (16 + 2) Na, and a scalar head's C + 1 parameters where there is one; the bf16
                             copy autocast makes of the frozen fp32 lm_head (= wte) for the backward, 2 V C
  activations                40 C L per token per trained model (runs/hh_rlhf.sh): LoRA does not shrink them, the
                             backward runs through the whole trunk to reach the first layers' adapters
  logits                     4 V per scored token on a GPU (bf16 logits and gradient, Triton log-probs); the CPU
                             reference path keeps fp32 copies: 16 V
  PPO rollout                the fp32 KV cache, 8 C L per position per sequence, beside the weights (no
                             gradients then: 12 B per trained parameter)
A stage's peak is its largest phase: PPO max(update, rollout); DPO's full reference (4 Np) is scored and dropped
before training, LoRA's is the policy with its adapters off (nothing extra).

The GPU tables use the shapes of the runs/ flags files for GPT-2 large and XL (runs/hh_gpt2-large_24gb etc.):
1024-token sequences for SFT/RM/DPO (fused log-probs: no logits), PPO with 448 + 128 tokens.
The CPU measurement: random weights laid out as on a GPU (bf16 frozen matrices under LoRA, fp32 otherwise), bf16
autocast on the CPU (torch.autocast('cpu'): the same dtypes as on a GPU), a small batch, one process per case;
the peak RSS (VmHWM, reset after the models are built) minus the RSS before anything was built, against the same
arithmetic at that shape. Results: bench/results/memory_cpu.json and .md.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PRESETS = {"gpt2": (768, 12), "gpt2-medium": (1024, 24), "gpt2-large": (1280, 36), "gpt2-xl": (1600, 48)}
V, BLOCK = 50258, 1024
STAGES = ("sft", "rm", "dpo", "ppo")
RANK = 16
# shapes: sequence length T, micro-batch m (sequences, or pairs for RM/DPO), scored tokens per sequence R (None =
# fused log-probs, no logits), PPO rollout batch and prompt + response lengths
GPU_SHAPES = {24: dict(T=1024, m=2, R=None, rollout=16, P=448, new=128, ppo_m=1),
              80: dict(T=1024, m=8, R=None, rollout=64, P=448, new=128, ppo_m=4)}
CPU_SHAPE = dict(T=256, m=1, R=32, rollout=2, P=64, new=16, ppo_m=2)


def counts(preset):
    C, L = {**PRESETS, "tiny": (64, 2)}[preset]  # tiny: bench/gpu_check.py --smoke
    Np = V * C + BLOCK * C + L * (12 * C * C + 13 * C + 4 * C) + 2 * C  # wte, wpe, blocks (+ biases, LNs), ln_f
    return C, L, Np, 12 * C * C * L


def estimate(stage, preset, rank, shape, cpu=False):
    """Bytes by component, and the peak, for one stage at one shape (see the docstring for every term)."""
    C, L, Np, Nl = counts(preset)
    Na = 16 * rank * C * L
    act = 40 * C * L  # bytes a token, a trained model
    logit = (16 if cpu else 4) * V
    if rank:
        trunk, trained, head = 2 * Nl + 4 * (Np - Nl), Na, C + 1
    else:
        trunk, trained, head = 0, Np, 0
    T, m, R = shape["T"], shape["m"], shape["R"]
    scored = 0 if R is None else R
    per_model = trained + (head if stage in ("rm", "ppo") else 0)
    r = dict(params_trained=2 * per_model if stage == "ppo" else per_model)  # PPO: policy and value model
    n_frozen_full = 2 if (stage == "ppo" and not rank) else 0  # PPO's reference and reward model, fp32
    trunks = (2 if stage == "ppo" else 1) if rank else 0
    r["weights_trained"] = 4 * r["params_trained"]
    r["gradients"] = r["weights_trained"]
    r["optimizer"] = 2 * r["weights_trained"]
    r["autocast_copies"] = r["weights_trained"] // 2
    if rank and stage in ("sft", "dpo", "ppo"):  # lm_head (tied to the frozen fp32 wte): autocast's bf16 copy
        r["autocast_copies"] += 2 * V * C
    r["frozen"] = trunks * trunk + n_frozen_full * 4 * Np
    if stage == "sft":
        r["activations"], r["logits"] = m * T * act, m * scored * logit
    elif stage == "rm":
        r["activations"], r["logits"] = 2 * m * T * act, 0
    elif stage == "dpo":
        r["activations"], r["logits"] = 2 * m * T * act, 2 * m * scored * logit
    else:
        Tp = shape["P"] + shape["new"]
        r["activations"], r["logits"] = 2 * shape["ppo_m"] * Tp * act, shape["ppo_m"] * shape["new"] * logit
        r["kv_cache"] = shape["rollout"] * Tp * 8 * C * L
    static = r["weights_trained"] + r["gradients"] + r["optimizer"] + r["frozen"]
    r["update"] = static + r["autocast_copies"] + r["activations"] + r["logits"]
    r["peak"] = r["update"]
    if stage == "ppo":
        r["rollout"] = static - r["gradients"] + r["kv_cache"]
        r["peak"] = max(r["update"], r["rollout"])
    return r


def gb(x):
    return x / 1e9


def gpu_table():
    rows = []
    for preset in PRESETS:
        for stage in STAGES:
            for rank in (0, RANK):
                row = dict(preset=preset, stage=stage, lora_rank=rank)
                for card, shape in GPU_SHAPES.items():
                    e = estimate(stage, preset, rank, shape)
                    row[f"{card}gb"] = {k: v for k, v in e.items()}
                    row[f"fits_{card}gb"] = e["peak"] <= 0.9 * card * 2**30  # 10 %: CUDA context, fragmentation
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------- one CPU measurement (a child)


def rss_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(stage, preset, rank, shape=CPU_SHAPE, device="cpu"):
    """One step of `stage` after a first one (AdamW's moments exist): its peak memory. CPU: peak RSS (VmHWM, reset
    after the first step) and the RSS before anything was built; CUDA: torch.cuda.max_memory_allocated."""
    import gc

    import torch

    from minirlhf import lora
    from minirlhf.model import GPT, GPTConfig, ScalarGPT
    from minirlhf.scoring import last_token_scores, response_logprobs, sequence_logprobs
    from minirlhf.training import adamw

    cuda = device.startswith("cuda")
    rss0 = 0 if cuda else rss_kb("VmRSS")
    s = shape
    cfg = GPTConfig.preset(preset, vocab_size=V, block_size=BLOCK)
    auto = lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)  # noqa: E731

    def build(cls, trained=()):
        torch.manual_seed(0)
        with torch.device(device):
            model = cls(cfg).eval()
        if rank:
            lora.frozen_to(lora.add_lora(model, rank, 2.0 * rank, trained=trained), torch.bfloat16)
        return model

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(50000, (max(2, s["rollout"]), max(s["T"], s["P"])), generator=g).to(device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    if stage == "ppo":
        policy = build(GPT)
        if rank:
            trunk = build(ScalarGPT)
            ref, reward, value = lora.AdaptersOff(policy), lora.AdaptersOff(trunk), lora.ValueOnTrunk(trunk)
        else:
            ref, reward, value = build(GPT).requires_grad_(False), build(ScalarGPT).requires_grad_(False), build(ScalarGPT)
        opts = [adamw(policy, 1e-5), adamw(value, 1e-5)]
    else:
        model = build(ScalarGPT if stage == "rm" else GPT, trained=("score.",) if stage == "rm" else ())
        opts = [adamw(model, 1e-5)]

    def step():
        if stage == "ppo":  # rollout (random weights never sample the impossible end-of-text: full length), score,
            P, b = s["P"], s["rollout"]  # then the update in micro-batches of ppo_m, policy and value model
            prompts = tokens[:b, :P]
            seq, m = policy.generate(prompts, torch.ones_like(prompts, dtype=torch.bool), s["new"], eos_token_id=V + 1,
                                     pad_token_id=V - 1, temperature=1.0)
            with torch.no_grad(), auto():
                old = response_logprobs(policy, seq, m, P)
                response_logprobs(ref, seq, m, P)
                old_v = value(seq, m, start=P - 1)[:, :-1]
                last_token_scores(reward, seq, m, start=P - 1)
            for i in range(0, b, s["ppo_m"]):
                j = slice(i, i + s["ppo_m"])
                with auto():
                    lp = response_logprobs(policy, seq[j], m[j], P)
                    v = value(seq[j], m[j], start=P - 1)[:, :-1]
                    loss = -torch.exp(lp - old[j]).mean() + ((v - old_v[j] - 1) ** 2).mean()
                loss.backward()
        else:
            T, R = s["T"], s["R"] or s["T"] - 1
            t, k = tokens[:2, :T], mask[:2, :T]
            with auto():
                if stage == "sft":
                    loss = -response_logprobs(model, t[:1], k[:1], T - R).sum()
                elif stage == "rm":
                    scores = last_token_scores(model, t, k)
                    loss = -torch.nn.functional.logsigmoid(scores[0] - scores[1])
                else:
                    resp = torch.zeros_like(k)
                    resp[:, T - R:] = True
                    if rank:
                        with torch.no_grad():
                            ref_lp = sequence_logprobs(lora.AdaptersOff(model), t, k, resp)
                    else:
                        ref_lp = torch.zeros(2, device=device)  # full: scored once by a reference model, dropped
                    lp = sequence_logprobs(model, t, k, resp)
                    loss = -torch.nn.functional.logsigmoid(0.1 * ((lp[0] - ref_lp[0]) - (lp[1] - ref_lp[1])))
            loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)

    step()  # the first step creates AdamW's moments; the second is the steady state measured
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    else:
        resident = rss_kb("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM: from here the peak of one step (on top of what is resident)
    t0 = time.time()
    step()
    if cuda:
        torch.cuda.synchronize()
        return dict(peak_B=torch.cuda.max_memory_allocated(), resident_B=resident,
                    peak_reserved_B=torch.cuda.max_memory_reserved(), step_s=round(time.time() - t0, 2))
    return dict(peak_B=rss_kb("VmHWM") * 1024 - rss0 * 1024, resident_B=resident - rss0 * 1024,
                step_s=round(time.time() - t0, 1))


# ----------------------------------------------------------------------------- the parent


def run_case(stage, preset, rank):
    cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{stage}:{preset}:{rank}"]
    # glibc's default mmap threshold grows after each large free, after which freed tensors stay resident and
    # inflate the RSS; a fixed threshold returns every large tensor to the system when freed, as a GPU allocator would
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results):
    lines = [f"# Memory per stage, with and without LoRA (r = {RANK}, alpha = {2 * RANK})", "",
             f"Generated by `{results['command']}` on {results['date']} ({results['machine']}).", "",
             "## GPU arithmetic (GB = 1e9 bytes; fits = peak <= 90 % of the card)", "",
             "| model | stage | LoRA | trained params | weights+grads+AdamW | frozen | activations | peak 24 GB shape "
             "| fits 24 GB | peak 80 GB shape | fits 80 GB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["gpu"]:
        a, b = r["24gb"], r["80gb"]
        lines.append(f"| {r['preset']} | {r['stage']} | {'r=' + str(r['lora_rank']) if r['lora_rank'] else 'full'} | "
                     f"{r['24gb']['params_trained'] / 1e6:.1f}M | "
                     f"{gb(a['weights_trained'] + a['gradients'] + a['optimizer']):.2f} | {gb(a['frozen']):.2f} | "
                     f"{gb(a['activations']):.2f} | {gb(a['peak']):.1f} | {'yes' if r['fits_24gb'] else 'no'} | "
                     f"{gb(b['peak']):.1f} | {'yes' if r['fits_80gb'] else 'no'} |")
    s = CPU_SHAPE
    lines += ["", "Shapes: 24 GB: SFT 2 x 1024 tokens, RM and DPO 2 pairs x 2 x 1024, PPO update 1 x 576 tokens on two "
              "models, rollout 16 x 576 with an fp32 KV cache; 80 GB: 8, 8 pairs, PPO update 4, rollout 64.", "",
              "## CPU: measured peak RSS against the same arithmetic", "",
              f"Random weights; bf16 autocast on the CPU; frozen matrices bf16 under LoRA, everything fp32 without; "
              f"shape: SFT 1 x {s['T']} tokens ({s['R']} scored), RM and DPO one pair of 2 x {s['T']}, PPO a rollout "
              f"of {s['rollout']} x ({s['P']} + {s['new']}) tokens, the scoring pass and one update of policy and "
              "value model, AdamW steps. Measured = peak RSS during the step (VmHWM reset after the models are "
              "built) minus the RSS before they were built. Cases whose arithmetic exceeds --max_gb are not run.", "",
              "Resident: between two steps (weights, AdamW moments), measured after a first step; the difference "
              "to the arithmetic is mostly the process's own growth (code pages of the kernels first run, "
              "allocator), about 0.1 GB whatever the model.", "",
              "| model | stage | LoRA | resident: arithmetic | measured | peak: arithmetic GB | measured GB | "
              "measured / arithmetic | step s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["cpu"]:
        m = r.get("measured_GB")
        lines.append(f"| {r['preset']} | {r['stage']} | {'r=' + str(r['lora_rank']) if r['lora_rank'] else 'full'} | "
                     f"{r['arithmetic_resident_GB']:.2f} | {r.get('measured_resident_GB', '-')} | "
                     f"{r['arithmetic_GB']:.2f} | {'-' if m is None else f'{m:.2f}'} | "
                     f"{r.get('ratio', r.get('skipped', r.get('error', '-')))} | {r.get('step_s', '-')} |")
    return "\n".join(lines) + "\n"


def docs_tables(results):
    """The two tables of docs/lora.md (bench/docs_check.py regenerates them from memory_cpu.json)."""
    rows = {(r["preset"], r["stage"], r["lora_rank"]): r for r in results["gpu"]}
    lines = ["| model | stage | full: peak 24 GB shape | LoRA r=16: peak | fits 24 GB: full, LoRA | full: peak 80 GB shape "
             "| LoRA: peak | fits 80 GB: full, LoRA |", "|---|---|---|---|---|---|---|---|"]
    yes = lambda r, card: "yes" if r[f"fits_{card}gb"] else "no"  # noqa: E731
    for preset in PRESETS:
        for stage in STAGES:
            f, l = rows[(preset, stage, 0)], rows[(preset, stage, RANK)]
            lines.append(f"| {preset} | {stage} | {gb(f['24gb']['peak']):.1f} GB | {gb(l['24gb']['peak']):.1f} GB | "
                         f"{yes(f, 24)}, {yes(l, 24)} | {gb(f['80gb']['peak']):.1f} GB | {gb(l['80gb']['peak']):.1f} GB "
                         f"| {yes(f, 80)}, {yes(l, 80)} |")
    lines += ["", "| model | stage | LoRA | arithmetic (GB) | measured peak RSS (GB) | measured / arithmetic |",
              "|---|---|---|---|---|---|"]
    for r in results["cpu"]:
        if "measured_GB" in r:
            lines.append(f"| {r['preset']} | {r['stage']} | {'r=' + str(r['lora_rank']) if r['lora_rank'] else 'full'} "
                         f"| {r['arithmetic_GB']:.2f} | {r['measured_GB']:.2f} | {r['ratio']:.2f} |")
    lines += ["", f"{results['machine']}, {results['date']}; `{results['command']}`."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no_measure", action="store_true", help="arithmetic only")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: STAGE:PRESET:RANK, one measurement
    p.add_argument("--max_gb", type=float, default=11.0, help="run only CPU cases whose arithmetic is below this")
    p.add_argument("--only", default="", help="comma-separated presets to measure (default: all)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    if args.case:
        stage, preset, rank = args.case.split(":")
        print(json.dumps(measure(stage, preset, int(rank))))
        return
    path = os.path.join(args.out, "memory_cpu.json")
    old = json.load(open(path)) if os.path.exists(path) else {}
    results = {"date": datetime.date.today().isoformat(), "command": "python bench/bench_memory.py " + " ".join(argv or sys.argv[1:]),
               "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch " + __import__("torch").__version__,
               "lora": dict(rank=RANK, alpha=2 * RANK, targets="c_attn,c_proj,c_fc"), "gpu_shapes": GPU_SHAPES,
               "cpu_shape": CPU_SHAPE, "gpu": gpu_table(), "cpu": []}
    done = {(r["stage"], r["preset"], r["lora_rank"]): r for r in old.get("cpu", []) if "measured_GB" in r}
    if args.no_measure and old.get("cpu"):  # the tables again from the stored measurements
        results["command"] = old["command"]
    elif args.only:  # measurements of the other presets are kept: say which runs made them
        results["command"] = "; ".join([c for c in old.get("command", "").split("; ") if "--only" in c and
                                        c.split("--only")[1].split()[0] != args.only] + [results["command"]])
    presets = args.only.split(",") if args.only else list(PRESETS)
    for preset in PRESETS:
        for stage in STAGES:
            for rank in (0, RANK):
                e = estimate(stage, preset, rank, CPU_SHAPE, cpu=True)
                resident = e["weights_trained"] + e["optimizer"] + e["frozen"]  # between steps
                row = dict(stage=stage, preset=preset, lora_rank=rank, arithmetic_GB=round(gb(e["peak"]), 3),
                           arithmetic_resident_GB=round(gb(resident), 3),
                           arithmetic={k: round(gb(v), 4) for k, v in e.items() if k != "params_trained"})
                if (stage, preset, rank) in done and (preset not in presets or args.no_measure):
                    row.update({k: done[(stage, preset, rank)][k] for k in ("measured_GB", "measured_resident_GB", "ratio",
                                                                            "step_s")})
                elif gb(e["peak"]) > args.max_gb:
                    row["skipped"] = f"arithmetic above {args.max_gb} GB: not run on this machine"
                elif args.no_measure or preset not in presets:
                    row["skipped"] = "not measured in this run"
                else:
                    m = run_case(stage, preset, rank)
                    if "error" in m:
                        row["error"] = m["error"]
                    else:
                        row["measured_GB"] = round(gb(m["peak_B"]), 3)
                        row["measured_resident_GB"] = round(gb(m["resident_B"]), 3)
                        row["ratio"] = round(row["measured_GB"] / row["arithmetic_GB"], 3)
                        row["step_s"] = m["step_s"]
                    print(stage, preset, rank, row.get("measured_GB"), row["arithmetic_GB"], row.get("ratio"),
                          row.get("error", ""), flush=True)
                results["cpu"].append(row)
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "memory_cpu.md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
