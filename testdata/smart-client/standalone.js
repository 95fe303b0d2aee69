// A SMART app built on the official SMART JavaScript client (fhirclient, Node adapter) and a scripted person
// using it, headless: standalone patient launch with PKCE against a FHIR server, then reads.
//
//   node standalone.js FHIR_BASE CLIENT_ID USERNAME PASSWORD APP_PORT [OTHER_PATIENT_ID]
//
// The app listens on 127.0.0.1:APP_PORT (/launch and /callback; register http://127.0.0.1:APP_PORT/callback as
// the client's redirect URI). The "person" is a cookie-keeping HTTP user agent that follows redirects, fills in
// the server's sign-in form and allows everything on its consent form. The outcome is one JSON object on
// standard output; any failure exits non-zero with the reason on standard error.
"use strict";

const http = require("http");
const smart = require("fhirclient");

const [fhirBase, clientId, username, password, appPort, otherPatient] = process.argv.slice(2);
if (!appPort) {
  console.error("usage: node standalone.js FHIR_BASE CLIENT_ID USERNAME PASSWORD APP_PORT [OTHER_PATIENT_ID]");
  process.exit(2);
}
const appOrigin = `http://127.0.0.1:${appPort}`;

// The app's session store: one person uses it, so one map stands in for a session cookie's server side.
const sessions = new Map();
const storage = {
  async get(key) { return sessions.get(key); },
  async set(key, value) { sessions.set(key, value); return value; },
  async unset(key) { return sessions.delete(key); },
};

let finish;
const outcome = new Promise((resolve, reject) => { finish = { resolve, reject }; });

// What the app does once authorized: the calls a patient app makes, with fhirclient's own helpers.
async function useClient(client) {
  const result = {
    patientId: client.getPatientId(),
    fhirUser: client.getFhirUser(),
    scope: client.getState("tokenResponse.scope"),
    hasRefreshToken: Boolean(client.getState("tokenResponse.refresh_token")),
    tokenType: client.getState("tokenResponse.token_type"),
  };
  const patient = await client.patient.read();
  result.patientRead = { resourceType: patient.resourceType, id: patient.id, name: patient.name };
  const bundle = await client.patient.request("Observation");
  result.observationSearch = { resourceType: bundle.resourceType, count: (bundle.entry || []).length };
  if (otherPatient) {
    try {
      await client.request(`Patient/${otherPatient}`);
      result.otherPatientStatus = 200;
    } catch (e) {
      result.otherPatientStatus = e.status || e.statusCode || String(e);
    }
  }
  const before = client.getState("tokenResponse.access_token");
  await client.refresh();
  result.refreshed = client.getState("tokenResponse.access_token") !== before;
  const again = await client.request(`Patient/${result.patientId}`);
  result.readAfterRefresh = again.id;
  return result;
}

const app = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, appOrigin);
    if (url.pathname === "/launch") {
      await smart(req, res, storage).authorize({
        iss: fhirBase,
        clientId,
        scope: "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs",
        redirectUri: `${appOrigin}/callback`,
        pkceMode: "required",
      });
      return;
    }
    if (url.pathname === "/callback") {
      const client = await smart(req, res, storage).ready();
      const result = await useClient(client);
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("done");
      finish.resolve(result);
      return;
    }
    res.writeHead(404);
    res.end();
  } catch (e) {
    res.writeHead(500, { "content-type": "text/plain" });
    res.end(String(e));
    finish.reject(e);
  }
});

// The person: a user agent with a cookie jar, following redirects and submitting the forms it is shown.
const jar = new Map(); // origin -> Map(name -> value)
function cookieHeader(u) {
  const c = jar.get(new URL(u).origin);
  return c ? [...c].map(([k, v]) => `${k}=${v}`).join("; ") : "";
}
function keepCookies(u, res) {
  const origin = new URL(u).origin;
  for (const line of res.headers.getSetCookie()) {
    const [pair] = line.split(";");
    const i = pair.indexOf("=");
    if (!jar.has(origin)) jar.set(origin, new Map());
    jar.get(origin).set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
  }
}

function attrs(tag) {
  const out = {};
  for (const m of tag.matchAll(/([a-zA-Z-]+)(?:="([^"]*)")?/g)) out[m[1].toLowerCase()] = m[2] === undefined ? "" : decodeEntities(m[2]);
  return out;
}
function decodeEntities(s) {
  return s.replace(/&#(\d+);/g, (_, n) => String.fromCharCode(Number(n)))
    .replace(/&#x([0-9a-f]+);/gi, (_, n) => String.fromCharCode(parseInt(n, 16)))
    .replace(/&quot;/g, '"').replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

// fillForm reads the page's form and fills it in as the person would: credentials on the sign-in form, every
// box left ticked and "Allow" on the consent form.
function fillForm(page, pageURL) {
  const form = page.match(/<form[^>]*>([\s\S]*?)<\/form>/i);
  if (!form) throw new Error(`no form on ${pageURL}: ${page.slice(0, 400)}`);
  const action = new URL(attrs(form[0].match(/<form[^>]*>/i)[0]).action || "", pageURL).href;
  const body = new URLSearchParams();
  for (const m of form[1].matchAll(/<input\b[^>]*>/gi)) {
    const a = attrs(m[0]);
    if (!a.name) continue;
    if (a.type === "checkbox") { if ("checked" in a) body.append(a.name, a.value); continue; }
    if (a.name === "username") body.append("username", username);
    else if (a.name === "password") body.append("password", password);
    else body.append(a.name, a.value || "");
  }
  const approve = form[1].match(/<button[^>]*value="approve"[^>]*>/i);
  if (approve) body.append(attrs(approve[0]).name, "approve");
  return { action, body };
}

async function browse(start) {
  let url = start;
  let method = "GET";
  let body;
  for (let hops = 0; hops < 20; hops++) {
    const headers = { cookie: cookieHeader(url), accept: "text/html" };
    if (body) headers["content-type"] = "application/x-www-form-urlencoded";
    const res = await fetch(url, { method, body, headers, redirect: "manual" });
    keepCookies(url, res);
    const text = await res.text();
    if (res.status >= 300 && res.status < 400) {
      url = new URL(res.headers.get("location"), url).href;
      method = "GET";
      body = undefined;
      continue;
    }
    if (res.status !== 200) throw new Error(`${method} ${url}: ${res.status} ${text.slice(0, 400)}`);
    if (url.startsWith(appOrigin)) return; // back in the app
    const form = fillForm(text, url);
    url = form.action;
    method = "POST";
    body = form.body.toString();
  }
  throw new Error("too many steps");
}

app.listen(Number(appPort), "127.0.0.1", async () => {
  const timer = setTimeout(() => finish.reject(new Error("timed out after 60 s")), 60000);
  try {
    await browse(`${appOrigin}/launch`);
    const result = await outcome;
    process.stdout.write(JSON.stringify(result) + "\n");
    clearTimeout(timer);
    app.close();
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
  }
});
