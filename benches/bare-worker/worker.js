// The floor any Workers gateway pays: a bare pass-through on the same `wrangler dev` as Sluice.
// It forwards the request body to UPSTREAM_URL and returns the upstream Response as-is (streamed).
export default {
  async fetch(request, env) {
    return fetch(env.UPSTREAM_URL, {
      method: "POST",
      headers: { "content-type": request.headers.get("content-type") ?? "application/json" },
      body: request.body,
    });
  },
};
