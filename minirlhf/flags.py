"""Flag ranges, checked before any work: one mechanism for the training scripts and the lab's commands.

A range is declared with the flag: `opt(0.1, "...", gt=0)` in a training script's Args, or
`add_argument("--k", type=number(int, ge=2))` in an argparse command. Either way argparse refuses a value out
of range with a message naming the flag (`argument --beta: must be > 0, got -0.1`) and exits before anything is
loaded or written. Floats must also be finite. Checks between flags (a batch that does not split into
micro-batches) are each script's `Args.check`, run by parse_args, and share `split_batch` below.
"""

import argparse
import math

BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def range_error(value, **bounds):
    """None if value is within bounds (ge / gt / le / lt), else what is wrong, e.g. 'must be > 0, got 0'."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    wrong = [f"{sign} {bounds[k]}" for k, (sign, ok) in BOUNDS.items() if k in bounds and not ok(value, bounds[k])]
    if wrong:
        want = " and ".join(f"{sign} {bounds[k]}" for k, (sign, _) in BOUNDS.items() if k in bounds)
        return f"must be {want}, got {value}"
    return None


def number(kind, **bounds):
    """An argparse `type` that parses an int or float and checks its range."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        error = range_error(value, **bounds)
        if error:
            raise argparse.ArgumentTypeError(error)
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def split_batch(batch_size, micro_batch_size, world_size=1, num_minibatches=1):
    """The one micro-batch check: (rows per rank, rows per minibatch, rows per micro-batch).

    batch_size rows per step are shared by world_size ranks; each rank's share is cut into num_minibatches
    minibatches (PPO; one elsewhere), and each minibatch into micro-batches of exactly micro_batch_size rows
    (fewer only when the whole minibatch is smaller: then it is one micro-batch). Anything else is an error
    naming the flags, never a silently different micro-batch size.
    """
    if batch_size % world_size:
        raise ValueError(f"--batch_size {batch_size} does not split evenly over {world_size} ranks")
    per_rank = batch_size // world_size
    if per_rank % num_minibatches:
        raise ValueError(f"--batch_size {batch_size} gives {per_rank} rows per rank, which do not split into "
                         f"--num_minibatches {num_minibatches}")
    mb_size = per_rank // num_minibatches
    micro = min(micro_batch_size, mb_size)
    if mb_size % micro:
        what = f"{mb_size} rows per {'minibatch' if num_minibatches > 1 else 'step'}" + \
            (f" on each of {world_size} ranks" if world_size > 1 else "")
        raise ValueError(f"--batch_size {batch_size} gives {what}, not a multiple of --micro_batch_size "
                         f"{micro_batch_size}")
    return per_rank, mb_size, micro
