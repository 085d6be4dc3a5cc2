// Seeds the local demo (project `demo`, API `chat` on the built-in demo upstream, one consumer and its
// key) through the admin API, idempotently, and prints how to call it. Usage: node seed-demo.mjs URL ADMIN_TOKEN
import { readFileSync, writeFileSync, existsSync } from "node:fs";

const [base, adminToken] = process.argv.slice(2);
const KEY_FILE = ".dev-demo-key";
const admin = { authorization: `Bearer ${adminToken}`, "content-type": "application/json" };

async function call(method, path, body, headers = admin) {
  const res = await fetch(base + path, { method, headers, body: body && JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { status: res.status, json, text };
}
async function must(method, path, body, expected) {
  const r = await call(method, path, body);
  if (r.status !== expected) throw new Error(`${method} ${path} -> ${r.status}: ${r.text}`);
  return r.json;
}

const projects = (await must("GET", "/api/v1/projects", undefined, 200)).projects;
if (!projects.some((p) => p.slug === "demo")) {
  await must("POST", "/api/v1/projects", { slug: "demo", name: "Demo project" }, 201);
}
// `chat` takes consumer keys (the curl below); `assistant` is the widget's: users sign in by email code.
const apis = (await must("GET", "/api/v1/gateway/apis?project=demo", undefined, 200)).apis;
for (const [slug, name, auth_mode] of [["chat", "Demo chat", "consumer-key-only"], ["assistant", "Demo assistant", "managed"]]) {
  if (!apis.some((a) => a.slug === slug)) {
    await must("POST", "/api/v1/gateway/apis", {
      project: "demo", slug, name, auth_mode,
      upstream: { base_url: "demo", default_model: "sluice-demo-1", models: ["sluice-demo-1"] },
    }, 201);
  }
}
const consumers = (await must("GET", "/api/v1/projects/demo/consumers", undefined, 200)).consumers;
let consumer = consumers.find((c) => c.name === "demo-user");
if (!consumer) consumer = await must("POST", "/api/v1/projects/demo/consumers", { name: "demo-user", description: "made by make dev" }, 201);

// The demo belongs to the default org; you@example.com is invited as its owner, so the dev login
// below sees the demo too (beside the personal org it makes).
const OWNER_EMAIL = "you@example.com";
const members = (await must("GET", "/api/v1/orgs/default/members", undefined, 200)).members;
if (!members.some((m) => m.email === OWNER_EMAIL)) {
  await must("POST", "/api/v1/orgs/default/members", { email: OWNER_EMAIL, role: "owner" }, 201);
}

// The secret is shown once, so the demo key is kept in a local file; a key that no longer works is replaced.
let key = existsSync(KEY_FILE) ? readFileSync(KEY_FILE, "utf8").trim() : "";
if (key) {
  const check = await call("GET", "/v1/demo/chat/models", undefined, { authorization: `Bearer ${key}` });
  if (check.status !== 200) key = "";
}
if (!key) {
  key = (await must("POST", `/api/v1/projects/demo/consumers/${consumer.id}/keys`, { name: "demo key" }, 201)).secret;
  writeFileSync(KEY_FILE, key + "\n", { mode: 0o600 });
}

const body = JSON.stringify({ stream: true, messages: [{ role: "user", content: "Hello, Sluice!" }] });
console.log(`
Sluice is running on ${base}

  demo project : demo      APIs: chat (consumer keys), assistant (email sign-in); built-in demo upstream
  consumer key : ${key}
  admin token  : in .dev.vars (ADMIN_TOKEN)

Chat in the browser: open ${base}/ and sign in with any email address;
the 6-digit code is in the dev mailbox: ${base}/dev/mailbox
The same with the React hooks (@sluice/react): ${base}/react/?project=demo&api=assistant

Stream a reply (paste this):

  curl -N ${base}/v1/demo/chat/chat/completions \\
    -H "Authorization: Bearer ${key}" \\
    -H "Content-Type: application/json" \\
    -d '${body}'

Sign in as an owner (dev login makes the account and its personal org on first use; ${OWNER_EMAIL}
also owns the default org, which holds the demo):

  curl -s ${base}/api/v1/auth/dev/login \\
    -H "Content-Type: application/json" \\
    -d '{"email": "${OWNER_EMAIL}", "name": "You"}'

Or sign in to the console in the browser: ${base}/console (dev login with the same address).

Then call the admin API with its access_token (or make an org key: POST /api/v1/orgs/{org}/keys):

  curl -s ${base}/api/v1/orgs/me -H "Authorization: Bearer <access_token>"

Stop with Ctrl-C.
`);
