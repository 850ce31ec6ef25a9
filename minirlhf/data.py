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


def encode_example(tok, prompt, response, block_size):
    """(prompt ids, response ids + [eot]) fitting in block_size tokens, and whether the prompt was truncated.

    The response keeps its end-of-text (the model must learn to stop); if prompt + response is too long the
    prompt is cut from the left, and a response longer than half the context is cut from the right.
    """
    resp = tok.encode(response)[: block_size // 2 - 1] + [tok.eot_token]
    ids, truncated = encode_prompt(tok, prompt, block_size - len(resp))
    return ids, resp, truncated


def load_pairs(path, tok, block_size):
    """Preference JSONL file(s), comma-separated -> (pairs, number of pairs whose prompt was cut).

    Each pair is ((prompt ids, chosen ids + eot), (prompt ids, rejected ids + eot), prompt text). The two sides
    are encoded separately: a long prompt may be cut differently to fit each response. The reward model scores
    prompt + response; DPO also needs to know where each response starts.
    """
    rows = [row for one in path.split(",") for row in read_jsonl(one, PREFERENCE_FIELDS)]
    pairs, n_cut = [], 0
    for row in rows:
        pc, rc, cut1 = encode_example(tok, row["prompt"], row["chosen"], block_size)
        pr, rr, cut2 = encode_example(tok, row["prompt"], row["rejected"], block_size)
        pairs.append(((pc, rc), (pr, rr), row["prompt"]))
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
