"""Options of the ``llama`` judge (kept apart so listing plugins imports no llama.cpp)."""

from tui_trainer.plugins.hookspecs import Option

DEFAULT_RUBRIC = (
    "You are a strict, fair judge of answers to user requests. A good answer is correct, "
    "directly answers the request, and is clear and concise. A wrong or off-topic answer is bad."
)

OPTIONS = [
    Option("model", str, None, "GGUF file of the judge model (default: the embedded SmolLM2-135M-Instruct)"),
    Option("n_ctx", int, 2048, "context length in tokens"),
    Option("threads", int, None, "CPU threads for llama.cpp (default: llama.cpp's choice)"),
    Option("system", str, DEFAULT_RUBRIC, "the rubric: the judge model's system prompt",
           aliases=("judge_system", "rubric")),
    Option("max_completion_chars", int, 2000, "completions (and prompts) are cut to this many characters"),
    Option("method", str, "auto", "rubric: the model rates / picks as the rubric says; likelihood: the "
           "model's own mean log-probability of the completion; auto: likelihood for the embedded "
           "135M model (too small to follow a rubric), rubric for any other",
           choices=("auto", "rubric", "likelihood")),
    Option("scale_min", int, 1, "lowest rating digit (pointwise)"),
    Option("scale_max", int, 5, "highest rating digit (pointwise)"),
    Option("orders", str, "both", "pairwise: average both shown orders, or one random order per call",
           choices=("both", "random")),
    Option("tie_margin", float, 0.0, "pairwise: call a tie when P(a better) is within this of 0.5"),
    Option("critique_tokens", int, 0, "let the model write a one-line critique (grammar-constrained, "
           "at most this many tokens) before its verdict; 0 = verdict straight away"),
]
