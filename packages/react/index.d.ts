// TypeScript declarations for @sluice/react.
import type { ReactNode } from "react";
import type { ChatMessage, ChatResult, DpopKey, Session, SluiceClient, SluiceError, TokenStorage } from "@sluice/sdk";

export interface SluiceProviderProps {
  baseUrl?: string;
  project?: string;
  /** Share a client made elsewhere instead of making one. */
  client?: SluiceClient;
  storage?: TokenStorage;
  fetch?: typeof fetch;
  dpop?: DpopKey | false;
  children?: ReactNode;
}
export function SluiceProvider(props: SluiceProviderProps): ReactNode;
export function useSluice(): SluiceClient;

/** The session's fields as stored, and the same in camelCase. */
export type Tokens = Session & {
  accessToken: string;
  refreshToken: string | null;
  expiresAt: number | null;
  tokenType: string;
};

export type AuthStatus = "loading" | "signed-out" | "code-sent" | "verifying" | "signed-in";
export interface UseAuth {
  status: AuthStatus;
  user: { id: string | null; email: string | null } | null;
  /** The stored session (access and refresh token; refreshed silently), also in camelCase. */
  tokens: Tokens | null;
  error: SluiceError | Error | null;
  startSignIn(email: string): Promise<void>;
  verify(code: string): Promise<Session>;
  signOut(): Promise<void>;
}
export function useAuth(): UseAuth;

export interface UseGatewayChatOptions {
  apiSlug: string;
  /**
   * Your own JWT (byo-jwt) for these calls; or `useAuth().tokens.accessToken`, which makes the calls
   * as the managed session (DPoP proofs and silent refresh).
   */
  token?: string;
  /** A consumer key for these calls. */
  consumerKey?: string;
  initialMessages?: ChatMessage[];
  model?: string;
}
export interface UseGatewayChat {
  messages: ChatMessage[];
  sendMessage(content: string | ChatMessage): Promise<ChatResult | { text: string; aborted: true }>;
  isStreaming: boolean;
  error: SluiceError | null;
  stop(): void;
  reset(messages?: ChatMessage[]): void;
}
export function useGatewayChat(options: UseGatewayChatOptions): UseGatewayChat;
