// The client against a real server: PYREPL3_URL and PYREPL3_TOKEN name it (the Rust test
// tests/client_typescript.rs starts one and runs `node --test` here). It tests the built
// client (dist/), which is what the package and the playground ship.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { WebSocket } from "ws";

import { ApiError, Client, ExecutionError } from "../dist/index.js";

const URL = process.env.PYREPL3_URL;
const TOKEN = process.env.PYREPL3_TOKEN;
assert.ok(URL && TOKEN, "PYREPL3_URL and PYREPL3_TOKEN name the server");

describe("a session", () => {
  const client = new Client(URL, TOKEN, { WebSocket });
  let session;
  before(async () => {
    session = await client.createSession();
  });
  after(async () => {
    await session.close();
  });

  test("run gives output, the result, and an error", async () => {
    const run = await session.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7");
    assert.equal(run.stdout, "out\n");
    assert.equal(run.stderr, "err\n");
    assert.deepEqual(run.outputs, [
      { stream: "stdout", text: "out\n" },
      { stream: "stderr", text: "err\n" },
    ]);
    assert.equal(run.result.repr, "42");
    assert.equal(run.result.value, 42);
    assert.ok(run.ok);

    const failed = await session.run("1 / 0");
    assert.equal(failed.ok, false);
    assert.equal(failed.error.exception_type, "ZeroDivisionError");
    assert.throws(() => failed.raiseForError(), (e) => e instanceof ExecutionError && e.exceptionType === "ZeroDivisionError");
  });

  test("stream yields the events in order, numbered without gaps, ending with the result", async () => {
    const events = [];
    const code = "import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr, flush=True)\ndisplay('c')\nprint('d')\n'done'";
    for await (const event of session.stream(code)) {
      events.push(event);
    }
    assert.deepEqual(
      events.map((e) => [e.type, e.stream ?? e.data?.["text/plain"] ?? e.value]),
      [["output", "stdout"], ["output", "stderr"], ["display", "'c'"], ["output", "stdout"], ["result", "done"]],
    );
    assert.deepEqual(events.map((e) => e.seq), [1, 2, 3, 4, 5]);
    assert.equal(new Set(events.map((e) => e.execution_id)).size, 1);
  });

  test("callbacks see output as it comes, and the input handler answers input()", async () => {
    const seen = [];
    const asked = [];
    const run = await session.run("print('first')\nname = input('name? ')\nprint('hi', name)\nlen(name)", {
      onOutput: (stream, text) => seen.push(`${stream}:${text}`),
      onInput: async (prompt, password) => {
        asked.push([prompt, password]);
        return "ada";
      },
    });
    assert.deepEqual(asked, [["name? ", false]]);
    assert.deepEqual(seen, ["stdout:first\n", "stdout:hi ada\n"]);
    assert.equal(run.result.value, 3);
    // Without a handler, input() gets end of file.
    const eof = await session.run("input()");
    assert.equal(eof.error.exception_type, "EOFError");
  });

  test("stdin answers the first input() calls and the input handler only the rest", async () => {
    // The server answers from stdin itself and still sends those input events, as a record:
    // answering them again was a 404 unknown_input that failed the run.
    const asked = [];
    const run = await session.run("a = input('a? ')\nb = input('b? ')\na + b", {
      stdin: ["one"],
      onInput: (prompt) => {
        asked.push(prompt);
        return "two";
      },
    });
    assert.equal(run.error, null, JSON.stringify(run.error));
    assert.equal(run.result.value, "onetwo");
    assert.deepEqual(asked, ["b? "]);
    assert.deepEqual(run.events.filter((e) => e.type === "input").map((e) => e.prompt), ["a? ", "b? "]);
  });

  test("an input handler still waiting is told through its signal when the execution ends", async () => {
    // The handler answers only when told that nobody waits any more, as a prompt for a
    // person would: the run must not wait for it, and its late answer is not sent.
    let handlerSignal;
    let answersSent = 0;
    const counting = new Client(URL, TOKEN, {
      fetch: (url, init) => {
        if (String(url).endsWith("/input")) answersSent += 1;
        return fetch(url, init);
      },
    });
    const run = await counting.session(session.id).run("input('never answered? ')", {
      timeout: 1,
      onInput: (prompt, password, signal) => {
        handlerSignal = signal;
        return new Promise((resolve) => signal.addEventListener("abort", () => resolve("too late"), { once: true }));
      },
    });
    assert.equal(run.error?.exception_type, "ExecutionTimeout", JSON.stringify(run.error));
    assert.ok(handlerSignal instanceof AbortSignal);
    assert.equal(handlerSignal.aborted, true);
    await new Promise((resolve) => setImmediate(resolve)); // the handler's promise settles
    assert.equal(answersSent, 0, "the late answer is not sent");
    // The session goes on: the late answer was not taken for the next input().
    const next = await session.run("input('again? ')", { onInput: () => "fresh" });
    assert.equal(next.result.value, "fresh");
  });

  test("an input handler that throws fails the run at once, and the run cancels its code", async () => {
    // A session of its own: were the execution left waiting in input(), it would hold up the
    // next runs until the server's reconnect grace (10 minutes in this test server).
    const other = await client.createSession();
    try {
      await assert.rejects(
        other.run("input('x? ')", {
          onInput: () => {
            throw new Error("no answer here");
          },
        }),
        /no answer here/,
      );
      const next = await other.run("'next'", { signal: AbortSignal.timeout(60_000) });
      assert.equal(next.result?.value, "next", JSON.stringify(next.error));
    } finally {
      await other.close();
    }
  });

  test("a display of an object with _repr_html_ arrives with its formats", async () => {
    const displays = [];
    const run = await session.run(
      "class Card:\n    def _repr_html_(self):\n        return '<b>card</b>'\n    def __repr__(self):\n        return 'Card()'\ndisplay(Card())",
      { onDisplay: (display) => displays.push(display) },
    );
    assert.equal(run.displays.length, 1);
    assert.equal(displays[0], run.displays[0]);
    assert.equal(run.displays[0].data["text/html"], "<b>card</b>");
    assert.equal(run.displays[0].text, "Card()");
    assert.equal(run.displays[0].image(), null);
  });

  test("cancelling a running loop ends it with KeyboardInterrupt", async () => {
    let cancelled;
    const run = await session.run("import itertools\nfor i in itertools.count():\n    print(i, flush=True)\n    sum(range(100000))", {
      onOutput: (stream, text, event) => {
        // At the first output the loop is known to run: cancel it from here.
        cancelled ??= session.cancel(event.execution_id);
      },
    });
    assert.equal(await cancelled, "cancelled");
    assert.equal(run.error.exception_type, "KeyboardInterrupt");
    assert.ok(run.stdout.startsWith("0\n"));
    // The namespace survives a cancel: the session still runs code.
    assert.equal((await session.run("i >= 0")).result.value, true);
  });

  test("aborting the run's signal cancels the execution on the server", async () => {
    const controller = new AbortController();
    const run = await session.run("while True:\n    print('tick', flush=True)\n    sum(range(100000))", {
      signal: controller.signal,
      onOutput: () => controller.abort(),
    });
    assert.equal(run.error.exception_type, "KeyboardInterrupt");
  });

  test("files round trip: write, read from code, read back, list, delete", async () => {
    const put = await session.writeFile("data/in.csv", "a,b\n1,2\n");
    assert.deepEqual(put, { path: "data/in.csv", size: 8 });
    const run = await session.run("open('data/in.csv').read().splitlines()[1]");
    assert.equal(run.result.value, "1,2");
    await session.run("open('out.bin', 'wb').write(bytes(range(256)))");
    const bytes = await session.readFile("out.bin");
    assert.deepEqual(Array.from(bytes), Array.from({ length: 256 }, (_, i) => i));
    const listing = await session.listFiles();
    assert.deepEqual(listing.entries.map((e) => [e.name, e.type]).sort(), [["data", "directory"], ["out.bin", "file"]]);
    assert.deepEqual((await session.listFiles("data")).entries.map((e) => e.name), ["in.csv"]);
    await session.deleteFile("out.bin");
    await assert.rejects(session.readFile("out.bin"), (e) => e instanceof ApiError && e.status === 404 && e.code === "file_not_found");
    await session.deleteFile("data", { recursive: true });
    assert.deepEqual((await session.listFiles()).entries, []);
  });

  test("checkpoint, then restore into another session", async () => {
    await session.run("kept = [1, 2, 3]\ndef double(x):\n    return 2 * x");
    const record = await session.checkpoint();
    assert.ok(record.id.startsWith("ckpt-"), record.id);
    assert.ok(record.saved.includes("kept") && record.saved.includes("double"), JSON.stringify(record));
    assert.ok((await session.checkpoints()).some((c) => c.id === record.id));
    const other = await client.createSession();
    try {
      const report = await other.restore(record.id);
      assert.ok(report.restored.includes("kept") && report.restored.includes("double"), JSON.stringify(report));
      assert.deepEqual((await other.run("[double(x) for x in kept]")).result.value, [2, 4, 6]);
    } finally {
      await other.close();
    }
  });

  test("the namespace lists the session's variables", async () => {
    await session.run("answer = 42");
    const { entries } = await session.namespace();
    const answer = entries.find((e) => e.name === "answer");
    assert.deepEqual([answer.type, answer.repr], ["int", "42"]);
  });

  test("a run over the WebSocket, opened with a ticket, answers input and can cancel", async () => {
    const socket = await session.connect();
    try {
      const outputs = [];
      const run = await socket.run("x = input('x? ')\nprint(x * 2)\nlen(x)", {
        onOutput: (stream, text) => outputs.push(text),
        onInput: (prompt) => (prompt === "x? " ? "ab" : null),
      });
      assert.deepEqual(outputs, ["abab\n"]);
      assert.equal(run.result.value, 2);

      let outcome;
      const loop = await socket.run("while True:\n    print('.', flush=True)\n    sum(range(100000))", {
        onOutput: (stream, text, event) => {
          outcome ??= socket.cancel(event.execution_id);
        },
      });
      assert.equal(await outcome, "cancelled");
      assert.equal(loop.error.exception_type, "KeyboardInterrupt");
    } finally {
      socket.close();
    }
  });

  test("aborting a socket run's signal cancels the execution", async () => {
    const socket = await session.connect();
    try {
      const controller = new AbortController();
      const run = await socket.run("while True:\n    print('tick', flush=True)\n    sum(range(100000))", {
        signal: controller.signal,
        onOutput: () => controller.abort(),
      });
      assert.equal(run.error.exception_type, "KeyboardInterrupt");
      assert.equal((await socket.run("'still here'")).result.value, "still here");
    } finally {
      socket.close();
    }
  });
});

describe("errors", () => {
  test("an unknown session is a typed 404", async () => {
    const client = new Client(URL, TOKEN);
    await assert.rejects(client.session("no-such-session").run("1"), (e) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 404);
      assert.equal(e.code, "not_found");
      assert.equal(typeof e.message, "string");
      assert.equal(e.retryAfter, null);
      return true;
    });
  });

  test("a wrong token is a typed 401", async () => {
    await assert.rejects(new Client(URL, "wrong-token-123").createSession(), (e) => e instanceof ApiError && e.status === 401 && e.code === "unauthorized");
  });

  test("a used ticket cannot open the WebSocket again", async () => {
    const client = new Client(URL, TOKEN, { WebSocket });
    const session = await client.createSession();
    try {
      const ticket = await session.wsTicket();
      const url = `${URL.replace(/^http/, "ws")}/v1/sessions/${session.id}/ws?ticket=${ticket}`;
      const statuses = [];
      for (let i = 0; i < 2; i++) {
        statuses.push(await new Promise((resolve) => {
          const ws = new WebSocket(url);
          ws.on("open", () => {
            ws.close();
            resolve(101);
          });
          ws.on("unexpected-response", (request, response) => {
            request.destroy(); // handled here: ws leaves the refused request's socket to us
            resolve(response.statusCode);
          });
          ws.on("error", () => undefined);
        }));
      }
      assert.deepEqual(statuses, [101, 401]);
    } finally {
      await session.close();
    }
  });
});
