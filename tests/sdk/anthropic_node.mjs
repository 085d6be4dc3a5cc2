// The official Anthropic TypeScript SDK against a running gateway, with a consumer key as its API
// key and the gateway's API URL as its base URL (the SDK appends /v1/messages). Run by the e2e case
// `official_sdks_work_unchanged` (SLUICE_SDK_TENANTS: name -> {base, key}).
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";

const tenants = JSON.parse(process.env.SLUICE_SDK_TENANTS || "{}");
const t = tenants.claude;
const say = (line) => console.log(`measured: anthropic-ts ${line}`);
const client = new Anthropic({ baseURL: t.base, apiKey: t.key, maxRetries: 0, timeout: 20_000 });
const tools = [{ name: "lookup", description: "Looks a thing up.", input_schema: { type: "object", properties: {} } }];
const messages = [{ role: "user", content: "find it" }];

const whole = await client.messages.create({ model: "claude-mock", max_tokens: 64, messages, tools });
assert.equal(whole.type, "message");
assert.equal(whole.content[0].type, "tool_use");
assert.deepEqual(whole.content[0].input, { k0: 1 });
// The SDK reads the request id from `request-id`.
assert.ok(whole._request_id, "the SDK found the request id");
say(`messages whole: ${whole.content.map((b) => b.type).join(", ")}, stop ${whole.stop_reason}, usage ${JSON.stringify(whole.usage)}, request id ${whole._request_id}`);

const stream = client.messages.stream({ model: "claude-mock", max_tokens: 64, messages, tools, system: "be brief" });
const kinds = [];
stream.on("streamEvent", (e) => kinds.push(e.type));
const final = await stream.finalMessage();
assert.equal(final.content[0].type, "tool_use");
assert.equal(final.content[0].name, "lookup");
assert.deepEqual(final.content[0].input, { k0: 1 });
assert.equal(kinds[0], "message_start");
assert.equal(kinds.at(-1), "message_stop");
say(`messages stream: ${kinds.length} events, tool_use ${JSON.stringify(final.content[0].input)}, output_tokens ${final.usage.output_tokens}`);

const counted = await client.messages.countTokens({ model: "claude-mock", messages });
assert.ok(counted.input_tokens >= 7, JSON.stringify(counted));
say(`count_tokens: ${counted.input_tokens}`);

// The models the API allows, in Anthropic's shape and pages (one a page: the SDK follows `last_id`).
const listed = [];
for await (const m of client.models.list({ limit: 1 })) listed.push(m);
const ids = listed.map((m) => m.id);
assert.ok(listed.every((m) => m.type === "model"), JSON.stringify(listed));
assert.ok(ids.includes("claude-mock") && ids.includes("claude-other"), ids.join());
assert.equal(new Set(ids).size, ids.length, `each model once: ${ids.join()}`);
assert.ok(!Number.isNaN(Date.parse(listed[0].created_at)), listed[0].created_at);
const one = await client.models.retrieve("claude-other");
assert.equal(one.id, "claude-other");
const missing = await client.models.retrieve("gpt-nope").then(
  () => assert.fail("should raise"),
  (err) => err,
);
assert.ok(missing instanceof Anthropic.NotFoundError, missing && missing.constructor.name);
assert.equal(missing.error?.error?.type, "not_found_error", JSON.stringify(missing.error));
assert.ok(missing.requestID, "errors carry the request id");
say(`models: ${ids.join(", ")}, one a page; unknown model ${missing.status} ${missing.error.error.type}`);

const bad = new Anthropic({ baseURL: t.base, apiKey: "ask_live_nope", maxRetries: 0 });
const e = await bad.messages.create({ model: "claude-mock", max_tokens: 8, messages }).then(
  () => assert.fail("should raise"),
  (err) => err,
);
assert.ok(e instanceof Anthropic.AuthenticationError, e && e.constructor.name);
assert.ok(e.message.includes("authentication_error"), e.message);
assert.ok(e.requestID, "errors carry the request id");
say(`401 ${e.constructor.name}: ${JSON.stringify(e.message)}`);
console.log("anthropic-ts: all checks passed");
