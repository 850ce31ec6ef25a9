"""Benchmark the kernels against torch eager, torch.compile, Liger-Kernel and Cut Cross-Entropy.

On one GPU, in one run:
  1. measure the machine's two ceilings: device-to-device copy bandwidth (bytes read + written) and a
     large bf16 matmul's TFLOP/s;
  2. for each kernel, shape and provider: time forward, backward and forward + backward with
     triton.testing.do_bench (median and p20/p80), and the peak memory of forward + backward above
     the inputs (torch.cuda.max_memory_allocated);
  3. express each time as a fraction of its floor on this machine: bytes / bandwidth for the streaming
     kernels (log-prob forward reads N V logits once; forward + backward reads twice and writes once),
     FLOPs / matmul rate for the fused linear one (2 N H V forward, 4 N H V backward);
  4. print a table and write it (markdown + json, with GPU name, driver, torch and triton versions)
     to bench/results/kernels_<gpu>.{md,json}.
Every peer is optional and every failure (not installed, out of memory, an API change) becomes a
line of the table, not a crash. The results files are rewritten after each kernel, so a run cut
short still leaves what it measured.

Run:  python bench/bench_kernels.py            all shapes (N 4096/8192/16384, V 50257/50304/128256,
                                               H 768/4096), bf16; tens of minutes with torch.compile
      python bench/bench_kernels.py --quick    N 8192, V 50257/128256, H 768: a few minutes
      python bench/bench_kernels.py --kernels full_kl --N 8192 --V 50257 --tag kl   one part of a run
      python bench/bench_kernels.py --smoke --out /tmp/x   CPU, Triton interpreter, tiny shapes: a
                                               few seconds; checks the script, measures nothing
Peers: pip install liger-kernel cut-cross-entropy (both need a GPU).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

if "--smoke" in sys.argv:  # the interpreter must be chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from minirlhf import kernels  # noqa: E402

MODES = ("fwd", "bwd", "fwd+bwd")


# ----------------------------------------------------------------------------- timing and memory
def bench(fn, smoke, grad_to_none=None):
    """(median, p20, p80) in ms."""
    if smoke:  # CPU: a wall clock, three runs
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
            for x in grad_to_none or ():
                x.grad = None
        return statistics.median(times), min(times), max(times)
    import triton.testing

    return tuple(triton.testing.do_bench(fn, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]))


def peak_mb(fn, smoke):
    """Peak memory allocated while fn runs, above what was allocated before (the inputs)."""
    if smoke:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def ceilings(device, smoke):
    """Copy bandwidth (bytes/ms, read + write) and bf16 matmul rate (FLOP/ms) measured here."""
    n, M = (2**20, 256) if smoke else (2**30, 8192)
    x = torch.empty(n // 2, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    copy_ms = bench(lambda: y.copy_(x), smoke)[0]
    a = torch.randn(M, M, dtype=torch.bfloat16, device=device)
    b = torch.randn(M, M, dtype=torch.bfloat16, device=device)
    mm_ms = bench(lambda: a @ b, smoke)[0]
    return 2 * n / copy_ms, 2 * M**3 / mm_ms


# ----------------------------------------------------------------------------- the peers
def optional_peers():
    """name -> module or the reason it is missing."""
    peers = {}
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss

        peers["liger"] = (LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss)
    except Exception as e:  # noqa: BLE001 - any import failure just removes the peer
        peers["liger"] = f"not available: {type(e).__name__}: {e}"[:120]
    try:
        from cut_cross_entropy import linear_cross_entropy

        peers["cce"] = linear_cross_entropy
    except Exception as e:  # noqa: BLE001
        peers["cce"] = f"not available: {type(e).__name__}: {e}"[:120]
    return peers


def cce_logprobs(cce, hidden, weight, targets):
    """Cut Cross-Entropy, exact (no softmax filtering), as log-probs; older versions lack some flags."""
    for flags in (dict(filter_eps=None, filter_e_grad=False, filter_c_grad=False), dict(filter_eps=None)):
        try:
            return -cce(hidden, weight, targets, reduction="none", **flags)
        except TypeError:
            continue
    return -cce(hidden, weight, targets, reduction="none")


def providers(kernel, peers, compile_ok):
    """provider name -> fn(inputs) returning log-probs (or KL, or log p + H) with a graph to backprop.

    Liger computes its gradient during the forward and writes it into its input, so each provider
    gets its own copy of the inputs (see `run_case`).
    """
    ref = {"logprobs": kernels.logprobs_reference, "full_kl": kernels.full_kl_reference}
    if kernel == "logprobs":
        out = {"minirlhf": lambda z, y: kernels.logprobs(z, y), "torch": lambda z, y: ref["logprobs"](z, y)}
    elif kernel == "logprobs+entropy":
        out = {"minirlhf": lambda z, y: sum(kernels.logprobs(z, y, return_entropy=True)),
               "torch": lambda z, y: sum(ref["logprobs"](z, y, return_entropy=True))}
    elif kernel == "full_kl":
        out = {"minirlhf": kernels.full_kl, "torch": ref["full_kl"]}
    else:  # linear: torch eager is the usual bf16 matmul, then fp32 log_softmax
        out = {"minirlhf": kernels.linear_logprobs,
               "torch": lambda h, w, y: kernels.logprobs_reference(h @ w.T, y)}
    if compile_ok is True:
        out["torch.compile"] = torch.compile(out["torch"], dynamic=False)
    else:
        out["torch.compile"] = compile_ok  # the reason it is skipped
    liger, cce = peers["liger"], peers["cce"]
    if kernel == "logprobs":
        out["liger"] = (lambda z, y: -liger[0](reduction="none")(z, y)) if isinstance(liger, tuple) else liger
    if kernel == "linear_logprobs":
        out["liger"] = ((lambda h, w, y: -liger[1](reduction="none")(w, h, y))
                        if isinstance(liger, tuple) else liger)
        out["cut-cross-entropy"] = (lambda h, w, y: cce_logprobs(cce, h, w, y)) if callable(cce) else cce
    return out


# ----------------------------------------------------------------------------- one case
def make_inputs(kernel, N, V, H, dtype, device, seed=0):
    """Fresh inputs: (tensors needing grad, all arguments)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    targets = torch.randint(0, V, (N,), device=device, generator=gen)
    if kernel == "linear_logprobs":
        hidden = torch.randn(N, H, device=device, generator=gen).to(dtype).requires_grad_()
        weight = (torch.randn(V, H, device=device, generator=gen) / H**0.5).to(dtype).requires_grad_()
        return [hidden, weight], (hidden, weight, targets)
    logits = (2 * torch.randn(N, V, device=device, generator=gen)).to(dtype).requires_grad_()
    if kernel == "full_kl":
        ref_logits = (logits.detach() + torch.randn(N, V, device=device, generator=gen)).to(dtype)
        return [logits], (logits, ref_logits)
    return [logits], (logits, targets)


def floors_ms(kernel, N, V, H, elem, bandwidth, flops):
    """The least time each mode could take on this machine."""
    if kernel == "linear_logprobs":
        return {"fwd": 2 * N * H * V / flops, "bwd": 4 * N * H * V / flops, "fwd+bwd": 6 * N * H * V / flops}
    passes = (2, 3, 5) if kernel == "full_kl" else (1, 2, 3)  # [N, V] tensors read or written
    return {m: p * N * V * elem / bandwidth for m, p in zip(MODES, passes)}


def run_case(kernel, name, fn, N, V, H, dtype, device, smoke, floors, expected):
    row = dict(kernel=kernel, N=N, V=V, H=H if kernel == "linear_logprobs" else None, provider=name)
    if isinstance(fn, str):
        return dict(row, error=fn)
    try:
        leaves, args = make_inputs(kernel, N, V, H, dtype, device)
        out = fn(*args)
        row["rel_err_vs_torch"] = None if expected is None else (
            ((out.float() - expected).norm() / expected.norm()).item())
        grad = torch.randn_like(out)
        row["fwd"] = bench(lambda: fn(*args), smoke)
        row["bwd"] = bench(lambda: out.backward(grad, retain_graph=True), smoke, grad_to_none=leaves)
        row["fwd+bwd"] = bench(lambda: fn(*args).backward(grad), smoke, grad_to_none=leaves)
        del out
        for x in leaves:
            x.grad = None
        row["peak_mb"] = peak_mb(lambda: fn(*args).backward(grad), smoke)
        for m in MODES:
            row[f"floor_{m}"] = floors[m]
            row[f"frac_{m}"] = floors[m] / row[m][0]
    except Exception as e:  # noqa: BLE001 - OOM, a peer's API change...: a line of the table
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


# ----------------------------------------------------------------------------- report
def environment(device, smoke, bandwidth, flops):
    env = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), smoke=smoke,
               torch=torch.__version__, python=platform.python_version(), command=" ".join(sys.argv))
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    for dist in ("liger-kernel", "cut-cross-entropy"):
        try:
            from importlib.metadata import version

            env[dist] = version(dist)
        except Exception:  # noqa: BLE001
            env[dist] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split()[0]
        except Exception:  # noqa: BLE001
            env["driver"] = None
    else:
        env["gpu"] = f"none (CPU: {platform.processor() or platform.machine()})"
    env["copy_bandwidth_GBps"] = bandwidth / 1e6
    env["bf16_matmul_TFLOPs"] = flops / 1e9
    return env


def fmt_time(t):
    return "-" if t is None else f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"


def table(rows):
    head = ("| kernel | N | V | H | provider | fwd ms (p20-p80) | bwd ms | fwd+bwd ms | peak MB | "
            "floor ms fwd/bwd/both | % of floor fwd/bwd/both | rel err vs torch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        key = f"| {r['kernel']} | {r['N']} | {r['V']} | {r['H'] or '-'} | {r['provider']} |"
        if "error" in r:
            lines.append(f"{key} {r['error']} | | | | | | |")
            continue
        floors = "/".join(f"{r['floor_' + m]:.3f}" for m in MODES)
        fracs = "/".join(f"{100 * r['frac_' + m]:.0f}" for m in MODES)
        err = "-" if r["rel_err_vs_torch"] is None else f"{r['rel_err_vs_torch']:.1e}"
        lines.append(f"{key} {fmt_time(r['fwd'])} | {fmt_time(r['bwd'])} | {fmt_time(r['fwd+bwd'])} | "
                     f"{'-' if r['peak_mb'] is None else round(r['peak_mb'])} | {floors} | {fracs} | {err} |")
    return "\n".join(lines)


def write(out_dir, tag, env, rows):
    os.makedirs(out_dir, exist_ok=True)
    slug = "smoke_cpu" if env["smoke"] else "".join(c if c.isalnum() else "_" for c in env["gpu"]).strip("_")
    path = os.path.join(out_dir, f"kernels_{slug}" + (f"_{tag}" if tag else ""))
    with open(path + ".json", "w") as f:
        json.dump(dict(environment=env, results=rows), f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(f"# Kernel benchmark: {env['gpu']}\n\n")
        f.write("\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n\n")
        f.write("Times in ms: median (p20-p80) of triton.testing.do_bench. Peak MB: forward + backward, above "
                "the inputs. Floors: bytes / copy bandwidth (streaming kernels), FLOPs / bf16 matmul rate "
                "(linear: 2 N H V forward, 4 N H V backward, 6 N H V both; recomputing the logits in the "
                "backward, as minirlhf and Cut Cross-Entropy do, costs 8). rel err: output against torch "
                "eager on the same inputs (Liger and CCE: minus their per-token loss).\n\n")
        f.write(table(rows) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny shapes")
    p.add_argument("--quick", action="store_true", help="N 8192, V 50257/128256, H 768 only")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results directory")
    p.add_argument("--kernels", default="logprobs,logprobs+entropy,full_kl,linear_logprobs")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--N", help="comma-separated token counts, replacing the default list")
    p.add_argument("--V", help="comma-separated vocabulary sizes, replacing the default list")
    p.add_argument("--H", help="comma-separated hidden sizes, replacing the default list")
    p.add_argument("--tag", default="", help="suffix of the results file names, for runs split in parts")
    p.add_argument("--providers", default="", help="comma-separated providers to run ('' = all), e.g. torch.compile")
    args = p.parse_args(argv)

    if args.smoke:
        device, dtype, Ns, Vs, Hs = torch.device("cpu"), torch.float32, [8], [300], [32]
    else:
        if not torch.cuda.is_available() or kernels.INTERPRET:
            sys.exit("needs a CUDA GPU and TRITON_INTERPRET unset (or --smoke)")
        device, dtype = torch.device("cuda"), torch.bfloat16
        Ns, Vs, Hs = ([8192], [50257, 128256], [768]) if args.quick else (
            [4096, 8192, 16384], [50257, 50304, 128256], [768, 4096])
    Ns, Vs, Hs = ([int(x) for x in arg.split(",")] if arg else default
                  for arg, default in ((args.N, Ns), (args.V, Vs), (args.H, Hs)))
    compile_ok = ("skipped (--smoke)" if args.smoke else "skipped (--no-compile)" if args.no_compile else True)
    if compile_ok is True:
        from torch import _dynamo

        _dynamo.config.cache_size_limit = 256  # one graph per shape

    bandwidth, flops = ceilings(device, args.smoke)
    env = environment(device, args.smoke, bandwidth, flops)
    print(f"# {env['gpu']} | copy {env['copy_bandwidth_GBps']:.0f} GB/s | bf16 matmul "
          f"{env['bf16_matmul_TFLOPs']:.0f} TFLOP/s | torch {env['torch']} | triton {env['triton']}")
    peers, rows, elem = optional_peers(), [], torch.empty((), dtype=dtype).element_size()
    context = kernels.triton_on_cpu() if args.smoke else torch.enable_grad()
    with context:
        for kernel in args.kernels.split(","):
            linear = kernel == "linear_logprobs"
            shapes = [(N, V, H) for N in Ns for V in Vs for H in (Hs if linear else [None])]
            for N, V, H in shapes:
                floors = floors_ms(kernel, N, V, H, elem, bandwidth, flops)
                _, args_ = make_inputs(kernel, N, V, H, dtype, device)
                try:  # the eager reference's output, for the error column
                    expected = providers(kernel, peers, "x")["torch"](*args_).detach().float()
                except Exception:  # noqa: BLE001
                    expected = None
                del args_
                for name, fn in providers(kernel, peers, compile_ok).items():
                    if args.providers and name not in args.providers.split(","):
                        continue
                    r = run_case(kernel, name, fn, N, V, H, dtype, device, args.smoke, floors, expected)
                    rows.append(r)
                    status = r.get("error") or (f"fwd+bwd {r['fwd+bwd'][0]:.3f} ms, "
                                                f"{100 * r['frac_fwd+bwd']:.0f}% of floor")
                    print(f"{kernel:17s} N={N} V={V} H={H} {name:18s} {status}", flush=True)
                del expected
                path = write(args.out, args.tag, env, rows)  # after every shape: a cut-short run keeps it
    print(table(rows))
    print(f"wrote {path}.md and {path}.json")
    return rows


if __name__ == "__main__":
    main()
