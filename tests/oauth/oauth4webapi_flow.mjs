// The authorization-code flow run by a standard OAuth client library (oauth4webapi, pinned in
// package.json) against Sluice's discovery document: discovery, PKCE S256, the authorization URL,
// validating the redirect (state, iss), the code exchange, a refresh, and revocation.
// The e2e case drives the sign-in forms in between: this script prints `AUTHORIZE <url>` and reads
// the URL the browser was redirected to from stdin; it ends with `RESULT <json>`.
import * as oauth from "oauth4webapi";
import { createInterface } from "node:readline";

const { SLUICE_ISSUER: issuerUrl, SLUICE_CLIENT_ID: clientId, SLUICE_REDIRECT_URI: redirectUri, SLUICE_RESOURCE: resource, SLUICE_SCOPE: scope } = process.env;
const insecure = { [oauth.allowInsecureRequests]: true }; // the local gateway speaks plain HTTP

const issuer = new URL(issuerUrl);
const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { algorithm: "oauth2", ...insecure }),
);
const client = { client_id: clientId };
const clientAuth = oauth.None();

const verifier = oauth.generateRandomCodeVerifier();
const challenge = await oauth.calculatePKCECodeChallenge(verifier);
const state = oauth.generateRandomState();
const url = new URL(as.authorization_endpoint);
url.searchParams.set("response_type", "code");
url.searchParams.set("client_id", clientId);
url.searchParams.set("redirect_uri", redirectUri);
url.searchParams.set("scope", scope);
url.searchParams.set("state", state);
url.searchParams.set("code_challenge", challenge);
url.searchParams.set("code_challenge_method", "S256");
if (resource) url.searchParams.set("resource", resource);
console.log(`AUTHORIZE ${url.href}`);

const lines = createInterface({ input: process.stdin });
const redirected = await new Promise((resolve) => lines.once("line", resolve));
lines.close();

const params = oauth.validateAuthResponse(as, client, new URL(redirected), state);
const exchanged = await oauth.processAuthorizationCodeResponse(
  as,
  client,
  await oauth.authorizationCodeGrantRequest(as, client, clientAuth, params, redirectUri, verifier, insecure),
);
const refreshed = await oauth.processRefreshTokenResponse(
  as,
  client,
  await oauth.refreshTokenGrantRequest(as, client, clientAuth, exchanged.refresh_token, insecure),
);
const revoked = await oauth.revocationRequest(as, client, clientAuth, refreshed.refresh_token, insecure);
await oauth.processRevocationResponse(revoked);

console.log(
  `RESULT ${JSON.stringify({
    metadata: as,
    exchanged: { token_type: exchanged.token_type, scope: exchanged.scope, expires_in: exchanged.expires_in, access_token: exchanged.access_token, refresh_token: exchanged.refresh_token },
    refreshed: { token_type: refreshed.token_type, access_token: refreshed.access_token, refresh_token: refreshed.refresh_token },
  })}`,
);
