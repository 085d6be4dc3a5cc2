// A reference for `make bench`: the bare pass-through worker plus two counter calls (one to a
// SQLite-backed Durable Object before the upstream, which writes its state, and one after the
// answer, in waitUntil), as a metered request makes when its settlement goes on its own. With
// `?calls=1` only the first: a request whose settlement rides on the next admission. No auth, no
// parsing, no WASM: what is left is what the runtime charges for the calls themselves.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, state TEXT NOT NULL)");
    this.ops = 0;
  }

  async fetch(request) {
    const op = await request.text();
    this.ops += 1;
    this.ctx.storage.sql.exec(
      "INSERT INTO counter (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
      JSON.stringify({ ops: this.ops, last: op }),
    );
    return new Response(JSON.stringify({ ok: true, ops: this.ops }));
  }
}

export default {
  async fetch(request, env, ctx) {
    const counter = env.COUNTERS.get(env.COUNTERS.idFromName("api/consumer"));
    const body = await request.arrayBuffer();
    const admitted = await counter.fetch("https://counter/op", {
      method: "POST",
      body: JSON.stringify({ admit: { now: Date.now(), prompt: 16, cap: 1024 } }),
    });
    await admitted.text();
    const upstream = await fetch(env.UPSTREAM_URL, {
      method: "POST",
      headers: { "content-type": request.headers.get("content-type") ?? "application/json" },
      body,
    });
    const answer = await upstream.arrayBuffer();
    if (new URL(request.url).searchParams.get("calls") === "1") {
      return new Response(answer, { status: upstream.status, headers: upstream.headers });
    }
    ctx.waitUntil(
      counter
        .fetch("https://counter/op", { method: "POST", body: JSON.stringify({ settle: { tokens: 8 } }) })
        .then((settled) => settled.text()),
    );
    return new Response(answer, { status: upstream.status, headers: upstream.headers });
  },
};
