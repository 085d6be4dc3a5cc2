// TypeScript declarations for the Sluice client SDK (@sluice/sdk; the same file the gateway serves as /sdk.js).

/** A chat message in OpenAI's Chat Completions shape. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | (string & {});
  content: string | Array<{ type: string; text?: string; [key: string]: unknown }> | null;
  name?: string;
  [key: string]: unknown;
}

/** Token counts as reported by the upstream (OpenAI `usage`). */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  [key: string]: unknown;
}

/** An RFC 9457 problem as the gateway sends it (`application/problem+json`). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  /** Rate and quota refusals: which window refused. */
  scope?: string;
  limit?: number;
  used?: number;
  /** RFC 3339 time at which the window resets. */
  reset?: string;
  plan?: string;
  [key: string]: unknown;
}

/**
 * An error from the gateway, with the problem's members as properties (extension members too).
 * `status` is 0 for errors that never got an HTTP answer (`network-error`, `stream-incomplete`).
 */
export class SluiceError extends Error {
  constructor(problem?: Partial<Problem>, options?: { retryAfter?: number; partialText?: string; cause?: unknown });
  name: "SluiceError";
  /** The problem object as received. */
  problem: Partial<Problem>;
  type: string;
  title: string;
  status: number;
  detail: string;
  /** Seconds until a retry may succeed (Retry-After, else the problem's `reset`). */
  retryAfter?: number;
  retryAt?: Date;
  /** What a stream delivered before it failed ("" otherwise). */
  partialText: string;
  /** The HTTP response, for errors that had one. */
  response?: Response;
  scope?: string;
  limit?: number;
  used?: number;
  reset?: string;
  plan?: string;
  [key: string]: unknown;
}

/** One server-sent event. `event` is "message" unless the stream named it. */
export interface SseEvent {
  event: string;
  data: string;
  /** The last event id seen ("" if none). */
  id: string;
  retry?: number;
}

export interface SseParser {
  /** Feeds a chunk split anywhere (even inside a UTF-8 character or a CRLF); returns the events it completed. */
  push(chunk: Uint8Array | ArrayBuffer | string): SseEvent[];
  /** The stream ended: flushes; an unterminated event is discarded. */
  end(): SseEvent[];
}

export function createSseParser(): SseParser;

/** Reads SSE events from `response.body` (or any async iterable of chunks). */
export function readSse(
  stream: ReadableStream<Uint8Array> | AsyncIterable<Uint8Array | string>,
  options?: { signal?: AbortSignal },
): AsyncGenerator<SseEvent, void, undefined>;

/** Where the managed session is kept. Methods may return promises. */
export interface TokenStorage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
  remove(key: string): void | Promise<void>;
}

export function memoryStorage(): TokenStorage;
/** A TokenStorage over Web Storage, or null when it is missing or refuses writes. */
export function localStorageAdapter(storage?: Storage): TokenStorage | null;

/** A credential, or a function asked for one before each request (`retry: true` after a 401). */
export type CredentialSource = string | ((info: { retry: boolean; kind: "token" | "consumer-key" }) => string | null | undefined | Promise<string | null | undefined>);

export interface SluiceClientOptions {
  /** The gateway's origin (and path prefix, if any), e.g. "https://gateway.example.com". */
  baseUrl: string;
  /** The project slug. */
  project: string;
  /** Managed-session storage; default localStorage where available, else memory. */
  storage?: TokenStorage;
  /** Storage key of the managed session; default `sluice:<project>:session`. */
  storageKey?: string;
  /** A fetch implementation; default the global fetch. */
  fetch?: typeof fetch;
  /**
   * Sender-constrained sessions (DPoP, RFC 9449). Default: a non-extractable P-256 key in IndexedDB
   * where the browser has one (elsewhere sessions are bearer); `false` turns it off.
   */
  dpop?: DpopKey | false;
  /**
   * A copy of the managed session that every tab sees as soon as it is written, which a tab taking
   * the refresh lock reads (localStorage reaches other tabs late). Default: IndexedDB where the
   * browser has it (`sessionJournal(storageKey)`); `false` turns it off.
   */
  journal?: SessionJournal | false;
}

/** The last stored session and the refresh tokens it replaced (newest first). */
export interface SessionJournalRecord {
  session: Session;
  replaced: string[];
}

/** Where the session journal is kept; each method resolves once its write is visible to every tab. */
export interface SessionJournal {
  get(): Promise<SessionJournalRecord | null | undefined>;
  put(record: SessionJournalRecord): Promise<unknown>;
  remove(): Promise<unknown>;
}

/** The session journal of `name` in IndexedDB, or null without IndexedDB. */
export function sessionJournal(name: string, idb?: IDBFactory): SessionJournal | null;

/** A DPoP key: its private half never leaves WebCrypto. `load`/`save`/`remove` keep the key pair. */
export class DpopKey {
  constructor(store?: {
    load?: () => Promise<{ privateKey: CryptoKey; publicKey: CryptoKey; jwk: JsonWebKey } | null>;
    save?: (pair: { privateKey: CryptoKey; publicKey: CryptoKey; jwk: JsonWebKey }) => Promise<void>;
    remove?: () => Promise<void>;
  });
  /** A key in this browser's IndexedDB under `name`, or null without IndexedDB or WebCrypto. */
  static forBrowser(name: string): DpopKey | null;
  /**
   * A proof (`DPoP` header) for `method` `url`, covering `accessToken` when given; by the key with
   * thumbprint `jkt` when given (the stored key is read again if the one in memory is another).
   */
  proof(method: string, url: string, accessToken?: string, options?: { jkt?: string }): Promise<string | null>;
  /** The RFC 7638 thumbprint of the key in use, or null without one. */
  thumbprint(): Promise<string | null>;
  /** Drops the key held in memory: the next proof uses the stored key (or a new one). */
  reload(): void;
  /** Drops the key; the next session gets a new one. With `jkt`, only if the stored key is that one. */
  forget(jkt?: string): Promise<void>;
}

export interface ChatOptions {
  /** The API slug. */
  api: string;
  messages: ChatMessage[];
  model?: string;
  signal?: AbortSignal;
  /** Any other Chat Completions parameter (temperature, max_tokens, ...). */
  [extra: string]: unknown;
}

export interface StreamOptions extends ChatOptions {
  /** Called for each piece of text as it arrives, with the text so far. */
  onToken?: (delta: string, text: string) => void;
  /** Called once for each tool call the model made, whole, when the reply is complete. */
  onToolCall?: (call: ToolCall) => void;
}

/** A tool (function) call the model made, its arguments as the JSON text it wrote. */
export interface ToolCall {
  id: string;
  type: string;
  function: { name: string; arguments: string };
}

export interface ChatResult {
  text: string;
  /** The model's tool calls, in order (empty when it made none). */
  toolCalls: ToolCall[];
  /** Present when the server sent usage. */
  usage?: Usage;
  finishReason?: string;
}

export interface CompleteResult extends ChatResult {
  /** The whole Chat Completions response. */
  response: Record<string, unknown>;
}

/** The managed session as stored. `expires_at` is in epoch milliseconds. */
export interface Session {
  access_token: string;
  refresh_token: string | null;
  token_type: string;
  expires_at: number | null;
  email?: string;
  /** The thumbprint of the DPoP key the session is bound to (`cnf.jkt`), for a DPoP session. */
  jkt?: string;
}

export type AuthEvent = "signedin" | "refreshed" | "signedout" | "expired";

export interface UsageWindow {
  limit: number;
  used: number;
  remaining: number;
  reset: string;
}

export interface ConsumerUsage {
  consumer_id: string;
  plan: { name: string; models: string[] | null; limits: Record<string, number | null> };
  windows: Record<string, UsageWindow>;
}

export class SluiceAuth {
  /** Emails a one-time sign-in code (the gateway answers 202 whatever the address). */
  startOtp(email: string, options?: { signal?: AbortSignal }): Promise<{ challengeId: string | null }>;
  /** Exchanges the code for tokens and stores them (the challenge of the last `startOtp` for this email, or `challengeId`). */
  verifyOtp(email: string, code: string, options?: { signal?: AbortSignal; challengeId?: string }): Promise<Session>;
  /** Rotates the token pair now (normally automatic). */
  refresh(options?: { signal?: AbortSignal }): Promise<Session>;
  /** Revokes the session on the gateway (best effort) and forgets it locally. */
  signOut(options?: { signal?: AbortSignal }): Promise<void>;
  /** The signed-in user. */
  me(options?: { signal?: AbortSignal }): Promise<{ id: string; email: string; [key: string]: unknown }>;
  getSession(): Promise<Session | null>;
  isSignedIn(): Promise<boolean>;
  /** Returns an unsubscribe function. */
  onChange(listener: (event: AuthEvent) => void): () => void;
}

export class SluiceClient {
  constructor(options: SluiceClientOptions);
  readonly baseUrl: string;
  readonly project: string;
  readonly storage: TokenStorage;
  readonly storageKey: string;
  readonly auth: SluiceAuth;
  readonly chat: {
    /** Streams a reply; rejects with a SluiceError (with `partialText`) if the stream ends in an error. */
    stream(options: StreamOptions): Promise<ChatResult>;
    complete(options: ChatOptions): Promise<CompleteResult>;
  };
  /** The universal shape: the same calls, with the API named `apiSlug`. */
  readonly gateway: {
    setConsumerKey(key: CredentialSource | null): void;
    setToken(token: CredentialSource | null): void;
    stream(options: Omit<StreamOptions, "api"> & { apiSlug: string }): Promise<ChatResult>;
    complete(options: Omit<ChatOptions, "api"> & { apiSlug: string }): Promise<CompleteResult>;
  };
  /** Your own JWT (byo-jwt mode); null clears it. */
  setToken(token: CredentialSource | null): void;
  /** A consumer key (`ask_live_...`); null clears it. */
  setConsumerKey(key: CredentialSource | null): void;
  /** Whether setToken/setConsumerKey configured a credential. */
  hasCredential(): boolean;
  /** The caller's plan and windows for an API. */
  usage(options: { api: string; signal?: AbortSignal }): Promise<ConsumerUsage>;
}
