// Runs a worker on wrangler's own dev server (the same Miniflare and workerd as `wrangler dev`) with
// the devtools inspector off, for `make bench`. Under `wrangler dev` the inspector proxy enables the
// runtime's Network domain and writes every event it relays (each subrequest's headers and base64
// body, several events per subrequest) to wrangler's debug log file: a cost per subrequest that no
// deployed worker pays, and that would be charged to whichever worker makes more subrequests.
//
//   node scripts/serve.mjs --config wrangler.toml --port 8787 [--persist-to DIR] [--var NAME:VALUE]...
//
// Prints `ready <url>` when it serves; stops (taking workerd along) on SIGTERM or SIGINT.
import { unstable_startWorker } from "wrangler";

const args = process.argv.slice(2);
const options = { config: "wrangler.toml", port: 8787, persist: ".wrangler/state", vars: {} };
for (let i = 0; i < args.length; i++) {
  const value = args[i + 1];
  const need = () => {
    if (value === undefined) throw new Error(`${args[i]} needs a value`);
    i++;
    return value;
  };
  switch (args[i]) {
    case "--config":
      options.config = need();
      break;
    case "--port":
      options.port = Number(need());
      break;
    case "--persist-to":
      options.persist = need();
      break;
    case "--var": {
      const pair = need();
      const at = pair.indexOf(":");
      if (at < 1) throw new Error(`--var takes NAME:VALUE, not ${pair}`);
      options.vars[pair.slice(0, at)] = { type: "plain_text", value: pair.slice(at + 1) };
      break;
    }
    default:
      throw new Error(`unknown argument ${args[i]}`);
  }
}

const worker = await unstable_startWorker({
  config: options.config,
  bindings: options.vars,
  dev: {
    server: { hostname: "127.0.0.1", port: options.port },
    inspector: false,
    persist: options.persist,
    watch: false,
    logLevel: "log",
  },
});
await worker.ready;
console.log(`ready ${await worker.url}`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await worker.dispose().catch(() => {});
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
