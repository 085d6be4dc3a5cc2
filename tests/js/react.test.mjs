// Unit tests for @sluice/react (node --test tests/js/): the hooks rendered by React DOM in jsdom, with
// React's own act(), against a fetch stand-in that speaks the gateway's answers.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><div id=root></div>", { url: "http://localhost/" });
globalThis.window = dom.window;
globalThis.document = dom.window.document;
if (!globalThis.navigator) globalThis.navigator = dom.window.navigator;
globalThis.IS_REACT_ACT_ENVIRONMENT = true;

const React = await import("react");
const { act } = React;
const { createRoot } = await import("react-dom/client");
const { SluiceProvider, useAuth, useGatewayChat } = await import("@sluice/react");
const { memoryStorage, DpopKey } = await import("@sluice/sdk");

const BASE = "https://gw.example";
const enc = new TextEncoder();

/** An SSE answer whose events are released one at a time by `next()`. */
function steppedStream(events) {
  let push;
  let i = 0;
  const body = new ReadableStream({
    start(c) {
      push = c;
    },
  });
  return {
    response: new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }),
    next() {
      if (i < events.length) push.enqueue(enc.encode(`data: ${events[i++]}\n\n`));
      if (i === events.length) push.close();
    },
    left: () => events.length - i,
  };
}

const chunk = (content) => JSON.stringify({ choices: [{ index: 0, delta: { content } }] });

function problem(status, type, detail, extra = {}) {
  return new Response(JSON.stringify({ type, title: type, status, detail, ...extra }), {
    status,
    headers: { "content-type": "application/problem+json", "retry-after": "30" },
  });
}

/** Renders `useHook()` inside a provider; `result.current` is the latest return value. */
async function renderHook(useHook, fetch, providerProps = {}) {
  const { results, unmount } = await renderHooks([useHook], fetch, providerProps);
  return { result: results[0], unmount };
}

/** Renders each hook in its own component, side by side under one provider. */
async function renderHooks(useHooks, fetch, providerProps = {}) {
  const results = useHooks.map(() => ({ current: null, history: [] }));
  const probes = useHooks.map((useHook, i) => function Probe() {
    results[i].current = useHook();
    results[i].history.push(results[i].current);
    return null;
  });
  const root = createRoot(document.getElementById("root"));
  await act(async () => {
    root.render(React.createElement(SluiceProvider, { baseUrl: BASE, project: "p", fetch, storage: memoryStorage(), dpop: false, ...providerProps }, ...probes.map((P, i) => React.createElement(P, { key: i }))));
  });
  return { results, unmount: () => act(() => root.unmount()) };
}

const settle = () => act(async () => {
  await new Promise((r) => setTimeout(r, 5));
});

describe("useGatewayChat", () => {
  test("the assistant message grows token by token, with the consumer key sent", async () => {
    const stream = steppedStream([chunk("Hel"), chunk("lo"), chunk(" there"), "[DONE]"]);
    const seen = [];
    const fetch = async (url, init) => {
      seen.push({ url, init });
      return stream.response;
    };
    const { result, unmount } = await renderHook(() => useGatewayChat({ apiSlug: "chat", consumerKey: "ask_live_k" }), fetch);
    let sent;
    await act(async () => {
      sent = result.current.sendMessage("hi");
    });
    assert.equal(result.current.isStreaming, true);
    assert.deepEqual(result.current.messages, [{ role: "user", content: "hi" }, { role: "assistant", content: "" }]);
    const grown = [];
    while (stream.left()) {
      stream.next();
      await settle();
      grown.push(result.current.messages[1].content);
    }
    await act(async () => {
      await sent;
    });
    assert.deepEqual(grown.slice(0, 3), ["Hel", "Hello", "Hello there"]);
    assert.equal(result.current.isStreaming, false);
    assert.equal(result.current.error, null);
    assert.deepEqual(result.current.messages.at(-1), { role: "assistant", content: "Hello there" });
    assert.equal(seen[0].url, `${BASE}/v1/p/chat/chat/completions`);
    assert.equal(seen[0].init.headers.authorization, "Bearer ask_live_k");
    assert.deepEqual(JSON.parse(seen[0].init.body).messages, [{ role: "user", content: "hi" }]);
    await unmount();
  });

  test("stop() aborts and keeps what arrived; reset() clears", async () => {
    const stream = steppedStream([chunk("partial "), chunk("never")]);
    const fetch = async (url, init) => {
      init.signal.addEventListener("abort", () => stream.next());
      return stream.response;
    };
    const { result, unmount } = await renderHook(() => useGatewayChat({ apiSlug: "chat", consumerKey: "ask_live_k" }), fetch);
    let sent;
    await act(async () => {
      sent = result.current.sendMessage("go");
    });
    stream.next();
    await settle();
    assert.equal(result.current.messages[1].content, "partial ");
    await act(async () => {
      result.current.stop();
      await sent;
    });
    assert.equal(result.current.isStreaming, false);
    assert.equal(result.current.error, null, "a stop is not an error");
    assert.equal(result.current.messages[1].content, "partial ");
    await act(async () => result.current.reset());
    assert.deepEqual(result.current.messages, []);
    await unmount();
  });

  test("a refused request sets `error` with the problem's fields; a cut stream keeps its partial text", async () => {
    let calls = 0;
    const bodies = [];
    const fetch = async (url, init) => {
      calls += 1;
      bodies.push(init.body);
      if (calls === 1) return problem(429, "https://sluice.dev/problems/quota-exceeded", "Your plan allows 1 request per day.", { remaining: 0 });
      const cut = JSON.stringify({ type: "https://sluice.dev/problems/budget-exceeded", title: "Budget", status: 429, detail: "spent", error: { message: "spent" } });
      const s = steppedStream([chunk("some "), cut, "[DONE]"]);
      s.next();
      s.next();
      s.next();
      return s.response;
    };
    const { result, unmount } = await renderHook(() => useGatewayChat({ apiSlug: "chat", consumerKey: "ask_live_k" }), fetch);
    await act(async () => {
      await result.current.sendMessage("one").catch(() => {});
    });
    const e = result.current.error;
    assert.equal(e.status, 429);
    assert.ok(e.type.endsWith("quota-exceeded"), e.type);
    assert.equal(e.retryAfter, 30);
    await act(async () => {
      await result.current.sendMessage("two").catch(() => {});
    });
    assert.ok(result.current.error.type.endsWith("budget-exceeded"));
    assert.equal(result.current.messages.at(-1).content, "some ");
    assert.deepEqual(
      result.current.messages.map((m) => m.role),
      ["user", "user", "assistant"],
      "a reply that never got a word is not kept, nor sent back upstream",
    );
    assert.deepEqual(JSON.parse(bodies[1]).messages.map((m) => m.content), ["one", "two"]);
    await unmount();
  });
});

describe("useAuth", () => {
  function token(claims) {
    const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
    return `${b({ alg: "EdDSA" })}.${b(claims)}.sig`;
  }

  test("sign in by code, the user from the token, sign out", async () => {
    const requests = [];
    const access = token({ sub: "con_1", email: "ada@example.com", exp: Math.floor(Date.now() / 1000) + 900 });
    const fetch = async (url, init) => {
      const path = new URL(url).pathname;
      requests.push({ path, body: init.body && JSON.parse(init.body) });
      if (path.endsWith("/auth/otp/start")) return new Response(JSON.stringify({ status: "sent", challenge_id: "chl_x", expires_in: 600 }), { status: 202 });
      if (path.endsWith("/auth/otp/verify")) return new Response(JSON.stringify({ access_token: access, refresh_token: "srt_1", token_type: "Bearer", expires_in: 900 }), { status: 200 });
      if (path.endsWith("/auth/logout")) return new Response(null, { status: 204 });
      return problem(404, "not-found", "no");
    };
    const { result, unmount } = await renderHook(() => useAuth(), fetch);
    await settle();
    assert.equal(result.current.status, "signed-out");
    await act(() => result.current.startSignIn("ada@example.com"));
    assert.equal(result.current.status, "code-sent");
    await act(() => result.current.verify("123456"));
    assert.equal(result.current.status, "signed-in");
    assert.deepEqual(result.current.user, { id: "con_1", email: "ada@example.com" });
    assert.equal(result.current.tokens.refresh_token, "srt_1");
    assert.equal(requests.find((r) => r.path.endsWith("/otp/verify")).body.challenge_id, "chl_x");
    await act(() => result.current.signOut());
    assert.equal(result.current.status, "signed-out");
    assert.equal(result.current.user, null);
    await unmount();
  });

  test("a wrong code leaves the hook waiting for the code, with the error", async () => {
    const fetch = async (url) => {
      if (url.endsWith("/auth/otp/start")) return new Response(JSON.stringify({ challenge_id: "chl_y" }), { status: 202 });
      return problem(401, "https://sluice.dev/problems/invalid-code", "The code is wrong.", { attempts_left: 4 });
    };
    const { result, unmount } = await renderHook(() => useAuth(), fetch);
    await act(() => result.current.startSignIn("b@example.com"));
    await act(() => result.current.verify("000000").catch(() => {}));
    assert.equal(result.current.status, "code-sent");
    assert.equal(result.current.error.status, 401);
    assert.equal(result.current.error.problem.attempts_left, 4);
    await unmount();
  });

  test("an email form and a code form, each with its own useAuth(), take part in one sign-in", async () => {
    const fetch = async (url) => {
      if (url.endsWith("/auth/otp/start")) return new Response(JSON.stringify({ challenge_id: "chl_z" }), { status: 202 });
      if (url.endsWith("/auth/otp/verify")) return new Response(JSON.stringify({ access_token: token({ sub: "con_2" }), refresh_token: "srt_2", token_type: "Bearer", expires_in: 900 }), { status: 200 });
      return problem(404, "not-found", "no");
    };
    const { results: [emailForm, codeForm], unmount } = await renderHooks([() => useAuth(), () => useAuth()], fetch);
    await act(() => emailForm.current.startSignIn("c@example.com"));
    assert.equal(codeForm.current.status, "code-sent", "the code form sees the code was sent");
    await act(() => codeForm.current.verify("123456"));
    assert.equal(emailForm.current.status, "signed-in");
    assert.equal(codeForm.current.user.id, "con_2");
    await unmount();
  });

  test("the seed's `token: tokens?.accessToken` calls as the managed session: DPoP proofs, and a refresh on 401", async () => {
    const first = token({ sub: "con_3", n: 1 });
    const second = token({ sub: "con_3", n: 2 });
    const chats = [];
    let refreshes = 0;
    const fetch = async (url, init) => {
      if (url.endsWith("/auth/otp/start")) return new Response(JSON.stringify({ challenge_id: "chl_d" }), { status: 202 });
      if (url.endsWith("/auth/otp/verify")) return new Response(JSON.stringify({ access_token: first, refresh_token: "srt_a", token_type: "DPoP", expires_in: 900 }), { status: 200 });
      if (url.endsWith("/auth/refresh")) {
        refreshes += 1;
        assert.ok(init.headers.dpop, "the refresh carries a proof");
        return new Response(JSON.stringify({ access_token: second, refresh_token: "srt_b", token_type: "DPoP", expires_in: 900 }), { status: 200 });
      }
      chats.push(init.headers);
      if (init.headers.authorization !== `DPoP ${second}` || !init.headers.dpop) return problem(401, "https://sluice.dev/problems/invalid-dpop-proof", "no");
      const s = steppedStream([chunk("ok"), "[DONE]"]);
      s.next();
      s.next();
      return s.response;
    };
    let saved = null;
    const dpop = new DpopKey({ load: async () => saved, save: async (p) => (saved = p), remove: async () => (saved = null) });
    const { result, unmount } = await renderHook(() => {
      const auth = useAuth();
      const chat = useGatewayChat({ apiSlug: "chat", token: auth.tokens?.accessToken });
      return { auth, chat };
    }, fetch, { dpop });
    await act(() => result.current.auth.startSignIn("d@example.com"));
    await act(() => result.current.auth.verify("123456"));
    const t = result.current.auth.tokens;
    assert.equal(t.accessToken, first, "tokens.accessToken, as the seed writes it");
    assert.equal(t.refreshToken, "srt_a");
    assert.ok(t.expiresAt > Date.now());
    assert.equal(t.access_token, first, "the stored fields stay too");
    await act(async () => {
      await result.current.chat.sendMessage("hi");
    });
    assert.equal(chats[0].authorization, `DPoP ${first}`, "sent as the DPoP-bound session, not as Bearer");
    assert.ok(chats[0].dpop, "with a proof");
    assert.equal(refreshes, 1, "a 401 refreshes the session");
    assert.equal(result.current.chat.error, null);
    assert.equal(result.current.chat.messages.at(-1).content, "ok");
    await settle();
    assert.equal(result.current.auth.tokens.accessToken, second, "the refreshed token reaches the app");
    await unmount();
  });
});
