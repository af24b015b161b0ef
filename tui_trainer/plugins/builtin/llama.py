"""The ``llama`` judge: a local GGUF model run by llama.cpp (llama-cpp-python).

Nothing is parsed from generated text. The judge builds a chat prompt, runs it,
and reads the next-token distribution:

* pointwise: a softmax over the logits of the rating digits ``scale_min`` ..
  ``scale_max``; the score is the expected rating, mapped to [0, 1];
* pairwise: a softmax over the logits of the letters ``A`` and ``B``; with
  ``orders: both`` (default) the pair is shown in both orders and the two
  probabilities averaged, which cancels position bias; ``orders: random`` shows
  one random order per call (half the cost, bias cancels only on average).
  The verdict's confidence is P(chosen completion is better).

That is ``method: rubric``. ``method: likelihood`` instead scores a completion
by the judge model's own mean log-probability of it given the prompt (exp of
it, so in (0, 1]); pairwise it prefers the completion the model finds more
likely (P = sigmoid(8 * difference of the means), order-free). ``method: auto``
(default) picks likelihood for the embedded SmolLM2-135M and rubric for any
model you name: measured on 20 factual question pairs, the 135M model under a
rubric is at chance (single shown order: 20/40, pure position bias; both
orders averaged: 13/20), while its likelihood picks the right answer 38/40.

With ``critique_tokens > 0`` the model first writes a one-line critique, its
output constrained by a llama.cpp grammar (one line, no markup), and the
verdict is read after it. Prompts and completions are cut to
``max_completion_chars``, stripped of the tags that delimit them and of special
tokens, and tokenized as plain text, so they cannot break out of their slot.

llama.cpp's own output never reaches the terminal: verbose=False, and file
descriptor 2 points at /dev/null while a model loads or runs. Loaded models are
cached per (path, n_ctx, threads) for the life of the process (closed at exit).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import random
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tui_trainer.errors import ConfigError, ModelError
from tui_trainer.plugins.judge import JudgeContext, JudgeError, Verdict

_SPECIAL = re.compile(r"<\|[^|<>]{0,40}\|>|</?s>|\x00")
_TAGS = re.compile(r"<\s*/?\s*(?:request|response)(?:\s+[ab])?\s*>", re.IGNORECASE)
CRITIQUE_GRAMMAR = r'root ::= [^\n<>|]{1,400} "\n"'

# -- C-level output -------------------------------------------------------------------

_quiet_lock = threading.Lock()
_quiet_depth = 0
_saved_fd: int | None = None
_quiet_calls = True
_log_callback: Any = None


def silence_calls(enabled: bool) -> None:
    """Whether fd 2 is also silenced around each judge call (default: yes).

    A front end that draws on fd 2 from another thread (Textual writes its frames
    to ``sys.__stderr__``) turns this off, or frames drawn during a call are lost.
    Model loading is always silenced, and llama.cpp's log goes to a no-op callback,
    so nothing reaches the terminal either way (measured: a call writes nothing).
    """
    global _quiet_calls
    _quiet_calls = bool(enabled)


def _mute_llama_log(llama_cpp: Any) -> None:
    """Route llama.cpp / ggml logging to a callback that drops it (once per process)."""
    global _log_callback
    if _log_callback is None:
        @llama_cpp.llama_log_callback
        def _drop(level, text, user_data):  # noqa: ANN001  C callback
            return None

        _log_callback = _drop
        llama_cpp.llama_log_set(_log_callback, None)


@contextlib.contextmanager
def quiet_call() -> Iterator[None]:
    if _quiet_calls:
        with quiet_stderr():
            yield
    else:
        yield


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (re-entrant, process-wide)."""
    global _quiet_depth, _saved_fd
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError, OSError):
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 at all: nothing to silence
                saved = None
            if saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            _saved_fd = saved
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _saved_fd is not None:
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None


# -- the model --------------------------------------------------------------------------

class LlamaModel:
    """One loaded GGUF: tokenizing, chat prompts, next-token logits with prefix reuse."""

    def __init__(self, path: str, n_ctx: int, threads: int | None) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelError(f"the llama judge needs llama-cpp-python: {exc}") from None
        self._llama_cpp = llama_cpp
        kwargs: dict[str, Any] = {"model_path": path, "n_ctx": n_ctx, "verbose": False, "logits_all": False}
        if threads:
            kwargs["n_threads"] = threads
            kwargs["n_threads_batch"] = threads
        try:
            with quiet_stderr():
                _mute_llama_log(llama_cpp)
                self.llm = llama_cpp.Llama(**kwargs)
        except Exception as exc:  # noqa: BLE001  llama.cpp says little: a ValueError mostly
            raise ModelError(f"{path}: llama.cpp could not load it ({' '.join(str(exc).split())})") from None
        self.path = path
        self.lock = threading.RLock()
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()
        self._chat_cache: dict[str, tuple[list[int], list[int]]] = {}

    def tokens(self, text: str, *, special: bool = False, bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    def text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def chat(self, system: str, user: str, assistant: str = "") -> list[int]:
        """Tokens of a chat with the model's own template: the template parts as
        special tokens, ``user`` and ``assistant`` as plain text."""
        if system not in self._chat_cache:
            pre, post = self._render(system)
            self._chat_cache[system] = (self.tokens(pre, special=True, bos=True), self.tokens(post, special=True))
        pre_ids, post_ids = self._chat_cache[system]
        out = pre_ids + self.tokens(user) + post_ids
        if assistant:
            out += self.tokens(assistant)
        return out

    def _render(self, system: str) -> tuple[str, str]:
        marker = "\x01USER\x01"
        template = self.llm.metadata.get("tokenizer.chat_template")
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def fail(message: str) -> None:
                raise ValueError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            tpl = env.from_string(template)
            for messages in ([{"role": "system", "content": system}, {"role": "user", "content": marker}],
                             [{"role": "user", "content": f"{system}\n\n{marker}"}]):
                try:
                    text = tpl.render(messages=messages, add_generation_prompt=True, bos_token="",
                                      eos_token="", raise_exception=fail)
                except Exception:  # noqa: BLE001  e.g. a template without a system role
                    continue
                if text.count(marker) == 1:
                    pre, post = text.split(marker)
                    return pre, post
        return f"{system}\n\n", "\n\n"

    def next_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits for the token after ``tokens``."""
        return self.logits_rows(tokens, [])[0]

    def logits_rows(self, context: list[int], target: list[int]) -> np.ndarray:
        """Next-token logits after ``context`` and after each of ``target[:-1]`` appended:
        row i predicts ``target[i]`` (one row when ``target`` is empty).

        Every call starts from an empty KV cache. Reusing the prefix the cache already
        holds was measured to change the result with the history (P(A) 0.80 vs 0.83 for
        the same prompt), and a judge must give the same answer to the same question.
        """
        n_total = len(context) + max(0, len(target) - 1)
        if n_total >= self.n_ctx:
            raise JudgeError(f"judge prompt has {n_total} tokens, more than n_ctx={self.n_ctx}")
        if not context:
            raise JudgeError("empty judge prompt")
        llm, lc = self.llm, self._llama_cpp
        with self.lock:
            llm.n_tokens = 0  # eval() then clears the whole cache
            rows = []
            with quiet_call():
                llm.eval(context)
                rows.append(self._row(-1))
                rest = list(target[:-1])
                for start in range(0, len(rest), llm.n_batch):
                    chunk = rest[start:start + llm.n_batch]
                    pos = llm.n_tokens
                    batch = lc.llama_batch_init(len(chunk), 0, 1)
                    try:
                        for i, tok in enumerate(chunk):
                            batch.token[i] = tok
                            batch.pos[i] = pos + i
                            batch.n_seq_id[i] = 1
                            batch.seq_id[i][0] = 0
                            batch.logits[i] = True
                        batch.n_tokens = len(chunk)
                        code = lc.llama_decode(llm.ctx, batch)
                        if code != 0:
                            raise JudgeError(f"llama_decode failed with code {code}")
                        rows.extend(self._row(i) for i in range(len(chunk)))
                    finally:
                        lc.llama_batch_free(batch)
                    llm.input_ids[pos:pos + len(chunk)] = chunk
                    llm.n_tokens = pos + len(chunk)
            return np.stack(rows)

    def _row(self, i: int) -> np.ndarray:
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    def generate(self, tokens: list[int], max_tokens: int, grammar_text: str) -> str:
        """Greedy text after ``tokens``, constrained by a GBNF grammar."""
        from llama_cpp import LlamaGrammar

        with self.lock, quiet_call():
            self.llm.reset()  # no prefix reuse (see logits_rows)
            grammar = LlamaGrammar.from_string(grammar_text, verbose=False)
            out = self.llm.create_completion(prompt=tokens, max_tokens=max_tokens, temperature=0.0,
                                             grammar=grammar, stop=["\n"])
        return out["choices"][0]["text"]

    def label_tokens(self, tail: str, labels: list[str]) -> list[int]:
        """The single token that each label adds after the text ``tail``."""
        base = self.tokens(tail) if tail else []
        out = []
        for label in labels:
            ids = self.tokens(tail + label)
            if len(ids) != len(base) + 1 or ids[: len(base)] != base:
                raise ModelError(f"{Path(self.path).name}: the label {label!r} is not a single token after "
                                 f"{tail!r}; this model cannot be used as a llama judge")
            out.append(ids[-1])
        return out


_models: dict[tuple[str, int, int | None], LlamaModel] = {}
_models_lock = threading.Lock()


def get_model(path: str, n_ctx: int, threads: int | None) -> LlamaModel:
    key = (str(Path(path).resolve()), n_ctx, threads)
    with _models_lock:
        if key not in _models:
            if not _models:
                atexit.register(close_models)
            _models[key] = LlamaModel(key[0], n_ctx, threads)
        return _models[key]


def close_models() -> None:
    """Free the cached models (at exit, before the interpreter tears llama_cpp down)."""
    with _models_lock:
        models = list(_models.values())
        _models.clear()
    for model in models:
        with model.lock, quiet_stderr():
            model.llm.close()


# -- the judge --------------------------------------------------------------------------

class LlamaJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        o = options
        self.name = context.name
        self.progress = context.progress
        lo, hi = o["scale_min"], o["scale_max"]
        if not (0 <= lo < hi <= 9):
            raise ConfigError(f"judge {self.name}: need 0 <= scale_min < scale_max <= 9, got {lo}..{hi}")
        if o["n_ctx"] < 256:
            raise ConfigError(f"judge {self.name}: n_ctx must be at least 256, got {o['n_ctx']}")
        if o["max_completion_chars"] < 1:
            raise ConfigError(f"judge {self.name}: max_completion_chars must be >= 1")
        if o["critique_tokens"] < 0:
            raise ConfigError(f"judge {self.name}: critique_tokens must be >= 0")
        if not 0.0 <= o["tie_margin"] < 0.5:
            raise ConfigError(f"judge {self.name}: tie_margin must be in [0, 0.5)")
        if o["model"]:
            path = Path(o["model"]).expanduser()
            if not path.is_file():
                raise ConfigError(f"judge {self.name}: model file {path} does not exist")
        else:
            from tui_trainer.embedded import default_model_path

            path = default_model_path()
        self.method = o["method"]
        if self.method == "auto":
            self.method = "rubric" if o["model"] else "likelihood"
        self.scale = (lo, hi)
        self.system = o["system"] or ""
        self.limit = o["max_completion_chars"]
        self.orders = o["orders"]
        self.tie_margin = o["tie_margin"]
        self.critique_tokens = o["critique_tokens"]
        self.rng = random.Random(context.seed)
        self.model = get_model(str(path), o["n_ctx"], o["threads"])
        self.digits = self.model.label_tokens("", [str(d) for d in range(lo, hi + 1)])
        self.letters = self.model.label_tokens("", ["A", "B"])
        self.last_critique: str | None = None

    # pointwise
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        out = []
        for p, c in zip(prompts, completions):
            out.append(self.rate(p, c))
            self.progress(len(out), len(completions))
        return out

    def rate(self, prompt: str, completion: str) -> float:
        """The expected rating of ``completion``, mapped to [0, 1]."""
        if self.method == "likelihood":
            return math.exp(self.mean_logprob(prompt, completion))
        lo, hi = self.scale
        user = (f"Rate the response to the request below from {lo} (very bad) to {hi} (excellent).\n\n"
                f"<request>\n{self.clean(prompt)}\n</request>\n\n"
                f"<response>\n{self.clean(completion)}\n</response>\n\n")
        probs = self._answer(user, f"Reply with a single digit from {lo} to {hi}.", "Rating:", self.digits,
                             [str(d) for d in range(lo, hi + 1)])
        expected = float(np.dot(probs, np.arange(lo, hi + 1)))
        return (expected - lo) / (hi - lo)

    # pairwise
    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        if self.method == "likelihood":
            la, lb = self.mean_logprob(prompt, a), self.mean_logprob(prompt, b)
            p = 1.0 / (1.0 + math.exp(-8.0 * (la - lb)))
        elif self.orders == "both":
            p = 0.5 * (self.prob_first(prompt, a, b) + 1.0 - self.prob_first(prompt, b, a))
        elif self.rng.random() < 0.5:
            p = self.prob_first(prompt, a, b)
        else:
            p = 1.0 - self.prob_first(prompt, b, a)
        if abs(p - 0.5) <= self.tie_margin:
            return Verdict("tie", 1.0 - 2.0 * abs(p - 0.5))
        return Verdict("a", p) if p > 0.5 else Verdict("b", 1.0 - p)

    def prob_first(self, prompt: str, first: str, second: str) -> float:
        """P(the response shown as A is better), one shown order."""
        user = ("Two responses to the same request follow. Decide which response is better.\n\n"
                f"<request>\n{self.clean(prompt)}\n</request>\n\n"
                f"<response A>\n{self.clean(first)}\n</response A>\n\n"
                f"<response B>\n{self.clean(second)}\n</response B>\n\n")
        probs = self._answer(user, "Which response is better? Reply with a single letter: A or B.",
                             "Better:", self.letters, ["A", "B"])
        return float(probs[0])

    def mean_logprob(self, prompt: str, completion: str) -> float:
        """Mean log-probability per token of ``completion`` as the reply to ``prompt``."""
        ids = self.model.tokens(self.clean(completion))
        if not ids:
            return -30.0
        logits = self.model.logits_rows(self.model.chat(self.system, self.clean(prompt)), ids)
        m = logits.max(axis=1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        return float(logp[np.arange(len(ids)), ids].mean())

    def _answer(self, body: str, instruction: str, tail: str, label_ids: list[int],
                labels: list[str]) -> np.ndarray:
        """The distribution over ``labels`` for the model's next token."""
        if self.critique_tokens:
            user = body + ("First write one short sentence of critique. Then, on a new line, write "
                           f"'{tail}' and your answer. " + instruction.split(". ", 1)[-1])
            tokens = self.model.chat(self.system, user)
            critique = self.model.generate(tokens, self.critique_tokens, CRITIQUE_GRAMMAR).strip()
            self.last_critique = critique
            tokens = tokens + self.model.tokens(f"{critique}\n")
            for t in (tail + " ", tail):
                try:
                    ids = self.model.label_tokens(t, labels if t.endswith(" ") else [" " + x for x in labels])
                except ModelError:
                    continue
                tokens, label_ids = tokens + self.model.tokens(t), ids
                break
            else:
                raise ModelError(f"{Path(self.model.path).name}: cannot read labels after {tail!r}")
        else:
            tokens = self.model.chat(self.system, body + instruction)
        logits = self.model.next_logits(tokens)[label_ids]
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def clean(self, text: str) -> str:
        """``text`` without special tokens or our delimiters, cut to the limit."""
        text = _TAGS.sub("", _SPECIAL.sub("", text))
        if len(text) > self.limit:
            text = text[: self.limit] + " [...]"
        return text.strip()
