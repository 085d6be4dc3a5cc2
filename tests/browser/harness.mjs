// Harness for the browser tests: wrangler dev on free ports, a mock mail API, host-page servers, an admin client and gateway feature probes.
import http from "node:http";
import net from "node:net";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import crypto from "node:crypto";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const WEB = path.join(ROOT, "web");
export const ARTIFACTS = path.join(ROOT, "test-artifacts");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const randomHex = (bytes) => crypto.randomBytes(bytes).toString("hex");

/** A port nobody listens on right now (never 8787, wrangler's default). */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.on("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const { port } = srv.address();
        srv.close(() => resolve(port));
      });
    });
    if (port !== 8787) return port;
  }
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString("utf8");
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${server.address().port}`));
  });
}

// ------------------------------------------------------------------------------------------------
// Mock mail API (Resend-style `POST /emails {from, to, subject, text, html}`)

export async function startMailServer() {
  const emails = [];
  const server = http.createServer(async (req, res) => {
    const body = await readBody(req);
    if (req.method === "POST" && req.url.startsWith("/emails")) {
      let mail = null;
      try {
        mail = JSON.parse(body);
      } catch {
        /* recorded as raw below */
      }
      emails.push({ at: Date.now(), auth: req.headers.authorization || "", ...(mail || { raw: body }) });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ id: `email_${emails.length}` }));
      return;
    }
    if (req.method === "GET" && req.url.startsWith("/emails")) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(emails));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const url = await listen(server);
  return {
    url,
    emails,
    /** Waits for a mail to `address` sent after `since` and returns the 6-digit code in its text. */
    async codeFor(address, { since = 0, timeoutMs = 15_000 } = {}) {
      const until = Date.now() + timeoutMs;
      while (Date.now() < until) {
        const mail = [...emails].reverse().find((m) => m.at >= since && [].concat(m.to || []).some((t) => String(t).toLowerCase().includes(address.toLowerCase())));
        if (mail) {
          const match = String(mail.text || mail.html || mail.raw || "").match(/\b(\d{6})\b/);
          if (!match) throw new Error(`the sign-in email to ${address} has no 6-digit code: ${JSON.stringify(mail).slice(0, 400)}`);
          return match[1];
        }
        await sleep(100);
      }
      throw new Error(`no sign-in email reached the mock mail API for ${address} within ${timeoutMs} ms (${emails.length} emails in all)`);
    },
    close: () => new Promise((r) => server.close(r)),
  };
}

// ------------------------------------------------------------------------------------------------
// Host-page servers: each its own origin (another port), like the sites that embed the widget

/** An HTTP server that serves registered HTML pages and handlers (a host site and its backend). */
export async function startPageServer() {
  const pages = new Map();
  const handlers = new Map();
  const server = http.createServer(async (req, res) => {
    res.socket.setNoDelay(true);
    const url = new URL(req.url, "http://x");
    if (pages.has(url.pathname)) {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(pages.get(url.pathname));
      return;
    }
    if (handlers.has(url.pathname)) {
      const body = await readBody(req);
      await handlers.get(url.pathname)(req, res, body);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
  });
  const origin = await listen(server);
  let n = 0;
  return {
    origin,
    /** Serves `html` at a fresh path; returns its URL. */
    page(html, name = "page") {
      const p = `/${name}-${++n}.html`;
      pages.set(p, html);
      return origin + p;
    },
    handle(p, fn) {
      handlers.set(p, fn);
      return origin + p;
    },
    close: () => new Promise((r) => {
      server.closeAllConnections?.();
      server.close(r);
    }),
  };
}

// ------------------------------------------------------------------------------------------------
// The gateway under wrangler dev

/** Runs a command to completion (own process group, killed at the deadline); resolves with its exit code. */
function run(cmd, args, { env, log, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ["ignore", log, log], detached: true });
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        /* gone */
      }
      reject(new Error(`${cmd} ${args.join(" ")} did not finish within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

/**
 * A copy of wrangler.toml for the tests: no `[build]` table (the Makefile builds first, and a rebuild
 * triggered by someone editing src/ mid-run must not restart the gateway), with absolute paths.
 */
function testConfig(dir) {
  let toml = fs.readFileSync(path.join(ROOT, "wrangler.toml"), "utf8");
  let inBuild = false;
  toml = toml
    .split("\n")
    .filter((line) => {
      if (/^\s*\[/.test(line)) inBuild = /^\s*\[build\]\s*(#.*)?$/.test(line); // a table header starts or ends it
      return !inBuild;
    })
    .join("\n");
  toml = toml.replace(/^(main|migrations_dir|directory)\s*=\s*"([^"]+)"/gm, (_, k, v) => `${k} = ${JSON.stringify(path.resolve(ROOT, v))}`);
  const file = path.join(dir, "wrangler.toml");
  fs.writeFileSync(file, toml);
  return file;
}

/** Starts `wrangler dev` on free ports with a fresh local state, the mail API and dev mode; waits for /health. */
export async function startGateway({ mailUrl, timeoutMs = 150_000 }) {
  const wrangler = path.join(ROOT, "node_modules/.bin/wrangler");
  if (!fs.existsSync(wrangler)) throw new Error(`${wrangler} is missing; run \`make setup\``);
  if (!fs.existsSync(path.join(ROOT, "build/index.js"))) throw new Error("build/index.js is missing; run `make build` first");
  const persist = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-browser-"));
  const port = await freePort();
  let inspectorPort = await freePort();
  while (inspectorPort === port) inspectorPort = await freePort();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const logPath = path.join(ARTIFACTS, "wrangler-browser.log");
  const log = fs.openSync(logPath, "w");
  const env = { ...process.env, CI: "true", WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" };
  const adminToken = `browser-admin-${randomHex(16)}`;
  const deadline = Date.now() + timeoutMs;

  const config = testConfig(persist);
  const migrated = await run(wrangler, ["d1", "migrations", "apply", "DB", "--local", "--config", config, "--persist-to", persist], { env, log, timeoutMs });
  if (migrated !== 0) throw new Error(`wrangler d1 migrations apply failed (exit ${migrated}); see ${logPath}`);

  const args = [
    "dev", "--config", config, "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(inspectorPort), "--persist-to", persist,
    "--var", `ADMIN_TOKEN:${adminToken}`,
    "--var", `ENCRYPTION_KEY:${randomHex(24)}`,
    "--var", `EMAIL_API_URL:${mailUrl}/emails`,
    "--var", "EMAIL_API_KEY:test",
    "--var", "SLUICE_DEV:1",
    "--show-interactive-dev-session=false",
  ];
  const child = spawn(wrangler, args, { cwd: ROOT, env, stdio: ["ignore", log, log], detached: true });
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));

  const gateway = {
    base: `http://127.0.0.1:${port}`,
    adminToken,
    logPath,
    logTail(lines = 40) {
      try {
        return fs.readFileSync(logPath, "utf8").split("\n").slice(-lines).join("\n");
      } catch {
        return "";
      }
    },
    async stop() {
      if (exited === null) {
        try {
          process.kill(-child.pid, "SIGTERM");
        } catch {
          /* already gone */
        }
        const until = Date.now() + 5000;
        while (exited === null && Date.now() < until) await sleep(50);
        try {
          process.kill(-child.pid, "SIGKILL"); // whatever is left of the group (workerd)
        } catch {
          /* gone */
        }
      }
      fs.closeSync(log);
      fs.rmSync(persist, { recursive: true, force: true });
    },
  };

  for (;;) {
    if (exited) {
      await gateway.stop();
      throw new Error(`wrangler dev exited early (${JSON.stringify(exited)}):\n${gateway.logTail()}`);
    }
    try {
      const res = await fetch(`${gateway.base}/health`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200) return gateway;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      const tail = gateway.logTail();
      await gateway.stop();
      throw new Error(`the gateway did not answer GET /health within ${timeoutMs} ms:\n${tail}`);
    }
    await sleep(250);
  }
}

// ------------------------------------------------------------------------------------------------
// Admin API and fixtures

/** A gateway feature the tests need but the gateway does not have yet. */
export class Waiting extends Error {
  constructor(feature) {
    super(`waiting on gateway: ${feature}`);
    this.name = "Waiting";
    this.feature = feature;
  }
}

const isNoRoute = (status, text) => (status === 404 && /No route for/.test(text)) || status === 405;

export function adminClient(gateway) {
  async function call(method, p, body) {
    const res = await fetch(gateway.base + p, {
      method,
      headers: { authorization: `Bearer ${gateway.adminToken}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON */
    }
    return { status: res.status, json, text };
  }
  async function must(method, p, body, feature) {
    const r = await call(method, p, body);
    if (r.status >= 200 && r.status < 300) return r.json;
    if (feature && isNoRoute(r.status, r.text)) throw new Waiting(feature);
    throw new Error(`${method} ${p} -> ${r.status}: ${r.text.slice(0, 300)}`);
  }
  let n = 0;
  return {
    call,
    must,
    /**
     * A fresh project with one API `chat` on the demo upstream. Options: mode (auth_mode), plan
     * (default plan limits), consumer (make a consumer key), origins (allowed_origins).
     */
    async project({ mode = "consumer-key-only", plan, consumer = false, origins } = {}) {
      const slug = `b${++n}-${randomHex(3)}`;
      await must("POST", "/api/v1/projects", { slug, name: `Browser test ${n}` });
      const api = await must("POST", "/api/v1/gateway/apis", {
        project: slug, slug: "chat", name: "Chat", auth_mode: mode,
        upstream: { base_url: "demo", default_model: "sluice-demo-1", models: ["sluice-demo-1"] },
      });
      if (plan) await must("PATCH", `/api/v1/gateway/apis/${api.id}/plans/default`, plan);
      let key = null;
      if (consumer) {
        const c = await must("POST", `/api/v1/projects/${slug}/consumers`, { name: "browser-user" });
        key = (await must("POST", `/api/v1/projects/${slug}/consumers/${c.id}/keys`, { name: "browser key" })).secret;
      }
      if (origins) await must("PATCH", `/api/v1/projects/${slug}`, { allowed_origins: origins }, "PATCH /api/v1/projects/{project} {allowed_origins}");
      return { slug, api, key };
    },
  };
}

/**
 * Which gateway features exist now, found by asking for their routes: the router answers
 * "No route" (404) or 405 for a route it does not have.
 */
export async function probeFeatures(base) {
  const ask = async (method, p, headers = {}, body) => {
    try {
      const res = await fetch(base + p, { method, headers, body });
      return { status: res.status, text: await res.text(), headers: res.headers };
    } catch (e) {
      return { status: 0, text: String(e), headers: new Headers() };
    }
  };
  const chat = await ask("GET", "/chat.js");
  const sdk = await ask("GET", "/sdk.js");
  const otp = await ask("POST", "/v1/probe/auth/otp/start", { "content-type": "application/json" }, JSON.stringify({ email: "probe@example.com" }));
  const preflight = await ask("OPTIONS", "/v1/probe/chat/chat/completions", {
    origin: "http://127.0.0.1:1", "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type",
  });
  const patch = await ask("PATCH", "/api/v1/projects/probe", { "content-type": "application/json" }, "{}");
  const root = await ask("GET", "/");
  return {
    assets: chat.status === 200 && sdk.status === 200,
    "managed-auth": otp.status !== 0 && !isNoRoute(otp.status, otp.text),
    cors: preflight.status !== 0 && !isNoRoute(preflight.status, preflight.text) && !isNoRoute(patch.status, patch.text),
    "demo-page": root.status === 200 && (root.headers.get("content-type") || "").includes("text/html"),
  };
}

export const FEATURE_ROUTES = {
  assets: "GET /chat.js, /sdk.js, /sdk.d.ts (sdk.js with Access-Control-Allow-Origin: *)",
  "managed-auth": "POST /v1/{project}/auth/otp/start|otp/verify|refresh|logout, GET /v1/{project}/auth/me",
  cors: "CORS preflights + Access-Control-Allow-Origin on /v1/*, and PATCH /api/v1/projects/{project} {allowed_origins}",
  "demo-page": "GET / = web/demo.html when SLUICE_DEV is set",
};
