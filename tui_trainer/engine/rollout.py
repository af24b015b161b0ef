"""Batched, KV-cached sampling of completions (the PPO rollout).

All ``B * n`` sequences run in one loop over the model's own caches as mlx-lm
batch caches (``BatchKVCache``, ``BatchRotatingKVCache`` for sliding-window
layers; engine/family.py): prompts are left-padded, and the cache gives every
row its own RoPE offset and masks its padding, so a row decodes exactly as its
prompt would alone. Sampling draws with the Gumbel-max trick (what ``mx.random.categorical``
does) from noise keyed per row: row ``g`` of a draw with seed ``s`` uses the key of ``(s, g)``,
split once per token (``row_keys``). The draw runs in two levels (a block of ~sqrt(V) tokens by
its mass, then a token within it: ``two_level_draw``, the same distribution from 448 noise values
a row instead of 49152 for SmolLM2), after mlx-lm's top_p / top_k filters when they are set.
So a row draws the same completion whatever batch it shares: rows 3..5 sampled alone (``row_offset=3``) equal rows 3..5 of the whole batch, and ranks
sampling their shares of a global batch draw what one process draws (engine/distributed.py).

The log-prob kept for each sampled token is ``log_softmax(logits / T)`` at that
token: the policy distribution at the sampling temperature, which is what the
PPO update recomputes (TRL does the same). With top_p < 1 or top_k > 0 the
sampler draws from a truncated version of it.

Each prompt is prefilled once (its cache rows are then copied to its
``num_samples`` samples, mlx-lm's ``cache.filter``), and each decode step runs the
backbone and the model's own head (engine/family.py ``output_logits``) on the last
position only: the prefill never computes the prompt's logits. With a ``value_head``
the rollout also keeps ``V(s_t)`` of the hidden state that predicts each response
token, the critic's values before the update, so the trainer needs no value pass.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.sample_utils import apply_top_k, apply_top_p

from tui_trainer.engine import cpu_math
from tui_trainer.engine.blas import DecodeThreads, decode_threads
from tui_trainer.engine.family import backbone_of, batch_caches, output_logits
from tui_trainer.errors import StepInterrupted


@dataclass
class Rollout:
    """One batch of sampled sequences, row-aligned.

    ``tokens`` is ``(N, P + R)``: ``left_pad[i]`` pad tokens, the prompt, then the
    response (``R`` columns, pad after the stop). ``response_mask`` is 1 on real
    response tokens, EOS included, and is built from lengths, never from token ids.
    """

    tokens: mx.array  # (N, P+R) int32
    left_pad: mx.array  # (N,) int32
    prompt_width: int  # P
    response_mask: mx.array  # (N, R) float32
    logprobs: mx.array  # (N, R) float32, 0 on padding
    entropy: mx.array  # (N, R) float32, entropy of the sampling distribution, 0 on padding
    lengths: list[int]  # response lengths (EOS counted)
    finished: list[bool]  # stopped by EOS
    prompt_index: list[int]  # row -> index of its prompt in the input list
    values: mx.array | None = None  # (N, R) float32 V(s_t) from value_head when given, 0 on padding
    decode_threads: int = 1  # the BLAS threads the decode ran with (engine/blas.py DecodeThreads)

    @property
    def responses(self) -> list[list[int]]:
        toks = self.tokens[:, self.prompt_width:].tolist()
        return [row[:n] for row, n in zip(toks, self.lengths)]

    @property
    def num_tokens(self) -> int:
        return int(sum(self.lengths))


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[mx.array, mx.array]:
    width = max(len(s) for s in seqs)
    pads = [width - len(s) for s in seqs]
    rows = [[pad_id] * p + list(s) for s, p in zip(seqs, pads)]
    return mx.array(rows, dtype=mx.int32), mx.array(pads, dtype=mx.int32)


def row_keys(seed: int, rows: range, steps: int) -> mx.array:
    """``(len(rows), steps, 2)`` PRNG keys: row ``g`` gets the key of ``(seed, g)`` split into one per token."""
    def key(g: int) -> mx.array:
        digest = hashlib.blake2b(f"tui-trainer-sample:{seed}:{g}".encode(), digest_size=8).digest()
        return mx.random.key(int.from_bytes(digest, "little"))

    base = mx.stack([key(g) for g in rows])
    return mx.vmap(lambda k: mx.random.split(k, steps))(base)


def _gumbel(keys: mx.array, vocab: int) -> mx.array:
    """One row of Gumbel noise per key: ``(N, vocab)``."""
    return mx.vmap(lambda k: mx.random.gumbel(shape=(vocab,), key=k))(keys)


def block_size(vocab: int) -> int:
    """The power of two nearest sqrt(vocab): the two levels of ``two_level_draw`` about equal."""
    return 1 << max(0, round(math.log2(vocab) / 2))


def two_level_draw(logits: mx.array, mass: mx.array, keys: mx.array) -> mx.array:
    """Gumbel-max over the vocabulary in two levels, with sqrt(V) noise values a row instead of V.

    The vocabulary is cut into blocks of ``block_size(V)`` tokens (the last may be short). The largest
    logit + Gumbel noise of a block is itself Gumbel-distributed around the block's log-mass, so
    drawing a block b by argmax_b(log sum_{i in b} exp z_i + G_b), then a token of b by
    argmax_{i in b}(z_i + G_i), draws token i with probability exp z_i / sum_j exp z_j: the
    categorical distribution, as one Gumbel-max over all V tokens does. ``logits`` (N, V) are the
    draw's log-probs up to a per-row constant, ``mass`` = exp(logits - c) for a per-row c (the
    rollout's softmax numerators, already computed), ``keys`` (N, 2) one PRNG key a row: a row's
    draw depends on its key and its logits only, whatever batch it is in."""
    n, vocab = logits.shape
    blk = block_size(vocab)
    full = vocab // blk
    sums = mass[:, :full * blk].reshape(n, full, blk).sum(axis=-1)
    if full * blk < vocab:  # the last, short block
        sums = mx.concatenate([sums, mass[:, full * blk:].sum(axis=-1, keepdims=True)], axis=1)
    blocks = sums.shape[1]
    noise = _gumbel(keys, blocks + blk)
    block = mx.argmax(mx.log(sums) + noise[:, :blocks], axis=-1)
    idx = block[:, None] * blk + mx.arange(blk)
    within = mx.where(idx < vocab, mx.take_along_axis(logits, mx.minimum(idx, vocab - 1), axis=1), -mx.inf)
    return block * blk + mx.argmax(within + noise[:, blocks:], axis=-1)


def _sample(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_ids: set[int] | list[int] = (),
    pad_id: int = 0,
    seed: int | None = None,
    row_offset: int = 0,
    on_token: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    value_head: Callable[[mx.array], mx.array] | None = None,
    threads: DecodeThreads | None = None,
) -> Rollout:
    """Sample ``num_samples`` completions for each prompt (token-id lists) in one batch.

    ``temperature == 0`` is greedy decoding (log-probs then at T = 1).
    Rows are ordered prompt-major: row ``i * num_samples + j`` is sample j of prompt i.
    The draw of each row depends on ``seed`` and its global index ``row_offset + row`` only
    (``seed=None``: a seed taken from MLX's global generator).
    ``on_token(t)`` is called after each of the ``max_new_tokens`` decode positions;
    ``should_stop()`` is checked there too and raises ``StepInterrupted`` when true.
    ``value_head(hidden)``: also keep its value of each hidden state that predicts a response
    token (``Rollout.values``).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1 or num_samples < 1 or temperature < 0:
        raise ValueError("max_new_tokens and num_samples must be >= 1 and temperature >= 0")
    if seed is None:
        seed = int(mx.random.randint(0, 2**31 - 1, ()).item())
    prompt_index = [i for i in range(len(prompts)) for _ in range(num_samples)]
    # each prompt is prefilled once; its cache rows are then copied for its num_samples samples
    prompt_tokens, prompt_pads = left_pad(prompts, pad_id)
    expand = mx.array(prompt_index)
    tokens, pads = prompt_tokens[expand], prompt_pads[expand]
    n = tokens.shape[0]
    cache = batch_caches(model, prompt_pads)
    # The draw is from log_softmax(logits / T) itself (top_p / top_k applied to it), at
    # temperature 1: tempering again would sample from logits / T**2 while the kept log-probs
    # say logits / T. The filters run in make_sampler's order (top_p, then top_k).
    keys = row_keys(seed, range(row_offset, row_offset + n), max_new_tokens) if temperature > 0 else None

    def sampler(scaled: mx.array, mass: mx.array, log_z: mx.array, t: int) -> mx.array:
        """The two-level Gumbel-max draw from the softmax numerators ``mass`` (the log-probs'
        per-row constant log Z moves no argmax); top_p / top_k set the entries they remove to
        -inf in the log-probs and 0 in the numerators."""
        if keys is None:
            return mx.argmax(scaled, axis=-1)
        if (0 < top_p < 1.0) or top_k > 0:
            scaled = scaled - log_z
            if 0 < top_p < 1.0:
                scaled = apply_top_p(scaled, top_p)
            if top_k > 0:
                scaled = apply_top_k(scaled, top_k)
            mass = mx.where(scaled > -mx.inf, mass, 0.0)
        return two_level_draw(scaled, mass, keys[:, t])

    inv_t = 1.0 / temperature if temperature > 0 else 1.0
    eos = mx.array(sorted(set(eos_ids)) or [-1], dtype=mx.int32)

    backbone = backbone_of(model)

    def step(inputs: mx.array, done: mx.array, t: int):
        hidden = backbone(inputs, cache=cache)[:, -1:, :]  # the head on the last position only
        if hidden.shape[0] != n:  # the prefill of each prompt once: copy its rows to its samples
            hidden = hidden[expand]
            for c in cache:
                c.filter(expand)
        logits = output_logits(model, hidden)[:, -1, :].astype(mx.float32)
        val = value_head(hidden[:, -1, :].astype(mx.float32)) if value_head is not None else mx.zeros((n,))
        scaled = logits * inv_t
        # one exp over the vocabulary serves the normaliser and the entropy:
        # log Z = m + log sum exp(z - m);  H = -sum p log p = log Z - sum p z,  p = exp(z - m) / sum
        m = scaled.max(axis=-1, keepdims=True)
        e = cpu_math.exp(scaled - m)
        total = e.sum(axis=-1, keepdims=True)
        log_z = m + mx.log(total)
        tok = sampler(scaled, e, log_z, t).astype(mx.int32)
        lp = mx.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - log_z[:, 0]
        ent = log_z[:, 0] - (e * scaled).sum(axis=-1) / total[:, 0]
        alive = mx.logical_not(done)
        tok = mx.where(alive, tok, pad_id)
        lp = mx.where(alive, lp, 0.0)
        ent = mx.where(alive, ent, 0.0)
        val = mx.where(alive, val, 0.0)
        is_eos = (tok[:, None] == eos[None, :]).any(axis=-1)
        new_done = mx.logical_or(done, mx.logical_and(alive, is_eos))
        return tok, lp, ent, val, alive, new_done

    done = mx.zeros((n,), dtype=mx.bool_)
    out_tok, out_lp, out_ent, out_val, out_mask = [], [], [], [], []
    tok, lp, ent, val, alive, done = step(prompt_tokens, done, 0)
    mx.async_eval(tok, lp, ent, val, alive, done)
    for t in range(max_new_tokens):
        out_tok.append(tok)
        out_lp.append(lp)
        out_ent.append(ent)
        out_val.append(val)
        out_mask.append(alive)
        if should_stop is not None and should_stop():
            raise StepInterrupted("rollout interrupted")
        if on_token is not None:
            on_token(t + 1)
        if t + 1 == max_new_tokens:
            break
        if threads is not None:
            threads.before_token(t + 1, lambda: mx.eval(tok, lp, ent, val, alive, done))
        nxt = step(tok[:, None], done, t + 1)
        mx.async_eval(*nxt)
        if t % 8 == 7 and bool(done.all()):  # check for the early stop every few tokens
            break
        tok, lp, ent, val, alive, done = nxt
    resp = mx.stack(out_tok, axis=1)
    logprobs = mx.stack(out_lp, axis=1)
    entropy = mx.stack(out_ent, axis=1)
    values = mx.stack(out_val, axis=1)
    mask = mx.stack(out_mask, axis=1).astype(mx.float32)
    # trim trailing all-padding columns (from the lazy early-stop check)
    lengths = mask.sum(axis=1).astype(mx.int32)
    width = max(1, int(lengths.max().item()))
    resp, logprobs, entropy, mask = resp[:, :width], logprobs[:, :width], entropy[:, :width], mask[:, :width]
    values = values[:, :width]
    lengths_l = lengths.tolist()
    last = mx.take_along_axis(resp, mx.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    finished = ((last[:, None] == eos[None, :]).any(axis=-1)).tolist()
    finished = [bool(f) and n_ > 0 for f, n_ in zip(finished, lengths_l)]
    return Rollout(
        tokens=mx.concatenate([tokens, resp], axis=1),
        left_pad=pads,
        prompt_width=tokens.shape[1],
        response_mask=mask,
        logprobs=logprobs,
        entropy=entropy,
        lengths=lengths_l,
        finished=finished,
        prompt_index=prompt_index,
        values=values if value_head is not None else None,
        decode_threads=threads.chosen if threads is not None else 1,
    )


def sample(model: nn.Module, prompts: list[list[int]], **kwargs) -> Rollout:
    """Sample completions (see ``_sample`` for the arguments), decoding with the BLAS thread count
    that the decode's own first tokens time fastest (engine/blas.py ``DecodeThreads``;
    ``TUI_TRAINER_DECODE_THREADS`` fixes it)."""
    with DecodeThreads(decode_threads(), kwargs.get("max_new_tokens", 64)) as threads:
        return _sample(model, prompts, threads=threads, **kwargs)
