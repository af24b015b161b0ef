"""One rank of a data-parallel run whose judge asks a person, here a scripted one
(tests/test_distributed.py starts it; the one-process run uses the same person)::

    mlx.launch -n 2 --backend ring --python PYTHON tests/distributed_person.py CONFIG.yaml OUT_DIR [GIVES_UP_AT]

Every rank builds the run with its own ScriptedPerson; rank 0's must be asked every question of
the job, the others' none. Each rank writes the questions it was asked to OUT_DIR/asked-RANK.json,
and how its run ended to OUT_DIR/ended-RANK.json: {"status"} or {"error", "quiet"}. GIVES_UP_AT: the
person stops answering at that step (JudgeFailure, as the console's when its input closes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_trainer's rules judge

from tui_trainer.errors import JudgeFailure, TrainerError  # noqa: E402
from tui_trainer.plugins.judge import Verdict  # noqa: E402

GAVE_UP = "the person went home"


class ScriptedPerson:
    """A person who answers by a rule: the longer completion wins (equal lengths tie); a
    completion is rated by its length, modulo the scale. ``asked``: every question, in order."""

    def __init__(self, gives_up_at: int | None = None) -> None:
        self.asked: list[list] = []
        self.gives_up_at = gives_up_at

    def _ask(self, question: list) -> None:
        if question[1] == self.gives_up_at:
            raise JudgeFailure(GAVE_UP)
        self.asked.append(question)

    def compare(self, prompt: str, a: str, b: str, *, judge: str, step: int) -> Verdict:
        self._ask(["compare", step, prompt, a, b])
        return Verdict("a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie")

    def rate(self, prompt: str, completion: str, *, judge: str, step: int, scale=(0, 9)) -> float:
        self._ask(["rate", step, prompt, completion])
        lo, hi = scale
        return float(lo + len(completion) % (hi - lo + 1))


if __name__ == "__main__":
    from tui_trainer.config import load_config
    from tui_trainer.engine.distributed import world
    from tui_trainer.run import build_run

    out, rank = Path(sys.argv[2]), world().rank
    person = ScriptedPerson(int(sys.argv[3]) if len(sys.argv) > 3 else None)
    try:
        ended = {"status": build_run(load_config(sys.argv[1]), prompter=person).run().status}
    except TrainerError as exc:
        ended = {"error": str(exc), "quiet": bool(getattr(exc, "quiet", False))}
    (out / f"asked-{rank}.json").write_text(json.dumps(person.asked))
    (out / f"ended-{rank}.json").write_text(json.dumps(ended))
    sys.exit(0 if ended.get("status") == "finished" else 1)
