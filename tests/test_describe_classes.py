"""scripts/describe_classes.py against a fake OpenAI-compatible server on 127.0.0.1 (no network)."""
from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import load_script
from datasets.classes import CANONICAL_CLASSES
from engine.modeling.clip_backbone import token_length
from trainers.promptemo import load_descriptions

dc = load_script("describe_classes")

KEY = "sk-test-123"
LONG = "a face with " + " ".join(["very"] * 80) + " raised eyebrows."


def query(cls: str) -> str:
    return f"Please list the typical visual features of {cls} from the perspective of facial behavior."


def sentence(cls: str) -> str:
    return f"a face with {cls}-specific brows, eyes and mouth movements."


class FakeServer:
    """Imitates POST /v1/chat/completions: records each request and answers from a scripted queue.

    A queued str is the assistant's content; a tuple ``(status, body)`` is a raw answer;
    ``("sleep", seconds)`` waits before answering "late".
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.queue: list = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                item = server.queue.pop(0) if server.queue else (500, "fake server: queue empty")
                if isinstance(item, tuple) and item[0] == "sleep":
                    time.sleep(item[1])
                    item = "late"
                if isinstance(item, str):
                    status, payload = 200, json.dumps({"choices": [{"index": 0, "message": {
                        "role": "assistant", "content": item}, "finish_reason": "stop"}]})
                else:
                    status, payload = item
                data = payload.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def script_class(self, cls: str, answer: str | None = None) -> None:
        """Queue a normal two-turn conversation for ``cls``."""
        self.queue += [f"1. {cls} feature list\n2. more features", answer or f'"{sentence(cls)}"']

    def user_messages(self, i: int) -> list[str]:
        return [m["content"] for m in self.requests[i]["body"]["messages"] if m["role"] == "user"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    fake = FakeServer()
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_MODEL", "fake-model")
    yield fake
    fake.close()


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_all_classes_written_and_loadable(server, tmp_path, capsys):
    for cls in CANONICAL_CLASSES:
        server.script_class(cls)
    out = tmp_path / "sub" / "mine.json"
    assert dc.main(["--out", str(out)]) == 0

    assert len(server.requests) == 2 * len(CANONICAL_CLASSES)
    for i, cls in enumerate(CANONICAL_CLASSES):
        first, second = server.requests[2 * i], server.requests[2 * i + 1]
        assert first["path"] == "/v1/chat/completions"
        assert first["headers"]["Authorization"] == f"Bearer {KEY}"
        assert first["body"]["model"] == "fake-model" and "temperature" in first["body"]
        # Turn 1: exactly the paper's structured query
        assert first["body"]["messages"] == [{"role": "user", "content": query(cls)}]
        # Turn 2: multi-turn, the first answer is in the conversation
        msgs = second["body"]["messages"]
        assert msgs[0]["content"] == query(cls)
        assert msgs[1] == {"role": "assistant", "content": f"1. {cls} feature list\n2. more features"}
        assert msgs[2]["role"] == "user" and "a face with" in msgs[2]["content"]
        assert f"at most {dc.max_words(67)} words" in msgs[2]["content"]

    texts = load_descriptions(str(out), list(CANONICAL_CLASSES))
    assert texts == [sentence(c) for c in CANONICAL_CLASSES]  # quotes stripped
    raw = json.loads(out.read_text())
    assert list(raw) == ["_about", *CANONICAL_CLASSES]
    assert "fake-model" in raw["_about"] and "127.0.0.1" in raw["_about"] and query("{class}") in raw["_about"]
    assert not [p for p in os.listdir(out.parent) if p != "mine.json"]  # no temp file left
    stdout = capsys.readouterr().out
    assert "tokens" in stdout and "happiness" in stdout and str(token_length(sentence("fear"))) in stdout


def test_aliases_model_flag_and_n_ctx(server, tmp_path):
    server.script_class("happiness")
    server.script_class("anger")
    out = tmp_path / "two.json"
    assert dc.main(["--out", str(out), "--classes", "happy", "angry", "happy", "--model", "other",
                    "--n-ctx", "16"]) == 0
    assert len(server.requests) == 4
    assert server.requests[0]["body"]["model"] == "other"
    assert server.user_messages(0) == [query("happiness")]
    assert f"at most {dc.max_words(77 - 2 - 16)} words" in server.user_messages(1)[1]
    assert load_descriptions(str(out), ["happiness", "anger"]) == [sentence("happiness"), sentence("anger")]


def test_too_long_gets_a_further_turn(server, tmp_path):
    server.queue += ["features of surprise", LONG, sentence("surprise")]
    out = tmp_path / "d.json"
    assert dc.main(["--out", str(out), "--classes", "surprise"]) == 0
    assert len(server.requests) == 3
    msgs = server.requests[2]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[3]["content"] == LONG
    assert f"{token_length(LONG)} tokens" in msgs[4]["content"] and "at most 67" in msgs[4]["content"]
    assert load_descriptions(str(out), ["surprise"]) == [sentence("surprise")]


def test_still_too_long_after_retries(server, tmp_path, capsys):
    server.queue += ["features", LONG, LONG, LONG]
    out = tmp_path / "d.json"
    assert dc.main(["--out", str(out), "--classes", "fear", "--retries", "2"]) == 2
    assert len(server.requests) == 4  # query, refinement, 2 shorter retries
    line = error_line(capsys)
    assert "fear" in line and str(token_length(LONG)) in line
    assert not out.exists()


def test_max_tokens_budget(server, tmp_path, capsys):
    server.queue += ["features", sentence("sadness")]
    n = token_length(sentence("sadness"))
    assert dc.main(["--out", str(tmp_path / "d.json"), "--classes", "sad", "--max-tokens", str(n - 1),
                    "--retries", "0"]) == 2
    assert "sadness" in error_line(capsys)
    assert dc.main(["--out", str(tmp_path / "d.json"), "--max-tokens", "70"]) == 2  # > 77 - 2 - 8
    assert "--max-tokens" in error_line(capsys)


def test_http_500(server, tmp_path, capsys):
    server.queue.append((500, '{"error": {"message": "upstream exploded"}}'))
    out = tmp_path / "d.json"
    assert dc.main(["--out", str(out), "--classes", "neutral"]) == 2
    line = error_line(capsys)
    assert "500" in line and "upstream exploded" in line
    assert not out.exists()


def test_not_a_chat_completion(server, tmp_path, capsys):
    server.queue.append((200, "<html>hello</html>"))
    assert dc.main(["--out", str(tmp_path / "d.json"), "--classes", "neutral"]) == 2
    assert "did not answer with a chat completion" in error_line(capsys)


def test_timeout(server, tmp_path, capsys):
    server.queue.append(("sleep", 0.5))
    assert dc.main(["--out", str(tmp_path / "d.json"), "--classes", "neutral", "--timeout", "0.1"]) == 2
    assert "no answer" in error_line(capsys)


def test_unreachable(monkeypatch, tmp_path, capsys):
    fake = FakeServer()
    url = fake.url
    fake.close()  # nothing listens there any more
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert dc.main(["--out", str(tmp_path / "d.json"), "--classes", "neutral"]) == 2
    assert "cannot reach" in error_line(capsys)


def test_missing_key_for_remote_url(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://llm.example.invalid/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "d.json"
    assert dc.main(["--out", str(out)]) == 2
    assert "OPENAI_API_KEY" in error_line(capsys)
    assert not out.exists()


def test_local_url_needs_no_key(server, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    server.script_class("disgust")
    assert dc.main(["--out", str(tmp_path / "d.json"), "--classes", "disgust"]) == 0
    assert "Authorization" not in server.requests[0]["headers"]


def test_existing_output_needs_force(server, tmp_path, capsys):
    out = tmp_path / "d.json"
    out.write_text("keep me")
    assert dc.main(["--out", str(out), "--classes", "anger"]) == 2
    assert "--force" in error_line(capsys)
    assert out.read_text() == "keep me" and server.requests == []
    server.script_class("anger")
    assert dc.main(["--out", str(out), "--classes", "anger", "--force"]) == 0
    assert load_descriptions(str(out), ["anger"]) == [sentence("anger")]


def test_unknown_class(server, tmp_path, capsys):
    assert dc.main(["--out", str(tmp_path / "d.json"), "--classes", "boredom"]) == 2
    line = error_line(capsys)
    assert "boredom" in line and "--classes" in line
    assert server.requests == []


def test_clean_and_validate():
    assert dc.clean('  "A face with raised brows."\n ') == "a face with raised brows."
    assert dc.clean("\u201ca face with\n  wide eyes\u201d") == "a face with wide eyes"
    with pytest.raises(dc.UserError):
        dc.validate(dc.clean(' "" '), 67)
    assert dc.validate("a face with wide eyes", 67) == token_length("a face with wide eyes")
    with pytest.raises(dc.DescriptionTooLong):
        dc.validate(LONG, 67)
    assert dc.is_local_url("http://localhost:8000/v1") and dc.is_local_url("http://[::1]:8000/v1")
    assert not dc.is_local_url("https://api.openai.com/v1")
