"""pyrepl3 worker agent: the Python side of docs/protocol.md, part 1 of 8.

The host joins worker/agent.py, cells.py, streams.py, state.py, transaction.py, display.py,
magics.py and main.py (in that order) into one program and runs it as `python3 -c <source>`
(or as its bytecode). This part owns: the constants, the protocol channels (framing, one
reader thread, the send locks), the persistent user namespace, cancellation by SIGINT, input
requests, and the output marker that orders output before each input request and result.
Running the cells is cells.py's.
Standard library only; nothing here waits on a timer or polls.
"""
# Start-up time is part of every cold start: only modules that are built into the interpreter
# or loaded by it anyway are imported before `ready` (json, socket and signal would pull in re
# and enum, threading functools and collections: ~13 ms; fcntl and termios are shared
# libraries, ~0.7 ms each to load); the rest is imported while the first execute is on its way.
import _signal
import builtins
import io
import math
import os
import sys
import _thread
import time
import types

_ioctl = _FIONREAD = None  # fcntl.ioctl and termios.FIONREAD, imported after `ready`

MAX_FRAME = 16 << 20        # largest frame either side may send (protocol.md)
# Set in a signal target: "interrupt code older than this execution" (an overrun, see the
# host's session/core/overrun.rs), as opposed to "interrupt this execution".
_OVERRUN_FLAG = 1 << 63
# Set in a signal target: the interrupt is the execution's timeout, not a client's cancel.
_TIMEOUT_FLAG = 1 << 62
# What a KeyboardInterrupt the host asked for says (user code's own SIGINT says nothing).
_CANCELLED = "execution cancelled by the client"
_TIMED_OUT = "execution interrupted at its time limit"
_OVERRAN = "interrupted: code reported finished ran past its time limit"
TEXT_LIMIT = 1 << 20        # cap for repr/traceback/message/prompt text, in characters
# Frames of a traceback formatted at most: the innermost ones, where the error is. Formatting
# a million frames (deep recursion under a raised recursion limit) takes minutes.
MAX_TRACEBACK_FRAMES = 1000
VALUE_LIMIT = 1 << 20       # a result `value` whose JSON is larger is sent as null
HISTORY_LIMIT = 1000        # results kept in Out / _n (IPython's default cache size)
NAMESPACE_ENTRIES = 10000   # names in a namespace answer, at most
NAMESPACE_BYTES = 4 << 20   # JSON bytes of a namespace answer's entries, at most
SOURCE_LIMIT = 64 << 10     # characters of one entry's source, at most
CHECKPOINT_LIMIT = 11 << 20  # bytes of a checkpoint (compressed): its base64 fits a frame
RESTORE_LIMIT = 512 << 20   # bytes a checkpoint may inflate to (a zip bomb stops here)
CHECKPOINT_FORMAT = "pyrepl3-checkpoint"
CHECKPOINT_VERSION = 1
# Names of the history (not counted as the user's globals).
_HISTORY_NAMES = frozenset(("In", "Out", "_", "__", "___"))
CO_COROUTINE = 0x0080       # inspect.CO_COROUTINE, without importing inspect
INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # ints the host can hold; bigger ones get repr only

_AGENT_GLOBALS = globals()  # frames running with these globals are the agent's own


def _json_codec():
    """(encode, decode) for the channel: compact, non-ASCII kept, NaN refused. Built on the C
    accelerator `_json` (what `json` itself uses) so that `json`, `re` and `enum` need not be
    imported at start-up; bound once, so user code that monkeypatches `json` cannot break the
    channel."""
    try:
        from _json import encode_basestring, make_encoder, make_scanner
    except ImportError:  # an interpreter without the accelerator
        import json
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return encoder.encode, json.JSONDecoder().decode

    def refuse(obj):
        raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)

    def encode(obj):
        # A fresh marker dict per call, as json does: an aborted encoding leaves entries behind.
        chunks = make_encoder({}, refuse, encode_basestring, None, ":", ",", False, False,
                              False)(obj, 0)
        return "".join(chunks)

    def constant(name):
        raise ValueError("%s is not allowed" % name)

    class Context:
        strict, object_hook, object_pairs_hook = True, None, None
        parse_float, parse_int, parse_constant, memo = float, int, constant, {}

    scan = make_scanner(Context())

    def decode(text):
        text = text.strip()
        try:
            obj, end = scan(text, 0)
        except StopIteration as stop:
            raise ValueError("invalid JSON at character %s" % stop.value) from None
        if end != len(text):
            raise ValueError("extra data after JSON at character %d" % end)
        return obj

    return encode, decode


_encode, _decode = _json_codec()
_agent = None               # the Agent, for input() and getpass()


def _clip(text, limit=TEXT_LIMIT):
    if text is not None and len(text) > limit:
        return text[:limit] + "... [truncated %d characters]" % (len(text) - limit)
    return text


def _safe_str(obj):
    try:
        return str(obj)
    except BaseException:
        return "<str() failed>"


_os_write = os.write  # the agent's own writes bypass the order-keeping wrapper


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[_os_write(fd, view):]
        except BlockingIOError:  # user code set O_NONBLOCK on the shared pipe; undo it
            os.set_blocking(fd, True)


# Classes defined in cells -> their cell's file name, for `inspect.getsource` (weakly held:
# a class that goes away takes its entry along).
_cell_classes = None


class _Protocol:
    """The protocol side of the agent (docs/protocol.md): its state, the channels and their
    framing, the reader thread's dispatch, SIGINT, and input requests. `Agent` (cells.py)
    adds running the cells."""

    def __init__(self, exec_fd, control_fd, signal_fd, session_id, marker):
        self._session_id = session_id
        self._marker = b"\x1bPYREPL3:" + marker.encode() + b"\x1b"
        self._pid = os.getpid()
        self._transactions = None        # a _Transactions (transaction.py), set by main()
        self._cpu_before = 0.0           # CPU seconds of the session's earlier worker processes
        self._main_ident = _thread.get_ident()
        self._ids = iter(range(1, 1 << 62))  # next() on it is atomic under the GIL

        # Two channels (protocol.md): the main thread reads `execute` from the exec channel
        # itself when idle, so starting code needs no hand-off between threads (~40 µs each
        # on this kind of machine); the reader thread owns the control channel.
        self._exec = self._channel(exec_fd)
        self._control = self._channel(control_fd)
        self._send_lock = _thread.allocate_lock()     # one frame at a time per sender
        self._read_lock = _thread.allocate_lock()     # held by the reader while it takes a frame
        self._ordered_lock = _thread.allocate_lock()  # one marker+frame pair at a time

        # Private dups of fds 1 and 2 carry only the marker, so it still reaches the host
        # when user code redirects or closes fd 1/2.
        self._marker_fds = (os.dup(1), os.dup(2))
        for dup in self._marker_fds:
            os.set_inheritable(dup, False)
        global _flusher
        _flusher = _Flusher()
        self._streams = [self._text_stream(1), self._text_stream(2),
                         sys.__stdout__, sys.__stderr__]
        self._configure_flusher()
        sys.stdout, sys.stderr = self._streams[:2]
        sys.stdin = _Stdin()
        builtins.input = input

        # Shared with the reader thread. The main thread arms _running_id under the lock (so a
        # cancel cannot slip between dequeue and start) but disarms it with a plain store,
        # which the SIGINT handler cannot interrupt; the handler re-checks the target anyway.
        self._state_lock = _thread.allocate_lock()
        self._running_id = None          # execution whose user code is running now
        self._interrupt_target = None    # execution the last SIGINT was sent for
        self._cancelled_early = []       # cancels that arrived before their execute (bounded)
        # SIGINT targets (protocol.md, "Interrupting"): the host writes the `seq` of the
        # execution it interrupts to this file before signalling; executions are numbered
        # by the host, so a signal for code that finished can be told from one for code that
        # has not started yet.
        self._signal_fd = signal_fd
        if signal_fd >= 0:
            os.set_inheritable(signal_fd, False)
        self._accepted_seq = 0           # the execution read from the exec channel last
        self._running_seq = 0            # the execution whose user code runs now
        self._finished_seq = 0           # the last execution whose end was sent
        self._pending_seq = 0            # interrupted before it started: stop it at once
        self._pending_reason = _CANCELLED  # what stopping it says
        self._main_sending = False       # main thread is mid-send: defer KeyboardInterrupt
        self._interrupt_deferred = False
        self._waiters = {}               # input id -> [lock held until answered, answer]
        self._shutting_down = False      # shut down while code waited for input: end after it

        self._unfinished = None          # execution still owed a terminal frame
        self._cell_count = 0
        # PyCF_ALLOW_TOP_LEVEL_AWAIT (0x2000, ast's constant: not imported before `ready`) plus
        # the __future__ flags seen so far. Set before `ready`: the reader thread answers
        # is_complete with these flags from then on.
        self._compile_flags = 0x2000
        # The session's event loop (created when a cell first uses asyncio), and the task of
        # the cell running in it, as in `python -m asyncio`: whole cells run in the loop, and
        # tasks they start keep running between cells while the worker waits for the next.
        self._loop = None
        self._cell_task = None
        self._cell_stop = None           # why the cell's task was cancelled: its KeyboardInterrupt
        self._script = False             # exec/run: plain code as `python` runs it, not in the loop
        self._background = ()            # the loop's tasks from before the running cell
        self._context = None             # the contextvars context cells in the loop share
        main_module = types.ModuleType("__main__")
        main_module.__builtins__ = builtins
        self._namespace = main_module.__dict__
        # History as IPython keeps it: In[n] is cell n's source, Out[n] its result (not
        # None), _n the same, and _, __, ___ the last three results.
        self._inputs = [""]
        self._outputs = {}
        self._namespace.update(In=self._inputs, Out=self._outputs, _="", __="", ___="")
        self._agent_module = sys.modules.get("__main__")  # keep the agent's module alive
        sys.modules["__main__"] = main_module  # so pickle finds classes defined in cells
        self._sigint_handler = self._on_sigint
        _signal.signal(_signal.SIGINT, self._sigint_handler)

    def _configure_flusher(self):
        """The flusher's streams and stream barrier (streams.py); again in a transaction's
        snapshot when it takes over."""
        _flusher.streams = self._streams[:2]
        if len(self._marker) > len(b"\x1bPYREPL3:\x1b"):  # a token: the host orders streams
            _flusher.barrier = self._marker[:-1] + b"\x1d"  # the marker, ending in GS
            _flusher.barrier_fds = self._marker_fds

    @staticmethod
    def _channel(fd):
        os.set_inheritable(fd, False)  # user subprocesses must never hold the channel
        os.set_blocking(fd, True)  # the host may hand over a non-blocking socketpair end
        return fd

    @staticmethod
    def _text_stream(fd):
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass
        raw = io.FileIO(fd, "wb", closefd=False)
        buffer = _LiveBuffer(raw, STREAM_BUFFER)
        buffer.text = _LiveText(buffer, encoding="utf-8", errors="backslashreplace",
                                line_buffering=False)
        return buffer.text

    # ---- channel -------------------------------------------------------------------------
    def _new_id(self):
        return "w%d-%d" % (self._pid, next(self._ids))

    def send(self, msg, ordered=False):
        """Send one frame. An ordered one (input, display, result, error) is preceded by the
        marker on both pipes (protocol.md); the host pairs the k-th marker with the k-th
        ordered frame, so a marker and its frame go out as one unit: never one without the
        other, and always on the exec channel, whichever thread sends (frames of two channels
        could be read in another order than written). Returns False for a display whose
        execution ended before it could go out (the caller prints its text instead)."""
        msg.setdefault("id", self._new_id())
        if ordered:
            self._flush_output()  # still interruptible: nothing is on the wire yet
            # Nothing unread in either pipe means the host has read (and, as it reads and
            # routes in one step, routed) every byte written so far: no marker is needed.
            # Except before a display: the code goes on printing after it, and the host could
            # read that text before this frame; the marker puts the text after it.
            msg["marked"] = marked = msg["type"] == "display" or not self._pipes_drained()
        data = _encode(msg).encode("utf-8", "replace")  # lone surrogates would break the host
        if len(data) > MAX_FRAME:  # never emit a frame the host must reject
            msg = {k: _clip(v, 1 << 16) if isinstance(v, str) else v for k, v in msg.items()}
            if "value" in msg:
                msg["value"] = None
            msg.pop("metadata", None)  # a bundle is never cut: it is left out
            if msg.pop("data", None) is not None and msg["type"] == "display":
                msg["data"] = {"text/plain": "[pyrepl3: a display too large for a frame was "
                                             "left out]"}
            data = _encode(msg).encode("utf-8", "replace")
        frame = len(data).to_bytes(4, "big") + data
        sent = True
        on_main = _thread.get_ident() == self._main_ident
        sock = self._exec if on_main or ordered else self._control
        if on_main:  # defer KeyboardInterrupt: no half frame, no marker without its frame
            self._main_sending = True
        try:
            if ordered:
                with self._ordered_lock:  # pairs markers and frames across threads
                    # A display from another thread whose execution ended meanwhile.
                    sent = msg["type"] != "display" or msg["execution_id"] == self._running_id
                    for fd in self._marker_fds if marked and sent else ():
                        try:
                            _write_all(fd, self._marker)
                        except OSError:
                            pass  # the host stopped reading that pipe; it notices by itself
                    if sent:
                        with self._send_lock:
                            _write_all(sock, frame)
            else:
                with self._send_lock:
                    _write_all(sock, frame)
        finally:
            if on_main:
                self._main_sending = False
        if on_main and self._interrupt_deferred:
            reason, self._interrupt_deferred = self._interrupt_deferred, False
            if self._running_id is not None:
                raise KeyboardInterrupt(reason) if isinstance(reason, str) else KeyboardInterrupt
        return sent

    def _pipes_drained(self):
        if _ioctl is None:
            return False  # not set up yet: mark, which is always correct
        try:
            return all(not int.from_bytes(_ioctl(fd, _FIONREAD, b"\0\0\0\0"), "little")
                       for fd in self._marker_fds)
        except OSError:
            return False  # cannot tell: mark, which is always correct

    @staticmethod
    def _recv_exact(fd, size):
        data = os.read(fd, size)
        if len(data) == size:
            return data
        buf = bytearray(data)
        while len(buf) < size:
            chunk = os.read(fd, size - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _recv_frame(self, sock):
        """One message from `sock`; blocks (never with a timeout) until it is complete."""
        size = int.from_bytes(self._recv_exact(sock, 4), "big")
        if size > MAX_FRAME:
            self._protocol_error("frame of %d bytes exceeds the limit" % size)
        return self._parse_frame(self._recv_exact(sock, size))

    def _parse_frame(self, body):
        try:
            msg = _decode(body.decode("utf-8"))
        except ValueError as exc:
            self._protocol_error("bad JSON: %s" % exc)
        if not isinstance(msg, dict) or not isinstance(msg.get("id"), str):
            self._protocol_error("message without a string id: %.200r" % (msg,))
        return msg

    def _host_gone(self):
        if self._transactions is not None:
            self._transactions.abandon()  # nothing to take over for
        # Take the whole process group along so nothing is orphaned, but only when we lead
        # it (otherwise killpg(0) would hit the host's group).
        leaders = (self._pid, getattr(self._transactions, "supervisor", None))
        if os.getpgrp() in leaders:
            os.killpg(0, _signal.SIGKILL)
        os._exit(1)

    def read_loop(self):
        """Reader thread: waits (never with a timeout) until the control channel has data,
        without taking any (a peek); then takes one frame whole and dispatches it under
        `_read_lock`. A worker handing over to its snapshot (transaction.py) takes that lock,
        so it never leaves half a frame read for its successor."""
        import _socket  # in this thread, after `ready`'s way: a C module, no imports of its own
        peeker = _socket.socket(fileno=os.dup(self._control))
        # A process-wide default timeout set by user code before a takeover must not apply.
        peeker.settimeout(None)
        self._peeker = peeker  # kept: dropping it would close the dup
        try:
            while True:
                head = peeker.recv(4, _socket.MSG_PEEK)  # not polling: untimed, until data
                if not head:
                    raise EOFError
                with self._read_lock:
                    if len(head) < 4:  # a header still on its way: the plain two reads
                        msg = self._recv_frame(self._control)
                    else:
                        # The whole frame in one call, so that a worker killed meanwhile
                        # (a transaction's snapshot then takes over) leaves none of it read.
                        size = int.from_bytes(head, "big")
                        if size > MAX_FRAME:
                            self._protocol_error("frame of %d bytes exceeds the limit" % size)
                        data = peeker.recv(4 + size, _socket.MSG_WAITALL)
                        if len(data) < 4 + size:
                            data += self._recv_exact(self._control, 4 + size - len(data))
                        msg = self._parse_frame(data[4:])
                    self._dispatch(msg)
        except (EOFError, OSError):
            self._host_gone()
        except BaseException as exc:
            self._protocol_error("reader failed: %r" % (exc,))

    def _protocol_error(self, why):
        if self._transactions is not None:
            self._transactions.abandon()  # the worker is ending: nothing to take over for
        try:
            _write_all(self._marker_fds[1], ("pyrepl3 agent: protocol error: %s\n" % why).encode())
        finally:
            os._exit(70)

    def _dispatch(self, msg):
        kind, msg_id = msg.get("type"), msg["id"]
        if kind == "input_response" and isinstance(msg.get("data"), (str, type(None))):
            # Popped, so a second answer to the same request finds nothing to release.
            waiter = self._waiters.pop(msg.get("input_id"), None)
            if waiter is not None:  # unknown or abandoned (cancelled) input: ignored
                waiter[1] = msg["data"]
                waiter[0].release()
        elif kind in ("cancel", "interrupt") and isinstance(msg.get("execution_id"), str):
            with self._state_lock:
                if msg["execution_id"] == self._running_id:
                    self._interrupt_target = msg["execution_id"]
                    _signal.pthread_kill(self._main_ident, _signal.SIGINT)
                else:  # not running (yet): remembered in case its execute is still on the way
                    self._cancelled_early = self._cancelled_early[-63:] + [msg["execution_id"]]
        elif kind == "heartbeat":
            names = [k for k in list(self._namespace) if isinstance(k, str)]
            self.send({"type": "heartbeat", "in_reply_to": msg_id, "memory_usage": self._rss(),
                       "cpu_time": sum(os.times()[:2]) + self._cpu_before,
                       "namespace_size": sum(_user_global(k) for k in names)})
        elif kind == "namespace":
            self.send(self._namespace_reply(msg_id))
        elif kind == "complete" and isinstance(msg.get("code"), str):
            token, matches = _completions(self._namespace, msg["code"][-4096:])
            self.send({"type": "complete_reply", "in_reply_to": msg_id, "token": token,
                       "matches": [_clip(m, 1000) for m in matches]})
        elif kind == "is_complete" and isinstance(msg.get("code"), str):
            self.send({"type": "is_complete_reply", "in_reply_to": msg_id,
                       "status": self._completeness(msg["code"]), "indent": ""})
        elif kind == "shutdown":
            with self._state_lock:
                # Code waiting in input() gets end-of-file, so that its `except EOFError`
                # runs before the session ends (within the host's shutdown grace); the main
                # thread exits once that execution has ended.
                waiting = list(self._waiters.values())
                self._shutting_down = bool(waiting)
                for waiter in waiting:
                    waiter[1] = None
                    waiter[0].release()
            if not waiting:
                self._end()
        else:
            self._protocol_error("unknown message: %.200r" % (msg,))

    def _namespace_reply(self, msg_id):
        """The user's globals, sorted by name: type, short repr, size, and the source of
        functions and classes defined in cells. Runs on the reader thread, so it works while
        code runs; every step that runs user code (a repr, a metaclass's attribute) is
        guarded. Bounded: NAMESPACE_ENTRIES names and NAMESPACE_BYTES of JSON at most."""
        import reprlib
        short = reprlib.Repr()
        short.maxstring = short.maxother = 160
        items = [(k, v) for k, v in list(self._namespace.items())
                 if isinstance(k, str) and _user_global(k)]
        items.sort(key=lambda item: item[0])
        entries, left, truncated = [], NAMESPACE_BYTES, False
        for name, value in items:
            if len(entries) >= NAMESPACE_ENTRIES:
                truncated = True
                break
            entry = {"name": name, "type": _type_name(value),
                     "repr": _guarded_text(lambda: _clip(short.repr(value), 200)),
                     "size": _guarded(lambda: sys.getsizeof(value), None)}
            if _is_module(value):
                entry["module"] = _guarded(lambda: str(value.__name__), "?")
            source = _session_source(value)
            if source is not None:
                entry["source"] = source
            left -= len(_encode(entry))
            if left < 0:
                truncated = True
                break
            entries.append(entry)
        return {"type": "namespace_reply", "in_reply_to": msg_id, "entries": entries,
                "truncated": truncated}

    def _completeness(self, source):
        """What `code.InteractiveConsole.push` would do with `source`, with the flags the
        session compiles with (top-level await, __future__ imports), as asyncio's REPL does."""
        import codeop, warnings  # only the REPL asks: not worth a cost before `ready`
        compiler = codeop.CommandCompiler()
        compiler.compiler.flags |= self._compile_flags
        try:
            # The code is compiled again when it runs: warn then, not twice. catch_warnings
            # swaps the process-wide filters; the main thread is idle at a prompt.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = compiler(source, "<input>", "single")
        except (SyntaxError, OverflowError, ValueError):
            return _magics_completeness(compiler, source)  # !cmd / %pip lines (magics.py)
        except Exception:  # e.g. RecursionError on deep nesting: must not end the reader
            return "invalid"
        return "incomplete" if code is None else "complete"

    @staticmethod
    def _rss():
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _signal_target(self):
        """The seq the host's latest SIGINT is for (0: none), cleared once read, so that a
        later untargeted SIGINT (user code signalling itself) is not taken for it."""
        if self._signal_fd < 0:
            return 0
        try:
            target = int.from_bytes(os.pread(self._signal_fd, 8, 0), "little")
            if target:
                os.pwrite(self._signal_fd, b"\0" * 8, 0)
            return target
        except OSError:
            return 0

    def _on_sigint(self, signum, frame):
        running = self._running_id
        # A cancel message's SIGINT (reader thread) names its execution; each run consumes
        # it, so one sent for an execution that has since ended is absorbed.
        message_target, self._interrupt_target = self._interrupt_target, None
        reason = None
        if message_target is not None:
            if running is None or message_target != running:
                return
            reason = _CANCELLED
        else:
            target = self._signal_target()
            if target & _OVERRUN_FLAG:
                # Code that was reported finished but runs past its limit: whatever runs
                # older than the given execution (never that one, nor a later one).
                if running is None or self._running_seq >= target & ~_OVERRUN_FLAG:
                    return
                reason = _OVERRAN
            elif target:
                reason = _TIMED_OUT if target & _TIMEOUT_FLAG else _CANCELLED
                target &= ~_TIMEOUT_FLAG
                if running is None or target != self._running_seq:
                    if target > self._finished_seq and target != self._running_seq:
                        self._pending_seq = target  # for code not started yet: kept
                        self._pending_reason = reason
                    return  # else for code that finished: absorbed
            elif running is None:
                return  # no user code to interrupt
        if self._main_sending:
            self._interrupt_deferred = reason or True
            return
        task = self._cell_task
        if task is not None:
            current = _current_task(self._loop)
            if current is None or current in self._background:
                # The loop waits, or steps a task an earlier cell started: a KeyboardInterrupt
                # here would end that task instead. The cell's task is cancelled, and reports
                # the interrupt. (In the cell's own task, or one it started, it is raised.)
                self._cell_stop = reason or ""
                self._loop.call_soon_threadsafe(task.cancel)
                return
        raise KeyboardInterrupt(reason) if reason else KeyboardInterrupt

    def _end(self):
        """The session is shut down: exit at once (no snapshot takes over)."""
        self._flush_output()
        if self._transactions is not None:
            self._transactions.abandon()
        os._exit(0)

    def request_input(self, prompt, password):
        """Ask the client for a line; returns the answer, or None at end-of-file."""
        input_id = self._new_id()
        waiter = [_thread.allocate_lock(), None]
        waiter[0].acquire()
        try:
            with self._state_lock:
                if self._shutting_down or self._running_id is None:
                    # The session is ending, or no execution runs (a thread or a task asking
                    # between executions): nobody could answer, so end-of-file, as python
                    # gives without a terminal.
                    return None
                self._waiters[input_id] = waiter
            # Ordered: the marker puts this request after everything printed before it.
            self.send({"type": "input", "id": input_id, "execution_id": self._running_id,
                       "prompt": _clip(_safe_str(prompt)), "password": password,
                       "timeout": None}, ordered=True)
            # not polling: one untimed wait, completed by the reader thread; SIGINT
            # interrupts it, so a cancel ends it.
            waiter[0].acquire()
        finally:
            self._waiters.pop(input_id, None)
        return waiter[1]
