// Sluice client SDK (ES module, no dependencies): managed OTP sign-in, consumer keys or your own JWTs, and streamed chat through the gateway.
//
// Runs in browsers, Node 18+ and Deno: it uses only fetch, TextDecoder, ReadableStream and AbortController.
//
//   import { SluiceClient } from "https://<gateway>/sdk.js";
//   const client = new SluiceClient({ baseUrl: "https://<gateway>", project: "demo" });
//   await client.auth.startOtp("me@example.com");
//   await client.auth.verifyOtp("me@example.com", "123456");
//   const { text } = await client.chat.stream({ api: "chat", messages, onToken: (delta) => show(delta) });

/** After `[DONE]`, wait this long for the server to close the stream before cancelling it. */
const DRAIN_MS = 2000;
/** Refresh a managed access token this many milliseconds before it expires. */
const EXPIRY_SKEW_MS = 30_000;
/** A refresh lock kept in storage (where there are no Web Locks) is taken over after this long. */
const STORAGE_LOCK_MS = 15_000;
/** Problem fields that are the error's own and must not be overwritten by extension members. */
const RESERVED = new Set(["name", "message", "stack", "cause", "problem", "partialText", "retryAfter", "retryAt", "response"]);

// ------------------------------------------------------------------------------------------------
// Errors

/**
 * An error from the gateway, carrying its problem+json (RFC 9457) members: `type`, `title`, `status`,
 * `detail`, plus any extension members (`scope`, `limit`, `used`, `reset`, `plan`, ...).
 * `retryAfter` is in seconds (from `Retry-After`, else from the problem's `reset`); `partialText` is
 * what a stream delivered before it failed.
 */
export class SluiceError extends Error {
  constructor(problem = {}, { retryAfter, partialText, cause } = {}) {
    const p = problem && typeof problem === "object" ? problem : {};
    const message = p.detail || p.title || p.type || "Sluice request failed";
    super(String(message), cause === undefined ? undefined : { cause });
    this.name = "SluiceError";
    this.problem = p;
    this.type = typeof p.type === "string" ? p.type : "about:blank";
    this.title = typeof p.title === "string" ? p.title : "";
    this.status = Number.isInteger(p.status) ? p.status : 0;
    this.detail = typeof p.detail === "string" ? p.detail : "";
    for (const [k, v] of Object.entries(p)) {
      if (!RESERVED.has(k) && !(k in this)) this[k] = v;
    }
    const seconds = retryAfter ?? secondsUntil(p.reset);
    this.retryAfter = Number.isFinite(seconds) ? Math.max(0, Math.ceil(seconds)) : undefined;
    this.retryAt = this.retryAfter === undefined ? undefined : new Date(Date.now() + this.retryAfter * 1000);
    this.partialText = partialText ?? "";
  }
}

function secondsUntil(rfc3339) {
  if (typeof rfc3339 !== "string") return undefined;
  const at = Date.parse(rfc3339);
  return Number.isNaN(at) ? undefined : (at - Date.now()) / 1000;
}

/** `Retry-After` as seconds: either delta-seconds or an HTTP date. */
function parseRetryAfter(value) {
  if (value == null || value === "") return undefined;
  const trimmed = String(value).trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

/** Builds a SluiceError from a non-2xx response: its problem+json, or a generic problem around its text. */
async function errorFromResponse(res) {
  const text = await res.text().catch(() => "");
  let problem = null;
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) problem = parsed;
  } catch {
    /* not JSON */
  }
  if (!problem || (!problem.type && !problem.title && !problem.detail)) {
    problem = {
      ...(problem || {}),
      type: "about:blank",
      title: res.statusText || `HTTP ${res.status}`,
      detail: (problem && problem.error && (problem.error.message || String(problem.error))) || text.slice(0, 500),
    };
  }
  if (!Number.isInteger(problem.status)) problem.status = res.status;
  const err = new SluiceError(problem, { retryAfter: parseRetryAfter(res.headers.get("retry-after")) });
  err.response = res;
  return err;
}

function networkError(cause) {
  return new SluiceError(
    { type: "network-error", title: "The gateway could not be reached", status: 0, detail: String((cause && cause.message) || cause) },
    { cause },
  );
}

function isAbort(err, signal) {
  return (signal && signal.aborted) || (err && err.name === "AbortError");
}

function abortReason(signal) {
  if (signal && signal.reason !== undefined) return signal.reason;
  const err = new Error("The operation was aborted.");
  err.name = "AbortError";
  return err;
}

// ------------------------------------------------------------------------------------------------
// Server-sent events

/**
 * An incremental SSE parser (the WHATWG event-stream rules): feed it bytes (or strings) split anywhere,
 * even inside a multi-byte UTF-8 character or between `\r` and `\n`; it returns the complete events.
 * Each event is `{ event, data, id }` (`event` defaults to "message"; `retry` when sent). Comments
 * (`:` lines) are skipped; multi-line `data` is joined with `\n`; an event left unfinished at `end()`
 * is discarded, as the spec says.
 */
export function createSseParser() {
  const decoder = new TextDecoder("utf-8");
  let partial = ""; // text of the current, unfinished line
  let afterCR = false; // the last line ended with `\r`; a `\n` right after it belongs to it
  let data = [];
  let eventType = "";
  let lastId = "";
  let retry;

  function onLine(line, out) {
    if (line === "") {
      if (data.length > 0) {
        const ev = { event: eventType || "message", data: data.join("\n"), id: lastId };
        if (retry !== undefined) ev.retry = retry;
        out.push(ev);
      }
      data = [];
      eventType = "";
      retry = undefined;
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) return; // a comment (often a keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") eventType = value;
    else if (field === "id") {
      if (!value.includes("\0")) lastId = value;
    } else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
  }

  function feed(text, out) {
    let start = 0;
    if (afterCR && text.length > 0) {
      if (text.charCodeAt(0) === 10) start = 1;
      afterCR = false;
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      onLine(partial + text.slice(start, i), out);
      partial = "";
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          afterCR = true;
        }
      }
      start = i + 1;
    }
    partial += text.slice(start);
    return out;
  }

  return {
    /** Feeds a chunk (Uint8Array, ArrayBuffer or string); returns the events it completed. */
    push(chunk) {
      const text = typeof chunk === "string" ? chunk : decoder.decode(chunk instanceof ArrayBuffer ? new Uint8Array(chunk) : chunk, { stream: true });
      return feed(text, []);
    },
    /** The stream ended: flushes the decoder; an unterminated event is dropped. */
    end() {
      const out = feed(decoder.decode(), []);
      partial = "";
      data = [];
      eventType = "";
      return out;
    },
  };
}

/**
 * Reads SSE events from a ReadableStream of bytes (e.g. `response.body`), or any async iterable of
 * chunks, as an async generator. Stops reading (and cancels the stream) when the consumer stops early.
 */
export async function* readSse(stream, { signal } = {}) {
  const parser = createSseParser();
  if (stream && typeof stream.getReader === "function") {
    const reader = stream.getReader();
    const onAbort = () => reader.cancel(abortReason(signal)).catch(() => {});
    if (signal) {
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    let finished = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (signal && signal.aborted) throw abortReason(signal);
        if (done) break;
        yield* parser.push(value);
      }
      finished = true;
      yield* parser.end();
    } finally {
      if (signal) signal.removeEventListener("abort", onAbort);
      if (!finished) reader.cancel().catch(() => {});
      try {
        reader.releaseLock();
      } catch {
        /* a pending read on a cancelled stream */
      }
    }
    return;
  }
  for await (const chunk of stream) {
    if (signal && signal.aborted) throw abortReason(signal);
    yield* parser.push(chunk);
  }
  yield* parser.end();
}

// ------------------------------------------------------------------------------------------------
// Token storage

/** An in-memory storage (the default where there is no localStorage). */
export function memoryStorage() {
  const map = new Map();
  return {
    get: (key) => (map.has(key) ? map.get(key) : null),
    set: (key, value) => void map.set(key, value),
    remove: (key) => void map.delete(key),
  };
}

/** Storage over `localStorage` (Web Storage), or null when it is missing or refuses writes. */
export function localStorageAdapter(ls = globalThis.localStorage) {
  try {
    if (!ls) return null;
    const probe = "sluice:probe";
    ls.setItem(probe, "1");
    ls.removeItem(probe);
  } catch {
    return null; // blocked (sandboxed iframe, privacy mode) or absent
  }
  return {
    get: (key) => ls.getItem(key),
    set: (key, value) => ls.setItem(key, value),
    remove: (key) => ls.removeItem(key),
  };
}

function defaultStorage() {
  let ls = null;
  try {
    ls = globalThis.localStorage;
  } catch {
    /* access itself can throw */
  }
  return localStorageAdapter(ls) || memoryStorage();
}

// ------------------------------------------------------------------------------------------------
// DPoP (RFC 9449): proofs of possession of a key that cannot leave the browser

const DPOP_DB = "sluice-dpop";
const DPOP_STORE = "keys";

function b64url(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function b64urlText(text) {
  return b64url(new TextEncoder().encode(text));
}

/** The RFC 7638 thumbprint of a P-256 public key: what an access token's `cnf.jkt` names. */
async function jwkThumbprint(jwk) {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(canonical)));
}

/** The claims of a JWT, read without verifying (only to learn what the gateway bound it to); {} if none. */
function jwtClaims(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

function idbRequest(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/**
 * One client's DPoP key: an ECDSA P-256 pair generated with a non-extractable private key and kept
 * in IndexedDB (as a CryptoKey, which scripts can use but never read out), so a copied refresh token
 * is useless without this browser profile. `load`/`save`/`remove` can be replaced (tests, other
 * runtimes); without WebCrypto there is no key and sessions stay bearer.
 */
export class DpopKey {
  constructor({ load, save, remove } = {}) {
    this._load = load || (async () => null);
    this._save = save || (async () => {});
    this._remove = remove || (async () => {});
    this._pair = null;
    this._thumbprints = new WeakMap();
  }

  /** A key kept in this browser's IndexedDB under `name`; null where there is no IndexedDB or WebCrypto. */
  static forBrowser(name) {
    const idb = globalThis.indexedDB;
    if (!idb || !(globalThis.crypto && globalThis.crypto.subtle)) return null;
    const open = async () => {
      const req = idb.open(DPOP_DB, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(DPOP_STORE);
      return idbRequest(req);
    };
    const run = async (mode, f) => {
      const db = await open();
      try {
        return await idbRequest(f(db.transaction(DPOP_STORE, mode).objectStore(DPOP_STORE)));
      } finally {
        db.close();
      }
    };
    return new DpopKey({
      load: () => run("readonly", (s) => s.get(name)),
      save: (pair) => run("readwrite", (s) => s.put(pair, name)),
      remove: () => run("readwrite", (s) => s.delete(name)),
    });
  }

  /** The key pair: loaded, or generated once (concurrent callers share one load or generation). */
  _keys() {
    if (!this._pair) {
      this._pair = this._loadOrGenerate().catch((err) => {
        this._pair = null;
        throw err;
      });
    }
    return this._pair;
  }

  async _loadOrGenerate() {
    const stored = await this._load().catch(() => null);
    if (usable(stored)) return stored;
    const generated = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
    const jwk = await crypto.subtle.exportKey("jwk", generated.publicKey);
    const pair = { privateKey: generated.privateKey, publicKey: generated.publicKey, jwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } };
    await this._save(pair).catch(() => {});
    // Another tab may have saved its own key meanwhile: whichever is stored is the one to use.
    const now = await this._load().catch(() => null);
    return usable(now) ? now : pair;
  }

  /** The thumbprint (`jkt`) of a key pair, computed once per pair. */
  async _thumbprintOf(pair) {
    if (!this._thumbprints.has(pair)) this._thumbprints.set(pair, await jwkThumbprint(pair.jwk));
    return this._thumbprints.get(pair);
  }

  /** The thumbprint of the key this client signs with now, or null without a usable key. */
  async thumbprint() {
    try {
      return await this._thumbprintOf(await this._keys());
    } catch {
      return null;
    }
  }

  /**
   * The key whose thumbprint is `jkt`. The pair is kept in memory, but another tab may have signed
   * out and in again meanwhile, replacing the stored key: a session bound to another key than the
   * one in memory makes this tab read the stored one again.
   */
  async _keysFor(jkt) {
    const keys = await this._keys();
    if (!jkt || (await this._thumbprintOf(keys)) === jkt) return keys;
    const stored = await this._load().catch(() => null);
    if (!usable(stored)) return keys;
    this._pair = Promise.resolve(stored);
    return stored;
  }

  /** Drops the pair held in memory, so the next proof uses the stored key (or generates one). */
  reload() {
    this._pair = null;
  }

  /**
   * A proof for `method` `url` (query and fragment dropped), covering `accessToken` when given; by
   * the key with thumbprint `jkt` when given (the one the session is bound to).
   */
  async proof(method, url, accessToken, { jkt } = {}) {
    let keys;
    try {
      keys = await this._keysFor(jkt);
    } catch {
      return null; // no usable WebCrypto here: the request goes without a proof
    }
    const header = { typ: "dpop+jwt", alg: "ES256", jwk: keys.jwk };
    const payload = {
      jti: b64url(crypto.getRandomValues(new Uint8Array(16))),
      htm: method.toUpperCase(),
      htu: String(url).split(/[?#]/)[0],
      iat: Math.floor(Date.now() / 1000),
    };
    if (accessToken) payload.ath = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(accessToken)));
    const signingInput = `${b64urlText(JSON.stringify(header))}.${b64urlText(JSON.stringify(payload))}`;
    const signature = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, keys.privateKey, new TextEncoder().encode(signingInput));
    return `${signingInput}.${b64url(signature)}`;
  }

  /**
   * Drops the key (after sign-out): the next session is bound to a new one. With `jkt`, only if the
   * stored key is that one: a key another tab stored for a newer session stays.
   */
  async forget(jkt) {
    this._pair = null;
    if (jkt) {
      const stored = await this._load().catch(() => null);
      if (usable(stored) && (await this._thumbprintOf(stored)) !== jkt) return;
    }
    await this._remove();
  }
}

function usable(pair) {
  return Boolean(pair && pair.privateKey && pair.publicKey && pair.jwk && pair.jwk.x && pair.jwk.y);
}

// ------------------------------------------------------------------------------------------------
// The session journal: what the last tab to store a session stored, as every tab sees it at once

const SESSION_DB = "sluice-session";
const SESSION_STORE = "sessions";
/** How many refresh tokens a journal record remembers having replaced (to know its successors). */
const JOURNAL_DEPTH = 8;

/**
 * A record of the managed session under `name` in IndexedDB, next to the one in `storage`; null where
 * there is no IndexedDB. localStorage reaches other tabs late (Chromium hands a write to the other
 * tabs' processes asynchronously), so a tab that takes the refresh lock just after another tab
 * rotated the refresh token may still read the old one there; a committed IndexedDB transaction is
 * seen by every tab. The record is `{ session, replaced }`: the session and the refresh tokens it
 * replaced, newest first. `get`/`put`/`remove` resolve once the transaction has committed.
 */
export function sessionJournal(name, idb = globalThis.indexedDB) {
  if (!idb || typeof idb.open !== "function") return null;
  const run = async (mode, f) => {
    const open = idb.open(SESSION_DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(SESSION_STORE);
    const db = await idbRequest(open);
    try {
      const tx = db.transaction(SESSION_STORE, mode);
      const committed = new Promise((resolve, reject) => {
        tx.oncomplete = () => resolve();
        tx.onerror = tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted"));
      });
      const [value] = await Promise.all([idbRequest(f(tx.objectStore(SESSION_STORE))), committed]);
      return value;
    } finally {
      db.close();
    }
  };
  return {
    get: () => run("readonly", (s) => s.get(name)),
    put: (record) => run("readwrite", (s) => s.put(record, name)),
    remove: () => run("readwrite", (s) => s.delete(name)),
  };
}

// ------------------------------------------------------------------------------------------------
// The client

/**
 * A client for one Sluice project. Credentials, in order: a token or consumer key set with
 * `setToken`/`setConsumerKey` (a string, or a function called before each request), else the managed
 * session from `client.auth` (kept in `storage` under `sluice:<project>:session`).
 */
export class SluiceClient {
  constructor({ baseUrl, project, storage, fetch: fetchImpl, storageKey, dpop, journal } = {}) {
    if (!baseUrl) throw new TypeError("SluiceClient needs a baseUrl");
    if (!project) throw new TypeError("SluiceClient needs a project");
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.project = String(project);
    this.storage = storage || defaultStorage();
    this.storageKey = storageKey || `sluice:${this.project}:session`;
    const f = fetchImpl || globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("No fetch available; pass one as `fetch`");
    // Called unbound: some browsers refuse `fetch` with a `this` that is not the window.
    this._fetch = (...args) => f(...args);
    this._credential = null; // { kind: "token" | "consumer-key", value: string | function }
    // Sender-constrained sessions (RFC 9449): a non-extractable key in IndexedDB, where there is one.
    this._dpop = dpop === false ? null : dpop || DpopKey.forBrowser(this.storageKey);
    // The session as the tab that stored it last wrote it, seen by every tab at once (IndexedDB).
    this._journal = journal === false ? null : journal || sessionJournal(this.storageKey);
    this.auth = new SluiceAuth(this);
    this.chat = {
      stream: (options) => this._stream(options),
      complete: (options) => this._complete(options),
    };
    // The universal shape (`ai.gateway.*` in the product documents): `apiSlug` names the API.
    const named = ({ apiSlug, api, ...rest } = {}) => ({ ...rest, api: api || apiSlug });
    this.gateway = {
      setConsumerKey: (key) => this.setConsumerKey(key),
      setToken: (token) => this.setToken(token),
      stream: (options) => this._stream(named(options)),
      complete: (options) => this._complete(named(options)),
    };
  }

  /** Sends your own JWT (byo-jwt): a string, or a (possibly async) function returning one. */
  setToken(token) {
    this._credential = token == null ? null : { kind: "token", value: token };
  }

  /** Sends a consumer key (`ask_live_...`): a string, or a (possibly async) function returning one. */
  setConsumerKey(key) {
    this._credential = key == null ? null : { kind: "consumer-key", value: key };
  }

  /** Whether `setToken`/`setConsumerKey` configured a credential (otherwise the managed session is used). */
  hasCredential() {
    return this._credential !== null;
  }

  /** `GET /v1/{project}/{api}/usage`: the caller's plan, limits and windows. */
  async usage({ api, signal } = {}) {
    const res = await this._authed(() => ({ method: "GET", headers: { accept: "application/json" }, signal }), this._dataUrl(api, "usage"), signal);
    return res.json();
  }

  _url(path) {
    return `${this.baseUrl}/v1/${encodeURIComponent(this.project)}/${path}`;
  }

  _dataUrl(api, path) {
    if (!api) throw new TypeError("Name the API (`api`)");
    return this._url(`${encodeURIComponent(api)}/${path}`);
  }

  async _send(url, init, signal) {
    try {
      return await this._fetch(url, init);
    } catch (err) {
      if (isAbort(err, signal)) throw err;
      throw networkError(err);
    }
  }

  /** The bearer credential for the next request; `retry` asks a provider for a fresh one after a 401. */
  async _bearer(c, retry) {
    if (c) {
      const v = typeof c.value === "function" ? await c.value({ retry, kind: c.kind }) : c.value;
      return v ? String(v) : null;
    }
    const session = await this.auth._validSession();
    return session ? session.access_token : null;
  }

  /**
   * Sends an authenticated request. On a 401: a provider function is asked once more (and the request
   * retried if it gave a different credential); a managed session is refreshed once (single-flight) and
   * the request retried; if the refresh is refused the session is cleared and the 401 is thrown.
   * `managed` uses the managed session even when a token or key provider is configured.
   */
  async _authed(makeInit, url, signal, { managed = false } = {}) {
    const provider = managed ? null : this._credential;
    const bearer = await this._bearer(provider, false);
    const res = await this._send(url, await this._withCredential(makeInit(), bearer, url, provider), signal);
    if (res.status !== 401) {
      if (!res.ok) throw await errorFromResponse(res);
      return res;
    }
    const first = await errorFromResponse(res);
    let next = null;
    let refreshed = null;
    if (provider) {
      if (typeof provider.value === "function") {
        next = await this._bearer(provider, true);
        if (next === bearer) next = null;
      }
    } else if (bearer) {
      refreshed = await this.auth._refreshAfter(bearer, signal).catch((err) => {
        if (isAbort(err, signal)) throw err;
        return null;
      });
      next = refreshed ? refreshed.access_token : null;
    }
    if (!next) throw first;
    const again = await this._send(url, await this._withCredential(makeInit(), next, url, provider), signal);
    if (again.ok) return again;
    const err = await errorFromResponse(again);
    if (again.status === 401 && !provider) await this.auth._clear("expired", refreshed);
    throw err;
  }

  /**
   * The request with its credential: `Authorization: DPoP` and a proof when it is the managed
   * session's access token and that session is bound to this client's DPoP key, else Bearer.
   */
  async _withCredential(init, token, url, provider) {
    if (!provider && token && this._dpop) {
      const session = await this.auth._sessionOf(token);
      if (session && session.token_type === "DPoP") {
        const proof = await this._dpop.proof(init.method || "GET", url, token, { jkt: session.jkt });
        if (proof) {
          const headers = { ...(init.headers || {}), authorization: `DPoP ${token}`, dpop: proof };
          return { credentials: "omit", ...init, headers };
        }
      }
    }
    return withBearer(init, token);
  }

  _chatBody({ api, messages, onToken, onToolCall, signal, model, stream, ...extra }) {
    if (!Array.isArray(messages)) throw new TypeError("`messages` must be an array");
    const body = { ...extra, messages };
    if (model) body.model = model;
    return body;
  }

  async _stream(options = {}) {
    const { api, onToken, onToolCall, signal } = options;
    const body = this._chatBody(options);
    body.stream = true;
    body.stream_options = { ...(body.stream_options || {}), include_usage: true };
    const json = JSON.stringify(body);
    const res = await this._authed(
      () => ({ method: "POST", headers: { "content-type": "application/json", accept: "text/event-stream" }, body: json, signal }),
      this._dataUrl(api, "chat/completions"),
      signal,
    );
    const type = res.headers.get("content-type") || "";
    if (!type.includes("text/event-stream")) {
      // A gateway or upstream that answered in one piece: take its message as the whole reply.
      const whole = await res.json();
      const text = messageText(whole);
      if (text && onToken) onToken(text, text);
      const toolCalls = messageToolCalls(whole);
      if (onToolCall) toolCalls.forEach((call) => onToolCall(call));
      return { text, toolCalls, usage: whole.usage, finishReason: whole.choices && whole.choices[0] && whole.choices[0].finish_reason };
    }

    let text = "";
    // Tool calls arrive in pieces keyed by `index`: the first names the call, the rest extend its
    // arguments. Each is handed to `onToolCall` whole, once the reply is complete.
    const calls = [];
    let usage;
    let finishReason;
    let failure = null;
    let sawDone = false;
    // The body is read to its end even after [DONE]: cancelling it would look to the gateway like a
    // client that went away mid-stream. A server that keeps it open is cut off after DRAIN_MS.
    const reading = new AbortController();
    const onAbort = () => reading.abort(abortReason(signal));
    if (signal) {
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    let drainTimer;
    let callbackFailed = false;
    let callbackError;
    try {
      for await (const ev of readSse(res.body, { signal: reading.signal })) {
        if (sawDone) continue;
        if (ev.data === "[DONE]") {
          sawDone = true;
          drainTimer = setTimeout(() => reading.abort(), DRAIN_MS);
          continue;
        }
        let chunk;
        try {
          chunk = JSON.parse(ev.data);
        } catch {
          continue; // not JSON: nothing this client understands
        }
        if (ev.event === "error" || (chunk && chunk.error && !chunk.choices)) {
          failure = chunk && chunk.error && typeof chunk.error === "object" && !chunk.type ? { type: chunk.error.type || "upstream-error", title: "The stream failed", detail: chunk.error.message, ...chunk.error } : chunk;
          continue; // the gateway follows its error with [DONE]
        }
        if (chunk.usage) usage = chunk.usage;
        const choice = Array.isArray(chunk.choices) ? chunk.choices.find((c) => (c.index ?? 0) === 0) : undefined;
        if (!choice) continue;
        if (choice.finish_reason) finishReason = choice.finish_reason;
        const pieces = choice.delta && Array.isArray(choice.delta.tool_calls) ? choice.delta.tool_calls : [];
        for (const piece of pieces) {
          const at = Number.isInteger(piece.index) ? piece.index : 0;
          const call = (calls[at] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
          if (piece.id) call.id = piece.id;
          if (piece.type) call.type = piece.type;
          if (piece.function && typeof piece.function.name === "string") call.function.name += piece.function.name;
          if (piece.function && typeof piece.function.arguments === "string") call.function.arguments += piece.function.arguments;
        }
        const delta = choice.delta && typeof choice.delta.content === "string" ? choice.delta.content : "";
        if (delta) {
          text += delta;
          if (onToken) {
            try {
              onToken(delta, text);
            } catch (err) {
              callbackFailed = true; // the caller's own error: passed on as it is, below
              callbackError = err;
              break;
            }
          }
        }
      }
    } catch (err) {
      if (sawDone) {
        // Cut off while draining after [DONE]: the reply (or its error event) is complete.
      } else if (isAbort(err, signal)) {
        const reason = signal && signal.aborted ? abortReason(signal) : err;
        try {
          reason.partialText = text;
        } catch {
          /* a frozen reason */
        }
        throw reason;
      } else if (err instanceof SluiceError) {
        throw err;
      } else {
        const e = networkError(err);
        e.partialText = text;
        throw e;
      }
    } finally {
      clearTimeout(drainTimer);
      if (signal) signal.removeEventListener("abort", onAbort);
    }
    if (callbackFailed) throw callbackError;
    if (failure) throw new SluiceError(failure, { partialText: text });
    if (!sawDone && !finishReason) {
      throw new SluiceError(
        { type: "stream-incomplete", title: "The stream ended early", status: 0, detail: "The connection closed before the reply was complete." },
        { partialText: text },
      );
    }
    const toolCalls = calls.filter(Boolean);
    if (onToolCall) toolCalls.forEach((call) => onToolCall(call));
    return { text, toolCalls, usage, finishReason };
  }

  async _complete(options = {}) {
    const { api, signal } = options;
    const body = this._chatBody(options);
    body.stream = false;
    const json = JSON.stringify(body);
    const res = await this._authed(
      () => ({ method: "POST", headers: { "content-type": "application/json", accept: "application/json" }, body: json, signal }),
      this._dataUrl(api, "chat/completions"),
      signal,
    );
    const whole = await res.json();
    return { text: messageText(whole), toolCalls: messageToolCalls(whole), usage: whole.usage, finishReason: whole.choices && whole.choices[0] && whole.choices[0].finish_reason, response: whole };
  }
}

function messageText(completion) {
  const choice = completion && Array.isArray(completion.choices) ? completion.choices[0] : undefined;
  const content = choice && choice.message ? choice.message.content : undefined;
  return typeof content === "string" ? content : "";
}

/** The tool calls of a whole completion's first choice (none: an empty list). */
function messageToolCalls(completion) {
  const choice = completion && Array.isArray(completion.choices) ? completion.choices[0] : undefined;
  const calls = choice && choice.message && Array.isArray(choice.message.tool_calls) ? choice.message.tool_calls : [];
  return calls.map((c) => ({ id: c.id || "", type: c.type || "function", function: { name: (c.function && c.function.name) || "", arguments: (c.function && c.function.arguments) || "" } }));
}

function withBearer(init, bearer) {
  const headers = { ...(init.headers || {}) };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  // Bearer credentials only: no cookies travel to the gateway, so `Access-Control-Allow-Origin: *` suffices.
  return { credentials: "omit", ...init, headers };
}

// ------------------------------------------------------------------------------------------------
// Managed-mode auth (email + one-time code)

/** An address as the gateway compares it (trimmed, lower case). */
function normalEmail(email) {
  return String(email).trim().toLowerCase();
}

/**
 * Runs `fn` holding a lock kept in `storage` under `name`, for pages without Web Locks: a tab writes
 * its claim, waits for another tab's write that raced it to land, and goes ahead only if its claim is
 * the one stored. A claim left by a tab that closed mid-refresh expires after STORAGE_LOCK_MS.
 */
async function storageLock(storage, name, fn) {
  const me = b64url(crypto.getRandomValues(new Uint8Array(9)));
  const read = async () => {
    try {
      const v = JSON.parse(await storage.get(name));
      return v && typeof v.owner === "string" && Number.isFinite(v.until) ? v : null;
    } catch {
      return null;
    }
  };
  let held = false;
  try {
    for (let waited = 0; !held && waited < STORAGE_LOCK_MS * 2; ) {
      const claim = await read();
      if (!claim || claim.until <= Date.now()) {
        await storage.set(name, JSON.stringify({ owner: me, until: Date.now() + STORAGE_LOCK_MS }));
        await sleepMs(30);
        waited += 30;
        const now = await read();
        held = Boolean(now && now.owner === me);
      }
      if (!held) {
        const pause = 40 + Math.floor(Math.random() * 40);
        await sleepMs(pause);
        waited += pause;
      }
    }
  } catch {
    /* a storage that refuses writes cannot coordinate anything: go ahead */
  }
  try {
    return await fn();
  } finally {
    try {
      if (held && (await read())?.owner === me) await storage.remove(name);
    } catch {
      /* it expires */
    }
  }
}

const sleepMs = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** `client.auth`: the managed session (OTP sign-in, refresh with rotation, sign-out). */
export class SluiceAuth {
  constructor(client) {
    this._client = client;
    this._refreshing = null;
    this._listeners = new Set();
    // The session this tab last stored or adopted: its access token is this tab's to send even while
    // localStorage here still shows the one before it.
    this._last = null;
    // The challenge id of the last code asked for, per email: verify sends it back.
    this._challenges = new Map();
  }

  /**
   * Emails a sign-in code. The gateway answers 202 whether or not the address is known, with the
   * challenge's id, which `verifyOtp` sends back (resolves with `{ challengeId }`).
   */
  async startOtp(email, { signal } = {}) {
    const res = await this._post("auth/otp/start", { email }, signal);
    const body = await res.json().catch(() => ({}));
    const challengeId = typeof body.challenge_id === "string" ? body.challenge_id : null;
    if (challengeId) this._challenges.set(normalEmail(email), challengeId);
    return { challengeId };
  }

  /**
   * Exchanges the emailed code for tokens and stores them. Resolves with the session. The
   * challenge is the one of the last `startOtp` for this email, or `options.challengeId`.
   */
  async verifyOtp(email, code, { signal, challengeId } = {}) {
    const challenge_id = challengeId || this._challenges.get(normalEmail(email));
    if (!challenge_id) {
      throw new SluiceError({ type: "no-challenge", title: "No code was asked for", status: 0, detail: "Call startOtp for this address first." });
    }
    // The key held in memory may be one another tab has since forgotten: sign in with the stored one.
    if (this._client._dpop) this._client._dpop.reload();
    const res = await this._post("auth/otp/verify", { email, code: String(code).trim(), challenge_id }, signal, await this._proofFor("auth/otp/verify"));
    this._challenges.delete(normalEmail(email));
    const session = await this._save(await res.json(), { email });
    this._emit("signedin");
    return session;
  }

  /** Exchanges the stored refresh token for a new pair now (normally done for you). */
  async refresh({ signal } = {}) {
    const current = await this.getSession();
    if (!current) throw new SluiceError({ type: "not-signed-in", title: "Not signed in", status: 401, detail: "There is no session to refresh." });
    return this._refreshAfter(current.access_token, signal, true);
  }

  /**
   * Ends the session on the gateway (best effort) and forgets it here. Logout needs a live access
   * token, so an expired one is refreshed first; otherwise the session would live on at the gateway.
   */
  async signOut({ signal } = {}) {
    const session = await this._latestSession();
    try {
      if (session) {
        const res = await this._logout(session, signal);
        if (res.status === 401 && session.refresh_token) {
          const fresh = await this._refreshAfter(session.access_token, signal, true).catch(() => null);
          if (fresh) await this._logout(fresh, signal);
        }
      }
    } catch {
      /* offline or already revoked: the local session is gone either way */
    }
    await this._clear("signedout");
  }

  async _logout(session, signal) {
    const c = this._client;
    const url = c._url("auth/logout");
    const init = {
      method: "POST",
      credentials: "omit",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ refresh_token: session.refresh_token }),
      signal,
    };
    return c._send(url, await c._withCredential(init, session.access_token, url, null), signal);
  }

  /** `GET /auth/me`: the signed-in user (`{ id, email, ... }`), refreshing the session if needed. */
  async me({ signal } = {}) {
    const c = this._client;
    const init = () => ({ method: "GET", headers: { accept: "application/json" }, signal });
    const res = await c._authed(init, c._url("auth/me"), signal, { managed: true });
    return res.json();
  }

  /** The stored session `{ access_token, refresh_token, expires_at, email? }`, or null. */
  async getSession() {
    let raw;
    try {
      raw = await this._client.storage.get(this._client.storageKey);
    } catch {
      return null;
    }
    if (!raw) return null;
    try {
      const s = typeof raw === "string" ? JSON.parse(raw) : raw;
      return s && typeof s.access_token === "string" ? s : null;
    } catch {
      return null;
    }
  }

  /** The stored session, or the one another tab rotated it into when this tab's localStorage lags. */
  async _latestSession() {
    const stored = await this.getSession();
    const successor = await this._successorOf(stored);
    if (successor) this._last = successor;
    return successor || stored;
  }

  /** The session whose access token is `token`: the stored one, or the one this tab last stored or adopted. */
  async _sessionOf(token) {
    const stored = await this.getSession();
    if (stored && stored.access_token === token) return stored;
    return this._last && this._last.access_token === token ? this._last : null;
  }

  /** The journal's record `{ session, replaced }`, or null (none, or no usable IndexedDB). */
  async _journalRecord() {
    const j = this._client._journal;
    if (!j) return null;
    try {
      const r = await j.get();
      if (!r || !r.session || typeof r.session.access_token !== "string") return null;
      return { session: r.session, replaced: Array.isArray(r.replaced) ? r.replaced : [] };
    } catch {
      return null;
    }
  }

  /**
   * The session another tab rotated `session` into (its refresh token is one the journal's session
   * replaced), or null. Only a successor counts: a journal record of another chain (a sign-in since,
   * or a client whose own storage is not shared) is never taken for this one.
   */
  async _successorOf(session, record) {
    if (!session || !session.refresh_token) return null;
    const r = record === undefined ? await this._journalRecord() : record;
    return r && r.session.refresh_token !== session.refresh_token && r.replaced.includes(session.refresh_token) ? r.session : null;
  }

  /** A session stored since `than` by another tab (a rotation of it, or a sign-in again), or null. */
  async _newerThan(than) {
    const record = await this._journalRecord();
    const successor = await this._successorOf(than, record);
    if (successor) return successor;
    const now = await this.getSession();
    // Not one the journal knows was replaced: localStorage here may still show an older session.
    if (now && now.refresh_token !== than.refresh_token && !(record && record.replaced.includes(now.refresh_token))) return now;
    return null;
  }

  /** Whether a managed session is stored (it may still turn out to be revoked). */
  async isSignedIn() {
    return (await this.getSession()) !== null;
  }

  /** Calls `listener(event)` on "signedin", "refreshed", "signedout" and "expired"; returns an unsubscribe function. */
  onChange(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  _emit(event) {
    for (const l of [...this._listeners]) {
      try {
        l(event);
      } catch {
        /* a listener's bug must not break auth */
      }
    }
  }

  /** A `DPoP` header for a POST to `path` (none without a key), by the key with thumbprint `jkt` if given. */
  async _proofFor(path, jkt) {
    const c = this._client;
    const proof = c._dpop ? await c._dpop.proof("POST", c._url(path), undefined, { jkt }) : null;
    return proof ? { dpop: proof } : {};
  }

  async _post(path, body, signal, headers = {}) {
    const c = this._client;
    const res = await c._send(
      c._url(path),
      { method: "POST", credentials: "omit", headers: { "content-type": "application/json", accept: "application/json", ...headers }, body: JSON.stringify(body), signal },
      signal,
    );
    if (!res.ok) throw await errorFromResponse(res);
    return res;
  }

  /** Stores a token pair; a refresh answer without a new refresh token keeps the current one. */
  async _save(tokens, { email, previous = null } = {}) {
    if (!tokens || typeof tokens.access_token !== "string") {
      throw new SluiceError({ type: "invalid-response", title: "The gateway sent no token", status: 0, detail: "The sign-in answer had no access_token." });
    }
    const session = {
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token || (previous && previous.refresh_token) || null,
      token_type: tokens.token_type || "Bearer",
      expires_at: Number.isFinite(tokens.expires_in) ? Date.now() + tokens.expires_in * 1000 : null,
      email: email || (previous && previous.email) || undefined,
    };
    // The DPoP key the gateway bound the session to: a tab holding another key in memory rereads it.
    const cnf = jwtClaims(tokens.access_token).cnf;
    const jkt = (cnf && typeof cnf.jkt === "string" && cnf.jkt) || (previous && previous.jkt);
    if (jkt) session.jkt = jkt;
    // The journal first: once the refresh lock is let go, the next tab to take it must find this
    // session there, committed, whatever its localStorage shows by then.
    const j = this._client._journal;
    if (j) {
      let replaced = [];
      if (previous) {
        const record = await this._journalRecord();
        const chain = record && record.session.refresh_token === previous.refresh_token ? record.replaced : [];
        replaced = [previous.refresh_token, ...chain].filter((t) => t && t !== session.refresh_token).slice(0, JOURNAL_DEPTH);
      }
      await Promise.resolve()
        .then(() => j.put({ session, replaced }))
        .catch(() => {});
    }
    this._last = session;
    await this._client.storage.set(this._client.storageKey, JSON.stringify(session));
    return session;
  }

  /**
   * Forgets the session and its key, and tells the listeners. With `ended`, the session the gateway
   * refused: if the stored one is another by now (another tab signed in again or refreshed), that
   * newer session and its key stay, and nothing is emitted; resolves with whether it cleared.
   */
  async _clear(event, ended) {
    if (ended && (await this._newerThan(ended))) return false;
    const gone = ended || (await this.getSession());
    try {
      await this._client.storage.remove(this._client.storageKey);
    } catch {
      /* nothing to remove */
    }
    this._last = null;
    // The journal's copy of this session (or of one it was rotated into) goes too.
    const record = gone && (await this._journalRecord());
    if (record && (record.session.refresh_token === gone.refresh_token || record.replaced.includes(gone.refresh_token))) {
      await Promise.resolve()
        .then(() => this._client._journal.remove())
        .catch(() => {});
    }
    // The next session gets a key of its own.
    if (this._client._dpop) await this._client._dpop.forget(ended && ended.jkt).catch(() => {});
    this._emit(event);
    return true;
  }

  /** The stored session, refreshed first when its access token is (nearly) expired. */
  async _validSession() {
    const s = await this.getSession();
    if (!s) return null;
    if (s.expires_at && s.expires_at - EXPIRY_SKEW_MS <= Date.now() && s.refresh_token) {
      try {
        return await this._refreshAfter(s.access_token);
      } catch (err) {
        if (err instanceof SluiceError && err.status === 0) return s; // offline: let the request decide
        return null; // refused: `_refreshAfter` has already signed out
      }
    }
    return s;
  }

  /**
   * Refreshes the session whose access token was `stale`, once: concurrent callers (and other tabs,
   * through the Web Locks API or else a lock in the shared storage) share one refresh, because the gateway rotates refresh tokens and
   * treats a reused one as theft. If another caller already replaced `stale`, its session is returned.
   */
  _refreshAfter(stale, signal, force = false) {
    if (!this._refreshing) {
      const run = () => this._doRefresh(stale, force);
      const inStorage = () => storageLock(this._client.storage, `${this._client.storageKey}:refresh-lock`, run);
      const locks = globalThis.navigator && globalThis.navigator.locks;
      // No Web Locks (plain-HTTP pages are not secure contexts), or refused (opaque origins, such as
      // sandboxed iframes, throw a SecurityError): a lock in the shared storage instead.
      const p = locks && typeof locks.request === "function"
        ? locks.request(`sluice-refresh:${this._client.storageKey}`, run).catch((err) => (err && err.name === "SecurityError" ? inStorage() : Promise.reject(err)))
        : inStorage();
      this._refreshing = p.finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _doRefresh(stale, force) {
    const stored = await this.getSession();
    // Another tab may have rotated the session just before it let go of the lock, and localStorage
    // here may not show it yet: the journal does. That session is the one to use, not refreshed
    // again (its refresh token's predecessor, sent again, would be reuse, and end the session).
    const successor = await this._successorOf(stored);
    const current = successor || stored;
    if (!current || !current.refresh_token) {
      if (current) await this._clear("expired", current);
      throw new SluiceError({ type: "not-signed-in", title: "Not signed in", status: 401, detail: "Sign in again." });
    }
    if ((successor || !force) && current.access_token !== stale) {
      this._last = current;
      return current; // refreshed elsewhere meanwhile
    }
    let res;
    try {
      res = await this._post("auth/refresh", { refresh_token: current.refresh_token }, undefined, await this._proofFor("auth/refresh", current.jkt));
    } catch (err) {
      // Refused (expired, revoked, reused): the session is over, unless another tab stored a newer
      // one meanwhile, which is then the one to use. A network failure keeps it for later.
      if (err instanceof SluiceError && err.status >= 400 && err.status < 500 && !(await this._clear("expired", current))) {
        const newer = await this._newerThan(current);
        if (newer) {
          this._last = newer;
          return newer;
        }
      }
      throw err;
    }
    const session = await this._save(await res.json(), { previous: current });
    this._emit("refreshed");
    return session;
  }
}
