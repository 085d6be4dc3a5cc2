// Browser end-to-end tests of the chat widget and SDK in headless Chromium against wrangler dev: `node tests/browser/run.mjs [name filter...]`.
//
// Prints `test <name> ... ok|FAILED` per case and `N passed, M failed`; exits non-zero on any failure.
// Needs `make build` first and /usr/bin/chromium (scripts/setup-browser.sh). Each case makes its own
// project, browser context and pages, so cases are independent. The widget is always loaded from the
// gateway's origin into host pages on other origins, as a customer's site would embed it. A case whose
// gateway feature is missing (its route answers "No route"/405) fails at once, saying which.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

import { ARTIFACTS, FEATURE_ROUTES, Waiting, adminClient, probeFeatures, sleep, startGateway, startMailServer, startPageServer, WEB } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const CASE_TIMEOUT_MS = 90_000;
const filters = process.argv.slice(2).map((s) => s.toLowerCase());

// ------------------------------------------------------------------------------------------------
// Page helpers

const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");

/** A host page that embeds the widget with `attrs` (data-* without the prefix). */
function hostHtml(ctx, { attrs, head = "", body = "", after = "" }) {
  const data = Object.entries(attrs).map(([k, v]) => ` data-${k}="${esc(v)}"`).join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Host page</title>${head}</head>
<body>
<h1>A host page</h1>
<p>The host's own content.</p>
${body}
<script src="${ctx.assetBase}/chat.js"${data}></script>
${after}
</body></html>`;
}

/** Page script that hands the widget a consumer key fetched from the host's backend at run time. */
const keyFromBackend = (slug) => `<script>Sluice.setConsumerKey(() => fetch("/backend/key?project=${encodeURIComponent(slug)}").then((r) => r.text()));</script>`;

async function newPage(ctx, options = {}) {
  const context = await ctx.browser.newContext({ viewport: { width: 1280, height: 800 }, ...options });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const logs = [];
  page.on("console", (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => logs.push(`requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  ctx.cleanup.push(() => context.close());
  ctx.logs.push(logs);
  return { context, page, logs };
}

/** Locator for a test hook inside the widget's shadow root (Playwright's CSS pierces open shadow roots). */
const hook = (page, id) => page.locator(`[data-testid="${id}"]`);

/** Runs in the page: the widget's shadow root. */
const ROOT_JS = `document.querySelector("#sluice-chat").shadowRoot`;

async function widgetState(page) {
  return page.evaluate((rootJs) => {
    const r = eval(rootJs);
    const replies = [...r.querySelectorAll('[data-testid="message-assistant"]')];
    const last = replies[replies.length - 1];
    const n = r.querySelector('[data-testid="notice"]');
    return {
      view: r.querySelector('[data-testid="panel"]').dataset.view,
      replies: replies.length,
      reply: last ? last.textContent : null,
      state: last ? last.dataset.state : null,
      notice: n.hidden ? null : n.textContent,
      noticeKind: n.hidden ? null : n.dataset.kind,
      noticeRole: n.getAttribute("role"),
      active: r.activeElement ? r.activeElement.dataset.testid || r.activeElement.id : null,
    };
  }, ROOT_JS);
}

/** Types a message, sends it with Enter, and waits until the reply has finished (or failed). */
async function send(page, text, { timeout = 30_000 } = {}) {
  await hook(page, "input").fill(text);
  await hook(page, "input").press("Enter");
  await page.waitForFunction(
    (rootJs) => {
      const r = eval(rootJs);
      return r.querySelector('[data-testid="stop"]').hidden && !r.querySelector('[data-state="streaming"]');
    },
    ROOT_JS,
    { timeout },
  );
  return widgetState(page);
}

/** Records the last reply's text length at every DOM change, to see it grow token by token. */
async function watchReplyGrowth(page) {
  await page.evaluate((rootJs) => {
    const r = eval(rootJs);
    window.__growth = [];
    new MutationObserver(() => {
      const replies = r.querySelectorAll('[data-testid="message-assistant"]');
      const last = replies[replies.length - 1];
      if (last) window.__growth.push([performance.now(), last.textContent.length]);
    }).observe(r, { subtree: true, childList: true, characterData: true });
  }, ROOT_JS);
}

async function openWidget(page) {
  if (await hook(page, "panel").isVisible()) return;
  await hook(page, "launcher").click();
  await hook(page, "panel").waitFor({ state: "visible" });
}

/** Full managed sign-in: email, the code read from the mock mail API (after `beforeCode`), verify. */
async function signIn(ctx, page, email, { beforeCode } = {}) {
  await openWidget(page);
  await hook(page, "email").waitFor({ state: "visible" });
  const since = Date.now();
  await hook(page, "email").fill(email);
  await hook(page, "send-code").click();
  await hook(page, "code").waitFor({ state: "visible" });
  const code = await ctx.mail.codeFor(email, { since });
  if (beforeCode) await beforeCode(code);
  await hook(page, "code").fill(code);
  await hook(page, "verify").click();
  await hook(page, "input").waitFor({ state: "visible" });
}

async function storedSession(page, slug) {
  return page.evaluate((key) => JSON.parse(localStorage.getItem(key) || "null"), `sluice:${slug}:session`);
}

function expectDemoReply(state, said) {
  assert.equal(state.state, "done", `reply state (notice: ${state.notice})`);
  assert.match(state.reply, /^Hello from Sluice! This is the built-in demo model\./);
  assert.ok(state.reply.includes(`You said: "${said}"`), `reply echoes the message: ${state.reply}`);
}

/** A project for widget cases, with the host pages' origin allowed. */
async function widgetProject(ctx, options = {}) {
  const project = await ctx.admin.project({ origins: [ctx.pages.origin], ...options });
  if (project.key) ctx.keys.set(project.slug, project.key);
  return project;
}

// ------------------------------------------------------------------------------------------------
// Cases

const cases = [];
const add = (name, needs, fn) => cases.push({ name, needs, fn });
/** Features every widget case needs: the widget files, and CORS for the host pages' origin. */
const widget = (...more) => () => ["assets", "cors", ...more];

add("gateway serves the widget files", () => ["assets"], async (ctx) => {
  const g = ctx.gateway.base;
  const chat = await fetch(`${g}/chat.js`);
  assert.equal(chat.status, 200);
  assert.match(chat.headers.get("content-type") || "", /javascript/);
  const etag = chat.headers.get("etag");
  assert.ok(etag, "chat.js has an ETag");
  assert.match(chat.headers.get("cache-control") || "", /max-age=\d+/);
  assert.equal(await chat.text(), fs.readFileSync(path.join(WEB, "chat.js"), "utf8"));
  const again = await fetch(`${g}/chat.js`, { headers: { "if-none-match": etag } });
  assert.equal(again.status, 304, "If-None-Match with the ETag gives 304");
  const hash = etag.replace(/^W\//, "").replace(/"/g, "");
  assert.equal((await fetch(`${g}/chat.js?v=${encodeURIComponent(hash)}`)).status, 200);
  const sdk = await fetch(`${g}/sdk.js`, { headers: { origin: ctx.pages.origin } });
  assert.equal(sdk.status, 200);
  assert.match(sdk.headers.get("content-type") || "", /javascript/);
  assert.equal(sdk.headers.get("access-control-allow-origin"), "*", "a cross-origin import() of sdk.js needs CORS");
  assert.equal(await sdk.text(), fs.readFileSync(path.join(WEB, "../packages/sdk/index.js"), "utf8"));
  assert.equal((await fetch(`${g}/sdk.d.ts`)).status, 200);
  // And a page on another origin can import the SDK module.
  const { page } = await newPage(ctx);
  await page.goto(ctx.other.page("<!doctype html><title>import</title>"));
  const exported = await page.evaluate(async (url) => Object.keys(await import(url)).sort().join(","), `${g}/sdk.js`);
  assert.ok(exported.includes("SluiceClient") && exported.includes("SluiceError") && exported.includes("createSseParser"), exported);
});

add("demo page at / embeds the widget", () => ["assets", "demo-page"], async (ctx) => {
  const { page, logs } = await newPage(ctx);
  await page.goto(`${ctx.gateway.base}/`);
  assert.equal(await page.title(), "Sluice demo");
  assert.equal(await page.locator('a[href="/dev/mailbox"]').count(), 1, "the page points to the dev mailbox");
  await openWidget(page);
  assert.equal(await hook(page, "title").textContent(), "Sluice demo");
  await hook(page, "email").waitFor({ state: "visible" }); // managed mode: sign-in first
  assert.deepEqual(logs.filter((l) => l.startsWith("pageerror")), []);
});

add("consumer key via Sluice.setConsumerKey: reply streams in steps, as text", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true });
  const { page } = await newPage(ctx);
  const calls = [];
  page.on("request", async (r) => {
    if (r.url().endsWith("/chat/completions") && r.method() === "POST") calls.push({ headers: await r.allHeaders(), body: JSON.parse(r.postData()) });
  });
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat", title: "Key chat" }, after: keyFromBackend(slug) })));
  assert.equal(await page.evaluate(() => typeof window.Sluice.setConsumerKey), "function");
  await openWidget(page);
  await hook(page, "input").waitFor({ state: "visible" });
  assert.equal((await widgetState(page)).active, "input", "focus moves into the panel");
  await watchReplyGrowth(page);
  const said = 'Hi <img src=x onerror="window.__xss=1"> & <b>bold</b>';
  const state = await send(page, said);
  expectDemoReply(state, said);
  const growth = await page.evaluate(() => window.__growth);
  const lengths = [...new Set(growth.map(([, n]) => n).filter((n) => n > 0))];
  assert.ok(lengths.length >= 8, `the reply grew in steps (${lengths.length} distinct lengths)`);
  const grew = growth.filter(([, n]) => n > 0);
  assert.ok(grew[grew.length - 1][0] - grew[0][0] >= 150, "the steps were spread over time, not one burst");
  assert.equal(await page.evaluate(() => window.__xss), undefined, "model text is never parsed as HTML");
  assert.equal(await page.evaluate((rootJs) => eval(rootJs).querySelectorAll(".msg img, .msg b").length, ROOT_JS), 0);
  assert.equal(calls.length, 1);
  assert.match(calls[0].headers.authorization || "", /^Bearer ask_live_/);
  assert.equal(calls[0].body.stream, true);
  // The second turn sends the conversation so far.
  expectDemoReply(await send(page, "And again"), "And again");
  assert.deepEqual(calls[1].body.messages.map((m) => m.role), ["user", "assistant", "user"]);
});

add("data-token-url supplies the credential at run time (with cookies)", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true });
  const { context, page } = await newPage(ctx);
  await context.addCookies([{ name: "sid", value: "signed-in", url: ctx.pages.origin }]);
  const url = ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat", "token-url": `/backend/token?project=${slug}` } }));
  assert.ok(!(await (await fetch(url)).text()).includes("ask_live_"), "no key in the page's HTML");
  await page.goto(url);
  await openWidget(page);
  expectDemoReply(await send(page, "token url"), "token url");
});

add("embed variants: async script in <head>, ?v=<hash>, calls queued before chat.js", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true });
  const etag = (await fetch(`${ctx.gateway.base}/chat.js`)).headers.get("etag") || "";
  const version = etag.replace(/^W\//, "").replace(/"/g, "");
  const head = `<script>
window.Sluice = window.Sluice || { q: [] };
Sluice.q.push(["setConsumerKey", () => fetch("/backend/key?project=${slug}").then((r) => r.text())]);
Sluice.q.push(["open"]);
</script>
<script async src="${ctx.assetBase}/chat.js?v=${encodeURIComponent(version)}" data-project="${slug}" data-api="chat" data-title="Async"></script>`;
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Async host</title>${head}</head><body><p>Body after the script.</p></body></html>`;
  const { page } = await newPage(ctx);
  const modules = [];
  page.on("request", (r) => r.url().includes("/sdk.js") && modules.push(r.url()));
  await page.goto(ctx.pages.page(html));
  await hook(page, "panel").waitFor({ state: "visible" }); // opened by the queued call
  await hook(page, "input").waitFor({ state: "visible" });
  expectDemoReply(await send(page, "queued"), "queued");
  assert.deepEqual(modules, [`${ctx.gateway.base}/sdk.js?v=${encodeURIComponent(version)}`], "the SDK comes from the same gateway, same version");
});

add("Stop aborts a streaming reply and keeps what arrived", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true });
  const { page } = await newPage(ctx);
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" }, after: keyFromBackend(slug) })));
  await openWidget(page);
  await hook(page, "input").fill("please stop me");
  await hook(page, "send").click();
  await hook(page, "stop").waitFor({ state: "visible" });
  await page.waitForFunction((rootJs) => (eval(rootJs).querySelector('[data-state="streaming"]')?.textContent.length || 0) > 10, ROOT_JS);
  await hook(page, "stop").click();
  await hook(page, "send").waitFor({ state: "visible" });
  const stopped = await widgetState(page);
  assert.equal(stopped.state, "stopped");
  await sleep(600);
  const later = await widgetState(page);
  assert.equal(later.reply, stopped.reply, "nothing arrives after Stop");
  assert.ok(later.reply.length > 10 && !later.reply.endsWith("token by token."), `a partial reply: ${later.reply}`);
  assert.equal(later.notice, "Stopped.");
  assert.equal(later.active, "input", "focus returns to the message box");
  expectDemoReply(await send(page, "next"), "next"); // and the widget still works
});

add("429 shows the problem's detail and when to retry", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true, plan: { requests_per_minute: 1 } });
  const { page } = await newPage(ctx);
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" }, after: keyFromBackend(slug) })));
  await openWidget(page);
  expectDemoReply(await send(page, "first"), "first");
  const refused = await send(page, "second");
  assert.equal(refused.replies, 1, "no empty reply bubble for the refused request");
  assert.equal(refused.noticeKind, "error");
  assert.equal(refused.noticeRole, "alert");
  assert.match(refused.notice, /^Rate limit reached\. /);
  assert.match(refused.notice, /allows 1 request per minute/);
  assert.match(refused.notice, /You can try again in \d+ seconds \(at /);
});

add("error notices read as sentences: a wrong code, a limit's time said once, a proxy's HTML page", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const cors = { "access-control-allow-origin": "*", "content-type": "application/problem+json" };
  const { page } = await newPage(ctx);
  const starts = [
    { status: 429, headers: { ...cors, "retry-after": "27", "access-control-expose-headers": "Retry-After" }, body: JSON.stringify({ type: "https://sluice.dev/problems/rate-limited", title: "Rate limit reached", status: 429, detail: "Wait 27 s before asking for another code.", retry_after: 27 }) },
    { status: 202, headers: cors, body: JSON.stringify({ challenge_id: "chl_x", expires_in: 600 }) },
  ];
  await page.route("**/auth/otp/start", (r) => r.fulfill(starts.length > 1 ? starts.shift() : starts[0]));
  await page.route("**/auth/otp/verify", (r) => r.fulfill({ status: 401, headers: cors, body: JSON.stringify({ type: "https://sluice.dev/problems/invalid-code", title: "Invalid code", status: 401, detail: "The code is wrong." }) }));
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" } })));
  await openWidget(page);
  await hook(page, "email").fill("words@example.com");
  await hook(page, "send-code").click();
  await page.waitForFunction((rootJs) => !eval(rootJs).querySelector('[data-testid="notice"]').hidden, ROOT_JS);
  const throttled = (await widgetState(page)).notice;
  assert.match(throttled, /^Rate limit reached\. Please wait before asking for another code\. You can try again in 27 seconds \(at /);
  assert.equal(throttled.replace(/\(at [^)]*\)/, "").match(/\b27\b/g).length, 1, `the time is said once: ${throttled}`);
  await hook(page, "send-code").click();
  await hook(page, "code").fill("123456");
  await hook(page, "verify").click();
  await page.waitForFunction((rootJs) => !eval(rootJs).querySelector('[data-testid="notice"]').hidden, ROOT_JS);
  const wrong = (await widgetState(page)).notice;
  assert.equal(wrong, "That code did not work. Check it, or ask for a new one. The code is wrong.");

  const keyed = await widgetProject(ctx, { consumer: true });
  const { page: chat } = await newPage(ctx);
  const answers = [
    { status: 429, headers: { ...cors, "retry-after": "3600", "access-control-expose-headers": "Retry-After" }, body: JSON.stringify({ type: "https://sluice.dev/problems/quota-exceeded", title: "Quota exceeded", status: 429,
      detail: "Your plan `free` allows 10 requests per day; 10 used, 0 remaining. Try again after 2030-01-01T00:00:00.000Z (in 3600 s)." }) },
    { status: 502, headers: { "access-control-allow-origin": "*", "content-type": "text/html" }, body: "<html><body><h1>502 Bad Gateway</h1><hr><center>nginx</center></body></html>" },
    { status: 500, headers: { "access-control-allow-origin": "*", "content-type": "text/plain" }, body: "  <p>Internal <b>Server</b> Error</p>" },
    { status: 503, headers: { "access-control-allow-origin": "*", "content-type": "text/html; charset=utf-8" }, body: "Service temporarily unavailable" },
  ];
  await chat.route("**/chat/completions", (r) => r.fulfill(answers.shift()));
  await chat.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: keyed.slug, api: "chat" }, after: keyFromBackend(keyed.slug) })));
  await openWidget(chat);
  const quota = (await send(chat, "one")).notice;
  assert.match(quota, /^Quota exceeded\. Your plan `free` allows 10 requests per day; 10 used, 0 remaining\. You can try again in 60 minutes \(at /);
  assert.equal(quota.match(/try again/gi).length, 1, `the time is said once: ${quota}`);
  const proxy = (await send(chat, "two")).notice;
  assert.equal(proxy, "The chat service is having trouble right now. Please try again in a moment.");
  const fragment = (await send(chat, "three")).notice;
  assert.equal(fragment, proxy, "a markup fragment without html or body tags is not shown as markup");
  const htmlText = (await send(chat, "four")).notice;
  assert.equal(htmlText, proxy, "an answer sent as text/html is a proxy's page");
  for (const n of [throttled, wrong, quota, proxy]) assert.ok(!n.includes(".."), `no double full stop: ${n}`);
});

add("quota-exceeded mid-stream keeps the partial reply and says so", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true, plan: { tokens_per_day: 100 } });
  const { page } = await newPage(ctx);
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" }, after: keyFromBackend(slug) })));
  await openWidget(page);
  const state = await send(page, "quota");
  assert.equal(state.state, "error", `the stream ended in an error (notice: ${state.notice})`);
  assert.ok(state.reply.startsWith("Hello from Sluice!") && !state.reply.endsWith("token by token."), `partial reply kept: ${state.reply}`);
  assert.match(state.notice, /^Quota exceeded\. /);
  assert.match(state.notice, /You can try again/);
});

add("host page with * { all: unset } cannot break the widget (screenshot)", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true });
  const { page } = await newPage(ctx);
  const head = `<style>* { all: unset } div { font-size: 40px; position: relative; } button { background: red; width: 10px; } .primary { background: lime; }</style>`;
  const body = `<button class="primary" id="host-button">Host button</button>`;
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat", title: "Unset host" }, head, body, after: keyFromBackend(slug) })));
  await openWidget(page);
  expectDemoReply(await send(page, "styles?"), "styles?");
  const m = await page.evaluate((rootJs) => {
    const r = eval(rootJs);
    const box = (sel) => {
      const el = r.querySelector(sel);
      const b = el.getBoundingClientRect();
      const s = getComputedStyle(el);
      return { x: b.x, y: b.y, w: b.width, h: b.height, display: s.display, position: s.position, visibility: s.visibility, bg: s.backgroundColor, fontSize: s.fontSize, radius: s.borderRadius };
    };
    return {
      panel: box('[data-testid="panel"]'), launcher: box('[data-testid="launcher"]'), input: box('[data-testid="input"]'),
      send: box('[data-testid="send"]'), title: box('[data-testid="title"]'), reply: box('[data-testid="message-assistant"]'),
      root: box(".root"), hostButtonBg: getComputedStyle(document.getElementById("host-button")).backgroundColor,
    };
  }, ROOT_JS);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "widget-unset.png") });
  assert.equal(m.panel.position, "fixed");
  assert.equal(m.panel.display, "flex");
  assert.equal(m.panel.visibility, "visible");
  assert.ok(Math.abs(m.panel.w - 380) <= 1 && Math.abs(m.panel.h - 560) <= 1, `panel is 380x560: ${m.panel.w}x${m.panel.h}`);
  assert.ok(Math.abs(m.panel.x + m.panel.w - (1280 - 20)) <= 1 && Math.abs(m.panel.y + m.panel.h - (800 - 88)) <= 1, "panel sits bottom-right");
  assert.equal(m.panel.bg, "rgb(255, 255, 255)");
  assert.ok(Math.abs(m.launcher.w - 56) <= 1 && Math.abs(m.launcher.h - 56) <= 1 && m.launcher.radius === "50%", "round 56px launcher");
  assert.equal(m.root.fontSize, "14px");
  assert.equal(m.title.fontSize, "16px");
  assert.ok(m.input.w > 150 && m.input.h >= 40, `usable message box ${m.input.w}x${m.input.h}`);
  assert.ok(m.send.w >= 44 && m.send.h >= 44, "Send is a real-sized button");
  assert.ok(m.reply.w > 100 && m.reply.h > 30, `the reply bubble has a size ${m.reply.w}x${m.reply.h}`);
  assert.notEqual(m.hostButtonBg, "rgb(37, 99, 235)", "the widget's .primary style does not leak onto the host page");
});

add("360 px viewport: fits, keyboard opens, Escape closes, focus returns, dark theme, left position", widget(), async (ctx) => {
  const { slug } = await widgetProject(ctx, { consumer: true });
  const { page } = await newPage(ctx, { viewport: { width: 360, height: 640 }, isMobile: true, hasTouch: true });
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat", theme: "dark", position: "bottom-left", placeholder: "Ask me" }, after: keyFromBackend(slug) })));
  const launcher = hook(page, "launcher");
  const lb = await launcher.boundingBox();
  assert.ok(lb.x >= 0 && lb.x < 40, `launcher on the left: x=${lb.x}`);
  assert.equal(await launcher.getAttribute("aria-expanded"), "false");
  await launcher.focus();
  await page.keyboard.press("Enter");
  await hook(page, "input").waitFor({ state: "visible" });
  assert.equal(await launcher.getAttribute("aria-expanded"), "true");
  assert.equal((await widgetState(page)).active, "input", "focus moved into the panel");
  const panel = await hook(page, "panel").boundingBox();
  assert.ok(panel.x >= 0 && panel.y >= 0 && panel.x + panel.width <= 360 && panel.y + panel.height <= 640, `panel inside the viewport: ${JSON.stringify(panel)}`);
  for (const id of ["input", "send", "close"]) {
    const b = await hook(page, id).boundingBox();
    assert.ok(b && b.x >= 0 && b.x + b.width <= 360 && b.y + b.height <= 640, `${id} visible inside the viewport`);
  }
  assert.equal(await page.evaluate(() => document.documentElement.scrollWidth <= 360), true, "no horizontal scrolling");
  assert.equal(await hook(page, "input").getAttribute("placeholder"), "Ask me");
  assert.equal(await page.evaluate((rootJs) => getComputedStyle(eval(rootJs).querySelector('[data-testid="panel"]')).backgroundColor, ROOT_JS), "rgb(17, 24, 39)");
  const log = hook(page, "messages");
  assert.equal(await log.getAttribute("aria-live"), "polite");
  assert.equal(await log.getAttribute("role"), "log");
  assert.equal(await page.evaluate((rootJs) => eval(rootJs).querySelector('label[for="sluice-input"]').textContent, ROOT_JS), "Message");
  expectDemoReply(await send(page, "small screen"), "small screen");
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "widget-360-dark.png") });
  await page.keyboard.press("Escape");
  await hook(page, "panel").waitFor({ state: "hidden" });
  assert.equal((await widgetState(page)).active, "launcher", "focus returns to the launcher");
  assert.equal(await launcher.getAttribute("aria-expanded"), "false");
  await page.evaluate(() => window.Sluice.open());
  await hook(page, "panel").waitFor({ state: "visible" });
  await page.evaluate(() => window.Sluice.close());
  await hook(page, "panel").waitFor({ state: "hidden" });
});

add("managed: OTP sign-in with the code from the mailbox, then a streamed reply", widget("managed-auth"), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const { page } = await newPage(ctx);
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat", title: "Managed" } })));
  await openWidget(page);
  await hook(page, "email").waitFor({ state: "visible" });
  assert.equal((await widgetState(page)).active, "email", "focus starts in the email field");
  const email = `otp-${slug}@example.com`;
  await signIn(ctx, page, email, {
    beforeCode: async (code) => {
      assert.equal((await widgetState(page)).active, "code", "focus moves to the code field");
      const wrong = code === "000000" ? "111111" : "000000";
      await hook(page, "code").fill(wrong);
      await hook(page, "verify").click();
      await page.waitForFunction((rootJs) => !eval(rootJs).querySelector('[data-testid="notice"]').hidden, ROOT_JS);
      const refused = await widgetState(page);
      assert.equal(refused.view, "signin-code", "a wrong code keeps the code step");
      assert.equal(refused.noticeKind, "error");
    },
  });
  const state = await widgetState(page);
  assert.equal(state.view, "chat");
  assert.equal(await hook(page, "user").textContent(), email);
  assert.ok(await hook(page, "signout").isVisible(), "a Sign out button");
  const session = await storedSession(page, slug);
  assert.ok(session && session.access_token && session.refresh_token, "tokens stored in localStorage");
  expectDemoReply(await send(page, "signed in"), "signed in");
  await hook(page, "signout").click();
  await hook(page, "email").waitFor({ state: "visible" });
  assert.equal(await storedSession(page, slug), null, "sign-out forgets the tokens");
});

add("managed: a page reload keeps the session", widget("managed-auth"), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const { page } = await newPage(ctx);
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" } })));
  await signIn(ctx, page, `reload-${slug}@example.com`);
  await page.reload();
  await openWidget(page);
  await hook(page, "input").waitFor({ state: "visible" });
  assert.equal(await hook(page, "email").isVisible(), false);
  expectDemoReply(await send(page, "after reload"), "after reload");
});

add("managed: an expired access token is refreshed silently", widget("managed-auth"), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const { page } = await newPage(ctx);
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" } })));
  await signIn(ctx, page, `refresh-${slug}@example.com`);
  const before = await storedSession(page, slug);
  // An expired token (exp in 1970, bad signature) the SDK still believes valid: the gateway must refuse it.
  await page.evaluate(([key]) => {
    const s = JSON.parse(localStorage.getItem(key));
    s.access_token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4IiwiZXhwIjoxfQ.c2lnbmF0dXJl";
    localStorage.setItem(key, JSON.stringify(s));
  }, [`sluice:${slug}:session`]);
  const views = [];
  await page.exposeFunction("__view", (v) => views.push(v));
  await page.evaluate((rootJs) => {
    const panel = eval(rootJs).querySelector('[data-testid="panel"]');
    new MutationObserver(() => window.__view(panel.dataset.view)).observe(panel, { attributes: true, attributeFilter: ["data-view"] });
  }, ROOT_JS);
  const paths = [];
  page.on("request", (r) => paths.push(new URL(r.url()).pathname));
  expectDemoReply(await send(page, "still here"), "still here");
  assert.ok(!views.includes("signin-email"), `no sign-in shown (views: ${views.join(",")})`);
  assert.equal(paths.filter((p) => p.endsWith("/auth/refresh")).length, 1, `one refresh: ${paths.join(" ")}`);
  const after = await storedSession(page, slug);
  assert.ok(!after.access_token.endsWith(".c2lnbmF0dXJl"), "a new access token was stored");
  assert.notEqual(after.refresh_token, before.refresh_token, "the refresh token rotated");
});

add("managed: a copied refresh token is useless without the page's DPoP key; a revoked session returns to sign-in", widget("managed-auth"), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const { page } = await newPage(ctx);
  const email = `revoke-${slug}@example.com`;
  await page.goto(ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" } })));
  await signIn(ctx, page, email);
  const g = ctx.gateway.base;

  // 1. The session is bound to a key the page holds but cannot read out (non-extractable, in IndexedDB).
  let s = await storedSession(page, slug);
  assert.equal(s.token_type, "DPoP", "the widget's session is sender-constrained");
  const key = await page.evaluate(async (name) => {
    const db = await new Promise((ok, no) => {
      const r = indexedDB.open("sluice-dpop", 1);
      r.onsuccess = () => ok(r.result);
      r.onerror = () => no(r.error);
    });
    const pair = await new Promise((ok, no) => {
      const r = db.transaction("keys").objectStore("keys").get(name);
      r.onsuccess = () => ok(r.result);
      r.onerror = () => no(r.error);
    });
    let exported = true;
    await crypto.subtle.exportKey("jwk", pair.privateKey).catch(() => (exported = false));
    return { extractable: pair.privateKey.extractable, exported, alg: pair.privateKey.algorithm.name };
  }, `sluice:${slug}:session`);
  assert.deepEqual(key, { extractable: false, exported: false, alg: "ECDSA" });

  // 2. Tokens copied out of the page: the refresh token does not refresh, the access token does not
  // call, without a proof by the page's key; and the attempt revokes nothing.
  const thief = await fetch(`${g}/v1/${slug}/auth/refresh`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ refresh_token: s.refresh_token }) });
  assert.equal(thief.status, 401, "a refresh token replayed without its DPoP key");
  const thiefMe = await fetch(`${g}/v1/${slug}/auth/me`, { headers: { authorization: `Bearer ${s.access_token}` } });
  assert.equal(thiefMe.status, 401, "an access token replayed without its DPoP key");
  assert.equal((await thiefMe.json()).type.endsWith("invalid-dpop-proof"), true);
  await page.evaluate(([key]) => {
    const v = JSON.parse(localStorage.getItem(key));
    v.expires_at = Date.now() - 1000; // the page refreshes with the same refresh token, and its key
    localStorage.setItem(key, JSON.stringify(v));
  }, [`sluice:${slug}:session`]);
  expectDemoReply(await send(page, "still mine"), "still mine");
  const after = await storedSession(page, slug);
  assert.notEqual(after.refresh_token, s.refresh_token, "the page's own refresh rotated");

  // 3. Signed out elsewhere (the page's own client, without forgetting locally): the next message
  // finds the session gone.
  await page.evaluate(async (key) => {
    const c = await window.Sluice.ready;
    await c.auth._logout(JSON.parse(localStorage.getItem(key)));
  }, `sluice:${slug}:session`);
  const state = await send(page, "am I still in?");
  assert.equal(state.view, "signin-email", `back to sign-in (notice: ${state.notice})`);
  assert.match(state.notice || "", /session has ended/);
  assert.equal(await storedSession(page, slug), null);
});

add("managed: when a session ends elsewhere, its conversation goes with it (the next user neither sees nor sends it)", widget("managed-auth"), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const { page, context } = await newPage(ctx);
  const bodies = [];
  page.on("request", (r) => r.url().endsWith("/chat/completions") && bodies.push(JSON.parse(r.postData())));
  const url = ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" } }));
  await page.goto(url);
  await signIn(ctx, page, `alice-${slug}@example.com`);
  expectDemoReply(await send(page, "alice's private question"), "alice's private question");
  // Her session is revoked elsewhere (not by this widget's Sign out): the next message finds it gone.
  await page.evaluate(async (key) => {
    const c = await window.Sluice.ready;
    await c.auth._logout(JSON.parse(localStorage.getItem(key)));
  }, `sluice:${slug}:session`);
  const ended = await send(page, "alice again");
  assert.equal(ended.view, "signin-email", `back to sign-in (notice: ${ended.notice})`);
  const pageText = () => page.evaluate((rootJs) => document.body.innerText + eval(rootJs).textContent, ROOT_JS);
  assert.ok(!(await pageText()).includes("alice"), "Alice's words (and address) are gone from the page");
  assert.equal(await hook(page, "email").inputValue(), "", "the sign-in form does not offer her address");
  // Bob signs in on the same widget: an empty conversation, and his first request carries only his words.
  await signIn(ctx, page, `bob-${slug}@example.com`);
  assert.ok(!(await pageText()).includes("alice"), "Bob does not see Alice's conversation");
  expectDemoReply(await send(page, "bob's first message"), "bob's first message");
  assert.deepEqual(bodies.at(-1).messages, [{ role: "user", content: "bob's first message" }], "Bob's request carries only his message");

  // Signed out in another tab: this tab drops the conversation at once.
  const other = await context.newPage();
  await other.goto(url);
  await openWidget(other);
  await hook(other, "signout").click();
  await hook(other, "email").waitFor({ state: "visible" });
  await hook(page, "email").waitFor({ state: "visible" });
  assert.ok(!(await pageText()).includes("bob's first"), "the other tab's sign-out took Bob's conversation away");
  assert.equal((await widgetState(page)).notice, "You signed out in another tab.");
  // Signed in again in the other tab: this tab shows the chat, and no longer says it signed out.
  await signIn(ctx, other, `carol-${slug}@example.com`);
  await hook(page, "input").waitFor({ state: "visible" });
  assert.equal((await widgetState(page)).notice, null, "the sign-out notice went when the session came back");
});

add("managed: two tabs sending at once after the access token is refused share one refresh, round after round (nobody signed out)", widget("managed-auth"), async (ctx) => {
  const { slug } = await widgetProject(ctx, { mode: "managed" });
  const { page: a, context } = await newPage(ctx);
  const url = ctx.pages.page(hostHtml(ctx, { attrs: { project: slug, api: "chat" } }));
  const key = `sluice:${slug}:session`;
  const refreshes = [];
  context.on("response", (r) => r.url().endsWith("/auth/refresh") && refreshes.push(r.status()));
  await a.goto(url);
  await signIn(ctx, a, `tabs-${slug}@example.com`);
  const b = await context.newPage();
  b.setDefaultTimeout(15_000);
  await b.goto(url);
  await openWidget(b);
  await hook(b, "input").waitFor({ state: "visible" });
  assert.equal((await storedSession(a, slug)).token_type, "DPoP", "a secure page: Web Locks and DPoP");
  const finished = (p) =>
    p.waitForFunction((rootJs) => {
      const r = eval(rootJs);
      return (r.querySelector('[data-testid="stop"]').hidden && !r.querySelector('[data-state="streaming"]')) || r.querySelector('[data-testid="panel"]').dataset.view !== "chat";
    }, ROOT_JS, { timeout: 30_000 });
  for (let round = 1; round <= 5; round++) {
    // The gateway refuses the access token both tabs hold (a bad signature), so each tab's request
    // is a 401 and each tab asks for a refresh at the same moment.
    const spoiled = await a.evaluate((k) => {
      const s = JSON.parse(localStorage.getItem(k));
      s.access_token = s.access_token.slice(0, -4) + (s.access_token.endsWith("AAAA") ? "BBBB" : "AAAA");
      localStorage.setItem(k, JSON.stringify(s));
      return s.access_token;
    }, key);
    await b.waitForFunction(([k, t]) => JSON.parse(localStorage.getItem(k)).access_token === t, [key, spoiled]);
    await Promise.all([hook(a, "input").fill(`tab A, round ${round}`), hook(b, "input").fill(`tab B, round ${round}`)]);
    const before = refreshes.length;
    await Promise.all([hook(a, "send").click(), hook(b, "send").click()]);
    await Promise.all([finished(a), finished(b)]);
    const [sa, sb] = [await widgetState(a), await widgetState(b)];
    const said = `round ${round}: refreshes ${refreshes.slice(before).join(",")}; A ${sa.view}/${sa.state} (${sa.notice}); B ${sb.view}/${sb.state} (${sb.notice})`;
    assert.ok(sa.view === "chat" && sb.view === "chat", `both tabs still signed in: ${said}`);
    expectDemoReply(sa, `tab A, round ${round}`);
    expectDemoReply(sb, `tab B, round ${round}`);
    assert.deepEqual(refreshes.slice(before), [200], `one refresh for both tabs, never a reused token: ${said}`);
    await a.waitForFunction(([k, t]) => JSON.parse(localStorage.getItem(k) || "null")?.access_token !== t, [key, spoiled]);
    await b.waitForFunction(([k, t]) => JSON.parse(localStorage.getItem(k) || "null")?.access_token !== t, [key, spoiled]);
  }
});

add("react demo (@sluice/react): sign in, a reply streams, Stop keeps it, a reload keeps the session", () => ["assets", "managed-auth", "demo-page"], async (ctx) => {
  const { slug } = await ctx.admin.project({ mode: "managed", origins: [ctx.gateway.base] });
  const { page } = await newPage(ctx);
  await page.goto(`${ctx.gateway.base}/react/?project=${slug}&api=chat`);
  const email = `react-${slug}@example.com`;
  const since = Date.now();
  await page.getByTestId("email").fill(email);
  await page.getByRole("button", { name: "Email me a code" }).click();
  await page.getByTestId("code").waitFor({ state: "visible" });
  await page.getByTestId("code").fill(await ctx.mail.codeFor(email, { since }));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByTestId("user").waitFor({ state: "visible" });
  assert.match(await page.getByTestId("user").textContent(), new RegExp(email.replace(/[.+]/g, "\\$&")));

  await page.getByTestId("input").fill("hello react");
  await page.getByTestId("send").click();
  const reply = page.locator('[data-role="assistant"]').last();
  const seen = [];
  for (let i = 0; i < 100 && seen.length < 3; i++) {
    const t = (await reply.textContent()) || "";
    if (t.length && (!seen.length || t.length > seen.at(-1))) seen.push(t.length);
    await page.waitForTimeout(20);
  }
  assert.ok(seen.length >= 3, `the reply grows token by token (lengths ${seen.join(", ")})`);
  await page.getByTestId("stop").click();
  await page.getByTestId("send").waitFor({ state: "visible" });
  const kept = await reply.textContent();
  await page.waitForTimeout(400);
  assert.equal(await reply.textContent(), kept, "nothing arrives after Stop");
  assert.ok(kept.length > 0, "what arrived is kept");
  assert.equal(await page.getByTestId("chat-error").count(), 0, "a stop is not an error");

  await page.reload();
  await page.getByTestId("user").waitFor({ state: "visible" });
  await page.getByTestId("input").fill("after reload");
  await page.getByTestId("send").click();
  await page.getByTestId("send").waitFor({ state: "visible", timeout: 15000 });
  assert.match(await page.locator('[data-role="assistant"]').last().textContent(), /after reload/);
});

add("CORS: embedding works only from an allowed origin", () => ["assets", "cors"], async (ctx) => {
  const { slug, key } = await ctx.admin.project({ consumer: true });
  ctx.keys.set(slug, key);
  const html = hostHtml(ctx, { attrs: { project: slug, api: "chat" }, after: keyFromBackend(slug) });
  const allowedUrl = ctx.host.page(html);
  const otherUrl = ctx.other.page(html);
  const { page } = await newPage(ctx);

  await page.goto(allowedUrl);
  await openWidget(page);
  let state = await send(page, "before allowing");
  assert.equal(state.replies, 0, "no reply while the origin is not allowed");
  assert.equal(state.noticeKind, "error");

  await ctx.admin.must("PATCH", `/api/v1/projects/${slug}`, { allowed_origins: [ctx.host.origin] });
  const pre = await fetch(`${ctx.gateway.base}/v1/${slug}/chat/chat/completions`, {
    method: "OPTIONS", headers: { origin: ctx.host.origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" },
  });
  assert.ok(pre.status === 204 || pre.status === 200, `preflight status ${pre.status}`);
  assert.equal(pre.headers.get("access-control-allow-origin"), ctx.host.origin);
  assert.match((pre.headers.get("access-control-allow-headers") || "").toLowerCase(), /authorization/);

  await page.reload();
  await openWidget(page);
  expectDemoReply(await send(page, "allowed now"), "allowed now");

  await page.goto(otherUrl);
  await openWidget(page);
  state = await send(page, "from elsewhere");
  assert.equal(state.replies, 0, "another origin is still refused");
  const denied = await fetch(`${ctx.gateway.base}/v1/${slug}/chat/chat/completions`, {
    method: "OPTIONS", headers: { origin: ctx.other.origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" },
  });
  assert.notEqual(denied.headers.get("access-control-allow-origin"), ctx.other.origin);
  assert.notEqual(denied.headers.get("access-control-allow-origin"), "*");
});

// ------------------------------------------------------------------------------------------------
// Runner

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([promise, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

add("oauth: a public client's authorization-code flow with PKCE in the browser: sign-in page, code, consent, redirect", () => ["assets"], async (ctx) => {
  const { slug } = await ctx.admin.project({ mode: "managed" });
  const redirectUri = `${ctx.pages.origin}/oauth/cb`;
  let landed = null;
  ctx.pages.handle("/oauth/cb", (req, res) => {
    landed = new URL(req.url, ctx.pages.origin);
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end("<!doctype html><title>Signed in</title><p id=done>Back in the app.</p>");
  });
  const client = await ctx.admin.must("POST", `/api/v1/projects/${slug}/oauth/clients`, { name: "Browser App", type: "public", redirect_uris: [redirectUri], scopes: ["chat"] });
  const { createHash, randomBytes } = await import("node:crypto");
  const verifier = randomBytes(32).toString("base64url");
  const challenge = createHash("sha256").update(verifier).digest("base64url");
  const authorize = new URL(`${ctx.gateway.base}/v1/${slug}/oauth/authorize`);
  for (const [k, v] of Object.entries({ response_type: "code", client_id: client.client_id, redirect_uri: redirectUri, scope: "chat", state: "b-state", code_challenge: challenge, code_challenge_method: "S256" })) authorize.searchParams.set(k, v);

  // JavaScript off: the page is a plain form flow.
  const { page, logs } = await newPage(ctx, { javaScriptEnabled: false });
  const first = await page.goto(authorize.href);
  assert.equal(first.status(), 200);
  assert.match(first.headers()["content-security-policy"] || "", /frame-ancestors 'none'/);
  assert.ok((await page.textContent("main")).includes("Browser App"), "the page names the client");
  const email = `oauth-${Date.now()}@example.com`;
  const since = Date.now();
  await page.fill("#email", email);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  const code = await ctx.mail.codeFor(email, { since });
  await page.fill("#code", code);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  const consent = await page.textContent("main");
  assert.ok(consent.includes("chat") && consent.includes(email), `the consent screen names the scope and the user: ${consent}`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, "oauth-consent-1280.png") });
  await Promise.all([page.waitForURL(`${redirectUri}?**`), page.click("button[value=allow]")]);
  assert.ok(landed, "the browser reached the client's redirect URI");
  assert.equal(landed.searchParams.get("state"), "b-state");
  assert.equal(landed.searchParams.get("iss"), `${ctx.gateway.base}/v1/${slug}`);
  const got = landed.searchParams.get("code");
  assert.ok(got && got.startsWith("ocd_"), `a code: ${landed}`);

  // The app exchanges the code with its verifier, then chats as the user.
  const form = new URLSearchParams({ grant_type: "authorization_code", code: got, redirect_uri: redirectUri, code_verifier: verifier, client_id: client.client_id });
  const tokenRes = await fetch(`${ctx.gateway.base}/v1/${slug}/oauth/token`, { method: "POST", body: form });
  const tokens = await tokenRes.json();
  assert.equal(tokenRes.status, 200, JSON.stringify(tokens));
  assert.equal(tokens.scope, "chat");
  const chat = await fetch(`${ctx.gateway.base}/v1/${slug}/chat/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${tokens.access_token}`, "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }),
  });
  assert.equal(chat.status, 200, await chat.text());
  // The page cannot be framed by another site.
  const { page: framer } = await newPage(ctx);
  await framer.goto(ctx.pages.page(`<!doctype html><iframe id=f src="${authorize.href}"></iframe>`, "framer"));
  await sleep(500);
  const framed = framer.frames().find((f) => f.url().includes("/oauth/authorize"));
  const inside = framed ? await framed.evaluate(() => document.body ? document.body.innerText : "").catch(() => "") : "";
  assert.ok(!inside.includes("Browser App"), "the authorize page did not render inside a frame");
  assert.equal(logs.filter((l) => l.startsWith("pageerror")).length, 0, logs.join("\n"));
});

add("owner console: sign in, project and API, auth mode, a key shown once and revoked, a plan, usage charts (screenshots)", () => ["assets"], async (ctx) => {
  const g = ctx.gateway.base;
  const { page, logs } = await newPage(ctx);
  page.on("dialog", (d) => d.accept());
  const inForm = (form, name) => page.locator(`[data-testid="${form}"] [name="${name}"]`);
  const submit = (form) => page.locator(`[data-testid="${form}-submit"]`).click();
  const title = () => page.locator('[data-testid="title"]').textContent();
  const chat = async (key) => (await fetch(`${g}/v1/console-demo/chat/chat/completions`, { method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }) })).status;

  await page.goto(`${g}/console`);
  const csp = (await page.request.get(`${g}/console`)).headers()["content-security-policy"] || "";
  assert.match(csp, /frame-ancestors 'none'/);
  await page.screenshot({ path: path.join(ARTIFACTS, "console-sign-in-1280.png") });
  await page.locator('[data-testid="dev-email"]').fill("console.owner@example.com");
  await submit("dev-login");
  await page.waitForFunction(() => document.querySelector('[data-testid="title"]')?.textContent === "Projects");
  // A project, then an API on the built-in demo upstream.
  await inForm("create-project", "slug").fill("console-demo");
  await inForm("create-project", "name").fill("Console demo");
  await submit("create-project");
  await page.waitForFunction(() => document.querySelector('[data-testid="title"]')?.textContent === "Console demo");
  await inForm("create-api", "slug").fill("chat");
  await inForm("create-api", "name").fill("Console chat");
  await inForm("create-api", "base_url").fill("demo");
  await inForm("create-api", "default_model").fill("sluice-demo-1");
  await submit("create-api");
  await page.waitForFunction(() => document.querySelector('[data-testid="title"]')?.textContent === "Console chat");
  const apiId = decodeURIComponent(page.url().split("#/a/")[1].split("/")[0]);
  // Auth mode: managed, and the data plane sees it (the project gains its OTP sign-in).
  const otp = () => fetch(`${g}/v1/console-demo/auth/otp/start`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ email: "u@example.com" }) }).then((r) => r.status);
  assert.equal(await otp(), 404, "no sign-in before managed mode");
  await page.goto(`${g}/console#/a/${encodeURIComponent(apiId)}/auth`);
  await page.locator('[data-testid="auth-mode-select"]').selectOption("managed");
  assert.match(await page.locator('[data-testid="mode-warning"]').textContent(), /email code/);
  await submit("auth-mode");
  await page.locator('[data-testid="toast-ok"]', { hasText: "managed" }).waitFor();
  assert.equal(await otp(), 202, "managed mode took effect on the data plane");
  // A consumer with a system-generated key: shown once.
  await page.goto(`${g}/console#/p/console-demo/consumers`);
  await inForm("create-consumer", "name").fill("Console user");
  await submit("create-consumer");
  const secret = (await page.locator('[data-testid="secret-value"]').textContent()).trim();
  assert.match(secret, /^ask_live_/);
  assert.match(await page.locator('[data-testid="secret-box"]').textContent(), /You will not see this again/);
  assert.equal(await chat(secret), 200, "the new key chats");
  await page.reload();
  await page.locator('[data-testid="consumers"]').waitFor();
  assert.equal(await page.locator('[data-testid="secret-value"]').count(), 0, "the secret is gone after a reload");
  assert.equal(await page.evaluate((s) => JSON.stringify({ ...sessionStorage, ...localStorage }).includes(s), secret), false, "the secret is stored nowhere");
  // Revoked from the consumer's page: the next chat call fails.
  await page.locator('[data-testid="consumers"] a', { hasText: "Console user" }).click();
  await page.locator('[data-testid="keys"]').waitFor();
  const consumerId = decodeURIComponent(page.url().split("/").pop());
  await page.screenshot({ path: path.join(ARTIFACTS, "console-consumer-1280.png"), fullPage: true });
  await page.locator('[data-testid^="revoke-"]').first().click();
  await page.locator('[data-testid="toast-ok"]', { hasText: "revoked" }).waitFor();
  assert.equal(await chat(secret), 401, "the revoked key fails");
  await page.locator('[data-testid="keys-empty"]').waitFor();
  // A second key for traffic, a plan, and the consumer assigned to it.
  await inForm("create-key", "name").fill("traffic");
  await submit("create-key");
  const second = (await page.locator('[data-testid="secret-value"]').textContent()).trim();
  await page.goto(`${g}/console#/a/${encodeURIComponent(apiId)}/plans`);
  await inForm("create-plan", "name").fill("pro");
  await inForm("create-plan", "requests_per_day").fill("50");
  await submit("create-plan");
  await page.locator('[data-testid="plans"]', { hasText: "pro" }).waitFor();
  await inForm("assign-plan", "consumer").fill(consumerId);
  await inForm("assign-plan", "plan").selectOption("pro");
  await submit("assign-plan");
  await page.locator('[data-testid="toast-ok"]', { hasText: "is on pro" }).waitFor();
  for (let i = 0; i < 3; i++) assert.equal(await chat(second), 200);
  const usage = await fetch(`${g}/v1/console-demo/chat/usage`, { headers: { authorization: `Bearer ${second}` } }).then((r) => r.json());
  assert.equal(usage.plan?.name ?? usage.plan, "pro", JSON.stringify(usage));
  // Usage: the chart's points are the usage API's numbers.
  let api = null;
  for (let i = 0; i < 40; i++) {
    api = await ctx.admin.call("GET", `/api/v1/gateway/apis/${encodeURIComponent(apiId)}/usage?group_by=day`);
    if (api.json?.totals?.requests >= 4) break;
    await sleep(250);
  }
  await page.goto(`${g}/console#/a/${encodeURIComponent(apiId)}/usage`);
  await page.locator('[data-testid="chart-requests"]').waitFor();
  const points = await page.locator('[data-testid="chart-requests"] circle').evaluateAll((cs) => cs.map((c) => [c.dataset.label, Number(c.dataset.value)]));
  const expected = api.json.groups.map((gr) => [gr.day, gr.requests]);
  assert.deepEqual(points, expected, "the chart draws the usage API's days");
  assert.equal(Number(await page.locator('[data-testid="total-requests"]').textContent()), api.json.totals.requests);
  const tokens = await page.locator('[data-testid="chart-tokens"] circle').evaluateAll((cs) => cs.map((c) => Number(c.dataset.value)));
  assert.deepEqual(tokens, api.json.groups.map((gr) => gr.total_tokens));
  assert.equal(Number(await page.locator('[data-testid="total-refused"]').textContent()), api.json.totals.refused);
  const perConsumer = await page.locator('[data-testid="bars-consumer"] [data-value]').evaluateAll((bs) => bs.map((b) => Number(b.dataset.value)));
  assert.deepEqual(perConsumer, [api.json.totals.total_tokens], "one consumer: all the tokens");
  await page.screenshot({ path: path.join(ARTIFACTS, "console-usage-1280.png"), fullPage: true });
  await page.setViewportSize({ width: 360, height: 740 });
  await page.screenshot({ path: path.join(ARTIFACTS, "console-usage-360.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the usage page is ${overflow}px wider than 360`);
  // The org's audit log shows the console's writes; keyboard: the sign-out button is reachable.
  await page.goto(`${g}/console#/org/console-owner-example-com/audit`);
  await page.locator('[data-testid="audit"]').waitFor();
  assert.match(await page.locator('[data-testid="audit"]').textContent(), /POST \/api\/v1\/gateway\/apis\/\{api\}\/plans/);
  await page.screenshot({ path: path.join(ARTIFACTS, "console-audit-360.png"), fullPage: true });
  assert.deepEqual(logs.filter((l) => l.startsWith("pageerror")), []);
  // Dark, at 360 px, driven by the keyboard alone: sign in and reach the org's members.
  const dark = await newPage(ctx, { colorScheme: "dark", viewport: { width: 360, height: 740 } });
  await dark.page.goto(`${g}/console`);
  await dark.page.locator('[data-testid="dev-email"]').focus();
  await dark.page.keyboard.press("Control+A");
  await dark.page.keyboard.type("console.owner@example.com");
  await dark.page.keyboard.press("Enter");
  await dark.page.waitForFunction(() => document.querySelector('[data-testid="title"]')?.textContent === "Projects");
  const bg = await dark.page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(bg, "rgb(250, 250, 250)", "dark mode has a dark background");
  await dark.page.goto(`${g}/console#/org/console-owner-example-com/members`);
  await dark.page.locator('[data-testid="members"]').waitFor();
  await dark.page.screenshot({ path: path.join(ARTIFACTS, "console-members-360-dark.png"), fullPage: true });
  assert.deepEqual(dark.logs.filter((l) => l.startsWith("pageerror")), []);
});

add("owner console: a tab opened from another signs in on its own, so reloading either keeps both signed in", () => ["assets"], async (ctx) => {
  const g = ctx.gateway.base;
  const { page: a, context } = await newPage(ctx);
  const title = (p) => p.evaluate(() => document.querySelector('[data-testid="title"]')?.textContent || "");
  const refreshes = [];
  context.on("response", (r) => r.url().endsWith("/api/v1/auth/refresh") && refreshes.push(r.status()));
  const devLogin = async (p) => {
    await p.locator('[data-testid="dev-email"]').fill("tabs.owner@example.com");
    await p.locator('[data-testid="dev-login-submit"]').click();
    await p.waitForFunction(() => document.querySelector('[data-testid="title"]')?.textContent === "Projects");
  };
  await a.goto(`${g}/console`);
  await devLogin(a);
  // A second tab opened from the first starts with a copy of its session storage (and refresh token).
  const [b] = await Promise.all([context.waitForEvent("page"), a.evaluate(() => window.open(location.href, "_blank"))]);
  await b.waitForLoadState();
  await b.locator('[data-testid="copied-tab"]').waitFor();
  assert.equal(await title(b), "Sign in", "the copied tab does not use the copied refresh token");
  await devLogin(b);
  for (const p of [a, b, a, b]) {
    await p.reload();
    await p.waitForFunction(() => ["Projects", "Sign in"].includes(document.querySelector('[data-testid="title"]')?.textContent));
    assert.equal(await title(p), "Projects", `still signed in after a reload (refreshes: ${refreshes.join(" ")})`);
  }
  assert.deepEqual(refreshes, [200, 200, 200, 200], "every refresh was its own tab's token");
});

async function main() {
  const selected = cases.filter((c) => filters.length === 0 || filters.some((f) => c.name.toLowerCase().includes(f)));
  if (!fs.existsSync(CHROMIUM)) {
    console.error(`${CHROMIUM} is missing: run scripts/setup-browser.sh`);
    console.log(`0 passed, ${selected.length} failed`);
    return 1;
  }
  const cleanup = [];
  // Ctrl-C or a kill still stops wrangler (its own process group) and the servers.
  for (const sig of ["SIGINT", "SIGTERM"]) {
    process.once(sig, async () => {
      for (const fn of cleanup.reverse()) await Promise.resolve().then(fn).catch(() => {});
      process.exit(130);
    });
  }
  let passed = 0;
  let failed = 0;
  const waiting = new Map();
  try {
    const mail = await startMailServer();
    cleanup.push(() => mail.close());
    const gateway = await startGateway({ mailUrl: mail.url });
    cleanup.push(() => gateway.stop());
    const features = await probeFeatures(gateway.base);
    const host = await startPageServer();
    const other = await startPageServer();
    cleanup.push(() => host.close(), () => other.close());
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    cleanup.push(() => browser.close());

    const keys = new Map();
    for (const server of [host, other]) {
      server.handle("/backend/key", (req, res) => {
        const key = keys.get(new URL(req.url, "http://x").searchParams.get("project"));
        res.writeHead(key ? 200 : 404, { "content-type": "text/plain" });
        res.end(key || "unknown project");
      });
      server.handle("/backend/token", (req, res) => {
        const key = keys.get(new URL(req.url, "http://x").searchParams.get("project"));
        const signedIn = /(?:^|;\s*)sid=signed-in/.test(req.headers.cookie || "");
        res.writeHead(signedIn && key ? 200 : 401, { "content-type": "application/json" });
        res.end(JSON.stringify(signedIn && key ? { consumer_key: key } : { error: "not signed in" }));
      });
    }
    const base = {
      browser, gateway, mail, host, other, keys, features,
      admin: adminClient(gateway),
      assetBase: gateway.base,
      pages: host,
    };
    console.log(`# gateway (and widget) ${gateway.base}; host pages on ${host.origin} and ${other.origin}`);
    console.log(`# gateway features: ${Object.entries(features).map(([k, v]) => `${k}=${v ? "yes" : "no"}`).join(" ")}`);

    for (const c of selected) {
      const ctx = { ...base, cleanup: [], logs: [] };
      const missing = c.needs(ctx).filter((f) => !features[f]);
      try {
        if (missing.length) throw new Waiting(missing.join(", "));
        await withTimeout(c.fn(ctx), CASE_TIMEOUT_MS, c.name);
        passed++;
        console.log(`test ${c.name} ... ok`);
      } catch (err) {
        failed++;
        if (err instanceof Waiting) {
          for (const f of err.feature.split(", ")) waiting.set(f, [...(waiting.get(f) || []), c.name]);
          console.log(`test ${c.name} ... FAILED (${err.message}; not run)`);
        } else {
          console.log(`test ${c.name} ... FAILED`);
          console.log(String(err && err.stack ? err.stack : err).split("\n").map((l) => `    ${l}`).join("\n"));
          const logs = ctx.logs.flat().slice(-15);
          if (logs.length) console.log(`    page log:\n${logs.map((l) => `      ${l}`).join("\n")}`);
        }
      } finally {
        for (const fn of ctx.cleanup.reverse()) await fn().catch(() => {});
      }
    }
    if (waiting.size) {
      console.log("# waiting on gateway features:");
      for (const [f, names] of waiting) console.log(`#   ${f}: ${FEATURE_ROUTES[f] || f} (${names.length} case${names.length > 1 ? "s" : ""})`);
    }
    if (failed) console.log(`# wrangler log: ${gateway.logPath}`);
  } catch (err) {
    console.error(`setup failed: ${err && err.stack ? err.stack : err}`);
    failed += selected.length - passed - failed;
  } finally {
    for (const fn of cleanup.reverse()) await Promise.resolve().then(fn).catch(() => {});
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

const code = await main();
process.exit(code);
