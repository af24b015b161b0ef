"""Batched, KV-cached rollout on a tiny random llama."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import llama

from tui_trainer.engine.rollout import sample

VOCAB = 64
PROMPTS = [[5, 9, 17], [3, 8, 21, 40, 2, 7, 33, 12, 60], [11], [4, 4, 19, 50, 27, 6]]  # ragged lengths


def tiny_model(seed: int = 0):
    """A random 2-layer llama with its own lm_head (tied embeddings would make every token predict
    itself); its next-token logits have std ~0.5, so sampling at T < 1 differs visibly from T**2."""
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB,
        rope_traditional=True, tie_word_embeddings=False))
    mx.eval(model.parameters())
    model.eval()
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def log_softmax_at(model, seq: list[int], start: int, temperature: float) -> np.ndarray:
    """log_softmax(logits / T) of a plain full-sequence forward (no cache, no padding), at the
    tokens seq[start:], each predicted from the positions before it."""
    logits = model(mx.array([seq]))[0].astype(mx.float32) / temperature
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    idx = mx.array(seq[start:])[:, None]
    return np.array(mx.take_along_axis(logp[start - 1:-1], idx, axis=-1)[:, 0])


def test_batched_greedy_equals_each_prompt_alone(model):
    batched = sample(model, PROMPTS, num_samples=2, max_new_tokens=12, temperature=0.0, pad_id=0)
    assert batched.prompt_index == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(map(tuple, batched.responses))) > 1, "degenerate model: every prompt gives the same tokens"
    for row, i in enumerate(batched.prompt_index):
        alone = sample(model, [PROMPTS[i]], num_samples=1, max_new_tokens=12, temperature=0.0, pad_id=0)
        assert batched.responses[row] == alone.responses[0], f"prompt {i}"
        assert np.allclose(np.array(batched.logprobs[row]), np.array(alone.logprobs[0]), atol=1e-4)
    # left padding: the prompt ends right before the response column in every row
    toks = batched.tokens.tolist()
    for row, i in enumerate(batched.prompt_index):
        pad = int(batched.left_pad[row].item())
        assert pad == batched.prompt_width - len(PROMPTS[i])
        assert toks[row][pad:batched.prompt_width] == PROMPTS[i]


def test_greedy_with_eos_stops_each_row_and_matches_alone(model):
    free = sample(model, PROMPTS, max_new_tokens=10, temperature=0.0)
    # an EOS that one row emits early while the others do not
    eos = next(t for t in free.responses[1][2:6] if t not in sum((r for j, r in enumerate(free.responses) if j != 1), []))
    r = sample(model, PROMPTS, max_new_tokens=10, temperature=0.0, eos_ids={eos}, pad_id=0)
    stop = free.responses[1].index(eos) + 1
    assert r.lengths[1] == stop and r.finished[1] and r.responses[1][-1] == eos
    for row in (0, 2, 3):
        assert r.lengths[row] == 10 and not r.finished[row]
        assert r.responses[row] == free.responses[row]
    mask = np.array(r.response_mask)
    tail = np.array(r.tokens[1, r.prompt_width + stop:])
    assert (tail == 0).all() and (mask[1, stop:] == 0).all() and (mask[1, :stop] == 1).all()
    assert float(np.abs(np.array(r.logprobs[1, stop:])).max(initial=0.0)) == 0.0
    for i, p in enumerate(PROMPTS):
        alone = sample(model, [p], max_new_tokens=10, temperature=0.0, eos_ids={eos}, pad_id=0)
        assert alone.responses[0] == r.responses[i]


def test_pad_equal_to_eos_keeps_eos_in_the_mask(model):
    """SmolLM2's GGUF says pad = EOS: the mask comes from lengths, so the EOS token stays a response token."""
    free = sample(model, PROMPTS, max_new_tokens=8, temperature=0.0)
    eos = free.responses[0][3]
    r = sample(model, PROMPTS, max_new_tokens=8, temperature=0.0, eos_ids={eos}, pad_id=eos)
    mask = np.array(r.response_mask)
    assert r.finished[0] and r.responses[0][-1] == eos
    for row, n in enumerate(r.lengths):
        assert mask[row, :n].sum() == n and mask[row, n:].sum() == 0
        assert r.responses[row] == free.responses[row][:n]
    stop = r.lengths[0]
    assert mask[0, stop - 1] == 1 and int(r.tokens[0, r.prompt_width + stop - 1].item()) == eos
    assert float(np.array(r.logprobs[0, stop - 1])) < 0  # the EOS carries its log-prob
    assert r.num_tokens == sum(r.lengths)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_full_forward_at_the_same_temperature(model, temperature):
    r = sample(model, PROMPTS, num_samples=3, max_new_tokens=9, temperature=temperature, seed=1, eos_ids={7})
    logprobs, mask = np.array(r.logprobs), np.array(r.response_mask)
    for row, i in enumerate(r.prompt_index):
        n = r.lengths[row]
        seq = PROMPTS[i] + r.responses[row]
        ref = log_softmax_at(model, seq, len(PROMPTS[i]), temperature)
        assert np.allclose(logprobs[row, :n], ref, atol=1e-4), (row, logprobs[row, :n], ref)
        assert (logprobs[row, n:] == 0).all() and (mask[row, n:] == 0).all()


def test_sampling_draws_from_the_tempered_softmax():
    """The first sampled token follows softmax(logits / T): the log-probs it keeps are its distribution."""
    model = tiny_model(1)
    prompt, temperature, n = [5, 9, 17], 0.5, 4096
    logits = model(mx.array([prompt]))[0, -1].astype(mx.float32)
    p = np.array(mx.softmax(logits / temperature))
    r = sample(model, [prompt], num_samples=n, max_new_tokens=1, temperature=temperature, seed=3)
    counts = np.bincount(np.array(r.tokens[:, -1]), minlength=VOCAB) / n
    tv = 0.5 * np.abs(counts - p).sum()
    assert tv < 0.07, tv  # sampling noise at n=4096 over 64 tokens: 0.03-0.05; logits / T**2 gives 0.55
    p_sq = np.array(mx.softmax(logits / temperature**2))
    assert 0.5 * np.abs(p_sq - p).sum() > 0.1  # the two distributions are far apart for this model
    assert np.allclose(np.array(r.logprobs[:, 0]), np.log(p[np.array(r.tokens[:, -1])]), atol=1e-4)


def test_top_k_and_top_p_restrict_the_draw():
    model = tiny_model(1)
    prompt = [5, 9, 17]
    logits = np.array(model(mx.array([prompt]))[0, -1].astype(mx.float32))
    order = np.argsort(-logits)
    r = sample(model, [prompt], num_samples=512, max_new_tokens=1, temperature=1.0, top_k=3, seed=0)
    drawn = set(np.array(r.tokens[:, -1]).tolist())
    assert drawn <= set(order[:3].tolist()) and len(drawn) > 1
    p = np.exp(logits - logits.max())
    p /= p.sum()
    nucleus = order[: int(np.searchsorted(np.cumsum(p[order]), 0.8)) + 1]
    r = sample(model, [prompt], num_samples=512, max_new_tokens=1, temperature=1.0, top_p=0.8, seed=0)
    assert set(np.array(r.tokens[:, -1]).tolist()) <= set(nucleus.tolist())


def test_max_new_tokens_is_respected(model):
    r = sample(model, PROMPTS, num_samples=2, max_new_tokens=5, temperature=1.0, seed=0)
    assert r.response_mask.shape == (8, 5) and r.logprobs.shape == (8, 5)
    assert r.tokens.shape[1] == r.prompt_width + 5
    assert r.lengths == [5] * 8 and r.finished == [False] * 8
    one = sample(model, PROMPTS, max_new_tokens=1, temperature=0.0)
    assert one.lengths == [1] * 4 and one.response_mask.shape == (4, 1)


def test_all_rows_stopping_early_trims_the_padding_columns(model):
    free = sample(model, PROMPTS, max_new_tokens=4, temperature=0.0)
    eos = set(free.responses[i][1] for i in range(len(PROMPTS)))  # every row stops by its second token
    r = sample(model, PROMPTS, max_new_tokens=40, temperature=0.0, eos_ids=eos)
    assert all(r.finished) and max(r.lengths) <= 2
    assert r.response_mask.shape[1] == max(r.lengths)


def test_bad_arguments():
    model = tiny_model(0)
    with pytest.raises(ValueError):
        sample(model, [[1, 2], []])
    with pytest.raises(ValueError):
        sample(model, [[1, 2]], max_new_tokens=0)


def test_sliding_window_model_logprobs_equal_a_full_forward():
    """Gemma 3 as a GGUF loads it (engine/gguf.py): its sliding-window layers (window 3 here, shorter than
    every sequence) see the same tokens through the rollout's batched cache with left padding, and through
    the update's full-sequence forward, as in a plain forward of each sequence alone."""
    from mlx_lm.models import gemma3_text

    from tui_trainer.engine.gguf import _Gemma3
    from tui_trainer.engine.policy import forward, token_logprobs

    mx.random.seed(3)
    model = _Gemma3(gemma3_text.ModelArgs(
        model_type="gemma3_text", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=2,
        head_dim=16, num_key_value_heads=1, vocab_size=VOCAB, sliding_window=3, sliding_window_pattern=2,
        query_pre_attn_scalar=16))
    mx.eval(model.parameters())
    r = sample(model, PROMPTS, num_samples=2, max_new_tokens=9, temperature=1.0, seed=2)
    logprobs = np.array(r.logprobs)
    _, logits = forward(model, r.tokens, r.left_pad, r.prompt_width)
    recomputed, _ = token_logprobs(logits, r.tokens[:, r.prompt_width:], 1.0)
    for row, i in enumerate(r.prompt_index):
        ref = log_softmax_at(model, PROMPTS[i] + r.responses[row], len(PROMPTS[i]), 1.0)
        assert np.allclose(logprobs[row], ref, atol=1e-4), (row, logprobs[row], ref)
        assert np.allclose(np.array(recomputed[row]), ref, atol=1e-4), row
    # the window matters here: the same weights attending to everything give other log-probs
    model.model.window_size = 1000
    far = log_softmax_at(model, PROMPTS[1] + r.responses[2], len(PROMPTS[1]), 1.0)
    assert np.abs(far - logprobs[2]).max() > 1e-2


@pytest.mark.parametrize("top_p, top_k", [(1.0, 0), (0.9, 5)])
def test_a_row_draws_the_same_completion_whatever_batch_it_is_in(model, top_p, top_k):
    """The draw depends on (seed, global row index) only: the batch split in two, each half given its
    row offset, gives the whole batch's tokens (what ranks sampling their shares rely on)."""
    kw = dict(num_samples=2, max_new_tokens=9, temperature=1.0, top_p=top_p, top_k=top_k, seed=5, eos_ids={7})
    whole = sample(model, PROMPTS, **kw)
    first = sample(model, PROMPTS[:2], **kw)
    second = sample(model, PROMPTS[2:], row_offset=4, **kw)
    assert first.responses + second.responses == whole.responses
    joined = first.logprobs.tolist() + second.logprobs.tolist()
    for row in range(len(whole.lengths)):
        n = whole.lengths[row]
        assert np.allclose(joined[row][:n], np.array(whole.logprobs[row, :n]), atol=1e-5)
    # the offset matters: the second half drawn as rows 0..3 is another draw
    unshifted = sample(model, PROMPTS[2:], **kw)
    assert unshifted.responses != second.responses
    # and so does the seed
    assert sample(model, PROMPTS, **{**kw, "seed": 6}).responses != whole.responses


def test_values_kept_by_the_rollout_equal_the_value_head_on_a_full_forward(model):
    """With a value head, the rollout keeps V(s_t) of the hidden state that predicts response token
    t (the same states the trainer's value pass would recompute); 0 after a row stops; the draw is
    unchanged by asking for values."""
    from tui_trainer.engine.policy import ValueHead

    head = ValueHead(32)
    mx.random.seed(3)
    head.linear.weight = mx.random.normal(head.linear.weight.shape)
    head.linear.bias = mx.array([0.25])
    r = sample(model, PROMPTS, num_samples=2, max_new_tokens=9, temperature=1.0, seed=2, eos_ids={7},
               value_head=head)
    plain = sample(model, PROMPTS, num_samples=2, max_new_tokens=9, temperature=1.0, seed=2, eos_ids={7})
    assert plain.values is None and r.responses == plain.responses
    values = np.array(r.values)
    assert values.shape == np.array(r.response_mask).shape
    for row, i in enumerate(r.prompt_index):
        n, p = r.lengths[row], len(PROMPTS[i])
        hidden = model.model(mx.array([PROMPTS[i] + r.responses[row]]))[0, p - 1:p - 1 + n]
        ref = np.array(head(hidden.astype(mx.float32)))
        scale = np.abs(np.array(head.linear.weight)).sum() * np.abs(np.array(hidden)).max()
        assert np.allclose(values[row, :n], ref, atol=64 * 2.0 ** -23 * scale), (row, values[row, :n], ref)
        assert (values[row, n:] == 0).all()


def test_each_prompt_is_prefilled_once_for_all_its_samples(model, monkeypatch):
    """The prefill runs on one row per prompt (not one per sample), then every row decodes; the
    completions equal those of a batch where each prompt is written out num_samples times."""
    shapes = []
    original = llama.LlamaModel.__call__

    def recording(self, inputs, *args, **kwargs):
        shapes.append(tuple(inputs.shape))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(llama.LlamaModel, "__call__", recording)
    shared = sample(model, PROMPTS, num_samples=3, max_new_tokens=5, temperature=1.0, seed=4)
    width = max(len(p) for p in PROMPTS)
    # (engine/family.py probes the family's attention layout with a few tiny calls first)
    assert shapes[-5:] == [(len(PROMPTS), width)] + [(3 * len(PROMPTS), 1)] * 4
    shapes.clear()
    written_out = [p for p in PROMPTS for _ in range(3)]
    each = sample(model, written_out, num_samples=1, max_new_tokens=5, temperature=1.0, seed=4)
    assert shapes[-5] == (3 * len(PROMPTS), width)
    assert shared.responses == each.responses
    assert np.allclose(np.array(shared.logprobs), np.array(each.logprobs), atol=1e-5)


def test_entropy_equals_the_full_forwards_distribution(model):
    """The rollout's per-token entropy (log Z - sum p z, from the decode's one exp pass) equals
    -sum p log p of a plain full forward's tempered distribution at each response position."""
    r = sample(model, PROMPTS, num_samples=2, max_new_tokens=7, temperature=0.7, seed=5, eos_ids={7})
    entropy = np.array(r.entropy)
    for row, i in enumerate(r.prompt_index):
        n, p = r.lengths[row], len(PROMPTS[i])
        logits = model(mx.array([PROMPTS[i] + r.responses[row]]))[0].astype(mx.float32) / 0.7
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        ref = np.array(-(mx.exp(logp) * logp).sum(axis=-1))[p - 1:p - 1 + n]
        assert np.allclose(entropy[row, :n], ref, atol=1e-4), (row, entropy[row, :n], ref)
        assert (entropy[row, n:] == 0).all()



@pytest.mark.parametrize("vocab", [100, 1024])
def test_the_two_level_draw_is_the_categorical_distribution(vocab):
    """Block by log-mass, then token within the block by Gumbel-max: each token comes with its softmax
    probability, with a last block padded (100 = 13 blocks of 8, less 4) or none (1024 = 32 x 32)."""
    from tui_trainer.engine.rollout import block_size, row_keys, two_level_draw

    assert block_size(vocab) == {100: 8, 1024: 32}[vocab]
    n = 40000
    logits = mx.random.normal((vocab,), key=mx.random.key(vocab)) * 2.0
    rows = mx.broadcast_to(logits, (n, vocab))
    mass = mx.exp(rows - logits.max())
    keys = row_keys(11, range(n), 1)[:, 0]
    drawn = np.array(two_level_draw(rows, mass, keys))
    p = np.array(mx.softmax(logits))
    tv = 0.5 * np.abs(np.bincount(drawn, minlength=vocab) / n - p).sum()
    assert drawn.max() < vocab and tv < 0.04, tv  # noise <= 0.5 sqrt(2 V / (pi n)): 0.02 at V = 100
    # a row's draw depends on its own key and logits only: rows drawn alone give the batch's tokens
    alone = [int(two_level_draw(rows[i:i + 1], mass[i:i + 1], keys[i:i + 1])[0]) for i in range(5)]
    assert alone == drawn[:5].tolist()
    # a token with all the mass is always drawn, wherever its block is
    sure = mx.where(mx.arange(vocab) == vocab - 1, 0.0, -200.0)[None]
    assert np.array(two_level_draw(mx.broadcast_to(sure, (64, vocab)), mx.exp(mx.broadcast_to(sure, (64, vocab))),
                                   keys[:64])).tolist() == [vocab - 1] * 64
