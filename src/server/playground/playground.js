// The playground page's script: one session per tab, code run over server-sent events with
// the TypeScript client (served at /ui/client/), output shown as it comes. Untrusted output
// never becomes markup of this page: text goes in as text, HTML displays into sandboxed
// frames (no scripts, no same-origin), images as data: URLs of their base64.

import { ApiError, Client } from "/ui/client/index.js";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
const codeInput = $("code");
const runButton = $("run");
const cancelButton = $("cancel");
const newSessionButton = $("new-session");
const output = $("output");
const status = $("status");
const variables = $("variables").querySelector("tbody");

const TOKEN_KEY = "pyrepl3.token";
const SESSION_KEY = "pyrepl3.session";
tokenInput.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
tokenInput.addEventListener("input", () => {
  sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
  sessionStorage.removeItem(SESSION_KEY); // another token is another tenant
});

let running = null; // the AbortController of the run under way

function client() {
  return new Client(location.origin, tokenInput.value.trim());
}

/** The tab's session: the one kept in sessionStorage while it exists, else a new one. */
async function currentSession() {
  const id = sessionStorage.getItem(SESSION_KEY);
  if (id !== null) {
    const session = client().session(id);
    try {
      await session.info();
      return session;
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
    }
  }
  return newSession();
}

async function newSession() {
  const session = await client().createSession();
  sessionStorage.setItem(SESSION_KEY, session.id);
  status.textContent = `session ${session.id.slice(0, 8)}`;
  return session;
}

function append(node) {
  output.append(node);
  return node;
}

/**
 * Characters of a run's output the page shows; the rest is only counted. Streams are never
 * cut by the server, so a run that prints without end would otherwise grow the page until
 * the tab dies (and Cancel with it).
 */
const MAX_SHOWN_OUTPUT = 1_000_000;
let shownOutput = 0;
/** The note saying how much output was left out, once some was: { count, node }. */
let hiddenOutput = null;

function clearOutput() {
  output.replaceChildren();
  shownOutput = 0;
  hiddenOutput = null;
}

/** The code's output, shown up to MAX_SHOWN_OUTPUT characters a run. */
function appendOutput(text, stream) {
  const part = text.slice(0, Math.max(0, MAX_SHOWN_OUTPUT - shownOutput));
  if (part.length > 0) {
    shownOutput += part.length;
    appendText(part, stream);
  }
  const left = text.length - part.length;
  if (left === 0) return;
  if (hiddenOutput === null) {
    const node = append(Object.assign(document.createElement("pre"), { className: "note" }));
    hiddenOutput = { count: 0, node };
  }
  hiddenOutput.count += left;
  hiddenOutput.node.textContent = `[${hiddenOutput.count} more characters of output not shown]\n`;
}

/** Output text goes into a <pre> per stream, continued while the stream does not change. */
function appendText(text, kind) {
  const last = output.lastElementChild;
  if (last && last.tagName === "PRE" && last.className === kind) {
    last.append(text); // a new text node: no copy of what is there
  } else {
    const pre = document.createElement("pre");
    pre.className = kind;
    pre.textContent = text;
    append(pre);
  }
}

/** A MIME bundle shown as its richest safe form; the element, for updates in place. */
function renderBundle(data) {
  if (typeof data["image/png"] === "string") {
    const img = document.createElement("img");
    img.alt = typeof data["text/plain"] === "string" ? data["text/plain"] : "image";
    img.src = `data:image/png;base64,${data["image/png"]}`;
    return img;
  }
  if (typeof data["text/html"] === "string") {
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", ""); // no scripts, an opaque origin: the page is out of reach
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.title = "HTML output";
    frame.srcdoc = data["text/html"];
    return frame;
  }
  const pre = document.createElement("pre");
  pre.className = "display";
  pre.textContent = typeof data["text/plain"] === "string" ? data["text/plain"] : "";
  return pre;
}

/**
 * Shows an input() prompt in the output; resolves with what the user submits. `signal` (the
 * client's) aborts when nobody waits for the answer any more (the run was cancelled or timed
 * out, or ended): the prompt is then closed, and what it resolves with is not sent.
 */
function askInput(prompt, password, signal) {
  return new Promise((resolve) => {
    const form = document.createElement("form");
    const label = document.createElement("label");
    label.textContent = prompt;
    const field = document.createElement("input");
    field.type = password ? "password" : "text";
    field.className = "input-answer";
    field.setAttribute("aria-label", prompt || "input");
    form.append(label, field);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      form.replaceWith(Object.assign(document.createElement("pre"), {
        className: "stdin",
        textContent: `${prompt}${password ? "" : field.value}\n`,
      }));
      resolve(field.value);
    });
    const close = () => {
      // Kept in the output, closed: the prompt stays readable beside the run's error.
      field.disabled = true;
      form.classList.add("closed");
      resolve(null);
    };
    append(form);
    if (signal.aborted) {
      close();
    } else {
      signal.addEventListener("abort", close, { once: true });
      field.focus();
    }
  });
}

async function showVariables(session) {
  const { entries } = await session.namespace();
  variables.replaceChildren(
    ...entries.map((entry) => {
      const row = document.createElement("tr");
      for (const text of [entry.name, entry.type, entry.repr]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }),
  );
}

async function run() {
  // Disabled also while "New session" replaces the session (Ctrl+Enter comes here anyway).
  if (running !== null || runButton.disabled) return;
  running = new AbortController();
  const { signal } = running;
  runButton.disabled = true;
  cancelButton.disabled = false;
  newSessionButton.disabled = true; // the run's session stays the tab's session until it ends
  clearOutput();
  const shown = new Map(); // display_id → element, for updates in place
  try {
    const session = await currentSession();
    if (signal.aborted) {
      // Cancel came while the session was being found or made: the code is not run at all.
      appendText("cancelled before the run started\n", "note");
      status.textContent = `session ${session.id.slice(0, 8)}`;
      return;
    }
    status.textContent = `session ${session.id.slice(0, 8)}: running`;
    const result = await session.run(codeInput.value, {
      signal,
      onOutput: (stream, text) => appendOutput(text, stream),
      onDisplay: (display) => {
        const element = renderBundle(display.data);
        const previous = display.displayId === null ? undefined : shown.get(display.displayId);
        if (display.update && previous !== undefined) previous.replaceWith(element);
        else append(element);
        if (display.displayId !== null) shown.set(display.displayId, element);
      },
      onInput: (prompt, password, inputSignal) => askInput(prompt, password, inputSignal),
    });
    if (result.error !== null) {
      appendText(result.error.traceback || `${result.error.exception_type}: ${result.error.exception_message}\n`, "error");
    } else if (result.result !== null && typeof result.result.repr === "string" && result.result.repr !== "None") {
      const data = result.result.data;
      if (data && (data["image/png"] || data["text/html"])) append(renderBundle(data));
      else appendText(`${result.result.repr}\n`, "result");
    }
    status.textContent = `session ${session.id.slice(0, 8)}`;
    await showVariables(session);
  } catch (e) {
    appendText(e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}\n` : `${e}\n`, "error");
    status.textContent = "error";
  } finally {
    running = null;
    runButton.disabled = false;
    cancelButton.disabled = true;
    newSessionButton.disabled = false;
  }
}

runButton.addEventListener("click", run);
cancelButton.addEventListener("click", () => running?.abort());
codeInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    run();
  }
});
newSessionButton.addEventListener("click", async () => {
  if (running !== null) return; // the button is disabled while a run is under way
  // Nothing may run while the old session is closed and the new one made: a run started
  // meanwhile would find no session in storage and make one more.
  newSessionButton.disabled = true;
  runButton.disabled = true;
  try {
    const old = sessionStorage.getItem(SESSION_KEY);
    let closeFailed = null;
    if (old !== null) {
      // Closed rather than left to the idle timeout: it holds a worker until then. A close
      // that fails (other than 404: gone already) is said, and the new session made all the
      // same: the old one then ends at the server's idle timeout.
      await client().session(old).close().catch((e) => {
        if (!(e instanceof ApiError && e.status === 404)) closeFailed = e;
      });
      sessionStorage.removeItem(SESSION_KEY);
    }
    await newSession();
    variables.replaceChildren();
    clearOutput();
    if (closeFailed !== null) {
      const e = closeFailed;
      appendText(`could not close the old session: ${e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : e}\n`, "error");
    }
  } catch (e) {
    appendText(e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}\n` : `${e}\n`, "error");
  } finally {
    newSessionButton.disabled = false;
    runButton.disabled = false;
  }
});
