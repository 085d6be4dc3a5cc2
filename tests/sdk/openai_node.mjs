// The official `openai` npm SDK against a running gateway, unchanged: what each call returns and
// how each failure is raised. Run by the e2e case `official_sdks_work_unchanged`, which passes the
// tenants in SLUICE_SDK_TENANTS (JSON: name -> {base, key}). Prints one `measured:` line per check;
// exits 1 on the first failed assertion.
import assert from "node:assert/strict";
import OpenAI from "openai";

const tenants = JSON.parse(process.env.SLUICE_SDK_TENANTS || "{}");
const client = (name, options = {}) =>
  new OpenAI({ baseURL: tenants[name].base, apiKey: tenants[name].key, maxRetries: 0, timeout: 20_000, ...options });
const say = (line) => console.log(`measured: openai-node ${line}`);

/** The error a call raises (it must raise). */
async function raised(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("the call should have raised");
}

/** Every chunk of a stream, or the error that ended it with the chunks before it. */
async function drain(stream) {
  const chunks = [];
  try {
    for await (const chunk of stream) chunks.push(chunk);
  } catch (error) {
    return { chunks, error };
  }
  return { chunks };
}

const ok = client("ok");
const whole = await ok.chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "hi" }] });
assert.equal(whole.choices[0].message.content, "tok0 tok1 tok2 ");
say(`chat whole: ${JSON.stringify(whole.choices[0].message.content)}, usage ${whole.usage.total_tokens}`);

const { chunks } = await drain(
  await ok.chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "hi" }], stream: true, stream_options: { include_usage: true } }),
);
const text = chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || "").join("");
assert.equal(text, "tok0 tok1 tok2 ");
assert.ok(chunks.at(-1).usage, "include_usage passes the usage chunk");
say(`chat stream: ${chunks.length} chunks, usage chunk last`);

// Structured output: the schema's property order is checked at the upstream by the e2e case.
await ok.chat.completions.create({
  model: "mock-1",
  messages: [{ role: "user", content: "why?" }],
  response_format: {
    type: "json_schema",
    json_schema: { name: "why", strict: true, schema: { type: "object", properties: { reasoning: { type: "string" }, answer: { type: "string" } }, required: ["reasoning", "answer"], additionalProperties: false } },
  },
});
say("structured output sent");

const tools = client("tools");
const toolStream = await tools.chat.completions.create({
  model: "mock-1",
  messages: [{ role: "user", content: "look it up" }],
  tools: [{ type: "function", function: { name: "lookup", parameters: { type: "object" } } }],
  stream: true,
});
const calls = [];
for await (const chunk of toolStream) {
  for (const piece of (chunk.choices[0] && chunk.choices[0].delta.tool_calls) || []) {
    calls[piece.index] ??= { name: "", arguments: "" };
    calls[piece.index].name += piece.function?.name || "";
    calls[piece.index].arguments += piece.function?.arguments || "";
  }
}
assert.deepEqual(calls, [{ name: "lookup", arguments: '{"k0":1}' }]);
say(`tool-call stream: ${JSON.stringify(calls)}`);

const response = await ok.responses.create({ model: "mock-1", input: "hello" });
assert.equal(response.output_text, "tok0 tok1 tok2 ");
say(`responses whole: output_text ${JSON.stringify(response.output_text)}`);
const events = [];
for await (const event of await ok.responses.create({ model: "mock-1", input: "hello", stream: true })) events.push(event.type);
assert.equal(events.at(-1), "response.completed");
say(`responses stream: ${events.filter((t) => t === "response.output_text.delta").length} deltas, then ${events.at(-1)}`);

const embedding = await client("embed").embeddings.create({ model: "emb-1", input: "hello" });
assert.equal(embedding.data[0].embedding.length, 3);
say(`embeddings: ${embedding.data[0].embedding.length} dimensions`);

const model = await ok.models.retrieve("mock-1");
assert.equal(model.id, "mock-1");

// Every error names what went wrong in the exception's message.
const errors = [
  ["401", raised(new OpenAI({ baseURL: tenants.ok.base, apiKey: "ask_live_nope", maxRetries: 0 }).chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "x" }] })), OpenAI.AuthenticationError],
  ["403", raised(ok.chat.completions.create({ model: "not-allowed", messages: [{ role: "user", content: "x" }] })), OpenAI.PermissionDeniedError],
  ["404", raised(ok.models.retrieve("gpt-none")), OpenAI.NotFoundError],
  ["502", raised(client("broken").chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "x" }] })), OpenAI.InternalServerError],
];
for (const [status, promise, kind] of errors) {
  const e = await promise;
  assert.ok(e instanceof kind, `${status}: ${e && e.constructor.name}`);
  assert.equal(String(e.status), status);
  assert.ok(e.message.length > `${status} `.length && !e.message.includes("no body"), `${status} message: ${e.message}`);
  assert.ok(e.requestID, `${status}: x-request-id`);
  say(`${status} ${e.constructor.name}: ${JSON.stringify(e.message)}`);
}

const minute = client("minute");
await minute.chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "1" }] });
const perMinute = await raised(minute.chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "2" }] }));
assert.ok(perMinute instanceof OpenAI.RateLimitError);
assert.ok(Number(perMinute.headers.get("retry-after")) <= 60, "an honest Retry-After for a minute window");
say(`429 per-minute RateLimitError: ${JSON.stringify(perMinute.message)}, Retry-After ${perMinute.headers.get("retry-after")}`);

// A spent day is not retried: with the default retries the error still comes at once.
const day = client("day", { maxRetries: 2 });
await day.chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "1" }] });
const started = Date.now();
const perDay = await raised(day.chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "2" }] }));
const waited = Date.now() - started;
assert.ok(perDay instanceof OpenAI.RateLimitError);
assert.equal(perDay.headers.get("x-should-retry"), "false");
assert.ok(waited < 2_000, `no retry sleep: ${waited} ms`);
say(`429 per-day RateLimitError after ${waited} ms with maxRetries 2 (x-should-retry: false): ${JSON.stringify(perDay.message)}`);

for (const name of ["cut", "budget"]) {
  const { chunks: got, error } = await drain(
    await client(name).chat.completions.create({ model: "mock-1", messages: [{ role: "user", content: "go" }], stream: true }),
  );
  assert.ok(error instanceof OpenAI.APIError, `${name}: ${error}`);
  assert.ok(error.message && !error.message.includes("undefined"), `${name}: ${error.message}`);
  assert.ok(got.every((c) => Array.isArray(c.choices)), `${name}: every chunk yielded has choices`);
  say(`${name} stream: ${got.length} chunks, then ${error.constructor.name}: ${JSON.stringify(error.message)}`);
}
console.log("openai-node: all checks passed");
