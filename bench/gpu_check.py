"""One command that proves the kernels, generation and the one-GPU walkthrough on one CUDA GPU, in 8 minutes.

    python bench/gpu_check.py                  # one CUDA GPU: at most --budget seconds (465) of sections, then a table
    python bench/gpu_check.py --smoke          # CPU, tiny shapes, every path that needs no CUDA; results in
                                               # out/gpu_check/ (ignored by git). tests/test_gpu_check.py runs it
    python bench/gpu_check.py --sections kernels,ppo_vs_trl --tag rerun      # some sections again

Sections, in this order, each in its own process with its own time budget (a section that cannot start in the
time left is skipped, one that runs past its budget is stopped; both say so in the results, and what a stopped
section had measured is kept):
  env              GPU, driver, CUDA, torch, triton, which peers import; the two ceilings measured here (device
                   copy bytes read + written per second, an 8192^3 bf16 matmul) beside the table KNOWN_GPUS
  tests            pytest tests/test_kernels_gpu.py (bf16/fp16/fp32 at real sizes, N x V past 2^31, kernel vs
                   reference training), summarised from its JUnit XML
  kernels          bench/bench_kernels.py at N 8192, V 50257, H 768 and 4096, bf16: ours, torch eager, Liger-Kernel,
                   Cut Cross-Entropy; times, % of the bandwidth or matmul floor, peak memory above the inputs
  generate         bench/bench_generate.py: KV-cache tokens/s at GPT-2 124M and 355M shapes, random weights, at the
                   walkthrough's rollout shape (64 x 448-token prompts, 128 new tokens), fp32 (as train_ppo.py
                   samples) and bf16 weights; KV cache against recomputation at a small shape, tokens compared
  walk:<config>    the walkthrough's stages SFT, RM, PPO (flags from runs/<config>/*.args) and DPO (no flags file:
                   restated in DPO_FROM_SFT) at their model size, random weights, a synthetic tokenizer of GPT-2's
                   50258 ids and synthetic HH-shaped data whose sequences all fill the 1024 positions (the case the
                   flags files' estimates are for): peak memory (torch.cuda.max_memory_allocated, and reserved)
                   and seconds per step after the first, against the estimate in each flags file's comments.
                   Checkpoint writes are left out (disk, not GPU). Configs: hh_gpt2_80gb, hh_gpt2-medium_80gb,
                   then the 24 GB ones
  lora_ppo_xl      one PPO step with LoRA r=16 at GPT-2 XL shape (four models on two bf16 trunks, random weights,
                   runs/hh_gpt2-xl_24gb's rollout of 16 x 576 tokens, update micro-batch 1): peak memory against
                   bench/bench_memory.py's estimate, and whether it fits a 24 GB card
  ppo_vs_trl       one PPO iteration at GPT-2 124M shape (64 rollouts of 128 + 128 tokens, 4 epochs x 4
                   minibatches, bf16 autocast, separate policy/reference/reward/value models): train_ppo.py
                   against TRL 1.12's PPOTrainer (bench/peers/trl_ppo.py), same settings, same GPU
  kernels_compile  the torch.compile provider of the kernel benchmark (compiles take most of its time)
Then the kernels' speed targets, each met or not, from the numbers above.

Results: bench/results/gpu_<GPU name>[_<tag>].json (GPU, driver, CUDA, torch, triton, every figure, what was skipped
and why), a copy in $OUT when that variable names a folder (with every section's log in gpu_check_logs.txt), and a
short table printed last.

The peers (TRL 1.12.0 and what the H200 image lacks for it, Liger-Kernel, Cut Cross-Entropy) travel as wheels in
.whl/ (ignored by git; 2.8 MB: trl 993 kB, liger-kernel 910 kB, datasets 608 kB, multiprocess 150 kB, dill 120 kB,
cut-cross-entropy 23 kB). Download them once, on any machine with pip and PyPI (all are pure Python):
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 -d .whl trl==1.12.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \\
        liger-kernel==0.8.5 cut-cross-entropy==25.1.1
(accelerate, transformers, pyarrow, pandas, xxhash, huggingface-hub are in the H200 image.) The device `run`, with
carry [".whl"] and timeout_s 590 (without the wheels it runs on and skips the peers):
    (ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir
    --upgrade --target /tmp/site .whl/*.whl) && export PYTHONPATH=/tmp/site; export PYTHONUNBUFFERED=1;
    set -o pipefail; python3 bench/gpu_check.py 2>&1 | tee $OUT/gpu_check.log
The results come back in $OUT (gpu_<GPU>.json, gpu_check_logs.txt, gpu_check.log): copy the json into
bench/results/ and commit it. With time left, rerun a part: --sections kernels_compile,walk:hh_gpt2_24gb --tag b.
"""
import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

if "--smoke" in sys.argv:  # bench_kernels' smoke mode runs the kernels in Triton's interpreter: set before import
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

# name -> (seconds budget on a GPU, on CPU with --smoke)
SECTIONS = {"env": (30, 60), "tests": (110, 90), "kernels": (80, 90), "generate": (45, 60), "lora_ppo_xl": (90, 90),
            "walk:hh_gpt2_80gb": (60, 90), "ppo_vs_trl": (90, 90), "walk:hh_gpt2-medium_80gb": (100, 0),
            "kernels_compile": (90, 60), "walk:hh_gpt2_24gb": (50, 0), "walk:hh_gpt2-medium_24gb": (80, 0)}
MIN_START_S = 15  # a section is not started with less time than this left
# Ceilings of cards seen elsewhere, to judge whether this card measures as it should: (copy GB/s read + written,
# bf16 matmul TFLOP/s, where measured). The fractions of the floor use what this run measures.
KNOWN_GPUS = {"H200": (4300, 788, "one H200 of this workplace, 2026-10-28 (KINDS.md); datasheet 4800 GB/s, 989"),
              "H100": (3000, 800, "KERNELS.md, an H100 SXM; datasheet 3350 GB/s, 989")}
# DPO has no flags file in runs/: the SFT file's settings, with pairs (two sequences each) for examples
DPO_FROM_SFT = "batch_size 64 pairs; micro_batch_size half the SFT file's; the SFT file's fused_logprobs and dtype"


# ============================================================================= the parent: sections in order


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: checks the script, measures nothing")
    p.add_argument("--budget", type=float, default=465, help="seconds for all sections together (8 min in all)")
    p.add_argument("--sections", default="", help="comma-separated subset of: " + ", ".join(SECTIONS))
    p.add_argument("--out", help="results folder (default bench/results/; with --smoke out/gpu_check/, ignored by "
                   "git: a smoke run measures nothing worth keeping)")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--inprocess", action="store_true", help="with --smoke: every section in this process (tests)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one section in this process
    p.add_argument("--part_dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out = args.out or os.path.join(ROOT, *(("out", "gpu_check") if args.smoke else ("bench", "results")))
    if args.part:
        return run_part(args.part, args.part_dir, args.smoke)

    t_start = time.time()
    names = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    work = tempfile.mkdtemp(prefix="gpu_check_")
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
               "smoke": args.smoke, "budget_s": args.budget, "sections": {}, "skipped": {}}
    for name in names:
        budget = SECTIONS[name][1 if args.smoke else 0]
        left = args.budget - (time.time() - t_start)
        if budget == 0:
            results["skipped"][name] = "not in --smoke (the same code path as walk:hh_gpt2_80gb)"
            continue
        if left < MIN_START_S:
            results["skipped"][name] = f"not started: {left:.0f} s of the {args.budget:.0f} s budget left"
            print(f"[{name}] skipped: {results['skipped'][name]}", flush=True)
            continue
        results["sections"][name] = run_section(name, min(budget, left), work, args.smoke,
                                                args.inprocess and args.smoke)
        write_results(results, args)  # after every section: a run cut short keeps what it measured
    results["targets"] = targets(results)
    results["wall_s"] = round(time.time() - t_start, 1)
    path = write_results(results, args)
    logs = os.path.join(work, "gpu_check_logs.txt")
    with open(logs, "w") as f:
        for log in sorted(glob.glob(os.path.join(work, "*", "log.txt"))):
            f.write(f"\n===== {os.path.basename(os.path.dirname(log))}\n" + open(log, errors="replace").read())
    if os.path.isdir(os.environ.get("OUT", "")):
        shutil.copy(logs, os.environ["OUT"])
    print(summary(results))
    print(f"wrote {path}" + (f" and a copy in $OUT" if os.path.isdir(os.environ.get("OUT", "")) else ""))
    shutil.rmtree(work, ignore_errors=True)
    return results, path


def run_section(name, timeout, work, smoke, inprocess=False):
    """Run one section as a child process (a crash or a hang ends that section only); its result dict.
    inprocess (the smoke test): in this process, no time limit, an exception is the section's failure."""
    d = os.path.join(work, name.replace(":", "_"))
    os.makedirs(d, exist_ok=True)
    if inprocess:
        t0 = time.time()
        try:
            run_part(name, d, smoke)
            status = "ok"
        except Exception as e:  # noqa: BLE001
            status = f"failed ({type(e).__name__}: {e})"
        open(os.path.join(d, "log.txt"), "w").write(status)
        return dict(read_json(os.path.join(d, "result.json")) or {}, status=status, seconds=round(time.time() - t0, 1))
    cmd = [sys.executable, os.path.abspath(__file__), "--part", name, "--part_dir", d] + (["--smoke"] if smoke else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [x for x in [os.environ.get("PYTHONPATH")] if x]))
    print(f"[{name}] started, budget {timeout:.0f} s", flush=True)
    t0 = time.time()
    with open(os.path.join(d, "log.txt"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section and everything it started (pytest, compile workers)
            proc.wait()
            status = f"stopped at its budget of {timeout:.0f} s"
    result = read_json(os.path.join(d, "result.json")) or {}
    if name.startswith("kernels") and "rows" not in result:  # bench_kernels writes after every shape
        found = glob.glob(os.path.join(d, "kernels_*.json"))
        saved = read_json(found[0]) if found else None
        result = {"rows": saved["results"], "environment": saved["environment"]} if saved else {}
    result.update(status=status, seconds=round(time.time() - t0, 1))
    if status != "ok":
        result["log_tail"] = open(os.path.join(d, "log.txt"), errors="replace").read()[-1500:]
    print(f"[{name}] {status} in {result['seconds']} s", flush=True)
    return result


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_results(results, args):
    gpu = results["sections"].get("env", {}).get("gpu") or "unknown"
    slug = "smoke_cpu" if args.smoke else re.sub(r"[^A-Za-z0-9]+", "_", gpu).strip("_")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu_{slug}" + (f"_{args.tag}" if args.tag else "") + ".json")
    for folder in [args.out] + ([os.environ["OUT"]] if os.path.isdir(os.environ.get("OUT", "")) else []):
        with open(os.path.join(folder, os.path.basename(path)), "w") as f:
            json.dump(results, f, indent=1)
    return path


# ============================================================================= a child: one section


def run_part(name, d, smoke):
    import torch

    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (or --smoke)")
    out = os.path.join(d, "result.json")
    parts = {"env": part_env, "tests": part_tests, "kernels": part_kernels, "kernels_compile": part_kernels,
             "generate": part_generate, "ppo_vs_trl": part_ppo_vs_trl, "lora_ppo_xl": part_lora_ppo}
    fn = part_walk if name.startswith("walk:") else parts[name]
    fn(name, d, out, smoke, device)


def save(out, result):
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)  # the parent reads whole files only, also after a kill


def part_env(name, d, out, smoke, device):
    import torch

    import bench_kernels

    r = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
    for dist in ("triton", "trl", "transformers", "accelerate", "datasets", "liger-kernel", "cut-cross-entropy"):
        try:
            from importlib.metadata import version

            r[dist] = version(dist)
        except Exception:  # noqa: BLE001
            r[dist] = None
    r["peers_importable"] = {m: importlib.util.find_spec(m) is not None
                             for m in ("trl", "datasets", "liger_kernel", "cut_cross_entropy")}
    if smoke:
        r["gpu"] = f"none (CPU: {platform.processor() or platform.machine()})"
    else:
        props = torch.cuda.get_device_properties(0)
        r.update(gpu=props.name, memory_GB=round(props.total_memory / 1e9, 1), sm_count=props.multi_processor_count,
                 capability=f"{props.major}.{props.minor}")
        try:
            q = ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem,power.limit", "--format=csv,noheader"]
            r["nvidia_smi"] = subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip()
            r["driver"] = r["nvidia_smi"].split(",")[0]
        except Exception as e:  # noqa: BLE001
            r["driver"] = f"nvidia-smi failed: {e}"
    bandwidth, flops = bench_kernels.ceilings(torch.device(device), smoke)
    r["copy_GBps"], r["bf16_matmul_TFLOPs"] = round(bandwidth / 1e6, 1), round(flops / 1e9, 1)
    known = next((v for k, v in KNOWN_GPUS.items() if k in r["gpu"]), None)
    if known:
        r["known"] = dict(copy_GBps=known[0], bf16_matmul_TFLOPs=known[1], source=known[2])
        low = [k for k, ref in (("copy_GBps", known[0]), ("bf16_matmul_TFLOPs", known[1])) if r[k] < 0.8 * ref]
        if low:
            r["warning"] = f"{low} below 80 % of what such a card measured elsewhere: the card's state may be off"
    save(out, r)


def part_tests(name, d, out, smoke, device):
    xml = os.path.join(d, "junit.xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels_gpu.py",
           f"--junitxml={xml}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    r = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}
    r.update(junit_summary(xml))
    save(out, r)


def junit_summary(path):
    """Counts and each test's outcome and seconds from a JUnit XML file."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], el.get("message")
        cases.append(dict(name=case.get("name"), outcome=outcome, seconds=float(case.get("time", 0)),
                          message=(message or "")[:300] or None))
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"counts": counts, "cases": cases}


def part_kernels(name, d, out, smoke, device):
    import bench_kernels

    if smoke:
        argv = ["--smoke", "--kernels", "logprobs,linear_logprobs"]
    else:
        argv = ["--N", "8192", "--V", "50257", "--H", "768,4096"]
    argv += ["--providers", "torch.compile"] if name == "kernels_compile" else ["--no-compile"]
    rows = bench_kernels.main(argv + ["--out", d, "--tag", name])
    env = read_json(glob.glob(os.path.join(d, "kernels_*.json"))[0])["environment"]
    save(out, {"argv": argv, "environment": env, "rows": rows})


def part_generate(name, d, out, smoke, device):
    import bench_generate

    models = ("tiny",) if smoke else ("gpt2", "gpt2-medium")
    shape = dict(batch_size=2, prompt_len=8, new_tokens=4) if smoke else dict(batch_size=64, prompt_len=448, new_tokens=128)
    small = dict(batch_size=2, prompt_len=8, new_tokens=4) if smoke else dict(batch_size=8, prompt_len=64, new_tokens=64)
    runs = [dict(model_name=m, dtype=t, recompute=False, **shape) for t in ("float32", "bfloat16") for m in models]
    runs.insert(0, dict(model_name=models[0], dtype="float32", recompute=True, **small))
    rows = []
    for kw in runs:
        rows.append(bench_generate.measure(device=device, **kw))
        print(rows[-1], flush=True)
        save(out, {"rows": rows})


# ----------------------------------------------------------------------------- synthetic tokenizer and data


def synthetic_tokenizer(path, vocab_size):
    """A BPE of exactly `vocab_size` ids (GPT-2: 50258): 256 bytes, then two-byte tokens (lower-case letters and
    space first), then end-of-text and pad. Text costs about one token per two characters, as GPT-2's does."""
    from minirlhf.tokenizer import Tokenizer, write_ranks

    first = b" abcdefghijklmnopqrstuvwxyz"
    order = list(first) + [b for b in range(256) if b not in first]
    ranks = {bytes([b]): b for b in range(256)}
    for a in order:
        for b in order:
            if len(ranks) == vocab_size - 2:
                break
            ranks[bytes([a, b])] = len(ranks)
    write_ranks(path, ranks)
    return Tokenizer(os.path.basename(path)[: -len(".tiktoken")], ranks)


WORDS = ("the a of to and in is it you that was for on are with as I his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "came show every good me give our under name very through just form sentence great think say help low").split()


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def hh_data(d, n, rng):
    """HH-RLHF-shaped JSONL: multi-turn prompts ending in '\\n\\nAssistant:', responses starting with a space.
    Prompts are long enough (~1,600 tokens) that every sequence is cut to fill the model's context."""
    from minirlhf.data import write_jsonl

    def prompt():
        return "".join(f"\n\nHuman: {words(rng, 120)}\n\nAssistant: {words(rng, 120)}" for _ in range(3)) + \
            f"\n\nHuman: {words(rng, 60)}\n\nAssistant:"
    rows = [dict(prompt=prompt(), response=" " + words(rng, 150), rejected=" " + words(rng, 150)) for _ in range(n)]
    write_jsonl(f"{d}/sft.jsonl", [dict(prompt=r["prompt"], response=r["response"]) for r in rows])
    write_jsonl(f"{d}/prefs.jsonl", [dict(prompt=r["prompt"], chosen=r["response"], rejected=r["rejected"]) for r in rows])
    write_jsonl(f"{d}/prompts.jsonl", [dict(prompt=r["prompt"]) for r in rows])


def random_checkpoints(d, preset, tok_path, vocab_size, block_size, device):
    """sft.pt (a GPT) and rm.pt (a ScalarGPT on the same trunk, marked normalised), random weights."""
    import torch

    from minirlhf.checkpoint import save_checkpoint
    from minirlhf.model import GPT, GPTConfig, ScalarGPT

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it will run: fast for 355M on a GPU
        gpt = GPT(GPTConfig.preset(preset, vocab_size=vocab_size, block_size=block_size))
    save_checkpoint(f"{d}/sft.pt", gpt, stage="sft", tokenizer_name=tok_path)
    save_checkpoint(f"{d}/rm.pt", ScalarGPT.from_gpt(gpt), stage="rm", tokenizer_name=tok_path, normalised=True)
    return gpt.num_params()


# ----------------------------------------------------------------------------- the walkthrough


def flags_file_estimate(path):
    """The peak-memory estimate written in a flags file's comments: the largest '= N GB' (PPO gives update and
    rollout; SFT's '(M GB without)' the fused kernel is the other setting, not this file's), and its text."""
    comments = [line[1:].strip() for line in open(path) if line.startswith("#")]
    text = " ".join(comments)
    start = text.find("Peak memory")
    numbers = [float(x) for x in re.findall(r"=\s*(\d+(?:\.\d+)?)\s*GB", text[start:])] if start >= 0 else []
    return (max(numbers) if numbers else None), text[start:] if start >= 0 else None


def dpo_estimate_gb(n_params, n_layer, n_embd, micro_pairs, fused, vocab=50258, seq=1024):
    """runs/hh_rlhf.sh's arithmetic for DPO: 16 B/param + 2 * micro * 1024 tokens * (activations + logits)."""
    act = 40 * n_embd * n_layer  # bytes a token
    logits = 0 if fused else 2 * vocab * 2  # bf16 logits and their gradient
    return (16 * n_params + 2 * micro_pairs * seq * (act + logits)) / 1e9


def run_stage(stage, argv, log_path, device):
    """Run one training script in this process; its steps' seconds, peak memory, or the error."""
    import gc

    import torch

    import train_dpo
    import train_ppo
    import train_rm
    import train_sft
    from minirlhf.training import parse_args

    module = {"sft": train_sft, "rm": train_rm, "ppo": train_ppo, "dpo": train_dpo}[stage]
    save_checkpoint, module.save_training_checkpoint = module.save_training_checkpoint, lambda *a, **k: None
    r = {"argv": argv}  # (checkpoint writes are disk time, not GPU time; restored below)
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        module.main(parse_args(module.Args, argv))
    except Exception as e:  # noqa: BLE001 - out of memory, a dtype error...: a result, not a crash
        r["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    finally:
        module.save_training_checkpoint = save_checkpoint
    r["wall_s"] = round(time.time() - t0, 2)
    if device == "cuda":
        r["peak_allocated_GB"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        r["peak_reserved_GB"] = round(torch.cuda.max_memory_reserved() / 1e9, 2)
    log = [json.loads(line) for line in open(log_path)] if os.path.exists(log_path) else []
    stamps = [row["time/elapsed"] for row in log]
    steps = [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]  # whole steps after the first (compiles kernels)
    r.update(steps_logged=len(log), first_step_s=stamps[0] if stamps else None,
             s_per_step=round(statistics.median(steps), 3) if steps else None)
    if stage == "ppo" and log:
        r.update({k.split("/")[1] + "_s": round(log[-1][k], 3) for k in ("time/generate", "time/score", "time/update")})
    return r


def part_walk(name, d, out, smoke, device):
    """One runs/ configuration: SFT, RM, PPO, DPO in turn, each from its flags file plus the overrides below."""
    import train_sft
    from minirlhf.training import parse_args

    config = name.split(":", 1)[1]
    files = {s: os.path.join(ROOT, "runs", config, f"{s}.args") for s in ("sft", "rm", "ppo")}
    preset = "tiny" if smoke else ("gpt2-medium" if "medium" in config else "gpt2")
    vocab, block = (512, 128) if smoke else (50258, 1024)
    tok_path = os.path.join(d, "synthetic.tiktoken")
    synthetic_tokenizer(tok_path, vocab)
    hh_data(d, 64, random.Random(0))
    n_params = random_checkpoints(d, preset, tok_path, vocab, block, device)
    from minirlhf.model import GPTConfig

    cfg = GPTConfig.preset(preset)
    sft_file = parse_args(train_sft.Args, ["@" + files["sft"]])
    steps = "2" if smoke else "3"
    tiny = {"sft": ["--batch_size", "4", "--micro_batch_size", "2"],
            "rm": ["--batch_size", "4", "--micro_batch_size", "2", "--max_new_tokens", "8"],
            "ppo": ["--batch_size", "4", "--num_minibatches", "1", "--micro_batch_size", "2", "--ppo_epochs", "1",
                    "--max_prompt_len", "24", "--max_new_tokens", "8"],
            "dpo": []} if smoke else {s: [] for s in ("sft", "rm", "ppo", "dpo")}
    dpo_micro = max(1, sft_file.micro_batch_size // 2)
    stage_argv = {
        "sft": ["@" + files["sft"], "--init_from", f"scratch:{preset}", "--tokenizer", tok_path, "--block_size",
                str(block), "--train_data", f"{d}/sft.jsonl", "--eval_data", "", "--max_steps", steps],
        "rm": ["@" + files["rm"], "--sft_ckpt", f"{d}/sft.pt", "--train_data", f"{d}/prefs.jsonl", "--eval_data", "",
               "--eval_fraction", "0", "--max_steps", steps, "--norm_samples", "4" if smoke else "16"],
        "ppo": ["@" + files["ppo"], "--sft_ckpt", f"{d}/sft.pt", "--rm_ckpt", f"{d}/rm.pt", "--prompts",
                f"{d}/prompts.jsonl", "--eval_prompts", "", "--num_iters", "2", "--log_samples", "0"],
        "dpo": ["--sft_ckpt", f"{d}/sft.pt", "--train_data", f"{d}/prefs.jsonl", "--eval_fraction", "0",
                "--batch_size", "4" if smoke else "64", "--micro_batch_size", "2" if smoke else str(dpo_micro),
                "--fused_logprobs", str(sft_file.fused_logprobs).lower(), "--dtype", sft_file.dtype,
                "--max_steps", steps]}
    common = ["--eval_interval", "100000", "--ckpt_interval", "100000", "--device", device]
    result = {"config": config, "model": preset, "params": n_params, "data": "synthetic HH-shaped, every sequence "
              f"{block} tokens (prompts cut from the left); tokenizer {vocab} ids", "stages": {}}
    for stage in ("sft", "rm", "ppo", "dpo"):
        stage_dir = os.path.join(d, stage)
        argv = stage_argv[stage] + ["--out_dir", stage_dir] + common + tiny[stage]
        argv += [] if stage == "ppo" else ["--log_interval", "1"]  # PPO logs every iteration
        r = run_stage(stage, argv, os.path.join(stage_dir, "log.jsonl"), device)
        if stage == "dpo":
            r["flags"] = DPO_FROM_SFT
            r["estimate_GB"] = round(dpo_estimate_gb(n_params, cfg.n_layer, cfg.n_embd, dpo_micro,
                                                     sft_file.fused_logprobs, vocab), 1)
            r["estimate_text"] = ("restated from runs/hh_rlhf.sh: 16 B/param + 2 x micro x 1024 x "
                                  "(40 n_embd n_layer B + logits)")
        else:
            r["flags"] = os.path.relpath(files[stage], ROOT)
            r["estimate_GB"], r["estimate_text"] = flags_file_estimate(files[stage])
        if r.get("peak_allocated_GB") and r["estimate_GB"]:
            r["measured_over_estimate"] = round(r["peak_allocated_GB"] / r["estimate_GB"], 2)
        if r.get("peak_reserved_GB"):  # the card the file is for: 24 or 80 GiB, less ~1 GB of CUDA context
            card = int(re.search(r"_(\d+)gb", config).group(1)) * 2**30 / 1e9
            need = r["peak_reserved_GB"] + 1
            r["fits_card"] = f"{need:.1f} of {card:.1f} GB: {'yes' if need <= card else 'NO'}"
        result["stages"][stage] = r
        print(stage, r, flush=True)
        save(out, result)


# ----------------------------------------------------------------------------- LoRA PPO at GPT-2 XL shape


def part_lora_ppo(name, d, out, smoke, device):
    """One PPO step with LoRA at GPT-2 XL shape on runs/hh_gpt2-xl_24gb's settings (rollout 16 x (448 + 128)
    tokens, update micro-batches of 1, rank 16; four models on two bf16 trunks; random weights), after a first
    step: peak memory against bench/bench_memory.py's estimate for it. Smoke: the tiny model, a few tokens, CPU."""
    import bench_memory

    preset = "tiny" if smoke else "gpt2-xl"
    shape = dict(T=24, m=1, R=8, rollout=2, P=16, new=4, ppo_m=1) if smoke else \
        dict(T=576, m=1, R=None, rollout=16, P=448, new=128, ppo_m=1)
    r = dict(model=preset, lora_rank=16, shape=shape)
    est = bench_memory.estimate("ppo", preset, 16, shape, cpu=smoke)
    r["estimate_GB"] = round(est["peak"] / 1e9, 2)
    r["estimate"] = {k: round(v / 1e9, 3) for k, v in est.items() if k != "params_trained"}
    save(out, r)
    m = bench_memory.measure("ppo", preset, 16, shape, device)
    r.update({k.replace("_B", "_GB"): round(v / 1e9, 2) if k.endswith("_B") else v for k, v in m.items()})
    r["measured_over_estimate"] = round(m["peak_B"] / est["peak"], 2)
    if not smoke:  # 24 GB card, less ~1 GB of CUDA context
        need = m["peak_reserved_B"] / 1e9 + 1
        r["fits_24gb"] = f"{need:.1f} of {24 * 2**30 / 1e9:.1f} GB: {'yes' if need <= 24 * 2**30 / 1e9 else 'NO'}"
    print(r, flush=True)
    save(out, r)


# ----------------------------------------------------------------------------- PPO against TRL


def part_ppo_vs_trl(name, d, out, smoke, device):
    """One PPO iteration, ours and TRL's PPOTrainer, GPT-2 124M shape (smoke: a tiny model on CPU)."""
    import train_ppo
    from minirlhf.data import write_jsonl
    from minirlhf.training import parse_args

    preset, vocab, P, R, iters = ("tiny", 512, 8, 8, 2) if smoke else ("gpt2", 50258, 128, 128, 3)
    shape = dict(n_layer=2, n_embd=64, n_head=4) if smoke else dict(n_layer=12, n_embd=768, n_head=12)
    batch, minibatches, micro, epochs = (8, 2, 4, 2) if smoke else (64, 4, 16, 4)
    settings = dict(model=preset, **shape, vocab=vocab, batch_size=batch, prompt_len=P, response_len=R,
                    ppo_epochs=epochs, num_mini_batches=minibatches, micro_batch_size=micro, temperature=0.7,
                    precision="fp32" if smoke else "bf16 autocast", iters_timed=iters)
    result = {"settings": settings}
    tok = synthetic_tokenizer(os.path.join(d, "synthetic.tiktoken"), vocab)
    rng = random.Random(0)
    write_jsonl(f"{d}/prompts.jsonl", [{"prompt": words(rng, 4 * P)} for _ in range(256)])
    random_checkpoints(d, preset, os.path.join(d, "synthetic.tiktoken"), vocab, 1024 if not smoke else 128, device)
    argv = ["--prompts", f"{d}/prompts.jsonl", "--eval_prompts", "", "--sft_ckpt", f"{d}/sft.pt", "--rm_ckpt",
            f"{d}/rm.pt", "--out_dir", f"{d}/ppo", "--num_iters", str(iters + 1), "--batch_size", str(batch),
            "--num_minibatches", str(minibatches), "--micro_batch_size", str(micro), "--ppo_epochs", str(epochs),
            "--max_prompt_len", str(P), "--max_new_tokens", str(R), "--temperature", "0.7", "--lr", "3e-6",
            "--kl_coef", "0.05", "--ckpt_interval", "100000", "--log_samples", "0", "--device", device,
            "--dtype", "float32" if smoke else "bfloat16", "--fused_logprobs", "false"]
    assert len(tok.encode(words(random.Random(1), 4 * P))) >= P
    t0 = time.time()
    train_ppo.main(parse_args(train_ppo.Args, argv))
    log = [json.loads(line) for line in open(f"{d}/ppo/log.jsonl")]
    stamps = [row["time/elapsed"] for row in log]
    per_iter = [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]  # iterations after the first (warm-up)
    result["minirlhf"] = dict(s_per_iter=statistics.median(per_iter), s_per_iter_all=per_iter,
                              gen_s_per_iter=round(statistics.median(row["time/generate"] for row in log[1:]), 3),
                              response_len=statistics.median(row["rollout/response_len"] for row in log),
                              wall_s=round(time.time() - t0, 1))
    save(out, result)
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        result["trl"] = "skipped: trl or datasets not importable (carry the wheels in .whl/: see this script's docstring)"
    else:
        cmd = [sys.executable, os.path.join(ROOT, "bench", "peers", "trl_ppo.py"), "--device", device,
               "--n_layer", str(shape["n_layer"]), "--n_embd", str(shape["n_embd"]), "--n_head", str(shape["n_head"]),
               "--vocab", str(vocab), "--batch_size", str(batch), "--prompt_len", str(P), "--response_len", str(R),
               "--ppo_epochs", str(epochs), "--num_mini_batches", str(minibatches), "--iters", str(iters)]
        cmd += [] if smoke else ["--bf16"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        if proc.returncode == 0:
            result["trl"] = json.loads(proc.stdout.strip().splitlines()[-1])
            result["trl_over_minirlhf"] = round(result["trl"]["s_per_iter"] / result["minirlhf"]["s_per_iter"], 2)
        else:
            result["trl"] = f"failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}"
    save(out, result)


# ============================================================================= targets and the table


def kernel_row(results, kernel, provider, H=None, N=8192, V=50257):
    for section in ("kernels", "kernels_compile"):
        for r in results["sections"].get(section, {}).get("rows", []):
            if (r["kernel"], r["provider"], r["N"], r["V"], r["H"]) == (kernel, provider, N, V, H) and "error" not in r:
                return r
    return None


def targets(results):
    """The kernels' speed targets for the tuning step, from this run's numbers: met, not met, or not measured."""
    out = {}

    def frac(kernel, H=None):
        r = kernel_row(results, kernel, "minirlhf", H)
        return r and r["frac_fwd+bwd"]

    def judge(name, value, ok, detail):
        out[name] = dict(value=value, met=None if value is None else bool(ok), detail=detail)

    f = frac("logprobs")
    liger = kernel_row(results, "logprobs", "liger")
    ours = kernel_row(results, "logprobs", "minirlhf")
    judge("logprobs fwd+bwd >= 90 % of the 3-pass floor, N 8192 V 50257 bf16", f, f and f >= 0.9,
          "fraction of floor")
    judge("logprobs fwd+bwd not slower than Liger", ours and liger and liger["fwd+bwd"][0] / ours["fwd+bwd"][0],
          ours and liger and ours["fwd+bwd"][0] <= liger["fwd+bwd"][0], "Liger's time over ours")
    f = frac("full_kl")
    judge("full_kl fwd+bwd >= 80 % of its floor", f, f and f >= 0.8, "fraction of floor")
    for H in (768, 4096):
        f = frac("linear_logprobs", H)
        judge(f"linear_logprobs fwd+bwd >= 70 % of the matmul floor, H {H}", f, f and f >= 0.7, "fraction of 6NHV floor")
        ours = kernel_row(results, "linear_logprobs", "minirlhf", H)
        eager = kernel_row(results, "linear_logprobs", "torch", H)
        ratio = ours and eager and eager["peak_mb"] and ours["peak_mb"] / eager["peak_mb"]
        judge(f"linear_logprobs peak memory <= 2 % of eager, H {H}", ratio, ratio is not None and ratio <= 0.02,
              "our peak over eager's")
    # (a smoke run's tiny model, where TRL also ran, is not the target's shape)
    ratio = None if results.get("smoke") else results["sections"].get("ppo_vs_trl", {}).get("trl_over_minirlhf")
    judge("PPO iteration at GPT-2 124M >= 3x TRL's", ratio, ratio and ratio >= 3, "TRL's s/iteration over ours")
    return out


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def summary(results):
    lines = [f"\n# gpu_check: {results['sections'].get('env', {}).get('gpu', '?')}  ({results['date']}, "
             f"{results.get('wall_s')} s of {results['budget_s']:.0f})", "", "| section | status | s | figures |",
             "|---|---|---|---|"]
    for name, r in results["sections"].items():
        fig = ""
        if name == "env":
            fig = (f"copy {fmt(r.get('copy_GBps'), '.0f')} GB/s, bf16 matmul {fmt(r.get('bf16_matmul_TFLOPs'), '.0f')} "
                   f"TFLOP/s, torch {r.get('torch')}, triton {r.get('triton')}, driver {r.get('driver')}"
                   + (f"; {r['warning']}" if r.get("warning") else ""))
        elif name == "tests":
            fig = " ".join(f"{k} {v}" for k, v in r.get("counts", {}).items())
        elif name.startswith("kernels"):
            ok = [x for x in r.get("rows", []) if "error" not in x]
            fig = "; ".join(f"{x['kernel']}{'/H' + str(x['H']) if x['H'] else ''} {x['provider']} "
                            f"{x['fwd+bwd'][0]:.3f} ms {100 * x['frac_fwd+bwd']:.0f}%" for x in ok[:12])
            fig += f" ({len(r.get('rows', [])) - len(ok)} rows with errors)"
        elif name == "generate":
            fig = "; ".join(f"{x['model']} {x['dtype']} b{x['batch_size']} kv {x['kv_cache_tok_s']:.0f} tok/s"
                            + (f" (x{x['speedup']} recompute, same tokens: {x['tokens_identical']})" if "speedup" in x else "")
                            for x in r.get("rows", []))
        elif name == "lora_ppo_xl":
            fig = (f"{r.get('model')} LoRA r=16: peak {fmt(r.get('peak_GB'))} GB against the estimate "
                   f"{fmt(r.get('estimate_GB'))} GB ({fmt(r.get('measured_over_estimate'))}x), "
                   f"{fmt(r.get('step_s'))} s/step; {r.get('fits_24gb', '')}")
        elif name == "ppo_vs_trl":
            ours, trl = r.get("minirlhf", {}), r.get("trl")
            fig = f"ours {fmt(ours.get('s_per_iter'))} s/iter; TRL " + (
                f"{fmt(trl.get('s_per_iter'))} s/iter; TRL/ours {fmt(r.get('trl_over_minirlhf'))}" if isinstance(trl, dict) else str(trl))
        elif name.startswith("walk:"):
            fig = "; ".join(f"{s} " + (x["error"][:60] if "error" in x else
                                       f"{fmt(x.get('s_per_step'))} s/step {fmt(x.get('peak_allocated_GB'))}/"
                                       f"{fmt(x.get('estimate_GB'))} GB")
                            for s, x in r.get("stages", {}).items())
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {fig} |")
    for name, why in results["skipped"].items():
        lines.append(f"| {name} | skipped | - | {why} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(v['value'])} | {'-' if v['met'] is None else 'yes' if v['met'] else 'no'} |"
              for k, v in results.get("targets", {}).items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
