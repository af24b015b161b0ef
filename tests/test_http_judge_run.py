"""A short headless run whose reward comes from the installed example plugin
(tui-trainer-http-judge) calling a reward server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.run import build_run
from tui_trainer.plugins.judge import JudgeFailure


def reward(completion: str) -> float:
    return completion.count("e") / max(1, len(completion))


class Server:
    def __init__(self, broken: bool = False):
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                outer.auth.append(self.headers.get("X-Api-Key"))
                if broken:
                    self.send_response(500)
                    self.end_headers()
                    return
                data = json.dumps({"score": reward(body["completion"])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/reward"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"tell me about {w}"}) + "\n"
                            for w in ["trees", "rivers", "stones", "clouds"]))
    return path


def config(tiny_dir, prompts_file, run_dir, url, **over) -> Config:
    cfg = Config(model=str(tiny_dir), run_dir=str(run_dir), data=DataConfig(path=str(prompts_file)),
                 steps=2, batch_size=2, num_samples=2, max_new_tokens=8, minibatch_size=4, ppo_epochs=1,
                 save_every=0, seed=3, adapter=AdapterConfig(rank=4, layers=1),
                 judges=[JudgeSpec("http", 1.0, {"url": url, "header": "X-Api-Key: k123", "retries": 0,
                                                 "timeout": 5})])
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def test_headless_run_scores_through_the_http_plugin(tiny_dir, prompts_file, tmp_path):
    server = Server()
    try:
        events: list = []
        state = build_run(config(tiny_dir, prompts_file, tmp_path / "run", server.url),
                        observer=events.append).run()
    finally:
        server.close()
    assert state.status == "finished" and state.step == 2
    assert len(server.bodies) == 2 * 2 * 2  # steps * batch_size * num_samples
    assert set(server.auth) == {"k123"}
    samples = [s for e in events if isinstance(e, list) for s in e]
    assert len(samples) == 8
    for s in samples:
        assert s.score == pytest.approx(reward(s.completion))
        assert s.scores["http"] == pytest.approx(reward(s.completion))
        assert {"prompt": s.prompt, "completion": s.completion} in server.bodies
    metrics = [e.values for e in events if isinstance(e, ev.StepMetrics)]
    assert "score/http" in metrics[0]


def test_a_dead_reward_service_stops_the_run_with_a_clear_message(tiny_dir, prompts_file, tmp_path):
    server = Server(broken=True)
    events: list = []
    try:
        with pytest.raises(JudgeFailure) as info:
            build_run(config(tiny_dir, prompts_file, tmp_path / "run", server.url, steps=5,
                           judge_failure="drop"), observer=events.append).run()
    finally:
        server.close()
    assert "judge http failed 3 calls in a row" in str(info.value) and "HTTP 500" in str(info.value)
    warnings = [e.message for e in events if isinstance(e, ev.LogMessage) and e.level == "warning"]
    assert sum("HTTP 500" in w for w in warnings) == 3
    final = [e for e in events if isinstance(e, ev.RunState)][-1]
    assert final.status == "failed" and "3 calls in a row" in final.message
