"""A tui-trainer judge plugin: score each completion by POSTing it to a reward service.

Request (one per completion): ``POST <url>`` with JSON ``{"prompt": ..., "completion": ...}``.
Response: JSON ``{"score": <number>}`` (the key is the ``field`` option).

Installed, this package exposes the entry point ``http = "tui_trainer_http_judge"``
in the group ``tui_trainer.judges``; tui-trainer calls ``register_judges`` below.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from tui_trainer.plugins import JudgeError, Option, hookimpl

__version__ = "0.1.0"

OPTIONS = [
    Option("url", str, None, "the reward service, e.g. http://127.0.0.1:8000/score"),
    Option("timeout", float, 10.0, "seconds to wait for each response"),
    Option("retries", int, 2, "extra attempts after a network error or a 5xx response"),
    Option("header", str, None, "one extra request header, 'Name: value' (e.g. 'Authorization: Bearer ...')"),
    Option("field", str, "score", "the key of the score in the JSON response"),
]


class HttpJudge:
    """Pointwise: one POST per completion."""

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        from tui_trainer.errors import ConfigError

        url = options["url"]
        parsed = urlparse(url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"judge {context.name}: option url must be an http(s) URL, got {url!r}")
        if options["timeout"] <= 0 or options["retries"] < 0:
            raise ConfigError(f"judge {context.name}: timeout must be > 0 and retries >= 0")
        self.url = url
        self.timeout = options["timeout"]
        self.retries = options["retries"]
        self.field = options["field"]
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        "User-Agent": f"tui-trainer-http-judge/{__version__}"}
        if options["header"]:
            name, sep, value = options["header"].partition(":")
            if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
                raise ConfigError(f"judge {context.name}: option header must look like 'Name: value'")
            self.headers[name.strip()] = value.strip()

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [self.score_one(p, c) for p, c in zip(prompts, completions)]

    def score_one(self, prompt: str, completion: str) -> float:
        body = json.dumps({"prompt": prompt, "completion": completion}).encode("utf-8")
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} from {self.url}"
                if exc.code < 500:  # a client error does not get better by asking again
                    raise JudgeError(error) from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                error = f"cannot reach {self.url}: {reason}"
                continue
            return self._parse(payload)
        raise JudgeError(f"{error} (after {self.retries + 1} attempts)")

    def _parse(self, payload: bytes) -> float:
        try:
            data = json.loads(payload)
        except ValueError:
            raise JudgeError(f"{self.url} did not answer JSON: {payload[:60]!r}") from None
        if not isinstance(data, dict) or self.field not in data:
            raise JudgeError(f"{self.url} answered without a {self.field!r} field: {str(data)[:60]}")
        value = data[self.field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JudgeError(f"{self.url} answered a {self.field} that is not a finite number: {value!r}")
        return float(value)


@hookimpl
def register_judges(register) -> None:
    register("http", HttpJudge, kind="pointwise", options=OPTIONS,
             description="POST {prompt, completion} to a reward service, read {\"score\": x} back")
