"""Hugging Face sequence-classification reward models (engine/hf_reward.py) on MLX: scores equal
transformers' on tiny random Qwen3 / Llama checkpoints written with ``save_pretrained``
(tests/fixtures/make_hf_reward.py recorded transformers' scores, computed as Skywork-Reward-V2's
model card does), batched and alone; recomputed live when torch is importable; the refusals; the
``reward`` judge and ``tui-trainer reward score / eval`` on such a directory."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlx.core as mx
import pytest

from tui_trainer.cli import main
from tui_trainer.engine import reward as R
from tui_trainer.engine.hf_reward import HFRewardScorer, hf_reward_info, load_hf_reward_model
from tui_trainer.errors import ConfigError, ModelError
from tui_trainer.plugins.manager import build_judge_set

FIXTURES = Path(__file__).parent / "fixtures" / "hf_reward"
NAMES = ["qwen3", "llama"]


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / name / "transformers_scores.json").read_text(encoding="utf-8"))


def close(ours: float, theirs: float) -> bool:
    """1e-3 relative, with a small absolute floor for scores near 0 (float32 noise is ~1e-6)."""
    return abs(ours - theirs) <= 1e-3 * abs(theirs) + 1e-5


@pytest.fixture(scope="module", params=NAMES)
def fixture(request):
    return request.param, HFRewardScorer.load(FIXTURES / request.param, batch_size=3), recorded(request.param)


def test_scores_equal_transformers_batched_and_alone(fixture):
    name, scorer, rec = fixture
    pairs = rec["pairs"]
    prompts, completions = [p["prompt"] for p in pairs], [p["completion"] for p in pairs]
    assert any(not isinstance(p["prompt"], str) for p in pairs)  # a conversation as the prompt too
    # the model card's input ids: chat template as text, leading BOS stripped, tokenized
    assert [scorer.ids(p, c) for p, c in zip(prompts, completions)] == [p["input_ids"] for p in pairs]
    assert len({len(p["input_ids"]) for p in pairs}) >= 6  # mixed lengths: the batches are padded
    batched = scorer.rewards(prompts, completions)  # 3 per forward pass
    alone = [scorer.rewards([p], [c])[0] for p, c in zip(prompts, completions)]
    theirs = [p["score"] for p in pairs]
    assert all(close(o, t) for o, t in zip(batched, theirs)), (name, batched, theirs)
    assert all(close(o, t) for o, t in zip(alone, theirs)), (name, alone, theirs)
    assert max(abs(t) for t in theirs) > 3  # O(1) scores, so 1e-3 relative is a real bound
    # no statistics: normalised scores are the raw ones
    assert scorer.rewards(prompts[:2], completions[:2], normalised=True) == scorer.rewards(prompts[:2], completions[:2])


def test_llama_template_bos_and_pad_pooling():
    """Llama's tokenizer adds a BOS and its template starts with one: the card strips the template's,
    so there is exactly one. Its pad token is <|eot_id|>, which ends every turn: transformers pools
    the last token that is not the pad token, one before the end; pooling the last token would not
    give its scores."""
    rm, tokenizer, info = load_hf_reward_model(FIXTURES / "llama")
    rec = recorded("llama")
    pad, bos = info["pad_token_id"], tokenizer.bos_token_id
    assert pad == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for p in rec["pairs"]:
        ids = p["input_ids"]
        assert ids[0] == bos and bos not in ids[1:] and ids[-1] == pad and ids[-2] != pad
    rows = [p["input_ids"] for p in rec["pairs"]]
    ours = R.rewards_of(rm, rows, batch_size=8)
    assert all(close(o, p["score"]) for o, p in zip(ours, rec["pairs"]))
    rm.pad_token_id = None  # as if the config had no pad token: the last token's score
    last = R.rewards_of(rm, rows, batch_size=8)
    assert max(abs(a - b) for a, b in zip(last, ours)) > 0.1


def test_backbone_is_mlx_lm_and_every_weight_loaded():
    """The backbone is mlx-lm's own class for the family, holding the checkpoint's weights exactly
    (no LM head in the checkpoint: an untied family's head shares the embedding, nothing random)."""
    from mlx_lm.models import llama, qwen3
    from safetensors.numpy import load_file
    import numpy as np
    from mlx.utils import tree_flatten

    for name, family in (("qwen3", qwen3), ("llama", llama)):
        rm, _, _ = load_hf_reward_model(FIXTURES / name)
        assert isinstance(rm.model, family.Model)
        stored = load_file(str(FIXTURES / name / "model.safetensors"))
        ours = dict(tree_flatten(rm.model.parameters()))
        for key, value in stored.items():
            if key.startswith("score."):
                assert np.array_equal(np.array(rm.score.weight), value)
            else:
                assert np.array_equal(np.array(ours[key]), value), key
        assert {k for k in ours if not k.startswith("lm_head.")} == {k for k in stored if not k.startswith("score.")}
        if name == "llama":
            assert rm.model.lm_head.weight is rm.model.model.embed_tokens.weight


def test_a_score_bias_is_added(tmp_path):
    """transformers' heads have no bias; a checkpoint whose head has one gets it added."""
    path = copy_fixture(tmp_path)
    weights = dict(mx.load(str(FIXTURES / "qwen3" / "model.safetensors")))
    weights["score.bias"] = mx.array([2.5])
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    rec = recorded("qwen3")["pairs"]
    ours = HFRewardScorer.load(path).rewards([p["prompt"] for p in rec], [p["completion"] for p in rec])
    assert all(close(o, p["score"] + 2.5) for o, p in zip(ours, rec))


def test_live_transformers_scores_equal_ours():
    """When torch is here: transformers' scores recomputed now (the model card's code), on pairs that
    are not in the recorded file, including a conversation as the prompt."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pairs = [("Tell me a joke.", "Why did the chicken cross the road?"), ("ok", "ok"),
             ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "how are you?"}], "Fine, thanks!")]
    for name in NAMES:
        path = FIXTURES / name
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(path)
        theirs = []
        for prompt, completion in pairs:
            conv = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt) + \
                [{"role": "assistant", "content": completion}]
            text = tok.apply_chat_template(conv, tokenize=False)
            if tok.bos_token is not None and text.startswith(tok.bos_token):
                text = text[len(tok.bos_token):]
            with torch.no_grad():
                theirs.append(model(**tok(text, return_tensors="pt")).logits[0][0].item())
        ours = HFRewardScorer.load(path).rewards([p for p, _ in pairs], [c for _, c in pairs])
        assert all(close(o, t) for o, t in zip(ours, theirs)), (name, ours, theirs)


# ----------------------------------------------------------------------------- refusals

def copy_fixture(tmp_path, name="qwen3") -> Path:
    out = tmp_path / name
    shutil.copytree(FIXTURES / name, out)
    return out


def edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def one_line_model_error(path) -> str:
    with pytest.raises(ModelError) as err:
        R.RewardScorer.load(path)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_not_a_single_score_classifier_is_refused(tmp_path, capsys):
    three = copy_fixture(tmp_path)
    edit_config(three, id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})
    assert "not a single-score classifier: num_labels 3" in one_line_model_error(three)
    with pytest.raises(ModelError, match="num_labels 3"):
        hf_reward_info(three)  # checked from config.json alone, before any weight loads
    # through the CLI: one line, exit 2
    assert main(["reward", "score", str(three), "--prompt", "p", "--completion", "c"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tui-trainer: error: ") and "num_labels 3" in err and "\n" not in err
    # transformers' default when a config names no labels at all is 2
    none = copy_fixture(tmp_path / "b")
    edit_config(none, id2label=None, label2id=None)
    assert "num_labels 2" in one_line_model_error(none)
    # a head with several outputs under a config that says 1
    wide = copy_fixture(tmp_path / "c")
    weights = mx.load(str(FIXTURES / "qwen3" / "model.safetensors"))
    weights["score.weight"] = mx.concatenate([weights["score.weight"]] * 2)
    mx.save_safetensors(str(wide / "model.safetensors"), weights)
    assert "not a single-score classifier: the score head has 2 outputs" in one_line_model_error(wide)


def test_other_checkpoints_are_refused(tmp_path):
    causal = copy_fixture(tmp_path / "a")
    edit_config(causal, architectures=["Qwen3ForCausalLM"])
    assert "not a reward-model directory" in one_line_model_error(causal)
    unknown = copy_fixture(tmp_path / "b")
    edit_config(unknown, model_type="nosuchfamily", architectures=["NoSuchFamilyForSequenceClassification"])
    assert "mlx-lm cannot build model_type 'nosuchfamily'" in one_line_model_error(unknown)
    no_head = copy_fixture(tmp_path / "c")
    weights = mx.load(str(FIXTURES / "qwen3" / "model.safetensors"))
    mx.save_safetensors(str(no_head / "model.safetensors"), {k: v for k, v in weights.items() if k != "score.weight"})
    assert "no score.weight" in one_line_model_error(no_head)
    short = copy_fixture(tmp_path / "d")
    mx.save_safetensors(str(short / "model.safetensors"),
                        {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"})
    assert "1 backbone weight(s) missing from the checkpoint (first: model.layers.1.mlp.up_proj.weight)" in \
        one_line_model_error(short)
    with pytest.raises(ModelError, match="has its own backbone"):
        R.RewardScorer.load(FIXTURES / "qwen3", model="some/base")


def test_cached_hub_id(tmp_path, monkeypatch):
    """A hub repo id already in the Hugging Face cache is found there (no network)."""
    import huggingface_hub.constants as hconst

    monkeypatch.setattr(hconst, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny-rm"
    shutil.copytree(FIXTURES / "qwen3", repo / "snapshots" / ("c" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    info = R.reward_model_info("someone/tiny-rm")
    assert R.is_hf(info) and info["architecture"] == "Qwen3ForSequenceClassification"
    rec = recorded("qwen3")["pairs"][0]
    assert close(HFRewardScorer.load("someone/tiny-rm").rewards([rec["prompt"]], [rec["completion"]])[0],
                 rec["score"])
    with pytest.raises(ModelError, match="no such reward-model directory"):
        R.reward_model_info("someone/not-cached")


# ----------------------------------------------------------------------------- judge and CLI

def test_reward_judge_on_a_hf_model():
    rec = recorded("llama")["pairs"]
    path = str(FIXTURES / "llama")
    judges = build_judge_set([{"name": "reward", "options": {"path": path}}])
    judge = judges.members[0].judge
    prompts, completions = [p["prompt"] for p in rec[:4]], [p["completion"] for p in rec[:4]]
    scores = judge.score(prompts, completions)  # normalise: true by default, but no statistics: raw
    assert all(close(s, p["score"]) for s, p in zip(scores, rec[:4]))
    assert judges.score(prompts, completions).per_judge["reward"] == pytest.approx(scores, rel=1e-6)
    # pairwise: P(a > b) = sigma(r_a - r_b), here on the recorded pair with one prompt and two replies
    a, b = rec[0], rec[1]
    assert a["prompt"] == b["prompt"]
    verdict = judge.compare(a["prompt"], a["completion"], b["completion"])
    p = 1 / (1 + math.exp(-(a["score"] - b["score"])))
    assert verdict.choice == ("a" if p > 0.5 else "b")
    assert verdict.confidence == pytest.approx(max(p, 1 - p), rel=1e-3)
    assert judge.share_policy(object(), None) is False  # its own weights: nothing to share
    with pytest.raises(ConfigError, match="does not apply to a Hugging Face reward model"):
        build_judge_set([{"name": "reward", "options": {"path": path, "model": "x/y"}}])


def test_cli_score_and_eval(tmp_path, capsys):
    rec = recorded("qwen3")["pairs"]
    path = str(FIXTURES / "qwen3")
    assert main(["reward", "score", path, "--prompt", rec[4]["prompt"], "--completion", rec[4]["completion"]]) == 0
    assert close(float(capsys.readouterr().out), rec[4]["score"])
    # pairs whose "chosen" is the reply transformers scored higher under the same prompt
    same = [p for p in rec if p["prompt"] == rec[0]["prompt"]]
    hi, lo = sorted(same, key=lambda p: -p["score"])
    rows = [{"prompt": hi["prompt"], "chosen": hi["completion"], "rejected": lo["completion"]},
            {"prompt": hi["prompt"], "chosen": lo["completion"], "rejected": hi["completion"]}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["reward", "eval", path, "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 2 and result["accuracy"] == 0.5
    assert abs(result["margin"]) <= 1e-4  # +d and -d
    data.write_text(json.dumps(rows[0]) + "\n")
    assert main(["reward", "eval", path, "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 1.0 and close(result["margin"], hi["score"] - lo["score"])


def test_ppo_run_scored_by_a_hf_reward_model(tiny_dir, tmp_path):
    """A PPO run (from a run config) with the Hugging Face reward model as its only judge: it loads
    its own model at start-up (nothing to share with the policy, share_base left on) and every
    sample's score is that model's score of (prompt, completion)."""
    from tui_trainer import events as ev
    from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
    from tui_trainer.run import build_run

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["cat", "dog", "sun", "tree"]))
    cfg = Config(model=str(tiny_dir), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(prompts)), steps=1,
                 batch_size=2, num_samples=2, max_new_tokens=6, minibatch_size=4, ppo_epochs=1, save_every=0,
                 adapter=AdapterConfig(rank=4, layers=2),
                 judges=[JudgeSpec("reward", 1.0, {"path": str(FIXTURES / "qwen3")})])
    events: list = []
    trainer = build_run(cfg, observer=events.append)
    trainer.run()
    member = trainer.judges.members[0]
    assert isinstance(member.judge.scorer, HFRewardScorer) and not member.interactive
    logs = " ".join(e.message for e in events if isinstance(e, ev.LogMessage))
    assert "Hugging Face reward model" in logs and "switched in" not in logs
    samples = [e for batch in events if isinstance(batch, list) for e in batch if isinstance(e, ev.Sample)]
    assert len(samples) == 4
    expected = HFRewardScorer.load(FIXTURES / "qwen3").rewards([s.prompt for s in samples],
                                                              [s.completion for s in samples])
    assert [s.scores["reward"] for s in samples] == pytest.approx(expected, rel=1e-4, abs=1e-5)
