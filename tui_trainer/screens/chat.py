"""Chat with a trained run: a log of turns and an input line (``tui-trainer chat RUN_DIR``, or ``t``
on the dashboard once a run has ended).

The model loads and answers on the engine thread (``Runner.submit``): the screen hands it jobs and
shows their results when they come back (``call_from_thread``), the reply streamed as it is decoded
(mlx-lm's ``stream_generate``); the screen never imports MLX itself.
Esc leaves the chat.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from tui_trainer.widgets.format import printable


def _open_session(path: str, kwargs: dict) -> Any:  # runs on the engine thread
    from tui_trainer.engine.trained import ChatSession

    return ChatSession.open(path, **kwargs)


class ChatScreen(Screen):
    CSS_PATH = "chat.tcss"
    BINDINGS = [Binding("escape", "leave", "Leave chat")]

    def __init__(self, runner: Any, path: str, *, max_new_tokens: int = 256, temperature: float = 0.7,
                 system: str | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.path = str(path)
        self.options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "system": system}
        self.session: Any = None
        self.busy = True  # loading, or a reply in flight
        self.error: str | None = None
        self.turns: list[tuple[str, str]] = []  # (role, text) as shown

    def compose(self) -> ComposeResult:
        yield Static(f"chat · {self.path} · loading the model…", id="chat-status", markup=False)
        yield VerticalScroll(id="chat-log")
        yield Input(placeholder="type a message, Enter to send", id="chat-input", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#chat-log").border_title = "conversation"
        self._submit(lambda: _open_session(self.path, self.options), self._loaded)

    def _submit(self, job: Callable[[], Any], done: Callable[[Future], None]) -> None:
        def back(future: Future) -> None:  # engine thread: hand the result to the UI thread
            try:
                self.app.call_from_thread(done, future)
            except Exception:  # noqa: BLE001  the app has gone
                pass

        self.runner.submit(job).add_done_callback(back)

    def _status(self, text: str) -> None:
        self.query_one("#chat-status", Static).update(text)

    def _loaded(self, future: Future) -> None:
        from tui_trainer.errors import one_line

        try:
            self.session = future.result()
        except Exception as exc:  # noqa: BLE001  shown, not raised: the app stays usable
            self.error = one_line(exc)
            self._status(f"chat · cannot load {self.path}: {self.error} · Esc to leave")
            return
        trained = self.session.trained
        step = f"step {trained.step}" if trained.step is not None else str(trained.checkpoint)
        self._status(f"chat · {trained.config.model or 'embedded SmolLM2'} + adapter ({step}) · "
                     f"temperature {self.options['temperature']:g}")
        self._ready()

    def _ready(self) -> None:
        self.busy = False
        box = self.query_one("#chat-input", Input)
        box.disabled = False
        box.focus()

    def _add_turn(self, role: str, text: str) -> Static:
        self.turns.append((role, text))
        turn = Static(f"{role}: {printable(text)}", classes=f"turn turn-{role}", markup=False)
        log = self.query_one("#chat-log", VerticalScroll)
        log.mount(turn)
        log.scroll_end(animate=False)
        return turn

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text or self.busy or self.session is None:
            return
        event.input.value = ""
        event.input.disabled = True
        self.busy = True
        self._add_turn("you", text)
        pending = self._add_turn("model", "…")
        session = self.session
        streamed: list[str] = []

        def on_text(segment: str) -> None:  # engine thread: show the reply as it is decoded
            try:
                self.app.call_from_thread(self._stream, pending, streamed, segment)
            except Exception:  # noqa: BLE001  the app has gone
                pass

        self._submit(lambda: session.reply(text, on_text=on_text), lambda f: self._replied(f, pending))

    def _stream(self, widget: Static, streamed: list[str], segment: str) -> None:
        streamed.append(segment)
        widget.update(f"model: {printable(''.join(streamed))}")

    def _replied(self, future: Future, widget: Static) -> None:
        from tui_trainer.errors import one_line

        try:
            reply = future.result()
        except Exception as exc:  # noqa: BLE001
            reply = f"[error: {one_line(exc)}]"
        self.turns[-1] = ("model", reply)
        widget.update(f"model: {printable(reply)}")
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)
        self._ready()

    def action_leave(self) -> None:
        if isinstance(self.app, ChatApp):
            self.app.exit()
        else:
            self.dismiss()


class ChatApp(App[int]):
    """``tui-trainer chat``: the chat screen alone, with its own engine thread."""

    TITLE = "tui-trainer chat"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__()
        from tui_trainer.runner import Runner

        self.path = path
        self.options = options
        self.runner = Runner(observer=lambda e: None, on_ended=lambda r: None)
        self.chat: ChatScreen | None = None

    @property
    def error(self) -> str | None:
        return self.chat.error if self.chat is not None else None

    def on_mount(self) -> None:
        self.chat = ChatScreen(self.runner, self.path, **self.options)
        self.push_screen(self.chat)

    def on_unmount(self) -> None:
        from tui_trainer.runner import ENGINE_CLEANUP_WAIT

        self.runner.close(wait=ENGINE_CLEANUP_WAIT)
