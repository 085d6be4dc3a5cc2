// The official `openai` npm SDK, unchanged, chatting through Sluice with an API whose provider is
// Anthropic (a loopback mock speaking Anthropic's Messages wire format). Run by the e2e case
// `openai_sdk_chats_with_an_anthropic_upstream` with SLUICE_SDK_TENANT (JSON {base, key, model}).
// Prints `measured:` lines; exits 1 on the first failed assertion.
import assert from "node:assert/strict";
import OpenAI from "openai";

const tenant = JSON.parse(process.env.SLUICE_SDK_TENANT || "{}");
const client = new OpenAI({ baseURL: tenant.base, apiKey: tenant.key, maxRetries: 0, timeout: 20_000 });
const say = (line) => console.log(`measured: openai-node via anthropic ${line}`);
const tools = [{ type: "function", function: { name: "lookup", description: "Looks things up",
  parameters: { type: "object", properties: { q: { type: "string" } }, required: ["q"] } } }];
const messages = [
  { role: "system", content: "Be brief." },
  { role: "user", content: "Find cats." },
];

const whole = await client.chat.completions.create({ model: tenant.model, messages, tools, max_tokens: 100 });
const call = whole.choices[0].message.tool_calls?.[0];
assert.equal(whole.object, "chat.completion");
assert.equal(whole.choices[0].finish_reason, "tool_calls");
assert.equal(call.function.name, "lookup");
assert.deepEqual(JSON.parse(call.function.arguments), { q: "cats" });
assert.ok(whole.usage.prompt_tokens > 0 && whole.usage.completion_tokens > 0);
say(`whole: finish ${whole.choices[0].finish_reason}, tool ${call.function.name}(${call.function.arguments}), usage ${JSON.stringify(whole.usage)}`);

const stream = await client.chat.completions.create({ model: tenant.model, messages, tools, max_tokens: 100,
  stream: true, stream_options: { include_usage: true } });
let text = "";
let args = "";
let name = "";
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.usage) usage = chunk.usage;
  const choice = chunk.choices[0];
  if (!choice) continue;
  text += choice.delta.content ?? "";
  for (const t of choice.delta.tool_calls ?? []) {
    if (t.function?.name) name = t.function.name;
    args += t.function?.arguments ?? "";
  }
  finish = choice.finish_reason ?? finish;
}
assert.equal(text, "tok0 tok1 ");
assert.equal(name, "lookup");
assert.deepEqual(JSON.parse(args), { q: "cats" });
assert.equal(finish, "tool_calls");
assert.ok(usage && usage.prompt_tokens === 14 && usage.completion_tokens === 6, JSON.stringify(usage));
say(`stream: ${chunks} chunks, text ${JSON.stringify(text)}, tool ${name}(${args}), finish ${finish}, usage ${JSON.stringify(usage)}`);
