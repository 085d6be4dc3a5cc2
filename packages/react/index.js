// React hooks for a Sluice gateway: <SluiceProvider>, useAuth() (managed OTP sign-in with silent
// refresh, the challenge id and DPoP handled by @sluice/sdk) and useGatewayChat() (a conversation
// whose assistant message grows token by token).
//
//   <SluiceProvider baseUrl="https://gateway.example.com" project="demo">
//     const { status, startSignIn, verify } = useAuth();
//     const { messages, sendMessage, isStreaming, stop } = useGatewayChat({ apiSlug: "chat" });

import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState } from "react";
import { SluiceClient } from "@sluice/sdk";

const SluiceContext = createContext(null);

/** Makes one client for its children (or shares the `client` given), and holds their sign-in state. */
export function SluiceProvider({ baseUrl, project, client, storage, fetch, dpop, children }) {
  const sdk = useMemo(
    () => client || new SluiceClient({ baseUrl, project, storage, fetch, dpop }),
    // A new client only when where it talks to changes.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [client, baseUrl, project],
  );
  const auth = useSignInState(sdk);
  const value = useMemo(() => ({ client: sdk, auth }), [sdk, auth]);
  return createElement(SluiceContext.Provider, { value }, children);
}

function useSluiceContext() {
  const value = useContext(SluiceContext);
  if (!value) throw new Error("useSluice, useAuth and useGatewayChat need a <SluiceProvider> above them");
  return value;
}

/** The provider's client. */
export function useSluice() {
  return useSluiceContext().client;
}

/** The claims of a JWT, read without verifying (the gateway verifies; this only shows who). */
function claimsOf(token) {
  try {
    const part = String(token).split(".")[1];
    const binary = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
  } catch {
    return {};
  }
}

function userOf(session) {
  if (!session) return null;
  const claims = claimsOf(session.access_token);
  return { id: claims.sub || null, email: claims.email || session.email || null };
}

/** The stored session as `tokens`: its own snake_case fields, and the same in camelCase. */
function tokensOf(session) {
  if (!session) return null;
  return {
    ...session,
    accessToken: session.access_token,
    refreshToken: session.refresh_token,
    expiresAt: session.expires_at,
    tokenType: session.token_type,
  };
}

/**
 * The sign-in state of one provider: every `useAuth()` below it shares it, so an email form and a
 * code form in different components take part in one sign-in.
 */
function useSignInState(client) {
  const [state, setState] = useState({ status: "loading", session: null, error: null });
  const pending = useRef(null);
  const mounted = useRef(true);
  // The access tokens the managed session has had: `useGatewayChat({ token })` given one of them
  // uses the session itself (its DPoP proofs and refresh) rather than sending it as a Bearer token.
  const managedTokens = useRef(new Set());
  const set = useCallback((next) => {
    if (next.session) managedTokens.current.add(next.session.access_token);
    else if (next.session === null) managedTokens.current.clear();
    if (mounted.current) setState((s) => ({ ...s, ...next }));
  }, []);

  const load = useCallback(async () => {
    const session = await client.auth.getSession();
    set({ session, status: session ? "signed-in" : pending.current ? "code-sent" : "signed-out" });
  }, [client, set]);

  useEffect(() => {
    mounted.current = true;
    load();
    const off = client.auth.onChange(() => load());
    return () => {
      mounted.current = false;
      off();
    };
  }, [client, load]);

  const startSignIn = useCallback(
    async (email) => {
      set({ error: null });
      try {
        await client.auth.startOtp(email);
        pending.current = email;
        set({ status: "code-sent" });
      } catch (error) {
        set({ error });
        throw error;
      }
    },
    [client, set],
  );

  const verify = useCallback(
    async (code) => {
      if (!pending.current) throw new Error("Call startSignIn(email) first");
      set({ status: "verifying", error: null });
      try {
        const session = await client.auth.verifyOtp(pending.current, code);
        pending.current = null;
        set({ session, status: "signed-in" });
        return session;
      } catch (error) {
        set({ status: "code-sent", error });
        throw error;
      }
    },
    [client, set],
  );

  const signOut = useCallback(async () => {
    pending.current = null;
    await client.auth.signOut();
    set({ session: null, status: "signed-out" });
  }, [client, set]);

  const isManagedToken = useCallback((token) => typeof token === "string" && managedTokens.current.has(token), []);
  return useMemo(
    () => ({ ...state, user: userOf(state.session), tokens: tokensOf(state.session), startSignIn, verify, signOut, isManagedToken }),
    [state, startSignIn, verify, signOut, isManagedToken],
  );
}

/**
 * Managed sign-in. `status` is `loading`, `signed-out`, `code-sent`, `verifying` or `signed-in`;
 * `tokens` is the stored session (refreshed silently by the SDK), with `accessToken`, `refreshToken`,
 * `expiresAt` besides its snake_case fields; `error` the last failure. Every `useAuth()` under one
 * provider shares this state.
 */
export function useAuth() {
  const { status, user, tokens, error, startSignIn, verify, signOut } = useSluiceContext().auth;
  return { status, user, tokens, error, startSignIn, verify, signOut };
}

/**
 * A conversation with an API. `sendMessage(text or message)` appends the user's message and an
 * assistant message that grows token by token; `stop()` aborts (keeping what arrived); `error` is
 * the SluiceError of a failed reply (problem fields and `partialText`). With `token` or
 * `consumerKey` the calls use that credential; otherwise the provider's (managed session or
 * whatever was set on the client). A `token` that is the managed session's own access token
 * (`useAuth().tokens.accessToken`) means that session: its DPoP proofs and silent refresh.
 */
/** A list without a trailing assistant message that has neither text nor tool calls. */
function withoutEmptyReply(list) {
  const last = list[list.length - 1];
  const empty = last && last.role === "assistant" && !last.content && !(last.tool_calls && last.tool_calls.length);
  return empty ? list.slice(0, -1) : list;
}

export function useGatewayChat({ apiSlug, token, consumerKey, initialMessages = [], model } = {}) {
  const { client: base, auth } = useSluiceContext();
  // A credential given as a function is called through a ref, so an inline arrow does not make a
  // new client on every render.
  const credential = useRef(null);
  credential.current = consumerKey || token || null;
  // The managed session's own access token (`useAuth().tokens.accessToken`): the calls go as that
  // session, with its DPoP proofs and its refresh, not as a bare Bearer token.
  const managed = !consumerKey && auth.isManagedToken(token);
  const kind = consumerKey ? "consumer-key" : managed ? "managed" : token ? "token" : null;
  const identity = kind === "managed" ? "managed" : typeof credential.current === "function" ? "function" : credential.current;
  const client = useMemo(() => {
    if (!kind) return base;
    if (kind === "managed") {
      if (!base.hasCredential()) return base;
      // The provider's client sends a token or key of its own: a client on the same session instead.
      return new SluiceClient({ baseUrl: base.baseUrl, project: base.project, storage: base.storage, storageKey: base.storageKey, fetch: base._fetch, dpop: base._dpop || false });
    }
    const own = new SluiceClient({ baseUrl: base.baseUrl, project: base.project, storage: base.storage, fetch: base._fetch, dpop: false });
    const value = identity === "function" ? (ctx) => credential.current(ctx) : identity;
    if (kind === "consumer-key") own.gateway.setConsumerKey(value);
    else own.gateway.setToken(value);
    return own;
  }, [base, kind, identity]);
  const initial = useRef(initialMessages);
  initial.current = initialMessages;

  const [messages, setMessagesState] = useState(initialMessages);
  const [isStreaming, setStreaming] = useState(false);
  const [error, setError] = useState(null);
  const current = useRef(initialMessages);
  const inFlight = useRef(null);
  const setMessages = useCallback((next) => {
    current.current = next;
    setMessagesState(next);
  }, []);

  useEffect(() => () => inFlight.current && inFlight.current.abort(), []);

  const sendMessage = useCallback(
    async (content) => {
      if (inFlight.current) inFlight.current.abort();
      const asked = typeof content === "string" ? { role: "user", content } : content;
      // A reply that never got a word (stopped or failed at once) is not sent back upstream.
      const history = [...withoutEmptyReply(current.current), asked];
      let text = "";
      setMessages([...history, { role: "assistant", content: "" }]);
      setError(null);
      setStreaming(true);
      const controller = new AbortController();
      inFlight.current = controller;
      try {
        const result = await client.gateway.stream({
          apiSlug,
          model,
          messages: history,
          signal: controller.signal,
          onToken: (delta) => {
            text += delta;
            if (inFlight.current === controller) setMessages([...history, { role: "assistant", content: text }]);
          },
        });
        const reply = { role: "assistant", content: result.text };
        if (result.toolCalls && result.toolCalls.length) reply.tool_calls = result.toolCalls;
        if (inFlight.current === controller) setMessages([...history, reply]);
        return result;
      } catch (err) {
        const partial = (err && err.partialText) || text;
        if (inFlight.current === controller) {
          setMessages(partial ? [...history, { role: "assistant", content: partial }] : history);
          if (!controller.signal.aborted) setError(err);
        }
        if (!controller.signal.aborted) throw err;
        return { text: partial, aborted: true };
      } finally {
        if (inFlight.current === controller) {
          inFlight.current = null;
          setStreaming(false);
        }
      }
    },
    [client, apiSlug, model, setMessages],
  );

  const stop = useCallback(() => {
    if (inFlight.current) inFlight.current.abort();
  }, []);

  const reset = useCallback(
    (next) => {
      if (inFlight.current) inFlight.current.abort();
      inFlight.current = null;
      setStreaming(false);
      setError(null);
      setMessages(next === undefined ? initial.current : next);
    },
    [setMessages],
  );

  return { messages, sendMessage, isStreaming, error, stop, reset };
}
