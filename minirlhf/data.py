"""The three data formats every stage reads, and turning text into padded token batches.

    SFT demonstrations   {"prompt": str, "response": str}
    preference pairs     {"prompt": str, "chosen": str, "rejected": str}
    prompts              {"prompt": str}

One JSON object per line (JSONL). Extra fields are kept and ignored. A malformed line is an error that names the
file, the line and the field, so a bad record in a million-line file can be found and fixed.

What the model sees: encode(prompt) + encode(response) + [eot]. The prompt carries its own formatting (HH-RLHF's
"\\n\\nHuman: ...\\n\\nAssistant:", the lab's "Human: ...\\n\\nAssistant:"), and responses begin with a space.
"""

import json
import os
from typing import NamedTuple

import torch

from minirlhf.files import atomic_write

SFT_FIELDS = ("prompt", "response")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
PROMPT_FIELDS = ("prompt",)


class DataError(ValueError):
    """A bad input record; the message starts with 'path:line:'."""


def read_jsonl(path, fields, check=None):
    """Read a JSONL file whose records must have the string `fields`. Returns a list of dicts.

    A "prompt" must not be empty (a policy needs at least one token to condition on). `check(row)`, if given,
    may raise ValueError for a record that is wrong in some other way; the error is then given its file:line.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path, "rb") as f:  # bytes, so that a line that is not UTF-8 is reported with its line number
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                                f"of the line)") from None
            if not line.strip():
                continue  # blank lines (a trailing newline, say) are not records
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg.removesuffix(' at')} at column "
                                f"{e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object with fields {list(fields)}")
            for field in fields:
                if field not in row:
                    raise DataError(f"{path}:{lineno}: field '{field}' is missing")
                if not isinstance(row[field], str):
                    raise DataError(f"{path}:{lineno}: field '{field}' must be a string, got {type(row[field]).__name__}")
            if "prompt" in fields and not row["prompt"]:
                raise DataError(f"{path}:{lineno}: field 'prompt' is empty")
            if check is not None:
                try:
                    check(row)
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: {e}") from None
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def write_jsonl(path, rows):
    """Write records atomically: a reader never sees half a file, and a crash leaves the old file intact."""
    atomic_write(path, lambda f: f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), mode="w")


# ----------------------------------------------------------------------------- tokens


def encode_prompt(tok, prompt, max_len):
    """Prompt ids, cut from the left to at most max_len tokens (the end of a prompt matters most).

    Returns (ids, truncated) so callers can count how many prompts were cut.
    """
    ids = tok.encode(prompt)
    return ids[-max_len:], len(ids) > max_len


def read_prompts(path, tok, max_prompt_len, max_new_tokens, block_size):
    """An RL script's prompts: the rows of a prompts JSONL and their ids, cut from the left to max_prompt_len.
    Refuses, before any training and naming the line, a row tagged with a lab family that is not a lab prompt
    (the gold judge reads it), and prompts that leave no room in the context for max_new_tokens.
    Returns (rows, prompt ids, how many prompts were cut)."""
    from minirlhf.lab.world import check_lab_prompt
    rows = read_jsonl(path, PROMPT_FIELDS, check=check_lab_prompt)
    encoded = [encode_prompt(tok, r["prompt"], max_prompt_len) for r in rows]
    longest = max(len(ids) for ids, _ in encoded)
    if longest + max_new_tokens > block_size:
        raise ValueError(f"prompts of up to {longest} tokens (--max_prompt_len {max_prompt_len}) + "
                         f"--max_new_tokens {max_new_tokens} > the policy's block_size {block_size}")
    return rows, [ids for ids, _ in encoded], sum(cut for _, cut in encoded)


def encode_example(tok, prompt, response, block_size):
    """(prompt ids, response ids + [eot]) fitting in block_size tokens, and whether the prompt was truncated.

    The response keeps its end-of-text (the model must learn to stop); if prompt + response is too long the
    prompt is cut from the left, and a response longer than half the context is cut from the right.
    """
    resp = tok.encode(response)[: block_size // 2 - 1] + [tok.eot_token]
    ids, truncated = encode_prompt(tok, prompt, block_size - len(resp))
    return ids, resp, truncated


class Example(NamedTuple):
    """One side of a preference pair, as token ids: the prompt's, and the response's (end-of-text included)."""
    prompt_ids: list
    response_ids: list

    @property
    def tokens(self):
        return self.prompt_ids + self.response_ids


class Pair(NamedTuple):
    """A preference pair: the chosen and the rejected Example, and the prompt's text."""
    chosen: Example
    rejected: Example
    prompt: str


def load_pairs(path, tok, block_size):
    """Preference JSONL file(s), comma-separated -> ([Pair], number of pairs whose prompt was cut).

    The two sides are encoded separately: a long prompt may be cut differently to fit each response. The reward
    model scores prompt + response (Example.tokens); DPO also needs to know where each response starts.
    """
    rows = [row for one in path.split(",") for row in read_jsonl(one, PREFERENCE_FIELDS)]
    pairs, n_cut = [], 0
    for row in rows:
        *chosen, cut1 = encode_example(tok, row["prompt"], row["chosen"], block_size)
        *rejected, cut2 = encode_example(tok, row["prompt"], row["rejected"], block_size)
        pairs.append(Pair(Example(*chosen), Example(*rejected), row["prompt"]))
        n_cut += cut1 or cut2
    return pairs, n_cut


def left_pad(seqs, pad_id):
    """List of id lists -> (ids (B, T) long, attention_mask (B, T) long), padded on the left.

    Left padding puts every row's last real token in the last column, which is where generation appends.
    """
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids, mask


def right_pad(seqs, pad_id):
    """List of id lists -> (ids (B, T) long, attention_mask (B, T) long), padded on the right (for training)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
