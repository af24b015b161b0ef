"""The http judge against a local reward server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.judge import JudgeContext, JudgeError
from tui_trainer.plugins.options import resolve
from tui_trainer_http_judge import OPTIONS, HttpJudge


class RewardServer:
    """Scores = number of words; ``fail_next`` 5xx answers first; records requests."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []
        self.fail_next = 0
        self.reply: bytes | None = None
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.fail_next:
                    outer.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                payload = outer.reply or json.dumps({"score": len(body["completion"].split())}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = RewardServer()
    yield s
    s.close()


def judge(**options) -> HttpJudge:
    return HttpJudge(resolve(OPTIONS, options, "http"), JudgeContext(name="http"))


def test_scores_come_from_the_service(server):
    j = judge(url=server.url, header="Authorization: Bearer s3cret")
    assert j.score(["p1", "p2"], ["one two three", "four"]) == [3.0, 1.0]
    path, headers, body = server.requests[0]
    assert path == "/score" and body == {"prompt": "p1", "completion": "one two three"}
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"


def test_5xx_is_retried(server):
    server.fail_next = 2
    assert judge(url=server.url, retries=2).score(["p"], ["a b"]) == [2.0]
    assert len(server.requests) == 3


def test_retries_run_out(server):
    server.fail_next = 5
    with pytest.raises(JudgeError, match=r"HTTP 503 .* \(after 2 attempts\)"):
        judge(url=server.url, retries=1).score(["p"], ["a"])


def test_4xx_fails_at_once(server):
    server.status = 401
    server.reply = b"{}"
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge(url=server.url, retries=3).score(["p"], ["a"])
    assert len(server.requests) == 1


@pytest.mark.parametrize("reply, message", [
    (b"not json", "did not answer JSON"),
    (b'{"reward": 1}', "without a 'score' field"),
    (b'{"score": "high"}', "not a finite number"),
    (b'{"score": NaN}', "not a finite number"),
])
def test_bad_answers_are_judge_errors(server, reply, message):
    server.reply = reply
    with pytest.raises(JudgeError, match=message):
        judge(url=server.url).score(["p"], ["a"])


def test_field_option(server):
    server.reply = b'{"reward": 0.25}'
    assert judge(url=server.url, field="reward").score(["p"], ["a"]) == [0.25]


def test_unreachable_service():
    with pytest.raises(JudgeError, match="cannot reach"):
        judge(url="http://127.0.0.1:9/score", retries=0, timeout=2).score(["p"], ["a"])


@pytest.mark.parametrize("options, message", [
    ({}, "url must be an http"),
    ({"url": "ftp://x/y"}, "url must be an http"),
    ({"url": "http://h/s", "header": "no colon"}, "Name: value"),
    ({"url": "http://h/s", "timeout": 0}, "timeout must be > 0"),
])
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        judge(**options)
