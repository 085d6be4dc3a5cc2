// Inbound and outbound mTLS on the built worker (build/index.js, `make build`), through Miniflare's
// API: `wrangler dev` gives every request the same placeholder `request.cf`, so it cannot present a
// client certificate; Miniflare's dispatchFetch takes `cf.tlsClientAuth` per request, which is what
// the zone hands the Worker on Cloudflare. One Miniflare instance, in memory, for every case.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { Miniflare } from "miniflare";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BASE = "https://gateway.test";
const ADMIN_TOKEN = "sluice_admin_mtls_test_token";
const FP_A = "a1".repeat(32);
const FP_B = "b2".repeat(32);
const FP_UNKNOWN = "c3".repeat(32);
const CA = "CN=Sluice Test CA,O=Sluice";
const SUBJECT_C = "CN=client-c,O=Sluice";

/** A certificate the zone verified (`verified` other than SUCCESS: one it did not). */
function cert(fingerprint, { verified = "SUCCESS", issuer = CA, subject = "CN=someone,O=Sluice", revoked = "0" } = {}) {
  return {
    tlsClientAuth: {
      certPresented: verified === "NONE" ? "0" : "1",
      certVerified: verified,
      certFingerprintSHA256: verified === "NONE" ? "" : fingerprint,
      certFingerprintSHA1: "",
      certIssuerDN: issuer,
      certSubjectDN: subject,
      certIssuerDNRFC2253: "",
      certSubjectDNRFC2253: "",
      certIssuerDNLegacy: "",
      certSubjectDNLegacy: "",
      certNotBefore: "",
      certNotAfter: "",
      certSerial: "",
      certIssuerSerial: "",
      certIssuerSKI: "",
      certSKI: "",
      certRevoked: revoked,
    },
  };
}

let mf;
/** What the `PROVIDER_CERT` binding (standing in for an mtls_certificates binding) was asked. */
const viaBinding = [];

async function call(method, path, { body, key, cf, admin = false, extra = {} } = {}) {
  const headers = { "content-type": "application/json", ...extra };
  if (admin) headers.authorization = `Bearer ${ADMIN_TOKEN}`;
  if (key) headers.authorization = `Bearer ${key}`;
  const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body) };
  if (cf) init.cf = cf;
  const res = await mf.dispatchFetch(`${BASE}${path}`, init);
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: kept as text
  }
  return { status: res.status, json, text };
}

async function admin(method, path, body, want) {
  const r = await call(method, path, { body, admin: true });
  assert.equal(r.status, want, `${method} ${path}: ${r.text}`);
  return r.json;
}

const chat = (api, opts) =>
  call("POST", `/v1/mtls/${api}/chat/completions`, {
    body: { messages: [{ role: "user", content: "Hello" }] },
    ...opts,
  });

/** The problem's `type` slug of a refusal. */
const kind = (r) => String(r.json?.type ?? "").split("/").pop();

const ids = {};

before(async () => {
  const build = join(ROOT, "build");
  assert.ok(
    readdirSync(build).includes("index.js"),
    "build/index.js is missing: run `make build` first",
  );
  mf = new Miniflare({
    rootPath: ROOT,
    modules: true,
    scriptPath: join(build, "index.js"),
    modulesRoot: build,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: "2026-04-01",
    compatibilityFlags: ["enable_request_signal"],
    kvNamespaces: ["KV"],
    d1Databases: ["DB"],
    durableObjects: {
      COUNTERS: { className: "ConsumerCounter", useSQLite: true },
      AUTH_GUARD: { className: "AuthGuard", useSQLite: true },
    },
    bindings: {
      SLUICE_DEV: "1",
      ADMIN_TOKEN,
      ENCRYPTION_KEY: "0123456789abcdef0123",
      // The certificate bindings an upstream may name; any other Fetcher binding is refused.
      UPSTREAM_MTLS_BINDINGS: "PROVIDER_CERT",
    },
    // A service binding is a Fetcher, as an mtls_certificates binding is: it stands in for one
    // (the certificate itself cannot be presented locally).
    serviceBindings: {
      PROVIDER_CERT: async (req) => {
        viaBinding.push({ url: req.url, auth: req.headers.get("authorization") });
        return Response.json({
          id: "chatcmpl-via-binding",
          object: "chat.completion",
          created: 1,
          model: "provider-1",
          choices: [{ index: 0, message: { role: "assistant", content: "through the binding" }, finish_reason: "stop" }],
          usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
        });
      },
    },
  });
  // The D1 schema, as `wrangler d1 migrations apply` would: every migration in order.
  const db = await mf.getD1Database("DB");
  const migrations = readdirSync(join(ROOT, "migrations")).filter((f) => f.endsWith(".sql")).sort();
  for (const file of migrations) {
    const sql = readFileSync(join(ROOT, "migrations", file), "utf8")
      .split("\n")
      .filter((line) => !line.trim().startsWith("--"))
      .join("\n");
    for (const statement of sql.split(/;\s*$/m).map((s) => s.trim()).filter(Boolean)) {
      await db.prepare(statement).run();
    }
  }

  await admin("POST", "/api/v1/projects", { slug: "mtls", name: "mTLS" }, 201);
  const upstream = { base_url: "demo", default_model: "demo-1" };
  for (const [slug, mtls] of [["strict", "require"], ["open", "accept"]]) {
    const api = await admin("POST", "/api/v1/gateway/apis", { project: "mtls", slug, name: slug, upstream, mtls }, 201);
    assert.equal(api.mtls, mtls, "the API shows its mtls setting");
    ids[slug] = api.id;
  }
  for (const name of ["a", "b", "c"]) {
    const consumer = await admin("POST", "/api/v1/projects/mtls/consumers", { name }, 201);
    const key = await admin("POST", `/api/v1/projects/mtls/consumers/${consumer.id}/keys`, { name }, 201);
    ids[name] = consumer.id;
    ids[`key_${name}`] = key.secret;
  }
  // A's certificate by fingerprint (as `openssl x509 -fingerprint -sha256` prints it), C's by DN.
  const colons = FP_A.toUpperCase().match(/../g).join(":");
  const a = await admin("POST", `/api/v1/projects/mtls/consumers/${ids.a}/mtls-credentials`, { fingerprint_sha256: colons }, 201);
  assert.match(a.id, /^mtc_/);
  assert.equal(a.fingerprint_sha256, FP_A, "stored normalised");
  ids.cred_a = a.id;
  await admin("POST", `/api/v1/projects/mtls/consumers/${ids.b}/mtls-credentials`, { fingerprint_sha256: FP_B }, 201);
  const c = await admin("POST", `/api/v1/projects/mtls/consumers/${ids.c}/mtls-credentials`, { issuer_dn: CA, subject_dn: SUBJECT_C }, 201);
  ids.cred_c = c.id;
});

after(async () => {
  await mf?.dispose();
});

test("mtls credentials: listed per consumer, unique per project, bad input names its param", async () => {
  const list = await admin("GET", `/api/v1/projects/mtls/consumers/${ids.a}/mtls-credentials`, undefined, 200);
  assert.deepEqual(list.mtls_credentials.map((c) => c.id), [ids.cred_a]);
  const dup = await call("POST", `/api/v1/projects/mtls/consumers/${ids.b}/mtls-credentials`, {
    body: { fingerprint_sha256: FP_A }, admin: true,
  });
  assert.equal(dup.status, 409, dup.text);
  for (const [body, param] of [
    [{ fingerprint_sha256: "abc" }, "fingerprint_sha256"],
    [{ issuer_dn: CA }, "subject_dn"],
    [{}, "fingerprint_sha256"],
  ]) {
    const r = await call("POST", `/api/v1/projects/mtls/consumers/${ids.b}/mtls-credentials`, { body, admin: true });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.param, param, r.text);
  }
  const badMode = await call("PATCH", `/api/v1/gateway/apis/${ids.open}`, { body: { mtls: "on" }, admin: true });
  assert.equal(badMode.status, 400, badMode.text);
  assert.equal(badMode.json.param, "mtls");
});

test("accept: a verified certificate is its consumer's credential, and usage is metered to it", async () => {
  const started = Date.now();
  const r = await chat("open", { cf: cert(FP_A) });
  assert.equal(r.status, 200, r.text);
  const byDn = await chat("open", { cf: cert(FP_UNKNOWN, { subject: SUBJECT_C }) });
  assert.equal(byDn.status, 200, `a DN credential: ${byDn.text}`);
  const withKey = await chat("open", { cf: cert(FP_A), key: ids.key_a });
  assert.equal(withKey.status, 200, `certificate and key of one consumer: ${withKey.text}`);
  const mixed = await chat("open", { cf: cert(FP_A), key: ids.key_b });
  assert.equal(mixed.status, 403, mixed.text);
  assert.equal(kind(mixed), "certificate-mismatch");
  const keyOnly = await chat("open", { key: ids.key_b });
  assert.equal(keyOnly.status, 200, `a key alone still works in accept: ${keyOnly.text}`);
  // Usage is booked after the answer: wait for the four requests that were answered.
  let groups = [];
  const of = (id) => groups.find((g) => g.consumer === id);
  for (let i = 0; i < 50; i++) {
    const report = await admin("GET", `/api/v1/gateway/apis/${ids.open}/usage?group_by=consumer`, undefined, 200);
    groups = report.groups ?? [];
    if (groups.reduce((n, g) => n + g.requests, 0) >= 4) break;
    await new Promise((done) => setTimeout(done, 100));
  }
  assert.equal(of(ids.a)?.requests, 2, `A's certificate requests: ${JSON.stringify(groups)}`);
  assert.equal(of(ids.c)?.requests, 1, `C's DN request: ${JSON.stringify(groups)}`);
  assert.equal(of(ids.b)?.requests, 1, `B's key: ${JSON.stringify(groups)}`);
  console.log(`    measured: accept-mode cases and usage report in ${Date.now() - started} ms`);
});

test("accept: a certificate that failed, none, or an unknown one is no credential (401)", async () => {
  for (const [cf, want] of [
    [cert(FP_A, { verified: "FAILED:certificate has expired" }), "invalid-credential"],
    [cert(FP_A, { verified: "NONE" }), "missing-credential"],
    [cert(FP_UNKNOWN), "invalid-credential"],
    // Revoked at the zone: it still says SUCCESS, with certRevoked "1".
    [cert(FP_A, { revoked: "1" }), "invalid-credential"],
    [undefined, "missing-credential"],
  ]) {
    const r = await chat("open", { cf });
    assert.equal(r.status, 401, r.text);
    assert.equal(kind(r), want, r.text);
  }
});

test("require: the certificate and the credential, of one consumer", async () => {
  const ok = await chat("strict", { cf: cert(FP_A), key: ids.key_a });
  assert.equal(ok.status, 200, ok.text);
  const other = await chat("strict", { cf: cert(FP_A), key: ids.key_b });
  assert.equal(other.status, 403, other.text);
  assert.equal(kind(other), "certificate-mismatch");
  for (const [cf, want] of [
    [undefined, "missing-credential"],
    [cert(FP_A, { verified: "NONE" }), "missing-credential"],
    [cert(FP_A, { verified: "FAILED:certificate has expired" }), "invalid-credential"],
    [cert(FP_UNKNOWN), "invalid-credential"],
    [cert(FP_A, { revoked: "1" }), "invalid-credential"],
  ]) {
    const r = await chat("strict", { cf, key: ids.key_a });
    assert.equal(r.status, 401, `${JSON.stringify(cf?.tlsClientAuth.certVerified)}: ${r.text}`);
    assert.equal(kind(r), want, r.text);
  }
  const certOnly = await chat("strict", { cf: cert(FP_A) });
  assert.equal(certOnly.status, 401, certOnly.text);
  assert.equal(kind(certOnly), "missing-credential", "the mode's credential is still required");
  // Headers a proxy might use for a client certificate stand in for nothing: only request.cf counts.
  const forged = await call("POST", "/v1/mtls/strict/chat/completions", {
    body: { messages: [{ role: "user", content: "Hi" }] },
    key: ids.key_a,
    extra: {
      "cf-client-cert-sha256": FP_A,
      "x-client-cert-fingerprint": FP_A,
      "x-ssl-client-verify": "SUCCESS",
      "cf-tls-client-auth": JSON.stringify(cert(FP_A).tlsClientAuth),
    },
  });
  assert.equal(forged.status, 401, forged.text);
});

test("measured: a certificate costs about what a key does on the request path", async () => {
  // Interleaved, so drift in the machine's load falls on every kind alike.
  const kinds = { key: { key: ids.key_a }, certificate: { cf: cert(FP_A) }, both: { cf: cert(FP_A), key: ids.key_a } };
  const ms = { key: [], certificate: [], both: [] };
  for (let i = 0; i < 30; i++) {
    for (const [name, opts] of Object.entries(kinds)) {
      const started = performance.now();
      const r = await chat("open", opts);
      ms[name].push(performance.now() - started);
      assert.equal(r.status, 200, r.text);
    }
  }
  const p50 = (xs) => xs.sort((x, y) => x - y)[Math.floor(xs.length / 2)].toFixed(1);
  const line = Object.keys(ms).map((k) => `${k} ${p50(ms[k])} ms`).join(", ");
  console.log(`    measured: p50 of 30 chat requests each on Miniflare: ${line}`);
});

test("a disabled consumer's certificate is refused on the next request; a revoked credential too", async () => {
  await admin("PATCH", `/api/v1/projects/mtls/consumers/${ids.c}`, { status: "disabled" }, 200);
  const disabled = await chat("open", { cf: cert(FP_UNKNOWN, { subject: SUBJECT_C }) });
  assert.equal(disabled.status, 403, disabled.text);
  assert.equal(kind(disabled), "consumer-disabled");
  await admin("PATCH", `/api/v1/projects/mtls/consumers/${ids.c}`, { status: "enabled" }, 200);

  const before = await chat("open", { cf: cert(FP_A) });
  assert.equal(before.status, 200, before.text);
  await admin("DELETE", `/api/v1/projects/mtls/mtls-credentials/${ids.cred_a}`, undefined, 204);
  await admin("DELETE", `/api/v1/projects/mtls/mtls-credentials/${ids.cred_a}`, undefined, 404);
  const revoked = await chat("open", { cf: cert(FP_A) });
  assert.equal(revoked.status, 401, revoked.text);
  // Its fingerprint may be registered again once the old credential is revoked.
  await admin("POST", `/api/v1/projects/mtls/consumers/${ids.a}/mtls-credentials`, { fingerprint_sha256: FP_A }, 201);
});

test("outbound: an upstream with mtls_binding is fetched through that binding", async () => {
  const api = await admin("POST", "/api/v1/gateway/apis", {
    project: "mtls", slug: "provider", name: "provider",
    upstream: { base_url: "https://provider.example/v1", api_key: "sk-provider", default_model: "provider-1", mtls_binding: "PROVIDER_CERT" },
  }, 201);
  assert.equal(api.upstream.mtls_binding, "PROVIDER_CERT");
  const r = await chat("provider", { key: ids.key_b });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].message.content, "through the binding");
  assert.equal(viaBinding.length, 1);
  assert.equal(viaBinding[0].url, "https://provider.example/v1/chat/completions");
  assert.equal(viaBinding[0].auth, "Bearer sk-provider");

  const bad = await call("PATCH", `/api/v1/gateway/apis/${api.id}`, { body: { upstream: { mtls_binding: "MY-CERT" } }, admin: true });
  assert.equal(bad.status, 400, bad.text);
  assert.equal(bad.json.param, "upstream.mtls_binding");
  await admin("PATCH", `/api/v1/gateway/apis/${api.id}`, { upstream: { mtls_binding: "NO_SUCH_CERT" } }, 200);
  const missing = await chat("provider", { key: ids.key_b });
  assert.equal(missing.status, 503, missing.text);
  assert.equal(kind(missing), "gateway-misconfigured");
  // A Fetcher binding the operator did not list (the static assets, a service) carries no provider key.
  await admin("PATCH", `/api/v1/gateway/apis/${api.id}`, { upstream: { mtls_binding: "ASSETS" } }, 200);
  const unlisted = await chat("provider", { key: ids.key_b });
  assert.equal(unlisted.status, 503, unlisted.text);
  assert.equal(kind(unlisted), "gateway-misconfigured");
  assert.equal(viaBinding.length, 1, "nothing went through another binding");
  const cleared = await admin("PATCH", `/api/v1/gateway/apis/${api.id}`, { upstream: { mtls_binding: null } }, 200);
  assert.equal(cleared.upstream.mtls_binding, null);
});
