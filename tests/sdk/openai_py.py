"""The official `openai` Python SDK against a running gateway, unchanged.

Run by the e2e case `official_sdks_work_unchanged` with the tenants in SLUICE_SDK_TENANTS (JSON:
name -> {base, key}). Prints one `measured:` line per check; exits 1 on the first failed assertion.
"""

import json
import os
import sys
import time

import openai
from openai import OpenAI

TENANTS = json.loads(os.environ.get("SLUICE_SDK_TENANTS", "{}"))


def client(name, **options):
    t = TENANTS[name]
    options.setdefault("max_retries", 0)
    return OpenAI(base_url=t["base"], api_key=t["key"], timeout=20, **options)


def say(line):
    print(f"measured: openai-python {line}", flush=True)


def raised(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the point is which exception
        return e
    raise AssertionError("the call should have raised")


def drain(stream):
    chunks = []
    try:
        for chunk in stream:
            chunks.append(chunk)
    except Exception as e:  # noqa: BLE001
        return chunks, e
    return chunks, None


MSG = [{"role": "user", "content": "hi"}]

ok = client("ok")
whole = ok.chat.completions.create(model="mock-1", messages=MSG)
assert whole.choices[0].message.content == "tok0 tok1 tok2 ", whole
say(f"chat whole: {whole.choices[0].message.content!r}, usage {whole.usage.total_tokens}")

chunks, error = drain(
    ok.chat.completions.create(model="mock-1", messages=MSG, stream=True, stream_options={"include_usage": True})
)
assert error is None, error
text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
assert text == "tok0 tok1 tok2 ", text
assert chunks[-1].usage is not None
say(f"chat stream: {len(chunks)} chunks, usage chunk last")

response = ok.responses.create(model="mock-1", input="hello")
assert response.output_text == "tok0 tok1 tok2 ", response
say(f"responses whole: output_text {response.output_text!r}")
events = [e.type for e in ok.responses.create(model="mock-1", input="hello", stream=True)]
assert events[-1] == "response.completed", events
say(f"responses stream: {events.count('response.output_text.delta')} deltas, then {events[-1]}")

embedding = client("embed").embeddings.create(model="emb-1", input="hello")
assert len(embedding.data[0].embedding) == 3
say(f"embeddings: {len(embedding.data[0].embedding)} dimensions")

tools = client("tools")
calls = {}
for chunk in tools.chat.completions.create(
    model="mock-1",
    messages=[{"role": "user", "content": "look it up"}],
    tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    stream=True,
):
    for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        call = calls.setdefault(piece.index, {"name": "", "arguments": ""})
        call["name"] += (piece.function.name or "") if piece.function else ""
        call["arguments"] += (piece.function.arguments or "") if piece.function else ""
assert calls == {0: {"name": "lookup", "arguments": '{"k0":1}'}}, calls
say(f"tool-call stream: {calls[0]}")

bad_key = OpenAI(base_url=TENANTS["ok"]["base"], api_key="ask_live_nope", max_retries=0)
cases = [
    ("401", lambda: bad_key.chat.completions.create(model="mock-1", messages=MSG), openai.AuthenticationError),
    ("403", lambda: ok.chat.completions.create(model="not-allowed", messages=MSG), openai.PermissionDeniedError),
    ("404", lambda: ok.models.retrieve("gpt-none"), openai.NotFoundError),
    ("502", lambda: client("broken").chat.completions.create(model="mock-1", messages=MSG), openai.InternalServerError),
]
for status, call, kind in cases:
    e = raised(call)
    assert isinstance(e, kind), (status, type(e))
    assert str(e.status_code) == status
    assert " - " in str(e) and e.body and e.body.get("message"), (status, str(e))
    say(f"{status} {type(e).__name__}: {str(e)!r}")

minute = client("minute")
minute.chat.completions.create(model="mock-1", messages=MSG)
e = raised(lambda: minute.chat.completions.create(model="mock-1", messages=MSG))
assert isinstance(e, openai.RateLimitError), type(e)
say(f"429 per-minute {type(e).__name__}: {str(e)!r}")

day = client("day", max_retries=2)
day.chat.completions.create(model="mock-1", messages=MSG)
started = time.monotonic()
e = raised(lambda: day.chat.completions.create(model="mock-1", messages=MSG))
waited = time.monotonic() - started
assert isinstance(e, openai.RateLimitError), type(e)
assert waited < 2, f"no retry sleep: {waited:.2f} s"
say(f"429 per-day {type(e).__name__} after {waited * 1000:.0f} ms with max_retries 2: {str(e)!r}")

for name in ["cut", "budget"]:
    got, error = drain(client(name).chat.completions.create(model="mock-1", messages=MSG, stream=True))
    assert isinstance(error, openai.APIError), (name, repr(error))
    assert error.message and "An error occurred" not in error.message, (name, error.message)
    assert all(isinstance(c.choices, list) for c in got), name
    say(f"{name} stream: {len(got)} chunks, then {type(error).__name__}: {error.message!r}")

print("openai-python: all checks passed")
sys.exit(0)
