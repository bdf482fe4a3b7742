"""The client against a real server: `PYREPL3_URL` and `PYREPL3_TOKEN` name it (the Rust test
tests/client_python.rs starts one and runs this file)."""

import asyncio
import contextlib
import io
import os
import threading
import unittest

from pyrepl3_client import ApiError, AsyncClient, Client, ExecutionError

URL = os.environ["PYREPL3_URL"]
TOKEN = os.environ["PYREPL3_TOKEN"]


def _within(seconds, call, *args):
    """`call(*args)`'s value, failing the test if it takes longer than `seconds`."""
    done = []
    thread = threading.Thread(target=lambda: done.append(call(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    if not done:
        raise AssertionError("%s did not return within %s s" % (call.__name__, seconds))
    return done[0]


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.client = Client(URL, TOKEN)
        self.session = self.client.create_session()

    def tearDown(self):
        self.session.close()

    def test_run_gives_output_result_and_error(self):
        run = self.session.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7")
        self.assertEqual((run.stdout, run.stderr), ("out\n", "err\n"))
        self.assertEqual((run.result.repr, run.result.value), ("42", 42))
        self.assertTrue(run.ok)
        failed = self.session.run("1 / 0")
        self.assertFalse(failed.ok)
        with self.assertRaises(ExecutionError) as caught:
            failed.raise_for_error()
        self.assertEqual(caught.exception.exception_type, "ZeroDivisionError")

    def test_a_silent_run_longer_than_the_clients_timeout_is_followed_to_its_end(self):
        client = Client(URL, TOKEN, timeout=1.0)
        run = client.session(self.session.id).run("import time\ntime.sleep(2.5)\n'woke'")
        self.assertEqual(run.result.value, "woke")

    def test_streaming_callbacks_input_and_displays(self):
        seen, asked = [], []
        run = self.session.run(
            "print('first')\nname = input('name? ')\ndisplay({'n': 1})\nprint('hi', name)",
            on_output=lambda stream, text: seen.append(text),
            on_input=lambda prompt, password: asked.append(prompt) or "ada")
        self.assertEqual(asked, ["name? "])
        self.assertEqual("".join(seen), "first\nhi ada\n")
        self.assertEqual([d.text for d in run.displays], ["{'n': 1}"])
        # Without a handler, input gets end of file.
        run = self.session.run("input()")
        self.assertEqual(run.error["exception_type"], "EOFError")

    def test_files_round_trip(self):
        self.session.write_file("data/in.csv", "a,b\n1,2\n")
        run = self.session.run("open('data/in.csv').read().splitlines()[1]")
        self.assertEqual(run.result.value, "1,2")
        self.session.run("open('out.bin', 'wb').write(bytes(range(256)))")
        self.assertEqual(self.session.read_file("out.bin"), bytes(range(256)))
        names = [e["name"] for e in self.session.list_files()["entries"]]
        self.assertEqual(sorted(names), ["data", "out.bin"])
        self.session.delete_file("out.bin")
        with self.assertRaises(ApiError) as caught:
            self.session.read_file("out.bin")
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (404, "file_not_found"))

    def test_stdin_answers_first_and_the_handler_the_rest(self):
        asked = []
        run = self.session.run(
            "a = input('a? ')\nb = input('b? ')\na + b", stdin=["one"],
            on_input=lambda prompt, password: asked.append(prompt) or "two")
        self.assertEqual((run.result.value, asked), ("onetwo", ["b? "]))

    def test_an_answer_after_the_execution_ended_is_dropped_quietly(self):
        execution_id = "late-answer"

        def on_input(prompt, password):
            # Cancelled while asking (cancel returns once the execution has ended): the
            # answer comes too late and must not fail the run.
            self.assertEqual(self.session.cancel(execution_id)["outcome"], "cancelled")
            return "too late"
        run = self.session.run("input('name? ')", on_input=on_input,
                               execution_id=execution_id)
        self.assertEqual(run.error["exception_type"], "KeyboardInterrupt")

    def test_an_answer_the_server_can_no_longer_take_is_dropped_quietly(self):
        # A server gone (nothing listens on the port): the answer is dropped, and the run
        # goes on to what its event stream says, instead of raising URLError.
        import socket
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        gone = Client("http://127.0.0.1:%d" % port, TOKEN, timeout=5).session("s")
        from pyrepl3_client._client import _answer_if_pending
        _answer_if_pending(gone, "some-input", "late")
        with self.assertRaises(OSError):  # its other requests still say so
            gone.info()

    def test_a_run_left_early_by_a_callback_is_cancelled(self):
        class Stop(Exception):
            pass

        def on_output(stream, text):
            raise Stop()
        with self.assertRaises(Stop):
            self.session.run("print('go', flush=True)\nwhile True: pass", on_output=on_output)
        # Cancelled at once, not left spinning until the server's reconnect grace (10
        # minutes in the test server) runs out: the session takes the next run.
        self.assertEqual(_within(60, self.session.run, "1+1").result.value, 2)

    def test_an_upload_over_the_size_limit_is_an_api_error(self):
        # The test server's limit is 4 MiB a file (tests/client_python.rs); the body is sent
        # on after the server has refused it, from bytes and from a file object.
        for data in (b"x" * (24 << 20), io.BytesIO(b"y" * (24 << 20))):
            with self.assertRaises(ApiError) as caught:
                self.session.write_file("big.bin", data)
            self.assertIn(caught.exception.code, ("file_too_large", "connection_lost"))
        self.assertEqual(self.session.write_file("small.bin", b"z" * 1000)["size"], 1000)

    def test_checkpoint_and_restore(self):
        self.session.run("kept = [1, 2, 3]")
        record = self.session.checkpoint()
        other = self.client.create_session()
        try:
            other.restore(record["id"])
            self.assertEqual(other.run("kept").result.value, [1, 2, 3])
        finally:
            other.close()

    def test_typed_errors(self):
        with self.assertRaises(ApiError) as caught:
            self.client.session("no-such-session").run("1")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "not_found"))
        with self.assertRaises(ApiError) as caught:
            Client(URL, "wrong-token-123").create_session()
        self.assertEqual(caught.exception.status, 401)


class _AskedOnce:
    """An input handler's state: `asked` is set when it is called; it answers "ok" once
    `answer` is set."""

    def __init__(self):
        self.asked, self.answer = asyncio.Event(), asyncio.Event()

    async def wait(self):
        self.asked.set()
        await self.answer.wait()
        return "ok"


class AsyncClientTest(unittest.TestCase):
    def test_the_same_surface_awaited(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session(env={"GREETING": "hello"})
                try:
                    runs = await asyncio.gather(
                        session.run("import os\nos.environ['GREETING']"),
                        client.list_sessions())
                    return runs[0].result.value
                finally:
                    await session.close()
        self.assertEqual(asyncio.run(main()), "hello")

    def test_async_stream_gives_events_in_order_and_takes_input(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    seen = []
                    code = "print('a')\nname = input('name? ')\nprint('hi', name)\nlen(name)"
                    async for event in session.stream(code):
                        seen.append(event["type"])
                        if event["type"] == "input":
                            self.assertEqual(event["prompt"], "name? ")
                            await session.answer_input(event["id"], "bob")
                        elif event["type"] == "output":
                            seen.append(event["data"])
                        elif event["type"] == "result":
                            seen.append(event["repr"])
                    return seen
                finally:
                    await session.close()
        seen = [s for s in asyncio.run(main()) if s not in ("status",)]
        self.assertEqual(seen, ["output", "a\n", "input", "output", "hi bob\n", "result", "3"],
                         seen)

    def test_an_async_run_the_caller_stops_waiting_for_is_cancelled(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    started = asyncio.Event()
                    task = asyncio.create_task(session.run(
                        "print('go', flush=True)\nwhile True: pass",
                        on_output=lambda stream, text: started.set()))
                    await started.wait()
                    task.cancel()
                    with self.assertRaises(asyncio.CancelledError):
                        await task
                    # The code was cancelled, not left running until the server's reconnect
                    # grace (10 minutes here) ran out: the next run gets the session.
                    run = await asyncio.wait_for(session.run("1+1"), 60)
                    return run.result.value
                finally:
                    await session.close()
        self.assertEqual(asyncio.run(main()), 2)

    def test_an_async_run_asks_a_coroutine_for_input(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    async def answer(prompt, password):
                        await asyncio.sleep(0)
                        return prompt.upper()
                    run = await session.run("input('abc')", on_input=answer)
                    return run.result.value
                finally:
                    await session.close()
        self.assertEqual(asyncio.run(main()), "ABC")

    def test_a_pending_input_handler_is_cancelled_when_the_execution_ends(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    told = asyncio.Event()

                    async def answer(prompt, password):
                        try:
                            await asyncio.Event().wait()  # a person who never answers
                        except asyncio.CancelledError:
                            told.set()
                            raise
                    run = await session.run("input('name? ')", timeout=1, on_input=answer)
                    return run.error["exception_type"], told.is_set()
                finally:
                    await session.close()
        self.assertEqual(asyncio.run(main()), ("ExecutionTimeout", True))

    def test_an_async_input_handler_that_raises_fails_the_run_and_cancels_it(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    async def answer(prompt, password):
                        raise LookupError("no answer here")
                    with self.assertRaises(LookupError):
                        await session.run("try:\n    input()\nexcept EOFError:\n"
                                          "    answered = 'EOF'", on_input=answer)
                    # Cancelled (not answered, not left waiting in input() for the
                    # reconnect grace): the next run gets the session.
                    run = await asyncio.wait_for(session.run("'answered' in globals()"), 60)
                    return run.result.value
                finally:
                    await session.close()
        self.assertIs(asyncio.run(main()), False)

    def test_a_refused_async_run_cancels_nothing(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    asked = _AskedOnce()
                    first = asyncio.ensure_future(session.run(
                        "input('wait? ')\n'first'", execution_id="same-id",
                        on_input=lambda prompt, password: asked.wait()))
                    await asked.asked.wait()  # the first run waits in input()
                    with self.assertRaises(ApiError) as caught:
                        await session.run("'second'", execution_id="same-id")
                    self.assertEqual(caught.exception.code, "duplicate_execution_id")
                    asked.answer.set()  # the first run goes on: it was not cancelled
                    return (await asyncio.wait_for(first, 60)).result.value
                finally:
                    await session.close()
        self.assertEqual(asyncio.run(main()), "first")

    def test_leaving_an_async_stream_early_closes_it(self):
        async def main():
            async with AsyncClient(URL, TOKEN) as client:
                session = await client.create_session()
                try:
                    code = "print('started', flush=True)\nwhile True: pass"
                    async with contextlib.aclosing(session.stream(code)) as events:
                        async for event in events:
                            if event["type"] == "output":
                                execution_id = event["execution_id"]
                                break
                    # The reading thread ends once the connection is shut down.
                    for thread in threading.enumerate():
                        if thread.name == "pyrepl3-stream":
                            await asyncio.to_thread(thread.join, 30)
                            self.assertFalse(thread.is_alive())
                    await session.cancel(execution_id)
                    return (await session.run("1+1")).result.value
                finally:
                    await session.close()
        self.assertEqual(asyncio.run(main()), 2)


if __name__ == "__main__":
    unittest.main()
