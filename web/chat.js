// Sluice chat widget: a classic <script src=".../chat.js" data-project data-api> that renders a launcher and chat panel in a Shadow DOM, built on the gateway's /sdk.js.
//
// Attributes: data-project, data-api (required); data-title, data-theme (light|dark|auto),
// data-position (bottom-right|bottom-left), data-placeholder, data-model, data-token-url,
// data-mode (managed|consumer-key-only|byo-jwt; by default: managed unless a credential source is given).
// Credentials never come from the page's HTML: managed mode signs in with an emailed code; the other
// modes get them at run time from data-token-url or window.Sluice.setToken(fn) / setConsumerKey(fn).
(() => {
  "use strict";

  const script = document.currentScript;
  if (!script || !script.src) {
    console.error("[sluice] chat.js must be loaded with <script src=\"https://<gateway>/chat.js\">.");
    return;
  }
  const previous = window.Sluice;
  if (previous && previous.__widget) {
    console.warn("[sluice] chat.js was loaded twice; the first widget stays.");
    return;
  }

  // ----------------------------------------------------------------------------------------------
  // Configuration

  const src = new URL(script.src, document.baseURI);
  /** The gateway: wherever this script came from (so a path prefix works too). */
  const base = new URL(".", src).href.replace(/\/+$/, "");
  const ds = script.dataset;
  const MODES = { managed: "managed", aerostack: "managed", "consumer-key-only": "consumer-key-only", key: "consumer-key-only", "byo-jwt": "byo-jwt", token: "byo-jwt" };
  const config = {
    project: ds.project || "",
    api: ds.api || "",
    title: ds.title || "Chat",
    theme: ["light", "dark", "auto"].includes(ds.theme) ? ds.theme : "auto",
    position: ds.position === "bottom-left" ? "bottom-left" : "bottom-right",
    placeholder: ds.placeholder || "Type a message…",
    model: ds.model || undefined,
    tokenUrl: ds.tokenUrl ? new URL(ds.tokenUrl, document.baseURI).href : "",
    mode: MODES[(ds.mode || "").toLowerCase()] || "",
  };
  if (ds.consumerKey || ds.key || ds.token) {
    console.warn("[sluice] credentials in data- attributes are ignored: never put a consumer key or token in page HTML. Use data-token-url or Sluice.setConsumerKey(fn).");
  }

  // ----------------------------------------------------------------------------------------------
  // The global `Sluice` object: usable at once; credential calls made before the SDK loads are kept
  // and applied when it does.

  let provider = null; // { kind: "token" | "consumer-key", source: string | function }
  let client = null;
  let ui = null; // the shadow DOM's elements, once built (the body may not exist yet)
  let pendingOpen = false; // open() called before the interface was built
  let providerWaiters = [];
  // `conversation` counts conversations: a reply that arrives after its conversation was dropped is not kept.
  const state = { view: "loading", open: false, streaming: null, pendingEmail: "", history: [], conversation: 0, checkedSession: false, broken: false };

  const Sluice = {
    __widget: true,
    open: () => open(),
    close: () => close(),
    toggle: () => (state.open ? close() : open()),
    setToken: (source) => setProvider("token", source),
    setConsumerKey: (source) => setProvider("consumer-key", source),
    signOut: () => signOut(),
    /** Resolves with the SDK client once /sdk.js has loaded. */
    ready: null,
  };
  window.Sluice = Sluice;

  function setProvider(kind, source) {
    provider = source == null ? null : { kind, source };
    applyProvider();
    if (provider) {
      for (const w of providerWaiters) w();
      providerWaiters = [];
    }
    if (ui && state.open) showCurrentView();
  }

  function providerMode() {
    if (config.mode) return config.mode !== "managed";
    return Boolean(config.tokenUrl || provider);
  }

  // A token URL answers JSON {token} / {consumer_key} or plain text; JWTs are reused until they near expiry.
  let fetched = null;
  async function fromTokenUrl({ retry } = {}) {
    if (!retry && fetched && (!fetched.exp || fetched.exp * 1000 - 30_000 > Date.now())) return fetched.value;
    const res = await fetch(config.tokenUrl, { credentials: "include", headers: { accept: "application/json, text/plain" } });
    if (!res.ok) throw new Error(`The token URL answered ${res.status}.`);
    const text = (await res.text()).trim();
    let value = text;
    if ((res.headers.get("content-type") || "").includes("json") || text.startsWith("{")) {
      const o = JSON.parse(text);
      value = (o && (o.token || o.access_token || o.consumer_key || o.key)) || "";
    }
    if (!value) throw new Error("The token URL sent no token.");
    fetched = { value, exp: jwtExpiry(value) };
    return value;
  }

  function jwtExpiry(value) {
    const parts = String(value).split(".");
    if (parts.length !== 3) return undefined;
    try {
      const payload = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
      return typeof payload.exp === "number" ? payload.exp : undefined;
    } catch {
      return undefined;
    }
  }

  function applyProvider() {
    if (!client) return;
    if (!providerMode()) client.setToken(null); // managed: the SDK's stored session
    else if (provider && provider.kind === "token") client.setToken(provider.source);
    else if (provider) client.setConsumerKey(provider.source);
    else if (config.tokenUrl) client.setToken(fromTokenUrl);
    else client.setToken(null);
  }

  /** In a provider mode, waits (briefly) for the page to hand over a credential source. */
  function credentialReady(ms) {
    if (provider || config.tokenUrl) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok) => {
        clearTimeout(timer);
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), ms);
      providerWaiters.push(() => done(true));
    });
  }

  // Loads the SDK from the same gateway (same version query, so a cache-busted widget gets its SDK).
  const sdkUrl = `${base}/sdk.js${src.searchParams.get("v") ? `?v=${encodeURIComponent(src.searchParams.get("v"))}` : ""}`;
  Sluice.ready = import(sdkUrl).then((sdk) => {
    client = new sdk.SluiceClient({ baseUrl: base, project: config.project });
    applyProvider();
    client.auth.onChange((event) => {
      if (providerMode()) return;
      if (event === "expired") sessionEnded("Your session has ended. Please sign in again.");
      else if (event === "signedout") sessionEnded();
    });
    // Another tab of this site signed out, or signed in as someone else: this tab's conversation
    // belongs to a session that is no longer the stored one.
    window.addEventListener("storage", (e) => {
      if (providerMode() || e.key !== client.storageKey || e.oldValue === e.newValue) return;
      if (!e.newValue) sessionEnded("You signed out in another tab.");
      else if (sessionUser(e.oldValue) !== sessionUser(e.newValue)) {
        dropConversation();
        // A session appeared (signed in again in another tab): "You signed out in another tab." and
        // the like are about a session that is over.
        clearNotice();
        state.checkedSession = false;
        show("loading");
        if (ui && state.open) showCurrentView().catch((err) => console.error("[sluice]", err));
      }
    });
    if (ui && state.open) showCurrentView();
    return client;
  });
  Sluice.ready.catch((err) => {
    console.error("[sluice] could not load the SDK from", sdkUrl, err);
    state.broken = true;
    show("unavailable");
  });

  // Calls queued by a page snippet that ran first: window.Sluice = window.Sluice || { q: [] }.
  if (previous && Array.isArray(previous.q)) {
    for (const [method, ...args] of previous.q) if (typeof Sluice[method] === "function") Sluice[method](...args);
  }

  // ----------------------------------------------------------------------------------------------
  // The interface, in a Shadow DOM so the page's CSS cannot reach in and ours cannot leak out

  const STYLE = `
:host { all: initial !important; display: block !important; }
[hidden] { display: none !important; }
*, *::before, *::after { box-sizing: border-box; }
.root {
  --bg: #ffffff; --fg: #111827; --muted: #6b7280; --border: #e5e7eb; --accent: #2563eb; --accent-fg: #ffffff;
  --user-bg: #2563eb; --user-fg: #ffffff; --bot-bg: #f3f4f6; --bot-fg: #111827; --field-bg: #ffffff;
  --notice-bg: #eff6ff; --notice-fg: #1e3a8a; --error-bg: #fef2f2; --error-fg: #991b1b; --focus: #93c5fd;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Helvetica Neue", Arial, sans-serif;
  font-size: 14px; line-height: 1.45; color: var(--fg); text-align: left; direction: ltr;
}
.root[data-theme="dark"] {
  --bg: #111827; --fg: #f9fafb; --muted: #9ca3af; --border: #374151; --accent: #3b82f6; --accent-fg: #ffffff;
  --user-bg: #2563eb; --user-fg: #ffffff; --bot-bg: #1f2937; --bot-fg: #f9fafb; --field-bg: #0b1220;
  --notice-bg: #1e293b; --notice-fg: #bfdbfe; --error-bg: #3b0d0d; --error-fg: #fecaca; --focus: #60a5fa;
}
@media (prefers-color-scheme: dark) {
  .root[data-theme="auto"] {
    --bg: #111827; --fg: #f9fafb; --muted: #9ca3af; --border: #374151; --accent: #3b82f6; --accent-fg: #ffffff;
    --user-bg: #2563eb; --user-fg: #ffffff; --bot-bg: #1f2937; --bot-fg: #f9fafb; --field-bg: #0b1220;
    --notice-bg: #1e293b; --notice-fg: #bfdbfe; --error-bg: #3b0d0d; --error-fg: #fecaca; --focus: #60a5fa;
  }
}
button, input, textarea { font: inherit; color: inherit; margin: 0; }
button { cursor: pointer; }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.sr-only { position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
.launcher {
  position: fixed; bottom: 20px; right: 20px; z-index: 2147483000; width: 56px; height: 56px; border-radius: 50%;
  border: 0; padding: 0; display: flex; align-items: center; justify-content: center;
  background: var(--accent); color: var(--accent-fg); box-shadow: 0 6px 20px rgba(0,0,0,.25);
}
.launcher svg { width: 28px; height: 28px; display: block; }
.panel {
  position: fixed; bottom: 88px; right: 20px; z-index: 2147483001; width: 380px; max-width: calc(100vw - 24px);
  height: 560px; max-height: calc(100vh - 108px); display: flex; flex-direction: column; overflow: hidden;
  background: var(--bg); color: var(--fg); border: 1px solid var(--border); border-radius: 14px;
  box-shadow: 0 12px 40px rgba(0,0,0,.25);
}
.left .launcher { right: auto; left: 20px; }
.left .panel { right: auto; left: 20px; }
@media (max-width: 480px) {
  .panel, .left .panel { inset: 0; width: auto; height: auto; max-width: none; max-height: none; border: 0; border-radius: 0; }
}
.header { display: flex; align-items: center; gap: 8px; padding: 12px 12px 12px 16px; border-bottom: 1px solid var(--border); flex: none; }
.header h2 { flex: 1; min-width: 0; margin: 0; font-size: 16px; font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.who { color: var(--muted); font-size: 12px; max-width: 40%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.text-button { background: none; border: 1px solid var(--border); border-radius: 8px; padding: 4px 10px; font-size: 13px; }
.icon-button { background: none; border: 0; width: 36px; height: 36px; border-radius: 8px; font-size: 22px; line-height: 1; display: flex; align-items: center; justify-content: center; }
.icon-button:hover, .text-button:hover { background: var(--bot-bg); }
.body { flex: 1; min-height: 0; display: flex; flex-direction: column; }
.messages { flex: 1; min-height: 0; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
.empty { color: var(--muted); margin: auto; text-align: center; }
.msg { max-width: 85%; padding: 8px 12px; border-radius: 14px; white-space: pre-wrap; overflow-wrap: anywhere; }
.msg.user { align-self: flex-end; background: var(--user-bg); color: var(--user-fg); border-bottom-right-radius: 4px; }
.msg.assistant { align-self: flex-start; background: var(--bot-bg); color: var(--bot-fg); border-bottom-left-radius: 4px; }
.msg.assistant[data-state="streaming"]:empty::after { content: "…"; color: var(--muted); }
.notice { margin: 0 16px 8px; padding: 8px 12px; border-radius: 8px; background: var(--notice-bg); color: var(--notice-fg); font-size: 13px; flex: none; }
.notice[data-kind="error"] { background: var(--error-bg); color: var(--error-fg); }
.composer { display: flex; gap: 8px; padding: 12px; border-top: 1px solid var(--border); flex: none; align-items: flex-end; }
.composer textarea { flex: 1; min-width: 0; resize: none; height: 44px; max-height: 120px; padding: 10px 12px; border-radius: 10px; border: 1px solid var(--border); background: var(--field-bg); font-size: 16px; line-height: 1.3; }
.primary { background: var(--accent); color: var(--accent-fg); border: 0; border-radius: 10px; padding: 0 16px; height: 44px; font-weight: 600; flex: none; }
.primary[disabled] { opacity: .55; cursor: default; }
.secondary { background: none; border: 1px solid var(--border); border-radius: 10px; padding: 0 14px; height: 44px; flex: none; }
.form { padding: 20px 16px; display: flex; flex-direction: column; gap: 10px; overflow-y: auto; }
.form p { margin: 0; color: var(--muted); }
.form label { font-weight: 600; }
.form input { width: 100%; height: 44px; padding: 0 12px; border-radius: 10px; border: 1px solid var(--border); background: var(--field-bg); font-size: 16px; }
.form .code { letter-spacing: .3em; font-variant-numeric: tabular-nums; }
.link { background: none; border: 0; padding: 0; color: var(--accent); text-decoration: underline; align-self: flex-start; }
.status { padding: 24px 16px; color: var(--muted); }
`;

  const ICON = '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path fill="currentColor" d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2zm2 5v2h12V9H6zm0 4v2h8v-2H6z"/></svg>';

  const MARKUP = `
<div class="root" part="root">
  <button type="button" class="launcher" data-testid="launcher" aria-label="Open chat" aria-expanded="false" aria-controls="sluice-panel">${ICON}</button>
  <section class="panel" id="sluice-panel" data-testid="panel" role="dialog" aria-modal="false" aria-labelledby="sluice-title" hidden>
    <div class="header">
      <h2 id="sluice-title" data-testid="title"></h2>
      <span class="who" data-testid="user" hidden></span>
      <button type="button" class="text-button" data-testid="signout" hidden>Sign out</button>
      <button type="button" class="icon-button" data-testid="close" aria-label="Close chat">×</button>
    </div>
    <div class="body">
      <p class="status" data-testid="loading">Loading…</p>
      <p class="status" data-testid="unavailable" hidden>The chat is unavailable right now. Please try again later.</p>
      <form class="form" data-testid="signin-email" novalidate hidden>
        <p>Sign in with your email to start chatting. We will send you a 6-digit code; no password needed.</p>
        <label for="sluice-email">Email</label>
        <input id="sluice-email" data-testid="email" type="email" name="email" autocomplete="email" inputmode="email" required>
        <button type="submit" class="primary" data-testid="send-code">Send code</button>
      </form>
      <form class="form" data-testid="signin-code" novalidate hidden>
        <p data-testid="code-hint"></p>
        <label for="sluice-code">6-digit code</label>
        <input id="sluice-code" class="code" data-testid="code" type="text" name="code" autocomplete="one-time-code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" required>
        <button type="submit" class="primary" data-testid="verify">Sign in</button>
        <button type="button" class="link" data-testid="change-email">Use a different email</button>
      </form>
      <div class="messages" data-testid="messages" role="log" aria-live="polite" aria-relevant="additions text" aria-label="Conversation" tabindex="0" hidden>
        <p class="empty" data-testid="empty">Ask anything to start.</p>
      </div>
    </div>
    <div class="notice" data-testid="notice" hidden></div>
    <form class="composer" data-testid="composer" hidden>
      <label for="sluice-input" class="sr-only">Message</label>
      <textarea id="sluice-input" data-testid="input" name="message" rows="1" autocomplete="off"></textarea>
      <button type="submit" class="primary" data-testid="send">Send</button>
      <button type="button" class="secondary" data-testid="stop" hidden>Stop</button>
    </form>
  </section>
</div>`;

  function build() {
    const host = document.createElement("div");
    host.id = "sluice-chat";
    host.setAttribute("data-sluice-widget", "");
    const shadow = host.attachShadow({ mode: "open" });
    const style = document.createElement("style");
    style.textContent = STYLE;
    shadow.append(style);
    const holder = document.createElement("div");
    holder.innerHTML = MARKUP; // static markup only: no page or model text goes through innerHTML
    shadow.append(...holder.childNodes);
    const $ = (id) => shadow.querySelector(`[data-testid="${id}"]`);
    ui = {
      host,
      root: shadow.querySelector(".root"),
      launcher: $("launcher"),
      panel: $("panel"),
      title: $("title"),
      user: $("user"),
      signout: $("signout"),
      close: $("close"),
      loading: $("loading"),
      unavailable: $("unavailable"),
      emailForm: $("signin-email"),
      email: $("email"),
      sendCode: $("send-code"),
      codeForm: $("signin-code"),
      codeHint: $("code-hint"),
      code: $("code"),
      verify: $("verify"),
      changeEmail: $("change-email"),
      messages: $("messages"),
      empty: $("empty"),
      notice: $("notice"),
      composer: $("composer"),
      input: $("input"),
      send: $("send"),
      stop: $("stop"),
    };
    ui.root.dataset.theme = config.theme;
    if (config.position === "bottom-left") ui.root.classList.add("left");
    ui.title.textContent = config.title;
    ui.input.placeholder = config.placeholder;
    ui.input.setAttribute("aria-label", "Message");

    ui.launcher.addEventListener("click", () => (state.open ? close() : open()));
    ui.close.addEventListener("click", () => close());
    ui.root.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && state.open) {
        e.stopPropagation();
        close();
      }
    });
    ui.signout.addEventListener("click", () => signOut());
    ui.emailForm.addEventListener("submit", onEmail);
    ui.codeForm.addEventListener("submit", onCode);
    ui.changeEmail.addEventListener("click", () => {
      state.pendingEmail = "";
      clearNotice();
      show("signin-email");
      ui.email.focus();
    });
    ui.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      sendMessage();
    });
    ui.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        sendMessage();
      }
    });
    ui.stop.addEventListener("click", () => state.streaming && state.streaming.abort());
    document.body.append(host);
  }

  // ----------------------------------------------------------------------------------------------
  // Views

  /** Shows one view: loading, unavailable, signin-email, signin-code or chat. */
  function show(view) {
    state.view = view;
    if (!ui) return;
    ui.loading.hidden = view !== "loading";
    ui.unavailable.hidden = view !== "unavailable";
    ui.emailForm.hidden = view !== "signin-email";
    ui.codeForm.hidden = view !== "signin-code";
    ui.messages.hidden = view !== "chat";
    ui.composer.hidden = view !== "chat";
    const signedInManaged = view === "chat" && !providerMode();
    ui.signout.hidden = !signedInManaged;
    ui.user.hidden = !signedInManaged || !ui.user.textContent;
    ui.panel.dataset.view = view;
  }

  function focusView() {
    if (!ui || !state.open) return;
    const target = { "signin-email": ui.email, "signin-code": ui.code, chat: ui.input }[state.view] || ui.close;
    target.focus();
  }

  /** Picks the view for the current mode and session, then checks a stored session once. */
  async function showCurrentView() {
    if (state.broken) {
      show("unavailable");
      return;
    }
    if (!client) {
      show("loading");
      return;
    }
    if (providerMode()) {
      if (state.view !== "chat") {
        show("chat");
        focusView();
      }
      return;
    }
    const session = await client.auth.getSession();
    if (!session) {
      const wanted = state.pendingEmail ? "signin-code" : "signin-email";
      if (state.view !== wanted) {
        show(wanted);
        focusView();
      }
      return;
    }
    if (state.view !== "chat") {
      if (session.email) ui.user.textContent = session.email;
      show("chat");
      focusView();
    }
    if (!state.checkedSession) {
      state.checkedSession = true;
      // Confirms the session (refreshing it if needed); a revoked one sends the user back to sign-in.
      client.auth.me().then(
        (me) => {
          if (me && me.email) {
            ui.user.textContent = me.email;
            ui.user.hidden = state.view !== "chat";
          }
        },
        (err) => {
          if (err && err.status === 401) sessionEnded("Your session has ended. Please sign in again.");
        },
      );
    }
  }

  function open() {
    if (!ui) {
      pendingOpen = true;
      return;
    }
    state.open = true;
    ui.panel.hidden = false;
    ui.launcher.setAttribute("aria-expanded", "true");
    ui.launcher.setAttribute("aria-label", "Close chat");
    if (!client) show("loading");
    focusView();
    showCurrentView().catch((err) => console.error("[sluice]", err));
  }

  function close() {
    if (!ui) {
      pendingOpen = false;
      return;
    }
    const hadFocus = ui.host.shadowRoot.activeElement !== null;
    state.open = false;
    ui.panel.hidden = true;
    ui.launcher.setAttribute("aria-expanded", "false");
    ui.launcher.setAttribute("aria-label", "Open chat");
    if (hadFocus || document.activeElement === ui.host || document.activeElement === document.body) ui.launcher.focus();
  }

  function notify(text, kind = "info") {
    if (!ui) return;
    // A fresh node, so screen readers announce it (alert for errors, status otherwise).
    const node = ui.notice.cloneNode(false);
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    node.dataset.kind = kind;
    node.textContent = text;
    node.hidden = false;
    ui.notice.replaceWith(node);
    ui.notice = node;
  }

  function clearNotice() {
    if (!ui) return;
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  // ----------------------------------------------------------------------------------------------
  // Sign-in (managed mode)

  async function onEmail(e) {
    e.preventDefault();
    const email = ui.email.value.trim();
    if (!/^[^\s@]+@[^\s@]+$/.test(email)) {
      notify("Please enter a valid email address.", "error");
      ui.email.focus();
      return;
    }
    ui.sendCode.disabled = true;
    try {
      const c = await Sluice.ready;
      await c.auth.startOtp(email);
      state.pendingEmail = email;
      ui.codeHint.textContent = `We sent a 6-digit code to ${email}. It may take a minute to arrive.`;
      ui.code.value = "";
      clearNotice();
      show("signin-code");
      focusView();
    } catch (err) {
      notify(describeError(err), "error");
    } finally {
      ui.sendCode.disabled = false;
    }
  }

  async function onCode(e) {
    e.preventDefault();
    const code = ui.code.value.replace(/\s+/g, "");
    if (!/^\d{6}$/.test(code)) {
      notify("The code is the 6 digits from the email.", "error");
      ui.code.focus();
      return;
    }
    ui.verify.disabled = true;
    try {
      const c = await Sluice.ready;
      await c.auth.verifyOtp(state.pendingEmail, code);
      ui.user.textContent = state.pendingEmail;
      state.pendingEmail = "";
      state.checkedSession = true;
      clearNotice();
      show("chat");
      focusView();
    } catch (err) {
      notify(describeError(err, "That code did not work. Check it, or ask for a new one."), "error");
      ui.code.select();
    } finally {
      ui.verify.disabled = false;
    }
  }

  async function signOut() {
    const c = client || (await Sluice.ready);
    dropConversation();
    await c.auth.signOut();
    sessionEnded();
  }

  /**
   * The session is over, however it ended (signed out here or in another tab, revoked, refused at
   * refresh): the conversation goes with it, so whoever signs in next neither sees nor sends it.
   */
  function sessionEnded(message) {
    dropConversation();
    state.checkedSession = false;
    if (message) notify(message, "info");
    else clearNotice();
    if (state.view !== "signin-email") {
      show("signin-email");
      focusView();
    }
  }

  /** Forgets the conversation: its history, its bubbles, a reply still streaming. */
  function dropConversation() {
    state.conversation += 1;
    state.history = [];
    if (state.streaming) state.streaming.abort();
    if (!ui) return;
    for (const m of ui.messages.querySelectorAll(".msg")) m.remove();
    ui.empty.hidden = false;
    ui.user.textContent = "";
    ui.email.value = ""; // nor whose address it was
    ui.codeHint.textContent = "";
  }

  /** Who a stored session (its JSON) belongs to: the access token's subject, else its email. */
  function sessionUser(raw) {
    try {
      const s = JSON.parse(raw);
      const claims = JSON.parse(atob(String(s.access_token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return claims.sub || s.email || "";
    } catch {
      return "";
    }
  }

  // ----------------------------------------------------------------------------------------------
  // Chat

  function addMessage(role, text) {
    const el = document.createElement("div");
    el.className = `msg ${role}`;
    el.dataset.testid = `message-${role}`;
    el.textContent = text; // model and user text only ever as text
    ui.empty.hidden = true;
    ui.messages.append(el);
    scrollToEnd(true);
    return el;
  }

  function scrollToEnd(force) {
    const m = ui.messages;
    if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 80) m.scrollTop = m.scrollHeight;
  }

  function setStreaming(controller) {
    state.streaming = controller;
    const on = Boolean(controller);
    const active = ui.host.shadowRoot.activeElement;
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    ui.messages.setAttribute("aria-busy", String(on));
    // Send and Stop swap places: keep the keyboard user in the message box rather than lost on <body>.
    const lost = !active && document.activeElement === document.body;
    if (state.open && state.view === "chat" && (active === ui.send || active === ui.stop || lost)) ui.input.focus();
  }

  async function sendMessage() {
    const text = ui.input.value.trim();
    if (!text || state.streaming) return;
    ui.input.value = "";
    clearNotice();
    const conversation = state.conversation;
    addMessage("user", text);
    state.history.push({ role: "user", content: text });
    const reply = addMessage("assistant", "");
    reply.dataset.state = "streaming";
    const controller = new AbortController();
    setStreaming(controller);
    let partial = "";
    try {
      const c = await Sluice.ready;
      if (providerMode() && !(await credentialReady(10_000))) {
        throw Object.assign(new Error("This chat has no credentials: the page has not called Sluice.setConsumerKey() or Sluice.setToken()."), { type: "no-credential" });
      }
      const { text: answer, toolCalls } = await c.chat.stream({
        api: config.api,
        model: config.model,
        messages: state.history.slice(),
        signal: controller.signal,
        onToken: (_delta, soFar) => {
          partial = soFar;
          reply.textContent = soFar;
          scrollToEnd(false);
        },
      });
      // A reply that is only tool calls has no text: the chat says which tools the model asked for
      // (the page that embeds the widget runs them, if it wants to).
      const calls = (toolCalls || []).map((t) => t.function.name).filter(Boolean);
      reply.textContent = answer || (calls.length ? `The assistant asked to use: ${calls.join(", ")}.` : "");
      if (!answer && calls.length) reply.dataset.toolCalls = calls.join(",");
      reply.dataset.state = "done";
      if (conversation === state.conversation) state.history.push({ role: "assistant", content: answer });
    } catch (err) {
      // The session ended while this reply was on its way: the conversation is gone, and so is the reply.
      if (conversation !== state.conversation) return;
      partial = (err && typeof err.partialText === "string" && err.partialText) || partial;
      reply.textContent = partial;
      if (partial) state.history.push({ role: "assistant", content: partial });
      if (controller.signal.aborted) {
        reply.dataset.state = "stopped";
        if (!partial) reply.remove();
        notify("Stopped.", "info");
      } else {
        reply.dataset.state = "error";
        if (!partial) reply.remove();
        handleChatError(err);
      }
    } finally {
      setStreaming(null);
      if (!ui.messages.querySelector(".msg")) ui.empty.hidden = false;
    }
  }

  function handleChatError(err) {
    if (err && err.status === 401 && !providerMode()) {
      // The SDK already tried a refresh; the session is gone.
      sessionEnded("Your session has ended. Please sign in again.");
      return;
    }
    notify(describeError(err), "error");
  }

  /** A sentence for the user: the problem's own detail, and for limits when to try again. */
  function describeError(err, fallback) {
    if (!err) return fallback || "Something went wrong.";
    // A proxy's error page (HTML, whole or a fragment) in front of the gateway says nothing a reader can use.
    if (isMarkup(err.detail) || isMarkup(err.title) || isHtmlResponse(err)) return "The chat service is having trouble right now. Please try again in a moment.";
    if (err.status === 429 || err.type === "quota-exceeded" || err.type === "rate-limited") {
      const head = err.title || (err.type === "quota-exceeded" ? "Quota exceeded" : "Rate limit reached");
      const when = retryText(err);
      // The gateway's detail says when too ("Try again after <time> (in N s).", "...; try again in N s.",
      // "Wait N s before asking for another code."): say it once, in the reader's clock.
      const detail = when ? withoutTime(err.detail || "") : err.detail;
      return `${head}. ${sentence(detail || "You have reached your plan's limit.")}${when ? ` ${when}` : ""}`;
    }
    if (err.type === "network-error") return "The chat service could not be reached. Check your connection and try again.";
    if (err.type === "no-credential") return err.message;
    // The caller's own words for its step (a wrong code), with the gateway's detail after them.
    if (fallback && err.status >= 400 && err.status < 500) return err.detail ? `${fallback} ${sentence(err.detail)}` : fallback;
    if (err.status === 401) return `Not authorized: ${sentence(err.detail || err.title || "the credential was refused")}`;
    if (err.title || err.detail) return sentence([err.title, err.detail].filter(Boolean).join(": "));
    return fallback || err.message || "Something went wrong.";
  }

  /** A limit's detail without the time it names (the notice says it once, from `retryAfter`). */
  function withoutTime(detail) {
    return detail
      .replace(/\s*Try again\b.*?\(in \d+ s\)\.?/i, "")
      .replace(/\s*[;,]\s*try again in \d+ s\b\.?/i, ".")
      .replace(/\bWait \d+ s before\b/i, "Please wait before")
      .trim();
  }

  /** `text` ending with exactly one full stop (or its own ! or ?). */
  function sentence(text) {
    const t = String(text).trim();
    return /[.!?]$/.test(t) ? t : `${t}.`;
  }

  /** Text that looks like markup: it starts with "<", or holds an HTML document's tags. */
  function isMarkup(text) {
    if (typeof text !== "string") return false;
    return text.trim().startsWith("<") || /<\s*(!doctype|html|head|body|h1|title|center|script)\b/i.test(text);
  }

  /** An error answered as an HTML page (`content-type: text/html`), whatever its text. */
  function isHtmlResponse(err) {
    try {
      return /^\s*text\/html\b/i.test((err.response && err.response.headers.get("content-type")) || "");
    } catch {
      return false;
    }
  }

  function retryText(err) {
    if (err.retryAfter === undefined) return "";
    const s = err.retryAfter;
    const at = err.retryAt instanceof Date ? err.retryAt : new Date(Date.now() + s * 1000);
    const clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: s < 3600 ? "2-digit" : undefined });
    if (s <= 1) return "You can try again now.";
    if (s < 90) return `You can try again in ${s} seconds (at ${clock}).`;
    if (s < 90 * 60) return `You can try again in ${Math.round(s / 60)} minutes (at ${clock}).`;
    return `You can try again at ${at.toLocaleString([], { dateStyle: "medium", timeStyle: "short" })}.`;
  }

  // ----------------------------------------------------------------------------------------------
  // Start

  function start() {
    build();
    if (!config.project || !config.api) {
      console.error("[sluice] chat.js needs data-project and data-api.");
      state.broken = true;
    }
    show(state.broken ? "unavailable" : "loading");
    if (pendingOpen) open();
  }
  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start, { once: true });
})();
