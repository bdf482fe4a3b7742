// The playground page (GET /) in headless Chromium, used as a person would: type the token,
// type code, Run, answer input() in the page, see the output, the plot and the variables;
// Cancel a loop, a prompt, and a run whose session is not ready yet; New session.
// tests/playground.rs starts the server (with a Python that has matplotlib) and runs this
// file with `node --test`; PYREPL3_URL, PYREPL3_TOKEN, PYREPL3_SCREENSHOT and
// PYREPL3_BROWSER_PROFILE (a fresh directory) come from it.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const { PYREPL3_URL: URL, PYREPL3_TOKEN: TOKEN, PYREPL3_SCREENSHOT: SCREENSHOT, PYREPL3_BROWSER_PROFILE: PROFILE } = process.env;
assert.ok(URL && TOKEN && SCREENSHOT && PROFILE, "the Rust test sets the environment");

const SANDBOX_REFUSAL = /^Blocked script execution in 'about:srcdoc' because the document's frame is sandboxed/;

let browser;
let page;
const pageErrors = [];

before(async () => {
  // Without the background-networking flags Chromium reaches out to Google's services at
  // start; on a closed network those connections are refused and only slow it down.
  browser = await chromium.launchPersistentContext(PROFILE, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1200, height: 900 },
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  page.on("console", (message) => {
    // The HTML display test's script, refused by the frame's sandbox, is expected.
    if (message.type() === "error" && !SANDBOX_REFUSAL.test(message.text())) pageErrors.push(message.text());
  });
});

after(async () => {
  await browser?.close();
});

test("the page runs code with input(), shows output, a plot and the variables", async () => {
  const response = await page.goto(`${URL}/`);
  assert.equal(response.status(), 200);
  assert.match(response.headers()["content-security-policy"], /script-src 'self'/);

  await page.fill("#token", TOKEN);
  await page.fill(
    "#code",
    [
      "print('hello from the page')",
      "name = input('your name? ')",
      "print('hi', name)",
      "import matplotlib.pyplot as plt",
      "plt.plot([1, 2, 3], [4, 1, 9])",
      "plt.title('a plot')",
      "plt.show()",
      "answer = 6 * 7",
    ].join("\n"),
  );
  await page.click("#run");

  // The prompt appears in the page; answer it as a user would.
  const field = page.locator("#output form input.input-answer");
  await field.waitFor();
  assert.equal(await page.locator("#output form label").textContent(), "your name? ");
  await field.fill("ada");
  await field.press("Enter");

  // The plot arrives as an image/png display and decodes to a real image.
  const image = page.locator("#output img");
  await image.waitFor();
  await page.waitForFunction(() => {
    const img = document.querySelector("#output img");
    return img !== null && img.complete && img.naturalWidth > 0;
  });
  const width = await image.evaluate((img) => img.naturalWidth);
  assert.ok(width > 100, `the plot is ${width} pixels wide`);

  // The variables are listed once the run has ended.
  const answerRow = page.locator("#variables tbody tr", { hasText: "answer" });
  await answerRow.waitFor();
  assert.deepEqual(await answerRow.locator("td").allTextContents(), ["answer", "int", "42"]);
  assert.deepEqual(await page.locator("#variables tbody tr", { hasText: "name" }).locator("td").allTextContents(), ["name", "str", "'ada'"]);

  const text = await page.locator("#output").innerText();
  assert.match(text, /hello from the page/);
  assert.match(text, /your name\? ada/);
  assert.match(text, /hi ada/);
  assert.doesNotMatch(text, /^null$/m, "a run ending with a statement shows no result");
  assert.equal(await page.isEnabled("#run"), true);
  assert.deepEqual(await page.evaluate(() => sessionStorage.getItem("pyrepl3.token")), TOKEN);

  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`screenshot: ${SCREENSHOT}`);
});

test("an HTML display is shown in a sandboxed frame, not in the page", async () => {
  await page.fill(
    "#code",
    "class Card:\n    def _repr_html_(self):\n        return '<p id=\"card\">a card</p><script>parent.document.title = \"owned\"</script>'\ndisplay(Card())",
  );
  const refused = page.waitForEvent("console", { predicate: (message) => SANDBOX_REFUSAL.test(message.text()) });
  await page.click("#run");
  const frame = page.locator("#output iframe");
  await frame.waitFor();
  assert.equal(await frame.getAttribute("sandbox"), "");
  assert.equal(await page.locator("#card").count(), 0, "the HTML is not part of the page");
  assert.equal(await page.frameLocator("#output iframe").locator("#card").textContent(), "a card");
  await page.locator("#run:enabled").waitFor();
  await refused; // Chromium says it refused the display's script
  assert.equal(await page.title(), "pyrepl3 playground", "no script of the display ran");
});

test("Cancel stops a `while True: pass` run", async () => {
  await page.fill("#code", "while True: pass");
  await page.click("#run");
  await page.locator("#cancel:enabled").waitFor();
  await page.locator("#status", { hasText: "running" }).waitFor();
  await page.click("#cancel");
  await page.locator("#output pre.error", { hasText: "KeyboardInterrupt" }).waitFor();
  await page.locator("#run:enabled").waitFor();
  assert.equal(await page.isDisabled("#cancel"), true);
  // The session lives on: the variables of the first run are still there.
  await page.fill("#code", "answer + 1");
  await page.focus("#code");
  await page.keyboard.press("Control+Enter"); // the editor's shortcut runs it
  await page.locator("#output pre.result", { hasText: "43" }).waitFor();
});

test("a run's output is shown up to 1 000 000 characters, the rest counted", async () => {
  await page.fill("#code", "print('x' * 1_500_000)\nprint('y' * 10)\n'end'");
  await page.click("#run");
  await page.locator("#output pre.result", { hasText: "'end'" }).waitFor();
  const shown = await page.evaluate(() =>
    [...document.querySelectorAll("#output pre.stdout")].map((pre) => pre.textContent.length)
      .reduce((a, b) => a + b, 0));
  assert.equal(shown, 1_000_000);
  assert.equal(await page.locator("#output pre.note").textContent(),
    "[500012 more characters of output not shown]\n");
});

/** The requests the page sends while `body` runs whose URL path ends with `tail`. */
async function requestsDuring(tail, body) {
  const seen = [];
  const listener = (request) => {
    if (new globalThis.URL(request.url()).pathname.endsWith(tail)) seen.push(request);
  };
  page.on("request", listener);
  try {
    await body();
  } finally {
    page.off("request", listener);
  }
  return seen;
}

test("Cancel while input() waits closes the prompt and sends no answer", async () => {
  const answers = await requestsDuring("/input", async () => {
    await page.fill("#code", "input('wait? ')");
    await page.click("#run");
    const field = page.locator("#output form input.input-answer");
    await field.waitFor();
    await page.click("#cancel");
    await page.locator("#output pre.error", { hasText: "KeyboardInterrupt" }).waitFor();
    await page.locator("#run:enabled").waitFor();
    assert.equal(await field.isDisabled(), true, "the prompt is closed");
  });
  // An end-of-file answer raced the cancel: 404 unknown_input in the page, or an EOFError.
  assert.deepEqual(answers.map((r) => r.url()), []);
  assert.doesNotMatch(await page.locator("#output").innerText(), /unknown_input|EOFError/);
});

test("Cancel before the session is ready does not run the code", async () => {
  const id = await page.evaluate(() => sessionStorage.getItem("pyrepl3.session"));
  assert.ok(id, "the tab has a session");
  // The page checks its session before a run: that request is held until Cancel is clicked.
  let reached;
  const checking = new Promise((resolve) => (reached = resolve));
  let release;
  const held = new Promise((resolve) => (release = resolve));
  const isSessionCheck = (url) => url.pathname === `/v1/sessions/${id}`;
  await page.route(isSessionCheck, async (route) => {
    reached();
    await held;
    await route.continue();
  });
  try {
    const executes = await requestsDuring("/execute", async () => {
      await page.fill("#code", "print('must not run')");
      await page.click("#run");
      await checking;
      await page.click("#cancel");
      release();
      await page.locator("#run:enabled").waitFor();
    });
    assert.deepEqual(executes.map((r) => r.url()), []);
  } finally {
    release();
    await page.unroute(isSessionCheck);
  }
  const text = await page.locator("#output").innerText();
  assert.match(text, /cancelled before the run started/);
  assert.doesNotMatch(text, /must not run/);
});

test("New session is off during a run, and closes the old session", async () => {
  const old = await page.evaluate(() => sessionStorage.getItem("pyrepl3.session"));
  assert.ok(old, "the tab has a session");
  await page.fill("#code", "while True: pass");
  await page.click("#run");
  await page.locator("#status", { hasText: "running" }).waitFor();
  assert.equal(await page.isDisabled("#new-session"), true);
  await page.click("#cancel");
  await page.locator("#run:enabled").waitFor();
  assert.equal(await page.isEnabled("#new-session"), true);

  const deleted = page.waitForResponse((r) => r.request().method() === "DELETE" && r.url().endsWith(`/v1/sessions/${old}`));
  const created = page.waitForResponse((r) => r.request().method() === "POST" && r.url().endsWith("/v1/sessions"));
  await page.click("#new-session");
  assert.equal((await deleted).status(), 204);
  const { id } = await (await created).json();
  assert.notEqual(id, old);
  await page.locator("#status", { hasText: `session ${id.slice(0, 8)}` }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("pyrepl3.session")), id);
  const gone = await fetch(`${URL}/v1/sessions/${old}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  assert.equal(gone.status, 404, "the old session is closed");
  // The new session runs code.
  await page.fill("#code", "'fresh'");
  await page.click("#run");
  await page.locator("#output pre.result", { hasText: "'fresh'" }).waitFor();
});

test("the page logged no error", () => {
  assert.deepEqual(pageErrors, []);
});
