"""Ask an LLM for one facial-behaviour description per expression class (PromptEmo's positive prompts).

    python scripts/describe_classes.py --out configs/descriptions/mine.json
    python scripts/describe_classes.py --out mine.json --classes surprise fear happy --n-ctx 16 --model gpt-4o-mini

This follows the paper's recipe (section "Positive Textual Prompts"): for each class, the structured
query "Please list the typical visual features of {class} from the perspective of facial behavior.",
then a refinement turn, with the first answer still in the conversation, that condenses it into one
plain sentence of visible facial movements starting with "a face with". A sentence that does not fit
the token budget gets up to ``--retries`` further turns asking for a shorter one.

The budget is what CLIP's 77-token context leaves beside the start and end tokens and the ``N0``
learnable vectors: ``77 - 2 - n_ctx`` BPE tokens (67 with the default ``--n-ctx 8``), counted with
CLIP's own tokenizer; ``--max-tokens`` sets a smaller one.

Any OpenAI-compatible chat-completions endpoint works (only the standard library is used):

- ``OPENAI_BASE_URL``: default ``https://api.openai.com/v1`` (``POST {base}/chat/completions``);
- ``OPENAI_MODEL``: default ``gpt-4o`` (``--model`` overrides it);
- ``OPENAI_API_KEY``: sent as ``Authorization: Bearer ...``; required unless the base URL is on
  this machine (``localhost``, ``127.0.0.1``...), e.g. a local vLLM or llama.cpp server.

The file is written only once every class has a valid description, atomically, in the format of
``configs/descriptions/facs.json`` (point ``TRAINER.PROMPTEMO.DESCRIPTIONS`` at it); an existing
file is kept unless ``--force``. Mistakes (a missing key, an HTTP error, an unknown class, a
description that stays too long) end with one ``error: ...`` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

from datasets.classes import CANONICAL_CLASSES, resolve_class
from engine.utils.errors import UserError

CONTEXT_LENGTH = 77          # CLIP's text context, start and end tokens included
DEFAULT_N_CTX = 8            # N0, the learnable vectors of the default PromptEmo config
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"
TOKENS_PER_WORD = 1.5        # cautious: CLIP's BPE gives about 1.25 tokens per word on facs.json
MIN_WORDS = 5

# The paper's structured query (turn 1), verbatim
QUERY_TEMPLATE = "Please list the typical visual features of {class} from the perspective of facial behavior."
# Turn 2: the multi-turn refinement into one sentence that fits the token budget
REFINE_TEMPLATE = (
    "Condense your answer into ONE plain sentence that describes only the visible facial movements "
    "(eyebrows, eyes, cheeks, nose, mouth). Start it with \"a face with\", do not name the expression "
    "or any emotion, use no lists, line breaks or quotation marks, and use at most {words} words. "
    "Reply with the sentence only."
)
# Further turns while the sentence is too long
SHORTEN_TEMPLATE = (
    "That sentence is {tokens} tokens long, but it must be at most {max_tokens}. Rewrite it shorter, "
    "in at most {words} words, keeping the same form: one plain sentence starting with \"a face with\", "
    "no expression name, no lists. Reply with the sentence only."
)
QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"


@dataclass(frozen=True)
class Endpoint:
    """Where and how to ask: an OpenAI-compatible chat-completions endpoint."""

    base_url: str
    model: str
    api_key: str | None
    temperature: float = 0.2
    timeout: float = 60.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def host(self) -> str:
        """Host (and port) of the base URL, without any credentials."""
        parsed = urllib.parse.urlsplit(self.base_url)
        host = parsed.hostname or ""
        return f"{host}:{parsed.port}" if parsed.port else host


class DescriptionTooLong(UserError):
    """A description over the token budget (``describe`` asks again before giving up)."""

    def __init__(self, tokens: int, max_tokens: int) -> None:
        super().__init__(f"description is {tokens} tokens long, more than the budget of {max_tokens}")
        self.tokens = tokens
        self.max_tokens = max_tokens


def is_local_url(url: str) -> bool:
    """Whether ``url`` points at this machine (``localhost`` or a loopback address)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_from_env(model: str | None = None, temperature: float = 0.2, timeout: float = 60.0) -> Endpoint:
    """The endpoint named by ``OPENAI_BASE_URL``, ``OPENAI_MODEL`` and ``OPENAI_API_KEY``."""
    base_url = os.environ.get("OPENAI_BASE_URL", "").strip() or DEFAULT_BASE_URL
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"OPENAI_BASE_URL must be an http(s) URL such as {DEFAULT_BASE_URL}, got '{base_url}'")
    model = model or os.environ.get("OPENAI_MODEL", "").strip() or DEFAULT_MODEL
    api_key = os.environ.get("OPENAI_API_KEY", "").strip() or None
    if api_key is None and not is_local_url(base_url):
        raise UserError(f"OPENAI_API_KEY is not set: export it to use {base_url} "
                        "(only a local OPENAI_BASE_URL such as http://localhost:8000/v1 works without a key)")
    return Endpoint(base_url=base_url, model=model, api_key=api_key, temperature=temperature, timeout=timeout)


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def chat(messages: list[dict[str, str]], endpoint: Endpoint) -> str:
    """Send the conversation ``messages`` to ``endpoint`` and return the assistant's answer.

    Timeouts, unreachable hosts, HTTP errors and answers that are not chat completions become a
    one-line :class:`UserError` (with the status code and the start of the body for HTTP errors).
    """
    body = json.dumps({"model": endpoint.model, "messages": messages, "temperature": endpoint.temperature})
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    request = urllib.request.Request(endpoint.url, data=body.encode(), headers=headers, method="POST")
    # A local server is reached directly, whatever proxy the environment names
    handlers = [urllib.request.ProxyHandler({})] if is_local_url(endpoint.url) else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=endpoint.timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        detail = _one_line(e.read(1000).decode("utf-8", "replace")) if e.fp is not None else ""
        raise UserError(f"{endpoint.url} answered HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")) from None
    except (TimeoutError, socket.timeout):
        raise UserError(f"no answer from {endpoint.url} within {endpoint.timeout:g} s (--timeout)") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise UserError(f"no answer from {endpoint.url} within {endpoint.timeout:g} s (--timeout)") from None
        raise UserError(f"cannot reach {endpoint.url}: {e.reason} (check OPENAI_BASE_URL)") from None
    except (OSError, ValueError) as e:  # connection reset, malformed URL...
        raise UserError(f"request to {endpoint.url} failed: {_one_line(str(e))}") from None
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{endpoint.url} did not answer with a chat completion: "
                        f"{_one_line(raw.decode('utf-8', 'replace'))}") from None
    if isinstance(content, list):  # content parts, as some compatible servers send
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise UserError(f"{endpoint.url} answered without text content (model {endpoint.model})")
    return content


def clean(text: str) -> str:
    """One line without surrounding quotes or whitespace; a leading "A face with" in lower case."""
    text = " ".join(text.split())
    while len(text) > 0 and (text[0] in QUOTES or text[-1] in QUOTES):
        text = text.strip(QUOTES).strip()
    if text.startswith("A face"):
        text = "a" + text[1:]
    return text


def token_length(text: str) -> int:
    """BPE tokens of ``text`` with CLIP's tokenizer (imported here: it loads torch)."""
    from engine.modeling.clip_backbone import token_length as clip_token_length

    return clip_token_length(text)


def validate(text: str, max_tokens: int) -> int:
    """Token count of the cleaned description ``text``; raises :class:`UserError` when it is empty
    and :class:`DescriptionTooLong` when it has more than ``max_tokens`` tokens."""
    if not text:
        raise UserError("the model answered with an empty description")
    tokens = token_length(text)
    if tokens > max_tokens:
        raise DescriptionTooLong(tokens, max_tokens)
    return tokens


def max_words(max_tokens: int) -> int:
    """Words to ask for so that the sentence most likely fits ``max_tokens`` CLIP tokens."""
    return max(MIN_WORDS, int(max_tokens / TOKENS_PER_WORD))


def describe(cls: str, endpoint: Endpoint, max_tokens: int, retries: int = 2,
             log: Callable[[str], None] | None = None) -> str:
    """The facial-behaviour description of class ``cls`` (canonical name), at most ``max_tokens`` tokens.

    Turn 1 is the paper's structured query, turn 2 condenses its answer into one sentence; while the
    sentence is too long, up to ``retries`` further turns ask for a shorter one.
    """
    messages = [{"role": "user", "content": QUERY_TEMPLATE.format_map({"class": cls})}]
    messages.append({"role": "assistant", "content": chat(messages, endpoint)})
    messages.append({"role": "user", "content": REFINE_TEMPLATE.format(words=max_words(max_tokens))})
    for attempt in range(retries + 1):
        answer = chat(messages, endpoint)
        text = clean(answer)
        try:
            validate(text, max_tokens)
            return text
        except DescriptionTooLong as e:
            if attempt == retries:
                raise UserError(f"the description of {cls} is still {e.tokens} tokens long after {retries} "
                                f"shorter retries (at most {max_tokens}); try again, raise --retries or "
                                "--max-tokens, or use another --model") from None
            if log:
                log(f"  {cls}: {e.tokens} tokens > {max_tokens}, asking for a shorter sentence")
            # Scale the word count by how much too long it was, with a margin
            words = max(MIN_WORDS, int(len(text.split()) * max_tokens / e.tokens * 0.9))
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": SHORTEN_TEMPLATE.format(
                tokens=e.tokens, max_tokens=max_tokens, words=words)})
        except UserError as e:
            raise UserError(f"{cls}: {e}") from None
    raise AssertionError("unreachable")


def about_text(endpoint: Endpoint, n_ctx: int, max_tokens: int, retries: int) -> str:
    """The ``_about`` comment of the written file: how, when and with what it was generated."""
    return (f"One facial-behaviour description per expression, generated by scripts/describe_classes.py on "
            f"{datetime.date.today().isoformat()} with model {endpoint.model} at {endpoint.host}, following the "
            "paper's positive prompts (structured query, then multi-turn refinement). "
            f"Turn 1: \"{QUERY_TEMPLATE}\" Turn 2: \"{REFINE_TEMPLATE}\" "
            f"While too long (up to {retries} times): \"{SHORTEN_TEMPLATE}\" "
            f"Used as PromptEmo's positive prompts (eq. 1). Each fits CLIP's {CONTEXT_LENGTH}-token window with "
            f"{n_ctx} learnable vectors (at most {max_tokens} tokens).")


def write_descriptions(path: str, descriptions: dict[str, str], about: str) -> None:
    """Write ``{"_about": about, class: description...}`` to ``path`` atomically (temp file + os.replace)."""
    from engine.utils.tools import atomic_write_bytes

    payload = {"_about": about, **descriptions}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate PromptEmo's positive-prompt descriptions with an OpenAI-compatible LLM.",
        epilog="Environment: OPENAI_BASE_URL (default %s), OPENAI_MODEL (default %s), OPENAI_API_KEY."
               % (DEFAULT_BASE_URL, DEFAULT_MODEL))
    parser.add_argument("--out", required=True, help="JSON file to write (e.g. configs/descriptions/mine.json)")
    parser.add_argument("--classes", nargs="+", default=list(CANONICAL_CLASSES), metavar="CLASS",
                        help="classes to describe (aliases accepted; default: all seven)")
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX,
                        help="learnable vectors N0 beside the description (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="token budget of a description (default: 77 - 2 - n_ctx)")
    parser.add_argument("--model", default=None, help="model name (default: $OPENAI_MODEL or %s)" % DEFAULT_MODEL)
    parser.add_argument("--retries", type=int, default=2,
                        help="further turns asking for a shorter sentence when one is too long (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[str], int]:
    """The canonical classes (in the given order, without repeats) and the token budget."""
    classes = list(dict.fromkeys(resolve_class(name, where="--classes") for name in args.classes))
    room = CONTEXT_LENGTH - 2 - args.n_ctx
    if args.n_ctx < 0 or room < MIN_WORDS:
        raise UserError(f"--n-ctx {args.n_ctx} leaves no room for a description in CLIP's {CONTEXT_LENGTH}-token "
                        f"context; use 0 to {CONTEXT_LENGTH - 2 - MIN_WORDS}")
    max_tokens = room if args.max_tokens is None else args.max_tokens
    if not MIN_WORDS <= max_tokens <= room:
        raise UserError(f"--max-tokens {max_tokens} must be between {MIN_WORDS} and {room} "
                        f"(77 - 2 - n_ctx with --n-ctx {args.n_ctx})")
    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {args.retries}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout:g}")
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; give a file name such as {args.out.rstrip('/')}/mine.json")
    if os.path.exists(args.out) and not args.force:
        raise UserError(f"{args.out} already exists; pass --force to overwrite it")
    return classes, max_tokens


def main(argv: list[str] | None = None) -> int:
    """Describe each class, write the JSON file and print a summary table; 0 on success, 2 on a user error."""
    args = parse_args(argv)
    try:
        classes, max_tokens = check_args(args)
        endpoint = endpoint_from_env(args.model, temperature=args.temperature, timeout=args.timeout)

        def log(message: str) -> None:
            print(message, file=sys.stderr, flush=True)

        log(f"asking {endpoint.model} at {endpoint.host} for {len(classes)} descriptions "
            f"(at most {max_tokens} tokens each)")
        descriptions = {}
        for cls in classes:
            log(f"  {cls}...")
            descriptions[cls] = describe(cls, endpoint, max_tokens, args.retries, log=log)
        write_descriptions(args.out, descriptions, about_text(endpoint, args.n_ctx, max_tokens, args.retries))
    except UserError as e:
        print(f"error: {_one_line(str(e), limit=1000)}", file=sys.stderr)
        return UserError.exit_code

    from tabulate import tabulate

    rows = []
    for cls, text in descriptions.items():
        words = text.split()
        rows.append([cls, token_length(text), " ".join(words[:8]) + (" ..." if len(words) > 8 else "")])
    print(tabulate(rows, headers=["class", "tokens", "description"]))
    print(f"wrote {args.out} (at most {max_tokens} tokens each; set TRAINER.PROMPTEMO.DESCRIPTIONS to use it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
