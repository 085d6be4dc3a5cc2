// Unit tests for packages/sdk/index.js (node --test tests/js/): the SSE parser at every split, and the client against an in-process node:http gateway stand-in.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import { DpopKey, SluiceClient, SluiceError, createSseParser, readSse, memoryStorage } from "../../packages/sdk/index.js";

// ------------------------------------------------------------------------------------------------
// SSE parser

const SAMPLE =
  ": keep-alive comment\r\n" +
  'data: {"a":"héllo"}\r\n\r\n' +
  "event: error\r\n" +
  "data: line one\r\n" +
  "data: line two 😀\r\n\r\n" +
  "id: 7\n" +
  "data:no-space 世界\n\n" +
  "data: cr only\r\r" +
  "retry: 1500\ndata\n\n" +
  "event: no-data-so-not-sent\n\n" +
  ": another comment\n" +
  "data: [DONE]\n\n" +
  "data: unterminated, so dropped";

const EXPECTED = [
  { event: "message", data: '{"a":"héllo"}', id: "" },
  { event: "error", data: "line one\nline two 😀", id: "" },
  { event: "message", data: "no-space 世界", id: "7" },
  { event: "message", data: "cr only", id: "7" },
  { event: "message", data: "", id: "7", retry: 1500 },
  { event: "message", data: "[DONE]", id: "7" },
];

const BYTES = new TextEncoder().encode(SAMPLE);

function parseChunks(chunks) {
  const parser = createSseParser();
  const out = [];
  for (const c of chunks) out.push(...parser.push(c));
  out.push(...parser.end());
  return out;
}

describe("createSseParser", () => {
  test("parses a whole stream: comments, CRLF, CR, multi-line data, ids, retry, empty events", () => {
    assert.deepEqual(parseChunks([BYTES]), EXPECTED);
  });

  test("gives the same events when split in two at every byte boundary", () => {
    for (let i = 0; i <= BYTES.length; i++) {
      assert.deepEqual(parseChunks([BYTES.subarray(0, i), BYTES.subarray(i)]), EXPECTED, `split at byte ${i}`);
    }
  });

  test("gives the same events when split in three at every pair of boundaries", () => {
    for (let i = 0; i <= BYTES.length; i += 1) {
      for (let j = i; j <= BYTES.length; j += 3) {
        const chunks = [BYTES.subarray(0, i), BYTES.subarray(i, j), BYTES.subarray(j)];
        assert.deepEqual(parseChunks(chunks), EXPECTED, `split at ${i} and ${j}`);
      }
    }
  });

  test("gives the same events fed one byte at a time", () => {
    const chunks = Array.from(BYTES, (b) => Uint8Array.of(b));
    assert.deepEqual(parseChunks(chunks), EXPECTED);
  });

  test("decodes a multi-byte character split inside it (2, 3 and 4 byte sequences)", () => {
    for (const ch of ["é", "世", "😀"]) {
      const bytes = new TextEncoder().encode(`data: ${ch}${ch}\n\n`);
      const at = bytes.indexOf(0x20) + 2; // inside the first character
      const parser = createSseParser();
      assert.deepEqual(parser.push(bytes.subarray(0, at)), []);
      assert.deepEqual(parser.push(bytes.subarray(at)), [{ event: "message", data: ch + ch, id: "" }]);
    }
  });

  test("treats \\r\\n split across chunks as one line ending, not two", () => {
    const parser = createSseParser();
    const out = [...parser.push("data: a\r"), ...parser.push("\ndata: b\r"), ...parser.push("\n\r"), ...parser.push("\n")];
    assert.deepEqual(out, [{ event: "message", data: "a\nb", id: "" }]);
  });

  test("accepts strings and ArrayBuffers as well as Uint8Arrays", () => {
    const parser = createSseParser();
    const buf = new TextEncoder().encode("data: x\n\n").buffer;
    assert.deepEqual([...parser.push("data: s\n\n"), ...parser.push(buf)], [
      { event: "message", data: "s", id: "" },
      { event: "message", data: "x", id: "" },
    ]);
  });

  test("strips a leading byte order mark", () => {
    const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...new TextEncoder().encode("data: bom\n\n")]);
    assert.deepEqual(parseChunks([bytes.subarray(0, 2), bytes.subarray(2)]), [{ event: "message", data: "bom", id: "" }]);
  });
});

describe("readSse", () => {
  test("yields events from a ReadableStream of byte chunks split anywhere", async () => {
    const pieces = [BYTES.subarray(0, 5), BYTES.subarray(5, 40), BYTES.subarray(40, 41), BYTES.subarray(41)];
    const stream = new ReadableStream({
      start(controller) {
        for (const p of pieces) controller.enqueue(p);
        controller.close();
      },
    });
    const events = [];
    for await (const ev of readSse(stream)) events.push(ev);
    assert.deepEqual(events, EXPECTED);
  });

  test("cancels the stream when the consumer stops early", async () => {
    let cancelled = false;
    const stream = new ReadableStream({
      pull(controller) {
        controller.enqueue(new TextEncoder().encode("data: more\n\n"));
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const ev of readSse(stream)) {
      assert.equal(ev.data, "more");
      break;
    }
    assert.equal(cancelled, true);
  });
});

// ------------------------------------------------------------------------------------------------
// The client against a local server

/** A tiny gateway stand-in: each test sets `handlers[path]`; every request is recorded. */
let server;
let base;
const handlers = {};
const requests = [];

before(async () => {
  server = http.createServer(async (req, res) => {
    req.socket.setNoDelay(true);
    let body = "";
    for await (const chunk of req) body += chunk;
    const url = new URL(req.url, "http://x");
    const record = { method: req.method, path: url.pathname, headers: req.headers, body: body ? JSON.parse(body) : undefined };
    requests.push(record);
    const handler = handlers[`${req.method} ${url.pathname}`];
    if (!handler) {
      res.writeHead(404, { "content-type": "application/problem+json" });
      res.end(JSON.stringify({ type: "not-found", title: "Not found", status: 404, detail: `No route for ${url.pathname}.` }));
      return;
    }
    await handler(req, res, record);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(() => new Promise((resolve) => server.close(resolve)));

function reset() {
  for (const k of Object.keys(handlers)) delete handlers[k];
  requests.length = 0;
}

const CHAT = "POST /v1/p/chat/chat/completions";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function chunk(content, extra = {}) {
  return `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [{ index: 0, delta: { content }, finish_reason: null }], ...extra })}\n\n`;
}

/** Streams `frames` as SSE, each in its own write after a short pause; a frame may be split mid-way by `|SPLIT|`. */
function sse(frames, { status = 200, gapMs = 5 } = {}) {
  return async (req, res) => {
    res.writeHead(status, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" });
    for (const frame of frames) {
      for (const piece of frame.split("|SPLIT|")) {
        res.write(piece);
        await sleep(gapMs);
      }
    }
    res.end();
  };
}

function problem(status, body, headers = {}) {
  return (req, res) => {
    res.writeHead(status, { "content-type": "application/problem+json", ...headers });
    res.end(JSON.stringify({ status, ...body }));
  };
}

function json(status, body) {
  return (req, res) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
}

const USAGE = { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 };
const HELLO_FRAMES = [
  chunk("Hel"),
  chunk("lo").replace('"lo"', '"lo"|SPLIT|'), // an event split across two writes
  chunk(" wör"),
  chunk("ld", { choices: [{ index: 0, delta: { content: "ld" }, finish_reason: "stop" }] }),
  `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [], usage: USAGE })}\n\n`,
  "data: [DONE]\n\n",
];

function managedClient(session) {
  const storage = memoryStorage();
  if (session) storage.set("sluice:p:session", JSON.stringify(session));
  const client = new SluiceClient({ baseUrl: base + "/", project: "p", storage });
  return { client, storage };
}

describe("SluiceClient.chat.stream", () => {
  test("calls onToken in order and resolves with the text and usage", async () => {
    reset();
    handlers[CHAT] = sse(HELLO_FRAMES);
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    const seen = [];
    const result = await client.chat.stream({
      api: "chat",
      messages: [{ role: "user", content: "hi" }],
      temperature: 0.5,
      onToken: (delta, text) => seen.push([delta, text]),
    });
    assert.deepEqual(seen, [["Hel", "Hel"], ["lo", "Hello"], [" wör", "Hello wör"], ["ld", "Hello wörld"]]);
    assert.equal(result.text, "Hello wörld");
    assert.deepEqual(result.usage, USAGE);
    assert.equal(result.finishReason, "stop");
    const sent = requests[0];
    assert.equal(sent.headers.authorization, "Bearer ask_live_test");
    assert.equal(sent.body.stream, true);
    assert.equal(sent.body.stream_options.include_usage, true);
    assert.equal(sent.body.temperature, 0.5);
    assert.equal("api" in sent.body, false);
  });

  test("a mid-stream `event: error` (quota) rejects with a SluiceError holding the partial text", async () => {
    reset();
    const reset60 = new Date(Date.now() + 60_000).toISOString();
    const quota = { type: "quota-exceeded", title: "Quota exceeded", status: 429, detail: "The day's tokens are used up.", scope: "tokens_per_day", limit: 10, used: 10, reset: reset60, plan: "free" };
    handlers[CHAT] = sse([chunk("Hel"), chunk("lo"), `event: error\ndata: ${JSON.stringify(quota)}\n\n`, "data: [DONE]\n\n"]);
    const { client } = managedClient({ access_token: "a", refresh_token: "r", expires_at: Date.now() + 3600_000 });
    const tokens = [];
    const err = await client.chat.stream({ api: "chat", messages: [], onToken: (d) => tokens.push(d) }).then(
      () => assert.fail("should reject"),
      (e) => e,
    );
    assert.ok(err instanceof SluiceError);
    assert.equal(err.type, "quota-exceeded");
    assert.equal(err.status, 429);
    assert.equal(err.partialText, "Hello");
    assert.equal(err.scope, "tokens_per_day");
    assert.equal(err.limit, 10);
    assert.equal(err.plan, "free");
    assert.ok(err.retryAfter >= 58 && err.retryAfter <= 60, `retryAfter ${err.retryAfter}`);
    assert.deepEqual(tokens, ["Hel", "lo"]);
  });

  test("an upstream cut (`upstream-stream-interrupted`) rejects with the partial text", async () => {
    reset();
    const cut = { type: "upstream-stream-interrupted", title: "The upstream stream ended early", status: 502, detail: "cut" };
    handlers[CHAT] = sse([chunk("par"), chunk("tial"), `event: error\r\ndata: ${JSON.stringify(cut)}\r\n\r\n`, "data: [DONE]\r\n\r\n"]);
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => {
      assert.ok(e instanceof SluiceError);
      assert.equal(e.type, "upstream-stream-interrupted");
      assert.equal(e.partialText, "partial");
      return true;
    });
  });

  test("the gateway's unnamed error event (OpenAI's `error` member) rejects with its detail as the message", async () => {
    reset();
    const cut = { type: "quota-exceeded", title: "Quota exceeded", status: 429, detail: "The day's tokens are used up.", error: { message: "The day's tokens are used up.", type: "quota-exceeded", code: "quota_exceeded", param: null } };
    handlers[CHAT] = sse([chunk("so "), chunk("far"), `data: ${JSON.stringify(cut)}\n\n`, "data: [DONE]\n\n"]);
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => {
      assert.ok(e instanceof SluiceError);
      assert.equal(e.type, "quota-exceeded");
      assert.equal(e.message, "The day's tokens are used up.");
      assert.equal(e.partialText, "so far");
      return true;
    });
  });

  test("streamed tool calls are assembled by index and handed to onToolCall whole", async () => {
    reset();
    const call = (piece, finish = null) =>
      `data: ${JSON.stringify({ id: "c1", object: "chat.completion.chunk", choices: [{ index: 0, delta: { tool_calls: piece }, finish_reason: finish }] })}\n\n`;
    handlers[CHAT] = sse([
      call([{ index: 0, id: "call_a", type: "function", function: { name: "get_weather", arguments: "" } }]),
      call([{ index: 0, function: { arguments: '{"city":' } }]),
      call([{ index: 1, id: "call_b", type: "function", function: { name: "get_time", arguments: "{}" } }]),
      call([{ index: 0, function: { arguments: '"Oslo"}' } }], "tool_calls"),
      "data: [DONE]\n\n",
    ]);
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    const seen = [];
    const result = await client.chat.stream({ api: "chat", messages: [], onToolCall: (c) => seen.push(c) });
    const expected = [
      { id: "call_a", type: "function", function: { name: "get_weather", arguments: '{"city":"Oslo"}' } },
      { id: "call_b", type: "function", function: { name: "get_time", arguments: "{}" } },
    ];
    assert.deepEqual(result.toolCalls, expected);
    assert.deepEqual(seen, expected);
    assert.equal(result.text, "");
    assert.equal(result.finishReason, "tool_calls");
  });

  test("a stream that closes without [DONE] or a finish reason is an error, not a short reply", async () => {
    reset();
    handlers[CHAT] = sse([chunk("half")]);
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => e.type === "stream-incomplete" && e.partialText === "half");
  });

  test("a 429 problem rejects with retryAfter from Retry-After and the problem's fields", async () => {
    reset();
    handlers[CHAT] = problem(
      429,
      { type: "rate-limited", title: "Too many requests", detail: "2 of 2 requests this minute.", scope: "requests_per_minute", limit: 2, used: 2, reset: new Date(Date.now() + 5000).toISOString(), plan: "default" },
      { "retry-after": "17" },
    );
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => {
      assert.ok(e instanceof SluiceError);
      assert.equal(e.status, 429);
      assert.equal(e.retryAfter, 17);
      assert.ok(e.retryAt instanceof Date);
      assert.equal(e.detail, "2 of 2 requests this minute.");
      assert.equal(e.message, "2 of 2 requests this minute.");
      assert.equal(e.scope, "requests_per_minute");
      assert.equal(e.used, 2);
      assert.equal(e.plan, "default");
      return true;
    });
  });

  test("a non-problem error body still becomes a SluiceError with the status", async () => {
    reset();
    handlers[CHAT] = (req, res) => {
      res.writeHead(502, { "content-type": "text/html" });
      res.end("<h1>Bad gateway</h1>");
    };
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => e instanceof SluiceError && e.status === 502 && e.detail.includes("Bad gateway"));
  });

  test("an unreachable gateway is a SluiceError of type network-error", async () => {
    const closed = http.createServer();
    await new Promise((r) => closed.listen(0, "127.0.0.1", r));
    const port = closed.address().port;
    await new Promise((r) => closed.close(r));
    const client = new SluiceClient({ baseUrl: `http://127.0.0.1:${port}`, project: "p", storage: memoryStorage() });
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => e instanceof SluiceError && e.type === "network-error" && e.status === 0);
  });

  test("reads the body to its end after [DONE] instead of cancelling it (no client-gone at the gateway)", async () => {
    reset();
    let closedEarly = null;
    handlers[CHAT] = async (req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(chunk("done soon"));
      res.write("data: [DONE]\n\n");
      await sleep(150);
      closedEarly = res.destroyed || req.socket.destroyed;
      res.end();
    };
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    const started = Date.now();
    const { text } = await client.chat.stream({ api: "chat", messages: [] });
    assert.equal(text, "done soon");
    assert.ok(Date.now() - started >= 140, "waited for the server to close");
    assert.equal(closedEarly, false);
  });

  test("an error thrown by onToken rejects with that error", async () => {
    reset();
    handlers[CHAT] = sse(HELLO_FRAMES);
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    const boom = new RangeError("boom");
    await assert.rejects(client.chat.stream({ api: "chat", messages: [], onToken: () => { throw boom; } }), (e) => e === boom);
  });

  test("aborting rejects with an AbortError that keeps the partial text", async () => {
    reset();
    handlers[CHAT] = sse([chunk("one "), chunk("two "), chunk("three "), chunk("four "), "data: [DONE]\n\n"], { gapMs: 60 });
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    const controller = new AbortController();
    const err = await client.chat
      .stream({ api: "chat", messages: [], signal: controller.signal, onToken: (d) => d === "one " && controller.abort() })
      .then(() => assert.fail("should reject"), (e) => e);
    assert.equal(err.name, "AbortError");
    assert.equal(err.partialText, "one ");
  });
});

describe("managed sessions", () => {
  test("a 401 refreshes once (rotating the refresh token) and retries", async () => {
    reset();
    handlers[CHAT] = (req, res, rec) =>
      rec.headers.authorization === "Bearer new-access" ? sse(HELLO_FRAMES)(req, res) : problem(401, { type: "invalid-credential", title: "no", detail: "expired" })(req, res);
    handlers["POST /v1/p/auth/refresh"] = (req, res, rec) =>
      rec.body.refresh_token === "r1"
        ? json(200, { access_token: "new-access", refresh_token: "r2", token_type: "Bearer", expires_in: 900 })(req, res)
        : problem(401, { type: "invalid-refresh-token", title: "no", detail: "reused" })(req, res);
    const { client, storage } = managedClient({ access_token: "stale", refresh_token: "r1", expires_at: Date.now() + 3600_000 });
    const events = [];
    client.auth.onChange((e) => events.push(e));
    const result = await client.chat.stream({ api: "chat", messages: [] });
    assert.equal(result.text, "Hello wörld");
    assert.deepEqual(requests.map((r) => r.path), ["/v1/p/chat/chat/completions", "/v1/p/auth/refresh", "/v1/p/chat/chat/completions"]);
    const saved = JSON.parse(storage.get("sluice:p:session"));
    assert.equal(saved.access_token, "new-access");
    assert.equal(saved.refresh_token, "r2");
    assert.ok(saved.expires_at > Date.now() + 800_000);
    assert.deepEqual(events, ["refreshed"]);
  });

  test("concurrent 401s share one refresh (a reused refresh token would end the session)", async () => {
    reset();
    let refreshes = 0;
    handlers[CHAT] = (req, res, rec) =>
      rec.headers.authorization === "Bearer new-access" ? sse(HELLO_FRAMES)(req, res) : problem(401, { type: "invalid-credential", title: "no", detail: "expired" })(req, res);
    handlers["POST /v1/p/auth/refresh"] = async (req, res, rec) => {
      refreshes++;
      await sleep(30);
      if (rec.body.refresh_token !== "r1") return problem(401, { type: "invalid-refresh-token", title: "no", detail: "reused" })(req, res);
      return json(200, { access_token: "new-access", refresh_token: "r2", token_type: "Bearer", expires_in: 900 })(req, res);
    };
    const { client } = managedClient({ access_token: "stale", refresh_token: "r1", expires_at: Date.now() + 3600_000 });
    const [a, b] = await Promise.all([client.chat.stream({ api: "chat", messages: [] }), client.chat.stream({ api: "chat", messages: [] })]);
    assert.equal(a.text, "Hello wörld");
    assert.equal(b.text, "Hello wörld");
    assert.equal(refreshes, 1);
  });

  test("an expired access token is refreshed before the request is sent", async () => {
    reset();
    handlers[CHAT] = sse(HELLO_FRAMES);
    handlers["POST /v1/p/auth/refresh"] = json(200, { access_token: "fresh", refresh_token: "r2", token_type: "Bearer", expires_in: 900 });
    const { client } = managedClient({ access_token: "old", refresh_token: "r1", expires_at: Date.now() - 1000 });
    await client.chat.stream({ api: "chat", messages: [] });
    assert.deepEqual(requests.map((r) => r.path), ["/v1/p/auth/refresh", "/v1/p/chat/chat/completions"]);
    assert.equal(requests[1].headers.authorization, "Bearer fresh");
  });

  test("a refused refresh signs out and throws the 401", async () => {
    reset();
    handlers[CHAT] = problem(401, { type: "invalid-credential", title: "The credential is not valid", detail: "revoked" });
    handlers["POST /v1/p/auth/refresh"] = problem(401, { type: "invalid-refresh-token", title: "no", detail: "revoked" });
    const { client, storage } = managedClient({ access_token: "a", refresh_token: "r1", expires_at: Date.now() + 3600_000 });
    const events = [];
    client.auth.onChange((e) => events.push(e));
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => e instanceof SluiceError && e.status === 401);
    assert.equal(storage.get("sluice:p:session"), null);
    assert.equal(await client.auth.isSignedIn(), false);
    assert.deepEqual(events, ["expired"]);
    assert.deepEqual(requests.map((r) => r.path), ["/v1/p/chat/chat/completions", "/v1/p/auth/refresh"]);
  });

  test("OTP sign-in stores the tokens; me() and signOut() use them", async () => {
    reset();
    handlers["POST /v1/p/auth/otp/start"] = json(202, { status: "sent", challenge_id: "chl_1" });
    handlers["POST /v1/p/auth/otp/verify"] = (req, res, rec) =>
      rec.body.code === "123456" && rec.body.challenge_id === "chl_1" ? json(200, { access_token: "acc", refresh_token: "ref", token_type: "Bearer", expires_in: 900 })(req, res) : problem(400, { type: "invalid-code", title: "Wrong code", detail: "wrong" })(req, res);
    handlers["GET /v1/p/auth/me"] = (req, res, rec) => json(rec.headers.authorization === "Bearer acc" ? 200 : 401, { id: "usr_1", email: "a@example.com" })(req, res);
    handlers["POST /v1/p/auth/logout"] = (req, res) => {
      res.writeHead(204);
      res.end();
    };
    const { client, storage } = managedClient(null);
    await assert.rejects(client.auth.verifyOtp("a@example.com", "123456"), (e) => e.type === "no-challenge");
    assert.deepEqual(await client.auth.startOtp("A@example.com "), { challengeId: "chl_1" });
    assert.deepEqual(requests[0].body, { email: "A@example.com " });
    await assert.rejects(client.auth.verifyOtp("a@example.com", "000000"), (e) => e.type === "invalid-code" && e.status === 400);
    assert.equal(await client.auth.isSignedIn(), false);
    const session = await client.auth.verifyOtp("a@example.com", " 123456 ");
    assert.equal(requests.find((r) => r.path === "/v1/p/auth/otp/verify").body.challenge_id, "chl_1");
    assert.equal(session.access_token, "acc");
    assert.equal(JSON.parse(storage.get("sluice:p:session")).refresh_token, "ref");
    assert.deepEqual(await client.auth.me(), { id: "usr_1", email: "a@example.com" });
    await client.auth.signOut();
    const logout = requests.find((r) => r.path === "/v1/p/auth/logout");
    assert.equal(logout.headers.authorization, "Bearer acc");
    assert.deepEqual(logout.body, { refresh_token: "ref" });
    assert.equal(await client.auth.isSignedIn(), false);
  });
});

describe("signOut", () => {
  test("an expired access token is refreshed so the logout still revokes the session", async () => {
    reset();
    handlers["POST /v1/p/auth/logout"] = (req, res, rec) => {
      res.writeHead(rec.headers.authorization === "Bearer fresh" ? 204 : 401);
      res.end();
    };
    handlers["POST /v1/p/auth/refresh"] = json(200, { access_token: "fresh", refresh_token: "r2", token_type: "Bearer", expires_in: 900 });
    const { client, storage } = managedClient({ access_token: "stale", refresh_token: "r1", expires_at: Date.now() + 3600_000 });
    await client.auth.signOut();
    assert.deepEqual(requests.map((r) => `${r.path} ${r.headers.authorization || ""}`.trim()), [
      "/v1/p/auth/logout Bearer stale",
      "/v1/p/auth/refresh",
      "/v1/p/auth/logout Bearer fresh",
    ]);
    assert.equal(storage.get("sluice:p:session"), null);
  });

  test("signs out locally even when the gateway cannot be reached", async () => {
    const storage = memoryStorage();
    storage.set("sluice:p:session", JSON.stringify({ access_token: "a", refresh_token: "r", expires_at: null }));
    const client = new SluiceClient({ baseUrl: "http://127.0.0.1:9", project: "p", storage });
    await client.auth.signOut();
    assert.equal(await client.auth.isSignedIn(), false);
  });
});

describe("credential providers", () => {
  test("setToken(fn) is called for each request, and again with retry after a 401", async () => {
    reset();
    handlers[CHAT] = (req, res, rec) => (rec.headers.authorization === "Bearer jwt-2" ? sse(HELLO_FRAMES)(req, res) : problem(401, { type: "invalid-credential", title: "no", detail: "old" })(req, res));
    const calls = [];
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setToken(async ({ retry }) => {
      calls.push(retry);
      return `jwt-${calls.length}`;
    });
    const { text } = await client.chat.stream({ api: "chat", messages: [] });
    assert.equal(text, "Hello wörld");
    assert.deepEqual(calls, [false, true]);
    assert.equal(requests.some((r) => r.path.endsWith("/auth/refresh")), false);
  });

  test("a fixed key that gets a 401 throws without retrying", async () => {
    reset();
    handlers[CHAT] = problem(401, { type: "invalid-credential", title: "The credential is not valid", detail: "revoked" });
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_revoked");
    await assert.rejects(client.chat.stream({ api: "chat", messages: [] }), (e) => e.status === 401 && e.type === "invalid-credential");
    assert.equal(requests.length, 1);
  });
});

describe("SluiceClient.chat.complete", () => {
  test("returns the message text and usage of a non-streamed answer", async () => {
    reset();
    handlers[CHAT] = json(200, { id: "c", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "Whole reply" }, finish_reason: "stop" }], usage: USAGE });
    const client = new SluiceClient({ baseUrl: base, project: "p", storage: memoryStorage() });
    client.setConsumerKey("ask_live_test");
    const result = await client.chat.complete({ api: "chat", messages: [{ role: "user", content: "hi" }], model: "m1" });
    assert.equal(result.text, "Whole reply");
    assert.deepEqual(result.usage, USAGE);
    assert.equal(requests[0].body.stream, false);
    assert.equal(requests[0].body.model, "m1");
  });
});

// ------------------------------------------------------------------------------------------------
// DPoP

function b64urlBytes(s) {
  return Buffer.from(s.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}

describe("DPoP", () => {
  test("a proof is an ES256 JWS over typ, jwk, htm, htu (no query), iat, jti and ath, by a key that does not leave", async () => {
    let saved = null;
    const key = new DpopKey({ load: async () => saved, save: async (p) => (saved = p), remove: async () => (saved = null) });
    const proof = await key.proof("post", "https://gw.example/v1/p/auth/refresh?x=1#y", "the-access-token");
    const [h, p, sig] = proof.split(".");
    const header = JSON.parse(b64urlBytes(h));
    const claims = JSON.parse(b64urlBytes(p));
    assert.equal(header.typ, "dpop+jwt");
    assert.equal(header.alg, "ES256");
    assert.deepEqual(Object.keys(header.jwk).sort(), ["crv", "kty", "x", "y"], "public members only");
    assert.equal(claims.htm, "POST");
    assert.equal(claims.htu, "https://gw.example/v1/p/auth/refresh");
    assert.ok(Math.abs(claims.iat - Date.now() / 1000) < 5);
    const ath = (await crypto.subtle.digest("SHA-256", new TextEncoder().encode("the-access-token")));
    assert.equal(claims.ath, Buffer.from(ath).toString("base64url"));
    const pub = await crypto.subtle.importKey("jwk", header.jwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
    assert.ok(await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, pub, b64urlBytes(sig), new TextEncoder().encode(`${h}.${p}`)));
    assert.equal(saved.privateKey.extractable, false, "the private key cannot be exported");
    const again = JSON.parse(b64urlBytes((await key.proof("GET", "https://gw.example/x")).split(".")[1]));
    assert.notEqual(again.jti, claims.jti, "every proof has its own jti");
    await key.forget();
    assert.equal(saved, null);
  });

  test("a DPoP session sends proofs at sign-in and refresh, and DPoP credentials on calls", async () => {
    reset();
    handlers["POST /v1/p/auth/otp/start"] = json(202, { status: "sent", challenge_id: "chl_1" });
    handlers["POST /v1/p/auth/otp/verify"] = json(200, { access_token: "acc", refresh_token: "ref", token_type: "DPoP", expires_in: 900 });
    handlers["GET /v1/p/auth/me"] = (req, res, rec) => json(rec.headers.authorization === "DPoP acc" && rec.headers.dpop ? 200 : 401, { id: "u" })(req, res);
    const storage = memoryStorage();
    let saved = null;
    const dpop = new DpopKey({ load: async () => saved, save: async (p) => (saved = p) });
    const client = new SluiceClient({ baseUrl: base, project: "p", storage, dpop });
    await client.auth.startOtp("a@example.com");
    await client.auth.verifyOtp("a@example.com", "123456");
    const verify = requests.find((r) => r.path === "/v1/p/auth/otp/verify");
    assert.ok(verify.headers.dpop, "the sign-in carries a proof");
    assert.equal(JSON.parse(b64urlBytes(verify.headers.dpop.split(".")[1])).htu, `${base}/v1/p/auth/otp/verify`);
    assert.deepEqual(await client.auth.me(), { id: "u" });
    const me = requests.find((r) => r.path === "/v1/p/auth/me");
    assert.ok(JSON.parse(b64urlBytes(me.headers.dpop.split(".")[1])).ath, "a call's proof covers the token");
  });
});

// ------------------------------------------------------------------------------------------------
// Two tabs of one browser: one localStorage and one IndexedDB, but each tab's SDK holds its own copy
// of the DPoP key in memory.

describe("DPoP across tabs", () => {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const thumb = async (jwk) => Buffer.from(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })))).toString("base64url");
  const proofJkt = (proof) => thumb(JSON.parse(b64urlBytes(proof.split(".")[0])).jwk);
  const claimsOf = (token) => JSON.parse(b64urlBytes(token.split(".")[1]));

  /** A gateway stand-in that binds sessions to the proof's key and checks every proof against it. */
  function bindingGateway() {
    let n = 0;
    const live = new Map(); // refresh token -> jkt
    const token = (jkt) => `${enc({ alg: "ES256" })}.${enc({ sub: "con_1", cnf: { jkt }, n: ++n })}.sig`;
    const pair = async (jkt) => {
      const refresh = `ref_${++n}`;
      live.set(refresh, jkt);
      return { access_token: token(jkt), refresh_token: refresh, token_type: "DPoP", expires_in: 900 };
    };
    handlers["POST /v1/p/auth/otp/start"] = json(202, { challenge_id: "chl_1" });
    handlers["POST /v1/p/auth/otp/verify"] = async (req, res, rec) => json(200, await pair(await proofJkt(rec.headers.dpop)))(req, res);
    handlers["POST /v1/p/auth/logout"] = (req, res, rec) => {
      live.delete(rec.body.refresh_token);
      res.writeHead(204);
      res.end();
    };
    handlers["GET /v1/p/auth/me"] = async (req, res, rec) => {
      const t = (rec.headers.authorization || "").replace(/^DPoP /, "");
      const ok = rec.headers.dpop && claimsOf(t).cnf.jkt === (await proofJkt(rec.headers.dpop));
      (ok ? json(200, { id: "con_1" }) : problem(401, { type: "invalid-dpop-proof", title: "Invalid DPoP proof" }))(req, res);
    };
    handlers["POST /v1/p/auth/refresh"] = async (req, res, rec) => {
      const jkt = live.get(rec.body.refresh_token);
      // A proof by another key is refused and revokes nothing (as the gateway does).
      if (!jkt || jkt !== (await proofJkt(rec.headers.dpop))) return problem(401, { type: "invalid-refresh-token", title: "Refused" })(req, res);
      live.delete(rec.body.refresh_token);
      json(200, await pair(jkt))(req, res);
    };
  }

  function twoTabs() {
    const storage = memoryStorage();
    let idb = null; // the one IndexedDB record both tabs share
    const tab = () => new SluiceClient({ baseUrl: base, project: "p", storage, dpop: new DpopKey({ load: async () => idb, save: async (p) => (idb = p), remove: async () => (idb = null) }) });
    return { a: tab(), b: tab(), storage, stored: () => idb };
  }

  async function signIn(client) {
    await client.auth.startOtp("a@example.com");
    return client.auth.verifyOtp("a@example.com", "123456");
  }

  test("a tab still holding the old key notices the session another tab signed in again, and uses the stored key", async () => {
    reset();
    bindingGateway();
    const { a, b, stored } = twoTabs();
    const first = await signIn(a);
    assert.deepEqual(await b.auth.me(), { id: "con_1" }, "tab B signs with the key it loaded");
    await a.auth.signOut();
    const second = await signIn(a);
    assert.equal(second.jkt, await thumb(stored().jwk), "the session records the key it is bound to");
    assert.notEqual(second.jkt, first.jkt, "signing in again made a new key");
    requests.length = 0;
    assert.deepEqual(await b.auth.me(), { id: "con_1" }, "tab B rereads the stored key instead of signing with the forgotten one");
    assert.equal(requests.filter((r) => r.path.endsWith("/auth/refresh")).length, 0, "no refresh was needed");
    assert.ok(await a.auth.getSession(), "both tabs stay signed in");
    assert.deepEqual(await a.auth.me(), { id: "con_1" });
  });

  test("a refresh refused for a stale copy never clears the newer session or key another tab stored", async () => {
    reset();
    bindingGateway();
    const { a, b, storage, stored } = twoTabs();
    await signIn(a);
    const old = await b.auth.getSession();
    await b.auth.me(); // B now holds the first key in memory
    // Tab A signs out and in again while B's refresh of the old session is on its way.
    const refresh = handlers["POST /v1/p/auth/refresh"];
    handlers["POST /v1/p/auth/refresh"] = async (req, res, rec) => {
      handlers["POST /v1/p/auth/refresh"] = refresh;
      await a.auth.signOut();
      await signIn(a);
      problem(401, { type: "invalid-refresh-token", title: "Refused" })(req, res);
    };
    const events = [];
    b.auth.onChange((e) => events.push(e));
    const adopted = await b.auth._refreshAfter(old.access_token, undefined, true);
    const newer = await a.auth.getSession();
    assert.ok(newer && newer.refresh_token !== old.refresh_token);
    assert.equal(adopted.refresh_token, newer.refresh_token, "tab B adopts the newer session");
    assert.equal(JSON.parse(storage.get("sluice:p:session")).refresh_token, newer.refresh_token, "the newer session stays stored");
    assert.equal(await thumb(stored().jwk), newer.jkt, "the newer key stays stored");
    assert.deepEqual(events, [], "tab B does not announce an expired session");
    assert.deepEqual(await b.auth.me(), { id: "con_1" });
  });
});

describe("refresh across tabs without Web Locks (plain-HTTP pages)", () => {
  test("two tabs refreshing at once share one refresh instead of reusing the token (which would end the session)", async () => {
    assert.equal(globalThis.navigator?.locks, undefined, "this test runs where there are no Web Locks");
    reset();
    let live = "ref_0";
    let revoked = false;
    let n = 0;
    handlers["POST /v1/p/auth/refresh"] = async (req, res, rec) => {
      await sleep(40); // both tabs' requests would be in flight together
      if (revoked || rec.body.refresh_token !== live) {
        revoked = true; // reuse: the gateway revokes the whole session
        return problem(401, { type: "invalid-refresh-token", title: "Refresh token reused" })(req, res);
      }
      live = `ref_${++n}`;
      json(200, { access_token: `acc_${n}`, refresh_token: live, token_type: "Bearer", expires_in: 900 })(req, res);
    };
    handlers["GET /v1/p/auth/me"] = (req, res, rec) => (!revoked && rec.headers.authorization === `Bearer acc_${n}` ? json(200, { id: "u" }) : problem(401, { type: "unauthorized" }))(req, res);
    const storage = memoryStorage(); // one localStorage, two tabs
    storage.set("sluice:p:session", JSON.stringify({ access_token: "acc_0", refresh_token: "ref_0", token_type: "Bearer", expires_at: Date.now() - 1000 }));
    const tab = () => new SluiceClient({ baseUrl: base, project: "p", storage, dpop: false });
    const [a, b] = [tab(), tab()];
    const answers = await Promise.all([a.auth.me(), b.auth.me()]);
    assert.deepEqual(answers, [{ id: "u" }, { id: "u" }]);
    assert.equal(requests.filter((r) => r.path.endsWith("/auth/refresh")).length, 1, "one refresh for both tabs");
    assert.equal(revoked, false);
    assert.equal(JSON.parse(storage.get("sluice:p:session")).refresh_token, "ref_1");
    assert.equal(storage.get("sluice:p:session:refresh-lock"), null, "the lock is released");
  });
});

// ------------------------------------------------------------------------------------------------
// Two tabs with Web Locks (secure pages) whose localStorage reaches the other tab late, as Chromium's
// does: a write shows in the other tab's renderer some milliseconds after it was made.

describe("refresh across tabs with Web Locks, when localStorage reaches the other tab late", () => {
  const LAG_MS = 120;

  /** Two views of one localStorage: each tab sees its own writes at once, the other's after LAG_MS. */
  function laggingStorages() {
    const views = [new Map(), new Map()];
    const view = (i) => ({
      get: (k) => (views[i].has(k) ? views[i].get(k) : null),
      set: (k, v) => {
        views[i].set(k, v);
        setTimeout(() => views[1 - i].set(k, v), LAG_MS);
      },
      remove: (k) => {
        views[i].delete(k);
        setTimeout(() => views[1 - i].delete(k), LAG_MS);
      },
    });
    return { views, a: view(0), b: view(1) };
  }

  /** Web Locks for one origin: a lock's holders run one after another. */
  function fakeLocks() {
    const tails = new Map();
    return {
      request(name, fn) {
        const run = (tails.get(name) || Promise.resolve()).then(() => fn({ name }));
        tails.set(name, run.catch(() => {}));
        return run;
      },
    };
  }

  /** The one IndexedDB record both tabs share: what a tab committed, the other reads at once. */
  function sharedJournal() {
    let record = null;
    return {
      journal: { get: async () => record && structuredClone(record), put: async (r) => void (record = structuredClone(r)), remove: async () => void (record = null) },
      record: () => record,
    };
  }

  async function withWebLocks(fn) {
    const had = Object.getOwnPropertyDescriptor(globalThis, "navigator");
    Object.defineProperty(globalThis, "navigator", { value: { locks: fakeLocks() }, configurable: true, writable: true });
    try {
      return await fn();
    } finally {
      if (had) Object.defineProperty(globalThis, "navigator", had);
      else delete globalThis.navigator;
    }
  }

  /** A gateway stand-in that rotates refresh tokens and revokes the session on reuse; `refuse()` makes it refuse the access token it issued last. */
  function rotatingGateway() {
    const g = { live: "ref_0", accepted: "acc_0", revoked: false, n: 0, refreshes: 0 };
    handlers["POST /v1/p/auth/refresh"] = async (req, res, rec) => {
      g.refreshes++;
      await sleep(20);
      if (g.revoked || rec.body.refresh_token !== g.live) {
        g.revoked = true; // reuse: the gateway revokes the whole session
        return problem(401, { type: "refresh-token-reused", title: "Refresh token reused" })(req, res);
      }
      g.n++;
      g.live = `ref_${g.n}`;
      g.accepted = `acc_${g.n}`;
      json(200, { access_token: g.accepted, refresh_token: g.live, token_type: "DPoP", expires_in: 900 })(req, res);
    };
    handlers["GET /v1/p/auth/me"] = (req, res, rec) =>
      (!g.revoked && rec.headers.authorization === `DPoP ${g.accepted}` && rec.headers.dpop ? json(200, { id: "u" }) : problem(401, { type: "invalid-credential", title: "Refused" }))(req, res);
    g.refuse = () => (g.accepted = null);
    return g;
  }

  function twoSecureTabs() {
    const { views, a, b } = laggingStorages();
    const first = JSON.stringify({ access_token: "acc_0", refresh_token: "ref_0", token_type: "DPoP", expires_at: Date.now() + 3600_000 });
    for (const v of views) v.set("sluice:p:session", first);
    const { journal, record } = sharedJournal();
    let key = null; // the DPoP key both tabs share (one IndexedDB)
    const dpop = () => new DpopKey({ load: async () => key, save: async (p) => (key = p), remove: async () => (key = null) });
    const tab = (storage) => new SluiceClient({ baseUrl: base, project: "p", storage, dpop: dpop(), journal });
    return { views, a: tab(a), b: tab(b), record };
  }

  test("a tab that takes the lock after another tab rotated the token uses that session, rather than reusing the old token (5 rounds)", async () => {
    reset();
    const g = rotatingGateway();
    const { views, a, b, record } = twoSecureTabs();
    const events = [];
    a.auth.onChange((e) => events.push(`a:${e}`));
    b.auth.onChange((e) => events.push(`b:${e}`));
    await withWebLocks(async () => {
      for (let round = 1; round <= 5; round++) {
        g.refuse(); // the server refuses the access token both tabs hold
        const before = g.refreshes;
        const answers = await Promise.all([a.auth.me(), b.auth.me()]).catch((err) => assert.fail(`round ${round}: ${err.message} (refreshes sent: ${g.refreshes - before})`));
        assert.deepEqual(answers, [{ id: "u" }, { id: "u" }], `round ${round}: both tabs answered`);
        assert.equal(g.refreshes - before, 1, `round ${round}: one refresh for both tabs`);
        assert.equal(g.revoked, false, `round ${round}: no refresh token was reused`);
        await sleep(LAG_MS + 30); // both tabs' localStorage agree again
      }
    });
    for (const v of views) assert.equal(JSON.parse(v.get("sluice:p:session")).refresh_token, g.live, "both tabs store the live session");
    assert.equal(record().session.refresh_token, g.live, "the journal holds the live session");
    assert.ok(!events.some((e) => e.endsWith("expired") || e.endsWith("signedout")), `nobody was signed out: ${events.join(" ")}`);
  });

  test("a journal record of another session (not a rotation of this tab's) is never adopted; sign-out removes this session's", async () => {
    reset();
    const chains = { ref_a: "a", ref_b: "b" };
    let n = 0;
    handlers["POST /v1/p/auth/refresh"] = (req, res, rec) => {
      const who = chains[rec.body.refresh_token];
      if (!who) return problem(401, { type: "refresh-token-reused", title: "Reused" })(req, res);
      delete chains[rec.body.refresh_token];
      const next = `ref_${who}${++n}`;
      chains[next] = who;
      json(200, { access_token: `acc_${who}${n}`, refresh_token: next, token_type: "Bearer", expires_in: 900 })(req, res);
    };
    handlers["POST /v1/p/auth/logout"] = (req, res) => {
      res.writeHead(204);
      res.end();
    };
    const { journal, record } = sharedJournal();
    // Each client keeps its own session (storage not shared, e.g. sessionStorage); the journal is the origin's.
    const own = (session) => {
      const storage = memoryStorage();
      storage.set("sluice:p:session", JSON.stringify({ ...session, token_type: "Bearer", expires_at: Date.now() + 3600_000 }));
      return new SluiceClient({ baseUrl: base, project: "p", storage, dpop: false, journal });
    };
    const a = own({ access_token: "acc_a0", refresh_token: "ref_a" });
    const b = own({ access_token: "acc_b0", refresh_token: "ref_b" });
    await withWebLocks(async () => {
      const ra = await a.auth.refresh();
      assert.equal(record().session.refresh_token, ra.refresh_token);
      const rb = await b.auth.refresh();
      assert.match(ra.refresh_token, /^ref_a/);
      assert.match(rb.refresh_token, /^ref_b/, "tab B refreshed its own session, not adopting A's");
      await b.auth.signOut();
      assert.equal(record(), null, "sign-out removed the journal's copy of the session");
      await a.auth.signOut();
    });
  });
});
