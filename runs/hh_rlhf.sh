#!/usr/bin/env bash
# HH-RLHF on GPT-2, one GPU: prepare the data, then SFT -> reward model -> PPO, each stage from a flags file.
#
#   bash runs/hh_rlhf.sh runs/hh_gpt2_80gb          # GPT-2 124M on an 80 GB GPU
#   bash runs/hh_rlhf.sh runs/hh_gpt2_24gb          # GPT-2 124M on a 24 GB GPU
#   bash runs/hh_rlhf.sh runs/hh_gpt2-medium_80gb   # GPT-2 355M on an 80 GB GPU
#   bash runs/hh_rlhf.sh runs/hh_gpt2-medium_24gb   # GPT-2 355M on a 24 GB GPU
#
# One stage alone, or with a flag changed (the last occurrence of a flag wins):
#   python train_sft.py @runs/hh_gpt2_24gb/sft.args --init_from ~/models/gpt2   # a local Hugging Face folder
#
# The two sizes of GPU run the same algorithm: the same batch sizes and learning rates (except PPO with 355M on
# 24 GB, which halves the rollout batch); what changes is micro_batch_size (gradient accumulation makes up the
# batch) and, on 24 GB, the fused linear log-prob kernel in SFT.
#
# Memory, estimated from first principles (docs/real_data.md: what was measured):
#   weights + gradients + AdamW's two moments, all fp32: 16 bytes per parameter
#       124M: 2.0 GB     355M: 5.7 GB
#   activations kept for the backward under bf16 autocast, about 40 * n_embd bytes per token per layer (fp32
#   residual stream and LayerNorm inputs, the bf16 input of every matmul, q k v, the 4x MLP; SDPA keeps no
#   T x T attention matrix):
#       124M: 40 * 768 * 12 = 0.37 MB/token     355M: 40 * 1024 * 24 = 0.98 MB/token
#   logits, where built: 50258 bf16 = 0.1 MB per scored token, as much again for their gradient
#   (--fused_logprobs true builds neither)
#   sequences are right-padded to the longest of their micro-batch, at most GPT-2's 1024 positions; every
#   micro-batch below is sized for that worst case, to stay under about 60 % of the GPU (allocator
#   fragmentation, the CUDA context and the error of these estimates take the rest).
# SFT: 16 B/param + micro_batch_size * 1024 * (activations + logits)
# RM:  16 B/param + 2 * micro_batch_size * 1024 * activations (chosen and rejected; a scalar head, no logits)
# PPO: four models. Policy and value model are trained (16 B/param each), the SFT reference and the reward
#      model frozen (4 B/param each): 40 B/param = 5.0 GB (124M), 14.2 GB (355M).
#      Rollout: an fp32 KV cache of batch_size sequences of max_prompt_len + max_new_tokens = 576 positions,
#      2 * n_layer * n_embd * 4 bytes a position: 42 MB (124M), 113 MB (355M) a sequence.
#      Update: policy and value model keep activations for all 576 positions of micro_batch_size sequences.
#      The logits cover the 128 response tokens only (13 MB a sequence): the fused kernel saves little here.
set -euo pipefail
cfg=${1:?usage: bash runs/hh_rlhf.sh runs/CONFIG_DIR}
cd "$(dirname "$0")/.."

[ -f data/hh_rlhf/prompts_train.jsonl ] || python data/hh_rlhf/prepare.py  # Anthropic/hh-rlhf, all four subsets
python train_sft.py @"$cfg"/sft.args
python train_rm.py @"$cfg"/rm.args
python train_ppo.py @"$cfg"/ppo.args
