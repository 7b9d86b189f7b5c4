// Browser test of llmq's live queue page, in Debian's headless Chromium
// driven by playwright-core. test/integration/ui_test.go starts a gateway
// with requests waiting in two bands and runs:
//
//   node page.test.mjs BASE_URL MASTER_KEY OTHER_KEY OUT_DIR GROUP...
//
// It checks that without the master key the page shows nothing of the
// queue, that with it the page shows the same counts (and queue waits per
// band) as GET /v1/queue and
// updates without reloading, then prints "READY" and waits for a line on
// stdin (the Go test drains the queue), checks that the page shows the
// queue drained, and prints "PASS". Screenshots go to OUT_DIR. Any failure
// exits non-zero with the reason on stderr.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [base, master, other, outDir, ...groups] = process.argv.slice(2);
if (!base || !master || !other || !outDir || groups.length === 0) {
  console.error("usage: node page.test.mjs BASE_URL MASTER_KEY OTHER_KEY OUT_DIR GROUP...");
  process.exit(2);
}
const WAIT_MS = 15000;

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function queueJSON() {
  const r = await fetch(base + "/v1/queue", { headers: { Authorization: "Bearer " + master } });
  check(r.ok, "GET /v1/queue answered " + r.status);
  return r.json();
}

// pageState reads what the page shows.
async function pageState(page) {
  return page.evaluate(() => ({
    queueShown: !document.getElementById("queue").hidden,
    loginShown: !document.getElementById("login").hidden,
    total: document.getElementById("total").textContent,
    dead: document.getElementById("dead-count").textContent,
    updates: Number(document.body.dataset.updates || 0),
    cells: [...document.querySelectorAll("#heat td[data-count]")]
      .filter((td) => td.dataset.count !== "0")
      .map((td) => ({ band: Number(td.dataset.band), group: td.dataset.group, count: Number(td.dataset.count) })),
    deployments: [...document.querySelectorAll("#deployments tr[data-deployment]")]
      .map((tr) => ({ id: tr.dataset.deployment, inFlight: Number(tr.dataset.inFlight),
        coolMs: Number(tr.querySelector("[data-cooldown-ms]")?.dataset.cooldownMs || 0),
        coolText: tr.querySelector("[data-cooldown-ms]")?.textContent || "" })),
    paused: [...document.querySelectorAll("#heat td[data-paused]")].map((td) => Number(td.dataset.band) + "/" + td.dataset.group),
    waits: [...document.querySelectorAll("#waits tr[data-band]")]
      .map((tr) => ({ band: Number(tr.dataset.band), count: Number(tr.dataset.count), p50: tr.cells[2].textContent, p99: tr.cells[3].textContent })),
    tenants: [...document.querySelectorAll("#tenants tr[data-key]")].map((tr) => `${tr.dataset.key}=${tr.dataset.count}`),
    batches: [...document.querySelectorAll("#batches tr[data-batch]")]
      .map((tr) => `${tr.dataset.batch}=${tr.dataset.done}/${tr.dataset.total}`),
    loginError: document.getElementById("login-error").textContent,
    text: document.body.innerText,
  }));
}

// waitFor polls cond(state) until it holds, or fails with what was last seen.
async function waitFor(page, what, cond) {
  const until = Date.now() + WAIT_MS;
  let st;
  for (;;) {
    st = await pageState(page);
    const last = await cond(st);
    if (last === true) return st;
    if (Date.now() > until) throw new Error(`the page never showed ${what}: ${typeof last === "string" ? last + "; " : ""}${JSON.stringify({ ...st, text: undefined })}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// matches compares the page with /v1/queue: the same non-empty cells with
// the same counts, the same total, deployments in flight and cooling down.
function matches(st, q) {
  const want = q.queues.map((x) => `${x.band}/${x.group}=${x.depth}`).sort().join(",");
  const got = st.cells.map((c) => `${c.band}/${c.group}=${c.count}`).sort().join(",");
  if (got !== want) return `cells ${got}, /v1/queue ${want}`;
  if (st.total !== String(q.total)) return `total ${st.total}, /v1/queue ${q.total}`;
  for (const d of q.deployments) {
    const p = st.deployments.find((x) => x.id === d.id);
    if (!p) return `deployment ${d.id} missing`;
    if (p.inFlight !== d.in_flight) return `deployment ${d.id} in flight ${p.inFlight}, /v1/queue ${d.in_flight}`;
    if ((p.coolMs > 0) !== (d.cooldown_remaining_ms > 0)) return `deployment ${d.id} cooldown ${p.coolMs}, /v1/queue ${d.cooldown_remaining_ms}`;
    if (d.cooldown_reason && !p.coolText.includes(d.cooldown_reason)) return `deployment ${d.id} cooldown "${p.coolText}" lacks its reason "${d.cooldown_reason}"`;
  }
  // The queue waits of the last minute: the same bands and counts.
  const wantW = (q.queue_wait || []).map((w) => `${w.band}=${w.count}`).join(",");
  const gotW = st.waits.map((w) => `${w.band}=${w.count}`).join(",");
  if (gotW !== wantW) return `queue waits ${gotW}, /v1/queue ${wantW}`;
  // Who waits, by band, group and tenant.
  const wantT = q.queues.flatMap((x) => (x.tenants || []).map((t) => `${x.band}/${x.group}/${t.tenant}=${t.depth}`)).sort().join(",");
  if ([...st.tenants].sort().join(",") !== wantT) return `tenants ${st.tenants.join(",")}, /v1/queue ${wantT}`;
  // The batches not over, with their progress.
  const wantB = (q.batches || []).map((b) => `${b.id}=${b.completed + b.failed}/${b.total}`).join(",");
  if (st.batches.join(",") !== wantB) return `batches ${st.batches.join(",")}, /v1/queue ${wantB}`;
  if (st.dead !== String(q.dead_letters?.count ?? "unknown")) return `dead letters ${st.dead}, /v1/queue ${q.dead_letters?.count}`;
  // Every cell of a paused band and group is marked, and no other.
  for (const p of q.paused) {
    const marked = st.paused.filter((x) => x.endsWith("/" + p.group));
    if (marked.length === 0) return `paused group ${p.group} not marked`;
    if (p.band !== -1 && !marked.includes(p.band + "/" + p.group)) return `paused band ${p.band} of ${p.group} not marked`;
  }
  for (const x of st.paused) {
    const [b, g] = [Number(x.split("/")[0]), x.slice(x.indexOf("/") + 1)];
    if (!q.paused.some((p) => p.group === g && (p.band === -1 || p.band === b))) return `cell ${x} marked paused, /v1/queue says not`;
  }
  return true;
}

function showsNothing(st, when) {
  check(!st.queueShown && st.loginShown, `${when}: the queue is shown or the key form is not`);
  check(st.cells.length === 0 && st.deployments.length === 0 && st.total === "", `${when}: queue data on the page: ${JSON.stringify(st)}`);
  for (const g of groups) check(!st.text.includes(g), `${when}: the page text names the group ${g}`);
}

const profile = mkdtempSync(join(tmpdir(), "llmq-ui-chromium-"));
let context;
try {
  // A persistent context on a fresh profile: playwright passes it to
  // Chromium as --user-data-dir.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 860 },
  });
  const page = await context.newPage();
  const urls = [];
  page.on("request", (r) => urls.push(r.url()));
  const authHeaders = [];
  page.on("request", (r) => { const a = r.headers()["authorization"]; if (a) authHeaders.push(r.url()); });

  // 1. Without a key: nothing of the queue, the key form.
  await page.goto(base + "/ui");
  let st = await waitFor(page, "the key form", (s) => s.loginShown);
  showsNothing(st, "without a key");

  // 2. A key that is not the master key: refused, still nothing.
  await page.fill("#key", other);
  await page.click("form button[type=submit]");
  st = await waitFor(page, "the refusal of a non-master key", (s) => s.loginError.includes("only the master key"));
  showsNothing(st, "with a non-master key");

  // 3. The master key: the same counts as /v1/queue.
  await page.fill("#key", master);
  await page.click("form button[type=submit]");
  await page.evaluate(() => { window.__sameDocument = true; });
  st = await waitFor(page, "the same queue as /v1/queue", async (s) => s.queueShown && matches(s, await queueJSON()));
  check(st.cells.length >= 2 && new Set(st.cells.map((c) => c.band)).size >= 2, `requests in two bands expected: ${JSON.stringify(st.cells)}`);
  check(st.paused.length > 0, "no paused cell shown although /v1/queue lists a pause");
  check(st.batches.length > 0, "no batch shown although /v1/queue lists one");
  check(st.tenants.some((x) => x.includes("/acme=")), "the tenant acme's waiting request is not shown: " + JSON.stringify(st.tenants));
  check(st.waits.length > 0 && st.waits.every((w) => w.p50 && w.p99), "no queue wait shown for the requests picked up: " + JSON.stringify(st.waits));
  const cooling = st.deployments.filter((d) => d.coolMs > 0);
  check(cooling.length > 0, "no deployment shows a cooldown: " + JSON.stringify(st.deployments));
  const before = st.updates;
  st = await waitFor(page, "updates without reloading", (s) => s.updates >= before + 2);
  await page.screenshot({ path: join(outDir, "ui.png"), fullPage: true });

  // 4. The Go test drains the queue: the page follows by itself.
  console.log("READY");
  const rl = createInterface({ input: process.stdin });
  await new Promise((resolve, reject) => {
    rl.once("line", () => { rl.removeAllListeners("close"); rl.close(); resolve(); });
    rl.once("close", () => reject(new Error("stdin closed before the queue was drained")));
  });
  st = await waitFor(page, "the drained queue", async (s) => {
    if (s.total !== "0" || s.cells.length !== 0) return `total ${s.total}`;
    return matches(s, await queueJSON());
  });
  check(await page.evaluate(() => window.__sameDocument === true), "the page reloaded");
  await page.screenshot({ path: join(outDir, "ui-drained.png"), fullPage: true });

  // 5. Forget the key: the queue leaves the page and the session storage.
  await page.click("#forget");
  st = await waitFor(page, "the key form after forgetting the key", (s) => s.loginShown);
  showsNothing(st, "after forgetting the key");
  check(await page.evaluate(() => sessionStorage.length === 0), "the key stays in sessionStorage");

  // The key never went into a URL; it went only to /v1/queue, as a header.
  for (const u of urls) check(!u.includes(master) && !u.includes(encodeURIComponent(master)), "a URL carried the key: " + u);
  for (const u of authHeaders) check(new URL(u).pathname === "/v1/queue", "the key went to " + u);
  check(urls.every((u) => u.startsWith(base)), "the page loaded something from another host: " + urls.filter((u) => !u.startsWith(base)));
  console.log("PASS");
} catch (e) {
  console.error("FAIL: " + (e && e.stack ? e.stack : e));
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  rmSync(profile, { recursive: true, force: true });
}
