"""The client proper: HTTP with `urllib`, executions followed as server-sent events (so output
arrives as it is produced and `input()` can be answered while the code waits), and thin
asyncio wrappers. Every failure the server reports is an `ApiError` with its code."""

import asyncio
import base64
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid

# Bytes of an upload or download moved at once.
_CHUNK = 1 << 20
# Events an `AsyncSession.stream` holds that its consumer has not taken yet.
_ASYNC_QUEUE = 64


class ApiError(Exception):
    """An error answer of the server: `status` (HTTP), `code` (e.g. `not_found`,
    `rate_limited`), `message`, and `retry_after` (seconds) when the server gave one."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__("%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after


class ExecutionError(Exception):
    """Raised by `Run.raise_for_error()`: the code raised (or was stopped)."""

    def __init__(self, run):
        error = run.error or {}
        super().__init__("%s: %s" % (error.get("exception_type"), error.get("exception_message")))
        self.run = run
        self.exception_type = error.get("exception_type")
        self.traceback = error.get("traceback", "")


class Display:
    """A rich output: `data` maps MIME types to content (`text/plain` always)."""

    def __init__(self, event):
        self.data = event.get("data") or {}
        self.metadata = event.get("metadata") or {}
        self.display_id = event.get("display_id")
        self.update = bool(event.get("update"))

    @property
    def text(self):
        return self.data.get("text/plain", "")

    def image(self, mime="image/png"):
        """The decoded bytes of a binary type, or None."""
        content = self.data.get(mime)
        return base64.b64decode(content) if isinstance(content, str) else None

    def __repr__(self):
        return "Display(%s)" % ", ".join(sorted(self.data))


class Result:
    """The value of the code's trailing expression: `repr`, `value` (when JSON), and `data`
    (a MIME bundle) when it has richer representations."""

    def __init__(self, event):
        self.repr = event.get("repr")
        self.value = event.get("value")
        self.data = event.get("data")
        self.execution_time = event.get("execution_time", 0.0)

    def __repr__(self):
        return "Result(%s)" % self.repr


class Run:
    """One execution, as it ended: `stdout`, `stderr`, `outputs` (stream, text) in order,
    `displays`, and `result` or `error`."""

    def __init__(self, execution_id):
        self.execution_id = execution_id
        self.outputs, self.displays, self.events = [], [], []
        self.result = None
        self.error = None

    @property
    def stdout(self):
        return "".join(text for stream, text in self.outputs if stream == "stdout")

    @property
    def stderr(self):
        return "".join(text for stream, text in self.outputs if stream == "stderr")

    @property
    def ok(self):
        return self.error is None

    def raise_for_error(self):
        if self.error is not None:
            raise ExecutionError(self)
        return self


class _Follow:
    """Builds a `Run` from an execution's events and picks out the `input` events the
    caller must answer (shared by the sync and the async `run`)."""

    def __init__(self, execution_id, stdin, on_output, on_display):
        self.run = Run(execution_id)
        self.bad_answer = None
        # The server answers the first len(stdin) input() calls itself; their events come
        # as a record.
        self._answered_by_server = len(stdin or ())
        self._on_output, self._on_display = on_output, on_display

    def take(self, event):
        """Records `event`; returns it when it is an input for the caller to answer."""
        run = self.run
        run.events.append(event)
        kind = event.get("type")
        if kind == "output":
            run.outputs.append((event["stream"], event["data"]))
            if self._on_output is not None:
                self._on_output(event["stream"], event["data"])
        elif kind == "display":
            display = Display(event)
            run.displays.append(display)
            if self._on_display is not None:
                self._on_display(display)
        elif kind == "input":
            if self._answered_by_server:
                self._answered_by_server -= 1
                return None
            return event
        elif kind == "result":
            run.result = Result(event)
        elif kind == "error":
            run.error = event
        return None

    @property
    def ended(self):
        """Whether the execution's terminal event (its result or error) has come."""
        return self.run.result is not None or self.run.error is not None

    def fail(self, error):
        """Keeps the first error of an input handler, raised by `finish`."""
        if self.bad_answer is None:
            self.bad_answer = error

    def checked(self, answer):
        """`on_input`'s answer, or None (end of file, so the code does not wait) for one
        that is not a str; `finish` then raises why."""
        error = _not_a_line(answer)
        if error is not None:
            self.fail(error)
            return None
        return answer

    def finish(self):
        if self.bad_answer is not None:
            raise self.bad_answer
        run = self.run
        if run.result is None and run.error is None:  # every execution ends with one
            raise ApiError(0, "stream_ended",
                           "the event stream of execution %s ended before its result "
                           "(a connection cut on the way?)" % run.execution_id)
        return run


def _not_a_line(answer):
    """The error for an `on_input` answer that is neither a str nor None (end of file)."""
    if answer is None or isinstance(answer, str):
        return None
    return TypeError("on_input must return a str or None, not %s" % type(answer).__name__)


def _prompt_of(event):
    """The arguments of `on_input` for an `input` event: (prompt, password)."""
    return event.get("prompt", ""), event.get("password", False)


def _new_execution_id():
    return uuid.uuid4().hex


class Client:
    """A connection to one server with one tenant's token."""

    def __init__(self, base_url, token, timeout=60.0):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    # ---- HTTP ----------------------------------------------------------------------------
    def _request(self, method, path, body=None, data=None, headers=None, stream=False,
                 follow=False):
        url = self.base_url + path
        sent = dict(headers or {})
        sent["Authorization"] = "Bearer " + self._token
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=sent, method=method)
        # Following an execution waits as long as the code runs, silent or not (the
        # execution's own timeout bounds it); anything else gets the client's timeout.
        try:
            response = urllib.request.urlopen(request, timeout=None if follow else self.timeout)
        except urllib.error.HTTPError as e:
            raise _api_error(e) from None
        if stream:
            return response
        with response:
            raw = response.read()
        if not raw:
            return None
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(raw)
        return raw

    def _upload(self, path, data):
        """PUT of `data` (bytes or a binary file object, streamed). A server that refuses
        the upload before its end (over a size limit) answers and closes while the body is
        still being sent: that answer is read and raised as `ApiError`, not the broken pipe
        (urllib cannot read an answer once its send failed)."""
        url = urllib.parse.urlsplit(self.base_url + path)
        connection_class = (http.client.HTTPSConnection if url.scheme == "https"
                            else http.client.HTTPConnection)
        connection = connection_class(url.hostname, url.port, timeout=self.timeout)
        headers = {"Authorization": "Bearer " + self._token,
                   "Content-Type": "application/octet-stream"}
        try:
            try:
                connection.request("PUT", url.path, body=data, headers=headers,
                                   encode_chunked=not isinstance(data, (bytes, bytearray)))
            except (BrokenPipeError, ConnectionResetError) as e:
                sent_error = e  # the answer, if the server sent one before closing, says why
            else:
                sent_error = None
            try:
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                if sent_error is None:
                    raise
                raise ApiError(0, "connection_lost",
                               "the server closed the connection during the upload (%s)"
                               % sent_error) from None
            if response.status >= 400:
                try:
                    error = json.loads(raw or b"{}").get("error") or {}
                except ValueError:
                    error = {}
                retry = response.headers.get("Retry-After")
                raise ApiError(response.status, error.get("code", "http_error"),
                               error.get("message", response.reason),
                               float(retry) if retry else None)
            return json.loads(raw) if raw else None
        finally:
            connection.close()

    # ---- sessions ------------------------------------------------------------------------
    def create_session(self, env=None, cwd=None, from_checkpoint=None):
        body = {k: v for k, v in (("env", env), ("cwd", cwd),
                                   ("from_checkpoint", from_checkpoint)) if v is not None}
        info = self._request("POST", "/v1/sessions", body)
        return Session(self, info["id"], info)

    def session(self, session_id):
        """A handle to an existing session of this tenant."""
        return Session(self, session_id)

    def list_sessions(self):
        return self._request("GET", "/v1/sessions")

    def health(self):
        return self._request("GET", "/healthz")


class Session:
    """One session: runs code, answers input, moves files, takes checkpoints."""

    def __init__(self, client, session_id, info=None):
        self.client, self.id, self.info_at_creation = client, session_id, info

    def __repr__(self):
        return "Session(%s)" % self.id

    def _path(self, tail=""):
        return "/v1/sessions/%s%s" % (urllib.parse.quote(self.id, safe=""), tail)

    def info(self):
        return self.client._request("GET", self._path())

    def close(self):
        """Deletes the session (its worker and files)."""
        self.client._request("DELETE", self._path())

    def restart(self):
        return self.client._request("POST", self._path("/restart"), {})

    def namespace(self):
        return self.client._request("GET", self._path("/namespace"))

    # ---- running code --------------------------------------------------------------------
    def run(self, code, timeout=None, stdin=None, on_output=None, on_display=None,
            on_input=None, execution_id=None, transaction_policy=None):
        """Runs `code` to its end and returns the `Run`. Output, displays and input requests
        are handed to the callbacks as they come: `on_output(stream, text)`,
        `on_display(Display)`, `on_input(prompt, password) -> str or None` (None: end of
        file). `stdin` answers the first `input()` calls in order. Without `on_input`, an
        input beyond `stdin` gets end of file. `execution_id` (default: a new one) names the
        run, so that another thread can `cancel` it.

        The callbacks run in the calling thread, which reads the events: while `on_input`
        waits, later events wait for it (none is lost). If the execution ends meanwhile (a
        timeout, a cancel from elsewhere), the answer is dropped quietly; `AsyncSession.run`
        instead cancels a pending `on_input` coroutine when the execution ends. Leaving early
        (a callback raises, KeyboardInterrupt) cancels the execution on the server."""
        follow = _Follow(execution_id or _new_execution_id(), stdin, on_output, on_display)
        events = self.stream(code, timeout=timeout, stdin=stdin,
                             execution_id=follow.run.execution_id,
                             transaction_policy=transaction_policy)
        try:
            for event in events:
                asked = follow.take(event)
                if asked is not None:
                    answer = on_input(*_prompt_of(asked)) if on_input is not None else None
                    _answer_if_pending(self, asked["id"], follow.checked(answer))
        finally:
            events.close()
            if not follow.ended:
                # Left early (a callback raised, Ctrl-C): the code is stopped now rather
                # than left running until the server's reconnect grace runs out.
                _cancel_quietly(self, follow.run.execution_id)
        return follow.finish()

    def stream(self, code, timeout=None, stdin=None, execution_id=None,
               transaction_policy=None):
        """The execution's events (dicts, as docs/api.md describes them), as they come. An
        `input` event waits for `answer_input`."""
        return _to_the_end(_sse_events(self._open_stream(code, timeout, stdin, execution_id,
                                                         transaction_policy)))

    def _open_stream(self, code, timeout=None, stdin=None, execution_id=None,
                     transaction_policy=None):
        """Starts the execution; the open response of its event stream."""
        body = {"code": code}
        for key, value in (("timeout", timeout), ("stdin", stdin),
                           ("execution_id", execution_id),
                           ("transaction_policy", transaction_policy)):
            if value is not None:
                body[key] = value
        return self.client._request("POST", self._path("/execute"), body,
                                    headers={"Accept": "text/event-stream"}, stream=True,
                                    follow=True)

    def answer_input(self, input_id, text):
        """Answers a pending `input()` (`text` without the newline; None: end of file)."""
        self.client._request("POST", self._path("/input"), {"input_id": input_id, "data": text})

    def cancel(self, execution_id):
        return self.client._request("POST", self._path("/cancel"),
                                    {"execution_id": execution_id})

    # ---- files ---------------------------------------------------------------------------
    def write_file(self, path, data):
        """Uploads `data` (bytes, str, or a binary file object, streamed) to `path`."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self.client._upload(self._path("/files/" + _quote_path(path)), data)

    def read_file(self, path):
        """The bytes of the file at `path`."""
        response = self.client._request("GET", self._path("/files/" + _quote_path(path)),
                                        stream=True)
        with response:
            chunks = []
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

    def list_files(self, path=""):
        query = "?path=" + urllib.parse.quote(path) if path else ""
        return self.client._request("GET", self._path("/files" + query))

    def delete_file(self, path, recursive=False):
        tail = "?recursive=true" if recursive else ""
        self.client._request("DELETE", self._path("/files/" + _quote_path(path) + tail))

    # ---- checkpoints ---------------------------------------------------------------------
    def checkpoint(self):
        """Saves the namespace in the server's store; returns the checkpoint's record (its
        `id` restores it, here or in another session of the tenant)."""
        return self.client._request("POST", self._path("/checkpoints"))

    def checkpoints(self):
        return self.client._request("GET", self._path("/checkpoints"))["checkpoints"]

    def restore(self, checkpoint_id, clear_existing=False):
        return self.client._request("POST", self._path("/restore"),
                                    {"checkpoint_id": checkpoint_id,
                                     "clear_existing": clear_existing})


class AsyncClient:
    """`Client` for asyncio code: the same methods, awaited (each runs in a worker thread,
    so the event loop is never blocked; callbacks of `run` are called in that thread)."""

    def __init__(self, base_url, token, timeout=60.0):
        self._sync = Client(base_url, token, timeout)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def create_session(self, **kwargs):
        session = await asyncio.to_thread(self._sync.create_session, **kwargs)
        return AsyncSession(session)

    def session(self, session_id):
        return AsyncSession(self._sync.session(session_id))

    async def list_sessions(self):
        return await asyncio.to_thread(self._sync.list_sessions)


class AsyncSession:
    """`Session` for asyncio code."""

    def __init__(self, session):
        self._sync = session
        self.id = session.id

    async def run(self, code, timeout=None, stdin=None, on_output=None, on_display=None,
                  on_input=None, execution_id=None, transaction_policy=None):
        """`Session.run` for asyncio: the callbacks are called on the event loop (`on_input`
        may also be a coroutine function). Events are read on while `on_input` is pending,
        and if the execution ends before it answers (a timeout, a cancel), its coroutine is
        cancelled (it sees `CancelledError`). If `on_input` raises, the execution is
        cancelled and the run raises that error (as the sync run does). A caller that stops
        waiting (its task cancelled, e.g. by `asyncio.wait_for`) or any other early exit
        cancels the code too, instead of leaving it running unread."""
        follow = _Follow(execution_id or _new_execution_id(), stdin, on_output, on_display)
        # Opened before the `try`: a refused execute (a duplicate id, a full queue) has
        # nothing of ours to cancel, and must not cancel another run with that id.
        response = await asyncio.to_thread(
            self._sync._open_stream, code, timeout=timeout, stdin=stdin,
            execution_id=follow.run.execution_id, transaction_policy=transaction_policy)
        events = _events_of(response)
        asking = None  # the task answering the pending input(), if any

        def stop():  # ends the read the loop waits in: the input handler failed
            _abort(response)
        try:
            try:
                async for event in events:
                    asked = follow.take(event)
                    if asked is not None:
                        # The code waits in one input() at a time, so one task at a time.
                        asking = asyncio.ensure_future(self._ask(asked, on_input, follow, stop))
            except Exception:
                if follow.bad_answer is None:
                    raise  # else the stream was ended by `stop`: the handler's error wins
        finally:
            if not follow.ended:
                # First, before any await: the loop may be on its way out. Fire and forget;
                # an execution that ended meanwhile answers not_running, which nobody needs
                # to hear.
                threading.Thread(target=_cancel_quietly,
                                 args=(self._sync, follow.run.execution_id),
                                 name="pyrepl3-cancel", daemon=True).start()
            if asking is not None and not asking.done():
                asking.cancel()  # the execution ended (or we left): nobody waits for it
                await asyncio.gather(asking, return_exceptions=True)
            await events.aclose()
        return follow.finish()

    async def _ask(self, event, on_input, follow, stop):
        """Answers one `input` event with `on_input`'s answer (end of file without one). If
        `on_input` raises or answers something else than a str or None, or the answer
        cannot be sent, the error is kept for the run to raise and `stop` ends the run,
        which cancels the execution."""
        answer = None
        try:
            if on_input is not None:
                answer = on_input(*_prompt_of(event))
                if asyncio.iscoroutine(answer):
                    answer = await answer
                error = _not_a_line(answer)
                if error is not None:
                    raise error
            await asyncio.to_thread(_answer_if_pending, self._sync, event["id"], answer)
        except Exception as e:
            follow.fail(e)
            stop()

    async def stream(self, code, **kwargs):
        """The execution's events, as `Session.stream` gives them, for `async for`. The
        stream is read in a thread and handed over through a queue of at most
        `_ASYNC_QUEUE` events (the thread waits while it is full); leaving the loop early
        closes the connection, which the server takes as its reader going away."""
        response = await asyncio.to_thread(self._sync._open_stream, code, **kwargs)
        events = _events_of(response)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    def __getattr__(self, name):
        method = getattr(self._sync, name)
        if not callable(method):
            return method

        async def call(*args, **kwargs):
            return await asyncio.to_thread(method, *args, **kwargs)
        return call


async def _events_of(response):
    """The events of an open execute `response`, read in a thread and handed over through a
    queue of at most `_ASYNC_QUEUE` events (the thread waits while it is full); leaving
    early shuts the connection down, which ends the thread."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(maxsize=_ASYNC_QUEUE)
    end = object()
    leaving = threading.Event()

    def hand_over(item):
        # Blocks this thread while the queue is full; gives up once the consumer left.
        if not leaving.is_set():
            try:
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            except RuntimeError:  # the loop is closed: nobody is listening
                leaving.set()

    def pump():
        try:
            for event in _to_the_end(_sse_events(response)):
                if leaving.is_set():
                    return
                hand_over(event)
        except BaseException as e:  # handed to the consumer, which raises it
            hand_over(e)
            return
        hand_over(end)

    thread = threading.Thread(target=pump, name="pyrepl3-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                if leaving.is_set():
                    return
                raise item
            yield item
    finally:
        leaving.set()
        _abort(response)
        while not queue.empty():  # frees a thread waiting to put
            queue.get_nowait()


def _answer_if_pending(session, input_id, text):
    """Answers an input; one that is no longer pending (the execution ended meanwhile, the
    session closed or lost its worker, or the server is shutting down or gone) needs no
    answer. The event stream then tells how the execution ended (or that it was cut)."""
    try:
        session.answer_input(input_id, text)
    except ApiError as e:
        if e.code not in ("unknown_input", "not_found", "session_unavailable", "shutting_down"):
            raise
    except (urllib.error.URLError, ConnectionError):  # the server went away: the stream
        pass                                            # says the rest


def _cancel_quietly(session, execution_id):
    try:
        session.cancel(execution_id)
    except (ApiError, OSError):
        pass


def _abort(response):
    """Shuts the connection of `response` down, waking a thread blocked reading it."""
    try:
        sock = socket.socket(fileno=os.dup(response.fileno()))
    except (AttributeError, OSError, ValueError):  # already closed
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _quote_path(path):
    return "/".join(urllib.parse.quote(part, safe="") for part in path.split("/"))


def _api_error(e):
    try:
        body = json.loads(e.read() or b"{}")
        error = body.get("error") or {}
    except ValueError:
        error = {}
    retry = e.headers.get("Retry-After") if e.headers else None
    return ApiError(e.code, error.get("code", "http_error"), error.get("message", e.reason),
                    float(retry) if retry else None)


def _to_the_end(events):
    """`events`, then `ApiError` `stream_ended` if they stop before the terminal event (a
    result or an error: every execution ends with one)."""
    last = None
    for last in events:
        yield last
    if last is None or last.get("type") not in ("result", "error"):
        raise ApiError(0, "stream_ended",
                       "the event stream ended before the execution's result "
                       "(a connection cut on the way?)")


def _sse_events(response):
    """The `data:` payloads of a server-sent-event stream, decoded, until it ends."""
    with response:
        data = []
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                yield json.loads("\n".join(data))
                data = []
        if data:
            yield json.loads("\n".join(data))
