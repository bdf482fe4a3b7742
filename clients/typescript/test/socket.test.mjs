// SessionSocket against a scripted WebSocket (no server): what it sends, and how it settles
// on the replies a real server gives only when something goes wrong (a refused cancel, a
// reader that falls behind).

import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError, MAX_QUEUED_EVENTS, SessionSocket } from "../dist/index.js";

/** A WebSocket that records what is sent and delivers what the test makes it receive. */
class ScriptedWebSocket {
  readyState = 0;
  sent = [];
  closedWith = null;
  #listeners = new Map();

  addEventListener(type, listener) {
    this.#listeners.set(type, [...(this.#listeners.get(type) ?? []), listener]);
  }

  #emit(type, event) {
    for (const listener of this.#listeners.get(type) ?? []) listener(event);
  }

  open() {
    this.readyState = 1;
    this.#emit("open", {});
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  receive(message) {
    this.#emit("message", { data: JSON.stringify(message) });
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
    this.#emit("close", { code, reason });
  }
}

async function openSocket() {
  const ws = new ScriptedWebSocket();
  const opening = SessionSocket.open(ws);
  ws.open();
  return { ws, socket: await opening };
}

test("a cancel sends its own id; a refusal naming it rejects, a cancel_reply resolves", async () => {
  const { ws, socket } = await openSocket();
  const refused = socket.cancel("e1");
  const request = ws.sent.at(-1);
  assert.equal(request.type, "cancel");
  assert.equal(request.execution_id, "e1");
  assert.equal(typeof request.id, "string");
  assert.notEqual(request.id, "e1");
  // As the server refuses a message over the tenant's rate limit.
  ws.receive({
    type: "error",
    id: "s1",
    in_reply_to: request.id,
    execution_id: null,
    exception_type: "RateLimited",
    exception_message: "rate limited",
    retry_after: 2,
    traceback: "",
  });
  await assert.rejects(refused, (e) => e instanceof ApiError && e.code === "rate_limited" && e.retryAfter === 2);

  // Two cancels of one execution: each reply settles the cancel it names.
  const first = socket.cancel("e1");
  const firstId = ws.sent.at(-1).id;
  const second = socket.cancel("e1");
  const secondId = ws.sent.at(-1).id;
  ws.receive({ type: "cancel_reply", id: "s2", in_reply_to: secondId, execution_id: "e1", outcome: "cancelled" });
  ws.receive({ type: "cancel_reply", id: "s3", in_reply_to: firstId, execution_id: "e1", outcome: "not_running" });
  assert.deepEqual(await Promise.all([first, second]), ["not_running", "cancelled"]);
  socket.close();
});

test("a reader that falls MAX_QUEUED_EVENTS behind gets them all, then events_overflow; the socket is closed", async () => {
  const { ws, socket } = await openSocket();
  const events = socket.stream("while True: print(1)", { executionId: "e" });
  const output = (seq) => ({ type: "output", execution_id: "e", seq, id: `o${seq}`, stream: "stdout", data: "1\n" });
  for (let seq = 1; seq <= MAX_QUEUED_EVENTS; seq++) ws.receive(output(seq));
  assert.equal(ws.closedWith, null, "a full queue is not yet an overflowing one");
  ws.receive(output(MAX_QUEUED_EVENTS + 1));
  assert.equal(ws.closedWith?.code, 4000);
  const seqs = [];
  await assert.rejects(async () => {
    for await (const event of events) seqs.push(event.seq);
  }, (e) => e instanceof ApiError && e.code === "events_overflow" && /GET .*executions\/e\?since=/.test(e.message));
  assert.deepEqual(seqs, Array.from({ length: MAX_QUEUED_EVENTS }, (_, i) => i + 1));
});

test("aborting a socket run's signal sends a cancel for its execution", async () => {
  const { ws, socket } = await openSocket();
  const controller = new AbortController();
  const running = socket.run("while True: pass", { executionId: "loop", signal: controller.signal });
  assert.equal(ws.sent.at(-1).type, "execute");
  controller.abort();
  const cancel = ws.sent.at(-1);
  assert.deepEqual([cancel.type, cancel.execution_id], ["cancel", "loop"]);
  ws.receive({ type: "cancel_reply", id: "s1", in_reply_to: cancel.id, execution_id: "loop", outcome: "cancelled" });
  ws.receive({
    type: "error",
    id: "s2",
    execution_id: "loop",
    seq: 1,
    exception_type: "KeyboardInterrupt",
    exception_message: "execution cancelled by the client",
    traceback: "",
  });
  const run = await running;
  assert.equal(run.error.exception_type, "KeyboardInterrupt");
  socket.close();
});

test("a socket run whose abort's cancel is refused fails with the refusal instead of waiting", async () => {
  const { ws, socket } = await openSocket();
  const controller = new AbortController();
  const running = socket.run("input('x? ')", { executionId: "stuck", signal: controller.signal });
  controller.abort();
  const cancel = ws.sent.at(-1);
  assert.equal(cancel.type, "cancel");
  ws.receive({
    type: "error",
    id: "s1",
    in_reply_to: cancel.id,
    execution_id: null,
    exception_type: "RateLimited",
    exception_message: "rate limited",
    retry_after: 1,
    traceback: "",
  });
  await assert.rejects(running, (e) => e instanceof ApiError && e.code === "rate_limited");
  socket.close();
});

test("an input handler that throws fails a socket run at once, and its execution is cancelled", async () => {
  const { ws, socket } = await openSocket();
  const running = socket.run("input('x? ')", {
    executionId: "asks",
    onInput: () => {
      throw new Error("no answer here");
    },
  });
  ws.receive({ type: "input", execution_id: "asks", seq: 1, id: "i1", prompt: "x? ", password: false, timeout: null });
  await assert.rejects(running, /no answer here/);
  assert.ok(ws.sent.some((m) => m.type === "cancel" && m.execution_id === "asks"), JSON.stringify(ws.sent));
  // No event of it came after the input: it was let go without waiting for one.
  assert.doesNotThrow(() => socket.stream("again", { executionId: "asks" }));
  socket.close();
});

test("stdin given to a socket run is refused, not ignored", async () => {
  const { ws, socket } = await openSocket();
  const sent = ws.sent.length;
  assert.throws(() => socket.stream("input()", { stdin: ["x"] }), TypeError);
  assert.equal(ws.sent.length, sent, "nothing was sent");
  socket.close();
});
