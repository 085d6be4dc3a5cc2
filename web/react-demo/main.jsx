// The React demo page (`make dev`: /react/): sign in with an emailed code, then chat with a reply
// that streams token by token, built with @sluice/react alone.
import { useState } from "react";
import { createRoot } from "react-dom/client";
import { SluiceProvider, useAuth, useGatewayChat } from "@sluice/react";

const params = new URLSearchParams(location.search);
const project = params.get("project") || "demo";
const apiSlug = params.get("api") || "chat";
const consumerKey = params.get("key") || undefined;

function SignIn() {
  const { status, error, startSignIn, verify } = useAuth();
  const [value, setValue] = useState("");
  const waitingForCode = status === "code-sent" || status === "verifying";
  const submit = async (e) => {
    e.preventDefault();
    const typed = value.trim();
    setValue("");
    await (waitingForCode ? verify(typed) : startSignIn(typed)).catch(() => {});
  };
  return (
    <form onSubmit={submit} data-testid="signin">
      <input data-testid={waitingForCode ? "code" : "email"} value={value} onChange={(e) => setValue(e.target.value)}
        placeholder={waitingForCode ? "6-digit code" : "you@example.com"} aria-label={waitingForCode ? "Code" : "Email"} />
      <button type="submit">{waitingForCode ? "Sign in" : "Email me a code"}</button>
      {error && <p className="error" data-testid="auth-error">{error.message}</p>}
    </form>
  );
}

function Chat() {
  const { messages, sendMessage, isStreaming, error, stop, reset } = useGatewayChat({ apiSlug, consumerKey });
  const [text, setText] = useState("");
  const submit = (e) => {
    e.preventDefault();
    if (!text.trim()) return;
    sendMessage(text).catch(() => {});
    setText("");
  };
  return (
    <>
      <div data-testid="messages">
        {messages.map((m, i) => (
          <div key={i} className={`msg ${m.role}`} data-role={m.role}>{typeof m.content === "string" ? m.content : ""}</div>
        ))}
      </div>
      {error && <p className="error" data-testid="chat-error">{error.message}</p>}
      <form onSubmit={submit}>
        <input data-testid="input" value={text} onChange={(e) => setText(e.target.value)} placeholder="Say something" aria-label="Message" />
        {isStreaming ? <button type="button" data-testid="stop" onClick={stop}>Stop</button> : <button type="submit" data-testid="send">Send</button>}
        <button type="button" onClick={() => reset()}>Clear</button>
      </form>
    </>
  );
}

function App() {
  const { status, user, signOut } = useAuth();
  if (consumerKey) return <Chat />;
  if (status === "loading") return <p>Loading…</p>;
  if (status !== "signed-in") return <SignIn />;
  return (
    <>
      <p data-testid="user">Signed in as {user && user.email} <button onClick={() => signOut()}>Sign out</button></p>
      <Chat />
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <SluiceProvider baseUrl={location.origin} project={project}>
    <App />
  </SluiceProvider>,
);
