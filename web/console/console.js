// The Sluice owner console: orgs, projects, APIs and their auth mode, consumers and keys, plans,
// usage charts, auth events and the audit log, on the public admin API only (no private back door).
// Plain DOM, no framework: one hash route per screen, every action confirms or shows the problem.

const app = document.getElementById("app");
const crumbs = document.getElementById("crumbs");
const who = document.getElementById("who");
const toasts = document.getElementById("toasts");

// The access token lives in memory; the refresh token in this tab's session storage, so a reload
// signs in again without a code. Consumer-key secrets are never stored anywhere.
let access = null;
const REFRESH = "sluice.console.refresh";

// A tab opened from this one (window.open, open in a new tab, Duplicate) starts with a copy of its
// session storage, refresh token included. Two tabs refreshing with one token is reuse, which revokes
// the session in both; so each tab keeps an id both in its session storage and in window.name (which
// a new tab does not inherit and a reload keeps), and a tab whose id is not its own, or is answered
// to by another live tab, is a copy: it drops the copied token and signs in on its own.
const TAB = "sluice.console.tab";
const tabs = typeof BroadcastChannel === "function" ? new BroadcastChannel("sluice.console.tabs") : null;
const tabName = (id) => `sluice-console:${id}`;
if (tabs) tabs.onmessage = (e) => {
  const id = sessionStorage.getItem(TAB);
  if (id && e.data && e.data.ask === id && window.name === tabName(id)) tabs.postMessage({ mine: id });
};
let copiedFrom = false;
const tabChecked = (async () => {
  const id = sessionStorage.getItem(TAB);
  if (!id) return;
  let copied = window.name !== tabName(id);
  if (!copied && tabs) {
    copied = await new Promise((resolve) => {
      const on = (e) => { if (e.data && e.data.mine === id) done(true); };
      const done = (v) => { clearTimeout(timer); tabs.removeEventListener("message", on); resolve(v); };
      const timer = setTimeout(() => done(false), 150);
      tabs.addEventListener("message", on);
      tabs.postMessage({ ask: id });
    });
  }
  if (copied) {
    copiedFrom = sessionStorage.getItem(REFRESH) !== null;
    sessionStorage.removeItem(REFRESH);
    sessionStorage.removeItem(TAB);
  }
})();

/** This tab's own id, made at its first sign-in. */
function ownTab() {
  if (sessionStorage.getItem(TAB) && window.name === tabName(sessionStorage.getItem(TAB))) return;
  const id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem(TAB, id);
  window.name = tabName(id);
}

// ------------------------------------------------------------------------------------------------
// Small DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "testid") el.dataset.testid = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(text, kind = "ok") {
  const t = h("div", { class: `toast ${kind}`, testid: `toast-${kind}` }, text);
  toasts.append(t);
  setTimeout(() => t.remove(), kind === "ok" ? 4000 : 9000);
}

/** An input with its label; `name` is the form field. */
function field(label, name, attrs = {}) {
  const input = attrs.type === "select"
    ? h("select", { name, testid: attrs.testid || name }, ...(attrs.options || []).map(([v, l]) => h("option", { value: v, selected: v === attrs.value }, l)))
    : attrs.type === "textarea"
      ? h("textarea", { name, testid: attrs.testid || name, placeholder: attrs.placeholder }, attrs.value ?? "")
      : h("input", { name, testid: attrs.testid || name, type: attrs.type || "text", value: attrs.value ?? "", placeholder: attrs.placeholder,
          required: attrs.required, min: attrs.min, step: attrs.step, autocomplete: attrs.autocomplete || "off", inputmode: attrs.inputmode });
  if (attrs.type === "checkbox") {
    input.checked = !!attrs.checked;
    return h("label", { class: "inline" }, input, label);
  }
  return h("label", {}, label, input);
}

/** A form that calls `submit(values)`; problems are shown, success is confirmed by the caller. */
function form(testid, children, submit, label = "Save") {
  const f = h("form", { class: "stack", testid }, ...children, h("div", { class: "row" }, h("button", { type: "submit", testid: `${testid}-submit` }, label)));
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const values = {};
    for (const el of f.elements) {
      if (!el.name) continue;
      values[el.name] = el.type === "checkbox" ? el.checked : el.value;
    }
    const button = f.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await submit(values, f);
    } catch (err) {
      showProblem(err);
    } finally {
      button.disabled = false;
    }
  });
  return f;
}

function table(testid, columns, rows) {
  if (!rows.length) return h("p", { class: "muted", testid: `${testid}-empty` }, "Nothing yet.");
  return h("div", { class: "table-wrap" }, h("table", { testid },
    h("thead", {}, h("tr", {}, ...columns.map(([label]) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, ...columns.map(([, cell]) => h("td", {}, cell(r))))))));
}

const card = (title, ...children) => h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
const badge = (text, kind = "") => h("span", { class: `badge ${kind}` }, text);
const when = (t) => (t ? new Date(t).toLocaleString() : "never");
const numberOrNull = (v) => (v === "" || v === undefined ? null : Number(v));

function showProblem(err) {
  const detail = err && err.problem ? `${err.problem.title || "Error"}: ${err.problem.detail || ""}` : String(err && err.message ? err.message : err);
  toast(detail, "bad");
}

// ------------------------------------------------------------------------------------------------
// The admin API

class Problem extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function call(method, path, body, retried = false) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (access) headers.authorization = `Bearer ${access}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401 && !retried && sessionStorage.getItem(REFRESH) && !path.startsWith("/api/v1/auth/")) {
    if (await refresh()) return call(method, path, body, true);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = { detail: text }; }
  if (!res.ok) throw new Problem(res.status, json || {});
  return json;
}

const get = (p) => call("GET", p);
const enc = encodeURIComponent;

function signedIn(tokens) {
  access = tokens.access_token;
  ownTab();
  copiedFrom = false;
  sessionStorage.setItem(REFRESH, tokens.refresh_token);
}

// One refresh at a time: a refresh token is single use, and a second use revokes the session.
let refreshing = null;
function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const token = sessionStorage.getItem(REFRESH);
      if (!token) return false;
      try {
        signedIn(await call("POST", "/api/v1/auth/refresh", { refresh_token: token }, true));
        return true;
      } catch {
        sessionStorage.removeItem(REFRESH);
        access = null;
        return false;
      }
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

async function signOut() {
  try {
    await call("POST", "/api/v1/auth/logout", undefined, true);
  } catch (e) {
    // An expired access token still ends its session: refreshed once, then signed out.
    if (e.status === 401 && (await refresh())) {
      try { await call("POST", "/api/v1/auth/logout", undefined, true); } catch { /* already gone */ }
    }
  }
  access = null;
  sessionStorage.removeItem(REFRESH);
  sessionStorage.removeItem("sluice.console.org");
  location.hash = "#/";
  render();
}

// ------------------------------------------------------------------------------------------------
// Screens

let me = null;
const currentOrg = () => {
  const chosen = sessionStorage.getItem("sluice.console.org");
  return me?.orgs?.some((o) => o.slug === chosen) ? chosen : me?.orgs?.[0]?.slug;
};

function page(title, trail, ...children) {
  document.title = `${title} · Sluice console`;
  crumbs.replaceChildren(...trail.flatMap(([label, href], i) => [i ? " / " : "", href ? h("a", { href }, label) : label]));
  app.replaceChildren(h("h1", { testid: "title" }, title), ...children);
  app.focus({ preventScroll: true });
}

function signInScreen() {
  who.replaceChildren();
  let challenge = null;
  const codeForm = form("otp-verify", [field("6-digit code", "code", { inputmode: "numeric", autocomplete: "one-time-code", required: true })], async (v) => {
    signedIn(await call("POST", "/api/v1/auth/otp/verify", { email: challenge.email, code: v.code.trim(), challenge_id: challenge.id }));
    toast("Signed in.");
    render();
  }, "Sign in");
  codeForm.hidden = true;
  const emailForm = form("otp-start", [field("Email", "email", { type: "email", autocomplete: "email", required: true })], async (v) => {
    const r = await call("POST", "/api/v1/auth/otp/start", { email: v.email });
    challenge = { email: v.email, id: r.challenge_id };
    codeForm.hidden = false;
    codeForm.querySelector("input").focus();
    toast("If the address may sign in, a code is on its way.");
  }, "Send a code");
  const dev = form("dev-login", [field("Email", "email", { type: "email", value: "you@example.com", required: true, testid: "dev-email" })], async (v) => {
    signedIn(await call("POST", "/api/v1/auth/dev/login", { email: v.email }));
    toast("Signed in (dev login).");
    render();
  }, "Dev login");
  page("Sign in", [["Sign in"]],
    ...(copiedFrom ? [h("p", { class: "muted", testid: "copied-tab" }, "This tab was opened from another console tab. Sign in here too: one session shared by two tabs would be ended in both at their next refresh.")] : []),
    h("div", { class: "grid" },
      card("With an email code", emailForm, codeForm),
      card("Dev mode", h("p", { class: "muted" }, "A dev gateway makes the account and its personal org on first use."), dev)));
}

async function home() {
  const org = currentOrg();
  const projects = org ? (await get(`/api/v1/projects?org=${enc(org)}`)).projects : [];
  const orgSelect = h("select", { testid: "org-switch", "aria-label": "Org", onchange: (e) => { sessionStorage.setItem("sluice.console.org", e.target.value); render(); } },
    ...me.orgs.map((o) => h("option", { value: o.slug, selected: o.slug === org }, `${o.name} (${o.role})`)));
  const create = form("create-project", [field("Slug", "slug", { required: true, placeholder: "my-project" }), field("Name", "name", { required: true })], async (v) => {
    await call("POST", "/api/v1/projects", { slug: v.slug, name: v.name, org });
    toast(`Project ${v.slug} created.`);
    location.hash = `#/p/${enc(v.slug)}`;
  }, "Create project");
  page("Projects", [["Projects"]],
    h("div", { class: "row" }, h("label", {}, "Org", orgSelect), org ? h("a", { href: `#/org/${enc(org)}`, testid: "org-settings" }, "Org settings, members, keys and audit") : null),
    card("Projects", table("projects", [["Project", (p) => h("a", { href: `#/p/${enc(p.slug)}` }, p.name)], ["Slug", (p) => h("code", {}, p.slug)], ["Created", (p) => when(p.created_at)]], projects)),
    card("New project", create));
}

async function projectScreen(slug, tab) {
  const p = await get(`/api/v1/projects/${enc(slug)}`);
  const tabs = [["apis", "APIs"], ["consumers", "Consumers"], ["keys", "Keys"], ["settings", "Settings"], ["events", "Auth events"]];
  const nav = h("nav", { class: "tabs", "aria-label": "Project" }, ...tabs.map(([id, label]) => h("a", { href: `#/p/${enc(slug)}/${id}`, "aria-current": id === tab ? "page" : null }, label)));
  const body = await ({ apis: projectApis, consumers: projectConsumers, keys: projectKeys, settings: projectSettings, events: projectEvents }[tab] || projectApis)(p);
  page(p.name, [["Projects", "#/"], [p.name]], nav, ...body);
}

async function projectApis(p) {
  const apis = (await get(`/api/v1/gateway/apis?project=${enc(p.slug)}`)).apis;
  const create = form("create-api", [
    field("Slug", "slug", { required: true, placeholder: "chat" }), field("Name", "name", { required: true }),
    field("Upstream", "kind", { type: "select", options: [["base_url", "A base URL and key"], ["provider", "A provider (the org's key)"]] }),
    field("Base URL (or `demo`)", "base_url", { placeholder: "https://api.openai.com/v1" }), field("Provider key (sent upstream, never shown again)", "api_key", { type: "password" }),
    field("Provider", "provider", { type: "select", options: [["", "—"], ...["openai", "anthropic", "groq", "mistral", "cohere", "ollama"].map((x) => [x, x])] }),
    field("Default model", "default_model"), field("Other allowed models (comma separated)", "models"),
    field("Auth mode", "auth_mode", { type: "select", options: [["consumer-key-only", "Consumer keys only"], ["managed", "Managed (email sign-in)"]] }),
  ], async (v) => {
    const models = v.models.split(",").map((m) => m.trim()).filter(Boolean);
    const upstream = v.kind === "provider" ? { provider: v.provider } : { base_url: v.base_url, ...(v.api_key ? { api_key: v.api_key } : {}) };
    if (v.default_model) upstream.default_model = v.default_model;
    if (models.length) upstream.models = models;
    const api = await call("POST", "/api/v1/gateway/apis", { project: p.slug, slug: v.slug, name: v.name, auth_mode: v.auth_mode, upstream });
    toast(`API ${api.slug} created.`);
    location.hash = `#/a/${enc(api.id)}`;
  }, "Create API");
  return [
    card("APIs", table("apis", [["API", (a) => h("a", { href: `#/a/${enc(a.id)}` }, a.name)], ["Slug", (a) => h("code", {}, a.slug)],
      ["Auth mode", (a) => badge(a.auth_mode)], ["Upstream", (a) => a.upstream.provider || a.upstream.base_url || a.upstream.route],
      ["Endpoint", (a) => h("code", {}, `${location.origin}/v1/${p.slug}/${a.slug}/chat/completions`)]], apis)),
    card("New API", create),
  ];
}

async function projectConsumers(p) {
  const consumers = (await get(`/api/v1/projects/${enc(p.slug)}/consumers`)).consumers;
  const search = h("input", { type: "search", placeholder: "Search by name or id", "aria-label": "Search consumers", testid: "consumer-search" });
  const list = h("div");
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const shown = consumers.filter((c) => !q || c.name.toLowerCase().includes(q) || c.id.toLowerCase().includes(q));
    list.replaceChildren(table("consumers", [["Name", (c) => h("a", { href: `#/c/${enc(p.slug)}/${enc(c.id)}` }, c.name)], ["Kind", (c) => c.kind],
      ["Status", (c) => badge(c.status, c.status === "enabled" ? "ok" : "bad")],
      ["", (c) => h("button", { class: "secondary", testid: `toggle-${c.id}`, onclick: async () => {
        try {
          await call("PATCH", `/api/v1/projects/${enc(p.slug)}/consumers/${enc(c.id)}`, { status: c.status === "enabled" ? "disabled" : "enabled" });
          toast(`${c.name} ${c.status === "enabled" ? "disabled" : "enabled"}.`);
          render();
        } catch (e) { showProblem(e); }
      } }, c.status === "enabled" ? "Disable" : "Enable")]], shown));
  };
  search.addEventListener("input", draw);
  draw();
  const create = form("create-consumer", [
    field("Name", "name", { required: true }), field("Description", "description"),
    field("Authentication", "method", { type: "select", options: [["key", "API key, system-generated"], ["custom", "API key, custom (your own secret)"], ["jwt-symmetric", "JWT, generated symmetric key"], ["jwt-jwks", "JWT, pasted JWKS"], ["none", "Nothing yet"]] }),
    field("Enabled", "enabled", { type: "checkbox", checked: true }),
    field("Custom key (24+ characters)", "secret", { type: "password" }),
    h("p", { class: "muted" }, "Where clients send a key (Authorization: Bearer, a header or a query parameter) is each API's credential source, on the API's Settings page."),
    field("JWT identity claim", "claim", { placeholder: "uid" }), field("JWT identity value (default: random)", "value"),
    field("JWKS (for a pasted public key set)", "jwks", { type: "textarea", placeholder: '{"keys": [...]}' }),
  ], async (v, f) => {
    // Checked before anything is made, so a bad secret or JWKS leaves no consumer without a credential.
    if (v.method === "custom" && !/^[\x21-\x7e]{24,512}$/.test(v.secret)) {
      throw new Error("A custom key is 24 to 512 printable characters without spaces.");
    }
    let jwks = null;
    if (v.method === "jwt-jwks") {
      try { jwks = JSON.parse(v.jwks); } catch { throw new Error("The JWKS is not valid JSON."); }
    }
    const consumer = await call("POST", `/api/v1/projects/${enc(p.slug)}/consumers`, { name: v.name, ...(v.description ? { description: v.description } : {}) });
    let shown = null;
    try {
      if (v.method === "key" || v.method === "custom") {
        const key = await call("POST", `/api/v1/projects/${enc(p.slug)}/consumers/${enc(consumer.id)}/keys`, { name: "default", ...(v.method === "custom" ? { secret: v.secret } : {}) });
        shown = secretBox("API key", key.secret);
      } else if (v.method.startsWith("jwt")) {
        const body = v.method === "jwt-jwks" ? { kind: "asymmetric", jwks } : { kind: "symmetric" };
        if (v.claim) body.claim = v.claim;
        if (v.value) body.value = v.value;
        const cred = await call("POST", `/api/v1/projects/${enc(p.slug)}/consumers/${enc(consumer.id)}/jwt-credentials`, body);
        shown = cred.secret ? secretBox(`HS256 secret (claim ${cred.claim} = ${cred.value})`, cred.secret) : h("p", {}, `JWT credential made: claim ${cred.claim} = ${cred.value}.`);
      }
    } catch (e) {
      // The consumer exists: its page is where a credential is added.
      showProblem(e);
      location.hash = `#/c/${enc(p.slug)}/${enc(consumer.id)}`;
      return;
    }
    if (!v.enabled) await call("PATCH", `/api/v1/projects/${enc(p.slug)}/consumers/${enc(consumer.id)}`, { status: "disabled" });
    toast(`Consumer ${consumer.name} created${v.enabled ? "" : " (disabled)"}.`);
    f.reset();
    if (shown) f.after(shown);
  }, "Create consumer");
  return [card("Consumers", search, list), card("New consumer", create)];
}

/** A secret shown once, with a copy button and the warning. */
function secretBox(label, secret) {
  const copy = h("button", { class: "secondary", type: "button", onclick: async () => {
    try { await navigator.clipboard.writeText(secret); toast("Copied."); } catch { toast("Select the text and copy it.", "bad"); }
  } }, "Copy");
  return h("div", { class: "secret", testid: "secret-box" }, h("strong", {}, "You will not see this again."), h("p", {}, label),
    h("p", {}, h("code", { testid: "secret-value" }, secret)), copy);
}

async function consumerScreen(slug, id) {
  const c = await get(`/api/v1/projects/${enc(slug)}/consumers/${enc(id)}`);
  const keys = (await get(`/api/v1/projects/${enc(slug)}/keys`)).keys.filter((k) => k.consumer_id === id);
  const creds = (await get(`/api/v1/projects/${enc(slug)}/consumers/${enc(id)}/jwt-credentials`)).jwt_credentials || [];
  const newKey = form("create-key", [field("Key name", "name", { required: true }), field("Custom secret (leave empty to generate)", "secret", { type: "password" })], async (v, f) => {
    const key = await call("POST", `/api/v1/projects/${enc(slug)}/consumers/${enc(id)}/keys`, { name: v.name, ...(v.secret ? { secret: v.secret } : {}) });
    toast(`Key ${key.prefix}… created.`);
    f.reset();
    f.after(secretBox(`Key ${key.name}`, key.secret));
  }, "Create key");
  page(c.name, [["Projects", "#/"], [slug, `#/p/${enc(slug)}/consumers`], [c.name]],
    card("Consumer", h("p", {}, "Status: ", badge(c.status, c.status === "enabled" ? "ok" : "bad"), " · ", h("code", {}, c.id))),
    card("Keys", keysTable(slug, keys), newKey),
    card("JWT credentials", table("jwt-credentials", [["Kind", (x) => x.kind], ["Claim", (x) => h("code", {}, `${x.claim} = ${x.value}`)], ["Created", (x) => when(x.created_at)]], creds)));
}

function keysTable(slug, keys) {
  return table("keys", [["Name", (k) => k.name], ["Prefix", (k) => h("code", {}, `${k.prefix}…`)], ["Created", (k) => when(k.created_at)], ["Last used", (k) => when(k.last_used_at)],
    ["", (k) => h("button", { class: "danger", testid: `revoke-${k.id}`, onclick: async () => {
      if (!confirm(`Revoke ${k.name} (${k.prefix}…)? Requests with it fail from the next one on.`)) return;
      try { await call("DELETE", `/api/v1/projects/${enc(slug)}/keys/${enc(k.id)}`); toast(`Key ${k.prefix}… revoked.`); render(); } catch (e) { showProblem(e); }
    } }, "Revoke")]], keys);
}

async function projectKeys(p) {
  return [card("Consumer keys", keysTable(p.slug, (await get(`/api/v1/projects/${enc(p.slug)}/keys`)).keys))];
}

async function projectSettings(p) {
  const f = form("project-settings", [
    field("Name", "name", { value: p.name, required: true }),
    field("Allowed browser origins (comma separated, * for any)", "allowed_origins", { value: (p.allowed_origins || []).join(", ") }),
    field("Access token lifetime (s)", "access_token_ttl_s", { type: "number", value: p.access_token_ttl_s, min: 60 }),
    field("Sign-up", "signup", { type: "select", value: p.signup, options: [["open", "Open"], ["domains", "Only these domains"], ["invite_only", "Invite only"]] }),
    field("Sign-up domains (comma separated)", "signup_domains", { value: (p.signup_domains || []).join(", ") }),
    field("Mail sender", "email_from", { value: p.email_from || "", placeholder: "Acme <no-reply@acme.dev>" }),
  ], async (v) => {
    const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);
    await call("PATCH", `/api/v1/projects/${enc(p.slug)}`, { name: v.name, allowed_origins: list(v.allowed_origins), access_token_ttl_s: Number(v.access_token_ttl_s),
      signup: v.signup, signup_domains: list(v.signup_domains), email_from: v.email_from || null });
    toast("Project settings saved.");
  });
  return [card("Settings", f)];
}

async function projectEvents(p) {
  const kind = new URLSearchParams(location.hash.split("?")[1] || "").get("type") || "";
  const events = (await get(`/api/v1/projects/${enc(p.slug)}/auth-events${kind ? `?type=${enc(kind)}` : ""}`)).events;
  const filter = form("events-filter", [field("Type", "type", { value: kind, placeholder: "sign_in, otp_failed, key_revoked…" })], async (v) => {
    location.hash = `#/p/${enc(p.slug)}/events${v.type ? `?type=${enc(v.type)}` : ""}`;
  }, "Filter");
  return [card("Auth events", filter, table("events", [["When", (e) => when(e.time)], ["Type", (e) => e.type], ["Consumer", (e) => e.consumer_id || ""], ["Subject", (e) => e.subject || ""], ["IP", (e) => e.ip || ""]], events))];
}

async function apiScreen(id, tab) {
  const a = await get(`/api/v1/gateway/apis/${enc(id)}`);
  const tabs = [["settings", "Settings"], ["auth", "Auth mode"], ["plans", "Plans"], ["usage", "Usage"]];
  const nav = h("nav", { class: "tabs", "aria-label": "API" }, ...tabs.map(([t, label]) => h("a", { href: `#/a/${enc(id)}/${t}`, "aria-current": t === tab ? "page" : null }, label)));
  const body = await ({ settings: apiSettings, auth: apiAuth, plans: apiPlans, usage: apiUsage }[tab] || apiSettings)(a);
  page(a.name, [["Projects", "#/"], [a.project, `#/p/${enc(a.project)}`], [a.name]], nav, ...body);
}

async function apiSettings(a) {
  const u = a.upstream;
  const f = form("api-settings", [
    field("Name", "name", { value: a.name, required: true }),
    u.route === "base_url" ? field("Base URL", "base_url", { value: u.base_url }) : field("Provider", "provider", { value: u.provider || "" }),
    u.route === "base_url" ? field("New provider key (leave empty to keep)", "api_key", { type: "password" }) : null,
    field("Default model", "default_model", { value: u.default_model || "" }),
    field("Allowed models (comma separated)", "models", { value: (u.models || []).join(", ") }),
    field("Timeout (ms)", "timeout_ms", { type: "number", value: u.timeout_ms, min: 100 }),
    field("Retries", "retries", { type: "number", value: u.retries ?? 1, min: 0 }),
    field("Fallbacks (provider/model, comma separated)", "fallbacks", { value: (u.fallbacks || []).join(", ") }),
    field("Prices (JSON: {model: {input_per_mtok, output_per_mtok}})", "prices", { type: "textarea", value: JSON.stringify(a.prices || {}, null, 1) }),
    field("IP allowlist (CIDRs, comma separated; empty allows all)", "ip_allowlist", { value: (a.ip_allowlist || []).join(", ") }),
    field("Credential source", "location", { type: "select", value: a.credential?.location || "authorization", options: [["authorization", "Authorization: Bearer"], ["header", "A header"], ["query", "A query parameter"]] }),
    field("Header or parameter name", "cred_name", { value: a.credential?.name || "" }),
    field("Pass the credential through to the upstream", "passthrough", { type: "checkbox", checked: a.credential?.passthrough }),
  ], async (v, self) => {
    const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);
    const upstream = { default_model: v.default_model || null, models: list(v.models), timeout_ms: Number(v.timeout_ms), retries: Number(v.retries), fallbacks: list(v.fallbacks) };
    if (v.base_url) upstream.base_url = v.base_url;
    if (v.api_key) upstream.api_key = v.api_key;
    if (v.provider && v.provider !== u.provider) upstream.provider = v.provider;
    const body = { name: v.name, upstream, ip_allowlist: list(v.ip_allowlist), prices: JSON.parse(v.prices || "{}"),
      credential: { location: v.location, ...(v.location !== "authorization" ? { name: v.cred_name } : {}), passthrough: v.passthrough } };
    await call("PATCH", `/api/v1/gateway/apis/${enc(a.id)}`, body);
    const key = self.querySelector("[name=api_key]");
    if (key) key.value = "";
    toast("API saved.");
  });
  return [card("Settings", f, a.unpriced_models?.length ? h("p", { class: "warning" }, `No price for: ${a.unpriced_models.join(", ")}`) : null)];
}

const MODES = {
  managed: "Users sign in with an email code through Sluice; the widget and SDK do it for you. Consumer keys keep working.",
  "consumer-key-only": "Only consumer keys (and consumers' own JWTs) are accepted. Signed-in users' tokens stop working on their next request.",
  "byo-jwt": "Your own JWTs, checked against your JWKS; the claim you name is the consumer. Consumer keys keep working.",
};

async function apiAuth(a) {
  const byo = a.byo_jwt_config || {};
  const warn = h("p", { class: "warning", testid: "mode-warning" }, MODES[a.auth_mode]);
  const f = form("auth-mode", [
    field("Auth mode", "auth_mode", { type: "select", value: a.auth_mode, testid: "auth-mode-select", options: [["managed", "Managed (email sign-in)"], ["consumer-key-only", "Consumer keys only"], ["byo-jwt", "Bring your own JWT"]] }),
    field("JWKS URL", "jwks_url", { value: byo.jwks_url || "", placeholder: "https://idp.example/.well-known/jwks.json" }),
    field("User id claim", "user_id_claim", { value: byo.user_id_claim || "sub" }),
    field("Issuer", "issuer", { value: byo.issuer || "" }), field("Audience", "audience", { value: byo.audience || "" }),
  ], async (v) => {
    if (v.auth_mode !== a.auth_mode && !confirm(`Switch to ${v.auth_mode}? ${MODES[v.auth_mode]}`)) return;
    const body = { auth_mode: v.auth_mode };
    if (v.auth_mode === "byo-jwt") body.byo_jwt_config = { jwks_url: v.jwks_url, user_id_claim: v.user_id_claim || "sub", ...(v.issuer ? { issuer: v.issuer } : {}), ...(v.audience ? { audience: v.audience } : {}) };
    await call("PUT", `/api/v1/gateway/apis/${enc(a.id)}/auth-mode`, body);
    toast(`Auth mode is now ${v.auth_mode}.`);
    render();
  }, "Switch auth mode");
  f.querySelector("select").addEventListener("change", (e) => { warn.textContent = MODES[e.target.value]; });
  return [card("Auth mode", h("p", {}, "Now: ", badge(a.auth_mode, "ok")), warn, f)];
}

async function apiPlans(a) {
  const plans = (await get(`/api/v1/gateway/apis/${enc(a.id)}/plans`)).plans;
  const limits = (p = {}) => [
    field("Requests per minute", "requests_per_minute", { type: "number", value: p.requests_per_minute ?? "", min: 0 }),
    field("Requests per day", "requests_per_day", { type: "number", value: p.requests_per_day ?? "", min: 0 }),
    field("Tokens per day", "tokens_per_day", { type: "number", value: p.tokens_per_day ?? "", min: 0 }),
    field("Tokens per month", "tokens_per_month", { type: "number", value: p.tokens_per_month ?? "", min: 0 }),
    field("Spend per day (USD)", "spend_per_day_usd", { type: "number", value: p.spend_per_day_usd ?? "", min: 0, step: "0.01" }),
    field("Concurrent streams", "max_concurrent_streams", { type: "number", value: p.max_concurrent_streams ?? "", min: 0 }),
    field("Models (comma separated; empty: the API's)", "models", { value: (p.models || []).join(", ") }),
  ];
  const bodyOf = (v) => ({ requests_per_minute: numberOrNull(v.requests_per_minute), requests_per_day: numberOrNull(v.requests_per_day),
    tokens_per_day: numberOrNull(v.tokens_per_day), tokens_per_month: numberOrNull(v.tokens_per_month), spend_per_day_usd: numberOrNull(v.spend_per_day_usd),
    max_concurrent_streams: numberOrNull(v.max_concurrent_streams), models: v.models.trim() ? v.models.split(",").map((m) => m.trim()).filter(Boolean) : null });
  const create = form("create-plan", [field("Plan name", "name", { required: true }), ...limits()], async (v) => {
    await call("POST", `/api/v1/gateway/apis/${enc(a.id)}/plans`, { name: v.name, ...bodyOf(v) });
    toast(`Plan ${v.name} created.`);
    render();
  }, "Create plan");
  const assign = form("assign-plan", [field("Consumer id", "consumer", { required: true, placeholder: "con_…" }),
    field("Plan", "plan", { type: "select", options: plans.map((p) => [p.name, p.name]) })], async (v) => {
    await call("PUT", `/api/v1/gateway/apis/${enc(a.id)}/consumers/${enc(v.consumer.trim())}/plan`, { plan: v.plan });
    toast(`${v.consumer} is on ${v.plan}.`);
  }, "Assign");
  const edits = plans.map((p) => h("details", {}, h("summary", {}, `Edit ${p.name}`), form(`edit-plan-${p.name}`, limits(p), async (v) => {
    await call("PATCH", `/api/v1/gateway/apis/${enc(a.id)}/plans/${enc(p.name)}`, bodyOf(v));
    toast(`Plan ${p.name} saved.`);
  })));
  const lim = (v) => (v === null || v === undefined ? "∞" : v);
  return [
    card("Plans", table("plans", [["Plan", (p) => h("span", {}, p.name, p.default ? " " : "", p.default ? badge("default") : "")], ["Req/min", (p) => lim(p.requests_per_minute)],
      ["Req/day", (p) => lim(p.requests_per_day)], ["Tokens/day", (p) => lim(p.tokens_per_day)], ["Spend/day", (p) => lim(p.spend_per_day_usd)]], plans), ...edits),
    h("div", { class: "grid" }, card("New plan", create), card("Assign a consumer", assign)),
  ];
}

/** An SVG line chart of `points` ([label, value]); every point carries its value for tests and screen readers. */
function chart(testid, title, points) {
  const W = 640, H = 200, P = 32;
  const max = Math.max(1, ...points.map(([, v]) => v));
  const x = (i) => P + (points.length <= 1 ? (W - 2 * P) / 2 : (i * (W - 2 * P)) / (points.length - 1));
  const y = (v) => H - P - (v / max) * (H - 2 * P);
  const svg = (tag, attrs) => { const el = document.createElementNS("http://www.w3.org/2000/svg", tag); for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v); return el; };
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `${title}: ${points.map(([l, v]) => `${l} ${v}`).join(", ") || "no data"}`, "data-testid": testid });
  root.append(svg("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, class: "axis" }), svg("line", { x1: P, y1: P, x2: P, y2: H - P, class: "axis" }));
  const top = svg("text", { x: 4, y: P }); top.textContent = String(Math.round(max * 1e6) / 1e6); root.append(top);
  if (points.length) root.append(svg("polyline", { class: "line", points: points.map(([, v], i) => `${x(i)},${y(v)}`).join(" ") }));
  points.forEach(([label, v], i) => {
    const c = svg("circle", { cx: x(i), cy: y(v), r: 4, class: "pt", "data-label": label, "data-value": v });
    const t = svg("title", {}); t.textContent = `${label}: ${v}`; c.append(t); root.append(c);
    if (points.length <= 12 || i % Math.ceil(points.length / 12) === 0) { const l = svg("text", { x: x(i) - 14, y: H - 10 }); l.textContent = label.slice(5); root.append(l); }
  });
  return h("figure", {}, h("figcaption", {}, title), root);
}

/** Horizontal bars of `rows` ([label, value]): tokens per consumer or model. */
function bars(testid, rows) {
  if (!rows.length) return null;
  const max = Math.max(1, ...rows.map(([, v]) => v));
  return h("div", { testid, role: "list" }, ...rows.map(([label, v]) => {
    const bar = h("div", { class: "bar" });
    bar.style.width = `${Math.max(1, Math.round((v / max) * 100))}%`; // CSSOM: allowed by the page's CSP
    return h("div", { role: "listitem", class: "bar-row", "data-label": label, "data-value": v }, h("div", { class: "muted mono" }, `${label}: ${v} tokens`), bar);
  }));
}

async function apiUsage(a) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const day = (d) => d.toISOString().slice(0, 10);
  const from = params.get("from") || day(new Date(Date.now() - 13 * 86400e3));
  const to = params.get("to") || day(new Date(Date.now() + 86400e3));
  const q = `from=${enc(from)}&to=${enc(to)}`;
  const base = `/api/v1/gateway/apis/${enc(a.id)}/usage?${q}`;
  const [days, consumers, models] = await Promise.all([get(`${base}&group_by=day`), get(`${base}&group_by=consumer`), get(`${base}&group_by=model`)]);
  const range = form("usage-range", [field("From", "from", { type: "date", value: from }), field("To", "to", { type: "date", value: to })], async (v) => {
    location.hash = `#/a/${enc(a.id)}/usage?from=${enc(v.from)}&to=${enc(v.to)}`;
  }, "Show");
  const g = days.groups || [];
  const csv = () => {
    const rows = [["day", "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "refused"], ...g.map((r) => [r.day, r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd, r.refused || 0])];
    const link = h("a", { href: URL.createObjectURL(new Blob([rows.map((r) => r.join(",")).join("\n") + "\n"], { type: "text/csv" })), download: `usage-${a.slug}-${from}-${to}.csv` });
    document.body.append(link); link.click(); link.remove();
  };
  const t = days.totals || {};
  const by = (rows, key) => h("div", {}, bars(`bars-${key}`, (rows || []).map((r) => [r[key] ?? "—", r.total_tokens])), table(`usage-by-${key}`, [[key === "consumer" ? "Consumer" : "Model", (r) => h("code", {}, r[key] ?? "—")], ["Requests", (r) => r.requests], ["Tokens", (r) => r.total_tokens], ["Spend (USD)", (r) => r.cost_usd]], rows || []));
  return [
    card("Range", range),
    card("Totals", h("div", { class: "totals", testid: "usage-totals" },
      h("div", {}, "Requests", h("b", { testid: "total-requests" }, t.requests ?? 0)), h("div", {}, "Tokens", h("b", { testid: "total-tokens" }, t.total_tokens ?? 0)),
      h("div", {}, "Spend (USD)", h("b", { testid: "total-spend" }, t.cost_usd ?? 0)), h("div", {}, "Refused (429)", h("b", { testid: "total-refused" }, t.refused ?? 0))),
      h("div", { class: "row" }, h("button", { class: "secondary", type: "button", testid: "csv", onclick: csv }, "Export CSV"))),
    card("Per day",
      chart("chart-requests", "Requests per day", g.map((r) => [r.day, r.requests])),
      chart("chart-tokens", "Tokens per day", g.map((r) => [r.day, r.total_tokens])),
      chart("chart-spend", "Spend per day (USD)", g.map((r) => [r.day, Number(r.cost_usd) || 0])),
      chart("chart-refused", "Refused (429) per day", g.map((r) => [r.day, r.refused || 0]))),
    h("div", { class: "grid" }, card("Per consumer", by(consumers.groups, "consumer")), card("Per model", by(models.groups, "model"))),
  ];
}

async function orgScreen(slug, tab) {
  const org = await get(`/api/v1/orgs/${enc(slug)}`);
  const tabs = [["members", "Members"], ["keys", "Org keys"], ["providers", "Provider keys"], ["audit", "Audit log"]];
  const nav = h("nav", { class: "tabs", "aria-label": "Org" }, ...tabs.map(([t, label]) => h("a", { href: `#/org/${enc(slug)}/${t}`, "aria-current": t === tab ? "page" : null }, label)));
  const body = await ({ members: orgMembers, keys: orgKeys, providers: orgProviders, audit: orgAudit }[tab] || orgMembers)(org);
  page(org.name, [["Projects", "#/"], [org.name]], h("p", { class: "muted" }, `Your role: ${org.role}`), nav, ...body);
}

const ROLES = [["viewer", "Viewer"], ["developer", "Developer"], ["admin", "Admin"], ["owner", "Owner"]];

async function orgMembers(org) {
  const members = (await get(`/api/v1/orgs/${enc(org.slug)}/members`)).members;
  const invite = form("invite", [field("Email", "email", { type: "email", required: true }), field("Role", "role", { type: "select", value: "developer", options: ROLES })], async (v) => {
    await call("POST", `/api/v1/orgs/${enc(org.slug)}/members`, v);
    toast(`${v.email} invited; they join on their next sign-in.`);
    render();
  }, "Invite");
  return [card("Members", table("members", [["Email", (m) => m.email], ["Status", (m) => badge(m.status, m.status === "active" ? "ok" : "")],
    ["Role", (m) => h("select", { "aria-label": `Role of ${m.email}`, onchange: async (e) => {
      try { await call("PATCH", `/api/v1/orgs/${enc(org.slug)}/members/${enc(m.id)}`, { role: e.target.value }); toast(`${m.email} is now ${e.target.value}.`); } catch (err) { showProblem(err); render(); }
    } }, ...ROLES.map(([v, l]) => h("option", { value: v, selected: v === m.role }, l)))],
    ["", (m) => h("button", { class: "danger", onclick: async () => {
      if (!confirm(`Remove ${m.email} from ${org.name}?`)) return;
      try { await call("DELETE", `/api/v1/orgs/${enc(org.slug)}/members/${enc(m.id)}`); toast(`${m.email} removed.`); render(); } catch (e) { showProblem(e); }
    } }, "Remove")]], members), invite)];
}

async function orgKeys(org) {
  const keys = (await get(`/api/v1/orgs/${enc(org.slug)}/keys`)).keys;
  const create = form("create-org-key", [field("Name", "name", { required: true }), field("Role", "role", { type: "select", value: "developer", options: ROLES }),
    field("Environment", "environment", { type: "select", options: [["prod", "prod"], ["dev", "dev"]] })], async (v, f) => {
    const key = await call("POST", `/api/v1/orgs/${enc(org.slug)}/keys`, v);
    toast(`Org key ${key.prefix}… created.`);
    f.reset();
    f.after(secretBox(`Org key ${key.name} (${key.role}), sent as X-API-Key`, key.secret));
  }, "Create org key");
  return [card("Org keys", table("org-keys", [["Name", (k) => k.name], ["Prefix", (k) => h("code", {}, `${k.prefix}…`)], ["Role", (k) => badge(k.role)], ["Last used", (k) => when(k.last_used_at)],
    ["", (k) => h("button", { class: "danger", onclick: async () => {
      if (!confirm(`Revoke ${k.name}?`)) return;
      try { await call("DELETE", `/api/v1/orgs/${enc(org.slug)}/keys/${enc(k.id)}`); toast("Org key revoked."); render(); } catch (e) { showProblem(e); }
    } }, "Revoke")]], keys), create)];
}

async function orgProviders(org) {
  const providers = await get(`/api/v1/orgs/${enc(org.slug)}/providers`);
  const create = form("create-provider", [field("Provider", "provider", { type: "select", options: ["openai", "anthropic", "groq", "mistral", "cohere", "ollama"].map((x) => [x, x]) }),
    field("API key (stored encrypted, never shown again)", "api_key", { type: "password" }), field("Base URL (optional override)", "base_url")], async (v) => {
    const body = { ...(v.api_key ? { api_key: v.api_key } : {}), ...(v.base_url ? { base_url: v.base_url } : {}) };
    if (providers.some((p) => p.provider === v.provider)) await call("PUT", `/api/v1/orgs/${enc(org.slug)}/providers/${enc(v.provider)}`, body);
    else await call("POST", `/api/v1/orgs/${enc(org.slug)}/providers`, { provider: v.provider, ...body });
    toast(`${v.provider} key stored.`);
    render();
  }, "Store key");
  return [card("Provider keys", table("providers", [["Provider", (p) => p.provider], ["Base URL", (p) => h("code", {}, p.base_url)], ["Key", (p) => (p.key_last4 ? `…${p.key_last4}` : "none")], ["Updated", (p) => when(p.updated_at)],
    ["", (p) => h("button", { class: "danger", onclick: async () => {
      if (!confirm(`Delete the ${p.provider} key? Requests routed to it fail at once.`)) return;
      try { await call("DELETE", `/api/v1/orgs/${enc(org.slug)}/providers/${enc(p.provider)}`); toast("Provider key deleted."); render(); } catch (e) { showProblem(e); }
    } }, "Delete")]], providers), create)];
}

async function orgAudit(org) {
  const events = (await get(`/api/v1/orgs/${enc(org.slug)}/audit?limit=200`)).events;
  const search = h("input", { type: "search", placeholder: "Filter by action, actor or path", "aria-label": "Filter the audit log", testid: "audit-filter" });
  const list = h("div");
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    list.replaceChildren(table("audit", [["When", (e) => when(e.created_at)], ["Who", (e) => `${e.actor.name} (${e.credential})`], ["What", (e) => h("code", {}, e.action)], ["Path", (e) => h("code", {}, e.target)], ["Status", (e) => e.status]],
      events.filter((e) => !q || `${e.action} ${e.actor.name} ${e.target}`.toLowerCase().includes(q))));
  };
  search.addEventListener("input", draw);
  draw();
  return [card("Audit log", search, list)];
}

// ------------------------------------------------------------------------------------------------
// Routing

async function render() {
  await tabChecked;
  if (!access && !(await refresh())) return signInScreen();
  try {
    me = await get("/api/v1/orgs/me");
  } catch (e) {
    if (e.status === 401) { access = null; sessionStorage.removeItem(REFRESH); return signInScreen(); }
    throw e;
  }
  who.replaceChildren(h("span", { testid: "signed-in-as" }, me.owner ? me.owner.email : "operator"), h("button", { class: "secondary", testid: "sign-out", onclick: signOut }, "Sign out"));
  try {
    const [path] = location.hash.replace(/^#/, "").split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    if (parts[0] === "p" && parts[1]) return await projectScreen(parts[1], parts[2] || "apis");
    if (parts[0] === "c" && parts[2]) return await consumerScreen(parts[1], parts[2]);
    if (parts[0] === "a" && parts[1]) return await apiScreen(parts[1], parts[2] || "settings");
    if (parts[0] === "org" && parts[1]) return await orgScreen(parts[1], parts[2] || "members");
    return await home();
  } catch (e) {
    page("Something went wrong", [["Projects", "#/"]], h("p", { class: "error", testid: "screen-error" }, e.problem ? `${e.problem.title}: ${e.problem.detail}` : String(e)));
  }
}

window.addEventListener("hashchange", render);
render();
