// Drives the web console in Debian's headless Chromium (playwright-core, no downloaded
// browser) for tests/tests/console.rs. One scenario per run:
//
//   node console.mjs flow|cancel|gate|submit
//
// Reads CONSOLE_URL, CONSOLE_TOKEN, REPO_URL, AGENT, SHOTS_DIR (and RUN_ID for gate)
// from the environment. Fails (exit 1, the reason on stderr) on the first broken
// expectation; on success prints one line `RESULT {json}` for the Rust test to check
// against the store.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.CONSOLE_URL;
const token = process.env.CONSOLE_TOKEN;
const shots = process.env.SHOTS_DIR;
const LONG = 240_000;

async function browser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Playwright adds --headless and a fresh profile directory of its own.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** The API as a script sees it, with the bearer token (or without any credential). */
async function apiCall(method, path, { body, auth = true, headers = {} } = {}) {
  const response = await fetch(base + path, {
    method,
    headers: {
      ...(auth ? { Authorization: `Bearer ${token}` } : {}),
      ...(body ? { "Content-Type": "application/json" } : {}),
      ...headers,
    },
    body: body ? JSON.stringify(body) : undefined,
    redirect: "manual",
  });
  const text = await response.text();
  return { status: response.status, text, json: safeJson(text) };
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function newPage(b) {
  const context = await b.newContext({ viewport: { width: 1366, height: 860 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // A refused policy (CSP) or a script error shows here: the console must have none.
    if (message.type() === "error" && !/status of 40[14]/.test(message.text())) problems.push(`console error: ${message.text()}`);
  });
  return { page, problems };
}

async function logIn(page) {
  const first = await page.goto(base + "/");
  assert.equal(first.status(), 401, "the console without a session answers 401 with the login form");
  await page.fill("#token", "not-the-token-at-all");
  await page.click("button[type=submit]");
  await page.waitForURL(/\/console\/login\?failed=1$/);
  assert.equal(await page.isVisible("#login-error"), true, "a wrong token is said to be wrong");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("[data-test=runs], .empty");
}

async function submitRun(page, request) {
  await page.click("a[href='#/new']");
  await page.fill("#field-repository", request.repository);
  await page.fill("#field-specify_text", request.specify_text);
  await page.selectOption("#field-publish", request.publish);
  await page.fill("#field-agent", request.agent);
  await page.click("form.submit-form button[type=submit]");
  await page.waitForURL(/#\/runs\/[0-9a-f-]+$/);
  return decodeURIComponent(page.url().split("#/runs/")[1]);
}

const statusOf = (page) => page.getAttribute("[data-test=run-status] .pill", "data-status");

async function waitStatus(page, wanted) {
  await page.waitForFunction(
    (want) => want.includes(document.querySelector("[data-test=run-status] .pill")?.dataset.status),
    wanted,
    { timeout: LONG, polling: 250 },
  );
  return statusOf(page);
}

const logLines = (page) =>
  page.$eval("[data-test=log]", (pre) => pre.textContent.split("\n").filter((l) => l.includes("progress line")).length);

/** Submit from the form, watch the log grow while the agent writes, check the finished page. */
async function flow() {
  const b = await browser();
  const { page, problems } = await newPage(b);
  await logIn(page);

  // A bad input: the API's own message, beside the field it names.
  const bad = { repository: "not a repository!", specify_text: "Add a CSV export" };
  const expected = await apiCall("POST", "/runs", { body: bad });
  assert.equal(expected.status, 400, expected.text);
  await page.click("a[href='#/new']");
  await page.fill("#field-repository", bad.repository);
  await page.fill("#field-specify_text", bad.specify_text);
  await page.click("form.submit-form button[type=submit]");
  const field = expected.json.error.field;
  await page.waitForSelector(`[data-error-for="${field}"]:not([hidden])`);
  const shown = await page.textContent(`[data-error-for="${field}"]`);
  assert.equal(shown, expected.json.error.message, "the form shows the API's message");
  const beside = await page.$eval(`[data-error-for="${field}"]`, (el, name) => el.closest(".field")?.querySelector(`[name="${name}"]`) !== null, field);
  assert.ok(beside, `the message sits beside the ${field} field`);
  await page.screenshot({ path: join(shots, "submit-form-error.png") });
  // The browser logs that deliberate 400 as a failed load; nothing else may fail.
  assert.ok(problems.every((p) => p.includes("status of 400")), problems.join("\n"));
  problems.length = 0;

  const runId = await submitRun(page, {
    repository: process.env.REPO_URL,
    specify_text: "Add a CSV export of invoices",
    publish: "pr",
    agent: process.env.AGENT,
  });

  // The running phase's log grows on the page while the agent is still writing.
  await page.waitForFunction(
    () => document.querySelector("[data-test=log]")?.textContent.includes("progress line"),
    null,
    { timeout: LONG, polling: 200 },
  );
  const first = await logLines(page);
  assert.equal(await statusOf(page), "running");
  await page.waitForFunction(
    (n) => document.querySelector("[data-test=log]").textContent.split("\n").filter((l) => l.includes("progress line")).length > n,
    first,
    { timeout: 60_000, polling: 200 },
  );
  const second = await logLines(page);
  const stillRunning = await statusOf(page);
  const liveState = await page.getAttribute("[data-test=log-state]", "data-state");
  assert.equal(stillRunning, "running", "the log grew while the run was still running");
  assert.equal(liveState, "live", "the viewer says it follows the phase live");
  assert.ok(second > first, `${second} > ${first}`);
  await page.screenshot({ path: join(shots, "run-page-live.png"), fullPage: true });

  const final = await waitStatus(page, ["succeeded", "failed", "no_changes", "cancelled"]);
  assert.equal(final, "succeeded", await page.textContent("main"));
  const record = (await apiCall("GET", `/runs/${runId}`)).json;
  // The page refreshes once more after the final status; wait for the PR link it shows.
  await page.waitForSelector("[data-test=pr-link]");
  await page.waitForFunction(() => document.querySelector("[data-test=log-state]")?.dataset.state === "ended", null, { timeout: 30_000 });

  // The timeline: one row per phase that ran, in order, with its recorded duration.
  const rows = await page.$$eval("[data-test=timeline-row]", (all) => all.map((r) => ({ phase: r.dataset.phase, status: r.dataset.status, ms: Number(r.dataset.durationMs), text: r.querySelector("[data-test=phase-duration]").textContent, left: parseFloat(r.querySelector(".tl-bar").style.left), width: parseFloat(r.querySelector(".tl-bar").style.width) })));
  const ran = record.phases.filter((p) => p.started_at);
  assert.deepEqual(rows.map((r) => r.phase), ran.map((p) => p.phase));
  for (const [i, row] of rows.entries()) {
    if (ran[i].duration_ms !== null && ran[i].duration_ms !== undefined) assert.equal(row.ms, ran[i].duration_ms, `${row.phase} duration`);
    assert.ok(row.text.length > 0, `${row.phase} shows its duration`);
    assert.ok(row.left >= 0 && row.left + row.width <= 100.5, `${row.phase} bar inside the axis`);
    if (i > 0) assert.ok(row.left >= rows[i - 1].left, `${row.phase} starts no earlier than the phase before it`);
  }
  const specify = rows.find((r) => r.phase === "specify");
  assert.ok(specify && specify.width === Math.max(...rows.map((r) => r.width)), "the slow specify phase is the longest bar");

  // Links: branch, commit and pull request as run.json has them; artifacts open.
  assert.equal(await page.getAttribute("[data-test=pr-link]", "href"), record.pull_request_url);
  assert.equal((await page.textContent("[data-test=branch]")).trim(), record.branch_name);
  assert.equal(await page.getAttribute("[data-test=commit] [title]", "title"), record.commit_sha);
  const artifactLinks = await page.$$eval("[data-test=artifact-open]", (all) => all.map((a) => a.getAttribute("href")));
  assert.equal(artifactLinks.length, record.artifacts.length);
  const opened = await page.evaluate(async (href) => (await fetch(href)).status, artifactLinks[0]);
  assert.equal(opened, 200, "an artifact opens with the session");
  await page.screenshot({ path: join(shots, "run-page.png"), fullPage: true });

  // The list: newest first, the run there; the status filter keeps or hides it.
  await page.click("a[href='#/']");
  await page.waitForSelector(`[data-test=run-row][data-run-id="${runId}"]`);
  await page.screenshot({ path: join(shots, "run-list.png") });
  await page.selectOption("#filter-status", "failed");
  await page.waitForFunction(() => window.location.hash.includes("status=failed"));
  await page.waitForSelector(".empty, [data-test=runs]");
  assert.equal(await page.$(`[data-test=run-row][data-run-id="${runId}"]`), null, "filtered out");
  await page.selectOption("#filter-status", "succeeded");
  await page.waitForSelector(`[data-test=run-row][data-run-id="${runId}"]`);

  assert.deepEqual(problems, [], "no script error and no refused policy on the way");
  await b.close();
  return { run_id: runId, log_lines_seen: [first, second] };
}

/** Cancel from the run page stops a slow run. */
async function cancel() {
  const b = await browser();
  const { page, problems } = await newPage(b);
  await logIn(page);
  const runId = await submitRun(page, {
    repository: process.env.REPO_URL,
    specify_text: "Add a slow feature",
    publish: "branch",
    agent: process.env.AGENT,
  });
  await waitStatus(page, ["running"]);
  await page.click("[data-test=cancel]");
  await page.waitForSelector("[data-test=notice]:not([hidden])");
  const final = await waitStatus(page, ["cancelled", "failed", "succeeded"]);
  assert.equal(final, "cancelled");
  assert.equal(await page.$("[data-test=cancel]"), null, "no cancel button on a finished run");
  assert.deepEqual(problems, []);
  await b.close();
  return { run_id: runId };
}

/** Nothing without the credential: not the pages' data, not the API, not by a forged cookie. */
async function gate() {
  const runId = process.env.RUN_ID;
  const refused = [];
  const attempts = [
    ["GET", "/runs", {}],
    ["GET", `/runs/${runId}`, {}],
    ["GET", `/runs/${runId}/artifacts/`, {}],
    ["POST", "/runs", { body: { repository: "octo/hello", specify_text: "x" } }],
    ["POST", `/runs/${runId}/cancel`, {}],
    ["GET", "/console/session", {}],
    ["GET", "/runs", { headers: { Authorization: "Bearer wrong-token-0123456789" } }],
    ["GET", "/runs", { headers: { Cookie: "specrun_session=9999999999.0123.abcd" } }],
  ];
  for (const [method, path, options] of attempts) {
    const answer = await apiCall(method, path, { ...options, auth: false });
    assert.equal(answer.status, 401, `${method} ${path}: ${answer.text}`);
    assert.ok(!answer.text.includes(runId), `${method} ${path} tells nothing of the run`);
    refused.push(`${method} ${path}`);
  }
  const b = await browser();
  const { page } = await newPage(b);
  const front = await page.goto(base + "/");
  assert.equal(front.status(), 401);
  assert.ok(!(await page.content()).includes(runId));
  assert.equal(await page.$("[data-test=runs]"), null, "no run list without logging in");
  await page.screenshot({ path: join(shots, "login.png") });
  // A session may read but may not act without its CSRF token (what another site's
  // form could make the browser send).
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector(`[data-test=run-row][data-run-id="${runId}"]`);
  const forged = await page.evaluate(async (id) => {
    const response = await fetch(`/runs/${id}/cancel`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    return response.status;
  }, runId);
  assert.equal(forged, 403, "a POST without the CSRF token is refused");
  const still = (await apiCall("GET", `/runs/${runId}`)).json;
  assert.equal(still.status, "queued", "and the run was left alone");
  await b.close();
  return { run_id: runId, refused };
}

/** An operator's script submits a run with the bearer token (what `gate` then guards). */
async function submit() {
  const answer = await apiCall("POST", "/runs", {
    body: { repository: process.env.REPO_URL, specify_text: "A private feature", publish: "branch", agent: "chatty" },
  });
  assert.equal(answer.status, 202, answer.text);
  return { run_id: answer.json.run_id };
}

const scenarios = { flow, cancel, gate, submit };
const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`usage: node console.mjs ${Object.keys(scenarios).join("|")}`);
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
try {
  const result = await scenarios[name]();
  console.log(`RESULT ${JSON.stringify(result)}`);
} catch (error) {
  console.error(error.stack || String(error));
  process.exit(1);
}
