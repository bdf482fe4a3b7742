// The server-sent-event parser on streams cut at awkward places: in the middle of a line, of
// a UTF-8 character, of the blank line that ends an event; CRLF line ends; its bound on a
// line that never ends; and streams that really are cut (a dropped connection, half an
// event), which are an ApiError, never the parser's or fetch's own error.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { ApiError, Client, MAX_SSE_LINE } from "../dist/index.js";
import { sseData } from "../dist/sse.js";

function streamOf(chunks) {
  return new ReadableStream({
    pull(controller) {
      const chunk = chunks.shift();
      if (chunk === undefined) controller.close();
      else controller.enqueue(typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk);
    },
  });
}

async function collect(stream) {
  const out = [];
  for await (const data of sseData(stream)) out.push(data);
  return out;
}

test("events cut anywhere come out whole, in order", async () => {
  const text = 'event: output\nid: 1\ndata: {"data":"é→😀\\n","seq":1}\n\nevent: result\r\nid: 2\r\ndata: {"seq":2}\r\n\r\n';
  const bytes = new TextEncoder().encode(text);
  const expected = [{ data: "é→😀\n", seq: 1 }, { seq: 2 }];
  // Every cut point, each byte alone, and the whole.
  for (let cut = 1; cut < bytes.length; cut++) {
    assert.deepEqual(await collect(streamOf([bytes.slice(0, cut), bytes.slice(cut)])), expected, `cut at ${cut}`);
  }
  assert.deepEqual(await collect(streamOf(Array.from(bytes, (b) => new Uint8Array([b])))), expected);
  assert.deepEqual(await collect(streamOf([text])), expected);
});

test("an event without the blank line at the end of the stream still counts", async () => {
  assert.deepEqual(await collect(streamOf(['data: {"a":1}\n\ndata: {"b":2}'])), [{ a: 1 }, { b: 2 }]);
});

test("a line longer than MAX_SSE_LINE is refused, not held", async () => {
  const mebibyte = "x".repeat(1 << 20);
  const chunks = ["data: "];
  for (let i = 0; i <= MAX_SSE_LINE / mebibyte.length; i++) chunks.push(mebibyte);
  const total = chunks.length;
  await assert.rejects(collect(streamOf(chunks)), (e) => e instanceof ApiError && e.code === "event_too_large");
  // Refused as soon as the line passed the bound (the stream may have read one chunk ahead).
  assert.ok(chunks.length <= 1, `${chunks.length} of ${total} chunks left unread`);
});

const isStreamEnded = (e) => e instanceof ApiError && e.status === 0 && e.code === "stream_ended";

test("a stream whose read fails mid-way is an ApiError stream_ended", async () => {
  let sent = false;
  const cut = new ReadableStream({
    pull(controller) {
      if (!sent) {
        sent = true;
        controller.enqueue(new TextEncoder().encode('data: {"seq":1}\n\ndata: {"se'));
      } else {
        controller.error(new TypeError("terminated")); // what fetch's body does on a dropped connection
      }
    },
  });
  const seen = [];
  await assert.rejects(async () => {
    for await (const data of sseData(cut)) seen.push(data);
  }, isStreamEnded);
  assert.deepEqual(seen, [{ seq: 1 }]);
});

test("a stream that ends inside an event's data line is an ApiError stream_ended", async () => {
  await assert.rejects(collect(streamOf(['data: {"seq":1}\n\ndata: {"seq":2,"da'])), isStreamEnded);
});

test("a run whose event stream the server cuts mid-event rejects with stream_ended", async (t) => {
  // A server that starts the execute answer's stream, sends one event and half of the
  // next, and drops the connection.
  const server = createServer((request, response) => {
    request.resume();
    response.writeHead(200, { "Content-Type": "text/event-stream" });
    response.write('event: output\ndata: {"type":"output","stream":"stdout","data":"a\\n","execution_id":"e","seq":1,"id":"o1"}\n\n');
    response.write('event: output\ndata: {"type":"output","stream":"std', () => response.socket.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  const client = new Client(`http://127.0.0.1:${server.address().port}`, "token");
  const outputs = [];
  await assert.rejects(
    client.session("s").run("print('a')", { onOutput: (stream, text) => outputs.push(text) }),
    isStreamEnded,
  );
  assert.deepEqual(outputs, ["a\n"]);
});
