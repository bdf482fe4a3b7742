"""pyrepl3 worker agent: the Python side of docs/protocol.md, part 1 of 5.

The host joins worker/agent.py, streams.py, state.py, transaction.py and main.py (in that
order) into one program and runs it as `python3 -c <source>` (or as its bytecode). This part
owns: the protocol channels (framing, one reader thread, the send locks), the persistent user
namespace, compiling and running cells on the main thread (trailing-expression results,
top-level await on one session event loop), cancellation by SIGINT, and the output marker that
orders output before each input request and result.
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


class Agent:
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

    # ---- executions ----------------------------------------------------------------------
    def serve_forever(self):
        self.send({"type": "ready", "session_id": self._session_id, "pid": self._pid,
                   "python_version": "%d.%d.%d" % tuple(sys.version_info[:3]),
                   "capabilities": ["execute", "input", "cancel", "interrupt", "heartbeat",
                                    "shutdown", "top_level_await", "output_marker",
                                    "is_complete", "display"]
                   + (["transactions"] if self._transactions is not None else [])})
        # Finish start-up while the first execute is in flight rather than before `ready`.
        global _ioctl, _FIONREAD
        import ast, getpass as getpass_module, linecache, traceback  # noqa: F401
        from fcntl import ioctl as _ioctl
        from termios import FIONREAD as _FIONREAD
        _keep_output_order()
        _track_cell_classes()
        sys.displayhook = self._displayhook
        _install_display()
        getpass_module.getpass = getpass
        while True:
            if self._shutting_down:  # the execution that waited for input has ended
                self._end()
            try:
                try:
                    msg = self._next_execute()
                except (EOFError, OSError):
                    self._host_gone()
                if msg.get("type") != "execute" or not isinstance(msg.get("code"), str):
                    self._protocol_error("not an execute on the exec channel: %.200r" % (msg,))
                seq = msg.get("seq")
                self._accepted_seq = seq if isinstance(seq, int) and seq > 0 else 0
                self._execute(msg)
            except BaseException as exc:  # nothing user code does may end this loop
                self._running_id = None
                self._salvage(exc)

    def _next_execute(self):
        """The next frame on the exec channel. With an event loop, the loop runs until one
        arrives, so that the tasks cells started go on in between (not polling: the loop
        sleeps in epoll, woken by the channel or by the tasks' own events)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            arrived = loop.create_future()
            loop.add_reader(self._exec, lambda: arrived.done() or arrived.set_result(None))
            try:
                loop.run_until_complete(arrived)
            finally:
                loop.remove_reader(self._exec)
        return self._recv_frame(self._exec)

    def _salvage(self, exc):
        """Send the terminal frame an execution is still owed after an agent failure."""
        if self._transactions is not None:
            self._transactions.abandon()  # its changes stay: the execution was not settled
        try:
            if self._unfinished is not None:
                execution_id, self._unfinished = self._unfinished, None
                self.send({"type": "error", "execution_id": execution_id,
                           "exception_type": type(exc).__name__,
                           "exception_message": _clip(_safe_str(exc)), "traceback": ""},
                          ordered=True)
        except BaseException:
            pass

    def _execute(self, msg):
        execution_id, source = msg["id"], msg["code"]
        self._unfinished = execution_id
        internal = msg.get("internal")
        policy = msg.get("transaction_policy")
        if self._transactions is not None:
            self._transactions.abandon()  # a snapshot an unsettled execution left behind
        transaction = (not isinstance(internal, dict)
                       and policy in ("rollback_on_failure", "rollback_always"))
        if transaction:
            try:
                if self._transactions is None:
                    raise _TransactionUnavailable("this worker cannot keep snapshots")
                frame = self._transactions.begin(self, execution_id)
            except _TransactionUnavailable as exc:
                frame = {"type": "error", "execution_id": execution_id,
                         "exception_type": "TransactionUnavailable",
                         "exception_message": str(exc),
                         "traceback": "TransactionUnavailable: %s\n" % exc}
            if frame is not None:  # nothing ran here, or this is the promoted snapshot
                self.send(frame, ordered=True)
                self._unfinished = None
                self._finished_seq = max(self._finished_seq, self._accepted_seq)
                return
        started = time.perf_counter()
        if isinstance(internal, dict):  # the agent's own operation: not in the history
            outcome = self._run_cell(execution_id, None, None, internal)
        else:
            self._cell_count += 1
            self._inputs.append(source)
            mode = msg.get("mode")
            if mode == "script" and not self._script:
                self._script = True  # the session runs code as `python -c` from now on
                sys.argv[:] = ["-c"]
            outcome = self._run_cell(execution_id, source, "<cell-%d>" % self._cell_count,
                                     mode=mode)
        elapsed = time.perf_counter() - started
        if os.getpid() != self._pid:
            _forked_child_ends(outcome)  # user code forked and the child's code came back here
        if _signal.getsignal(_signal.SIGINT) is not self._sigint_handler:
            _signal.signal(_signal.SIGINT, self._sigint_handler)  # user code replaced it
        if outcome[0] == "result":
            frame = {"type": "result", "execution_id": execution_id, "value": outcome[2],
                     "repr": outcome[1], "execution_time": elapsed}
            if outcome[3] is not None:  # a MIME bundle: the value has rich representations
                frame["data"], frame["metadata"] = outcome[3]
        else:
            frame = self._error_frame(execution_id, outcome[1], outcome[2], source)
        outcome = None  # drop the exception (and the frames it holds) before waiting again
        if transaction:
            wanted = policy == "rollback_always" or frame["type"] == "error"
            if wanted and self._transactions.alive():
                frame["transaction"] = "rolled_back"
                self._transactions.roll_back(self, frame)  # returns only if it failed
            self._transactions.commit()
            # Wanted but not done: the kernel killed the snapshot (for memory).
            frame["transaction"] = "rollback_failed" if wanted else "committed"
        self.send(frame, ordered=True)
        self._unfinished = None
        self._finished_seq = max(self._finished_seq, self._accepted_seq)

    def _run_cell(self, execution_id, source, filename, internal=None, mode=None):
        """Compile and run one cell with SIGINT armed. Returns ("result", repr, value) or
        ("error", exception, raised_while_compiling).

        Everything between arming and disarming sits in one try, so a KeyboardInterrupt that
        lands anywhere in that window, even just after user code returned, becomes this
        execution's error. Disarming is a plain store, which the handler cannot interrupt."""
        compiling = True
        try:
            with self._state_lock:
                cancelled = execution_id in self._cancelled_early
                if cancelled:
                    self._cancelled_early.remove(execution_id)
                seq = self._accepted_seq
                reason = _CANCELLED
                if seq and self._pending_seq == seq:  # SIGINT came before the code started
                    cancelled, self._pending_seq = True, 0
                    reason = self._pending_reason
                self._interrupt_deferred = False
                self._running_seq = seq
                self._running_id = execution_id
            if cancelled:
                raise KeyboardInterrupt(reason)
            if internal is not None:
                compiling = False
                report = self._internal_call(internal)
                self._running_id = None
                return ("result", None, report, None)
            if not self._script and "asyncio" in source:
                self._asyncio_for(source)
            body, last = self._compile(source, filename, mode == "interactive")
            compiling = False
            try:
                awaits = any(c is not None and c.co_flags & CO_COROUTINE for c in (body, last))
                if awaits or (not self._script and "asyncio" in sys.modules):
                    value = self._run_in_loop(body, last)
                else:
                    if body is not None:
                        eval(body, self._namespace)
                    value = None if last is None else eval(last, self._namespace)
                figures = _figures_at_the_end()  # displayed before the result, as output
                text = shown = bundle = None
                if value is not None:  # repr and value computed here so a cancel ends them
                    text, shown = _clip(repr(value)), _plain_json(value)
                    bundle = _result_bundle(value, figures, text)
                    self._remember_result(value)
            except BaseException as exc:
                # What the cell drew before it failed is shown, as in Jupyter (before the end
                # of a script: its atexit handlers include pyplot's, which closes them all);
                # after a cancel or timeout only closed: drawing could outlast the grace.
                try:
                    _figures_at_the_end(render=not isinstance(exc, KeyboardInterrupt))
                except BaseException:
                    pass  # the cell's own error is the one to report
                raise
            finally:
                if mode == "script":  # the end of `python -c`: threads joined, atexit run
                    _end_of_script()
            self._running_id = None
            return ("result", text, shown, bundle)
        except BaseException as exc:
            self._running_id = None
            return ("error", exc, compiling)

    def _internal_call(self, call):
        """Runs one of the agent's own operations (`protocol::Execute::internal`)."""
        kind = call.get("call")
        if kind == "checkpoint":
            return _checkpoint(self._namespace)
        if kind == "run" and isinstance(call.get("code"), str):
            # Code of the host's (the pool's warm-up): run in the namespace, not in the history.
            body, last = self._compile(call["code"], "<warm-up>")
            for code in (body, last):
                if code is not None and code.co_flags & CO_COROUTINE:
                    self._run_in_loop(code, None)
                elif code is not None:
                    eval(code, self._namespace)
            return None
        if (kind == "script" and isinstance(call.get("path"), str)
                and isinstance(call.get("source"), str) and isinstance(call.get("argv"), list)):
            return self._run_script(call["path"], call["source"], call["argv"])
        if kind == "environ":  # the session's variables and cwd (magics.py)
            return _apply_environ(call)
        if kind == "restore" and isinstance(call.get("checkpoint"), str):
            return _restore(self._namespace, call["checkpoint"],
                            bool(call.get("clear_existing")))
        raise ValueError("unknown internal call: %.200r" % (call,))

    def _displayhook(self, value):
        """sys.displayhook: what an interactive execution (the REPL) shows of each expression
        statement, as Python's own does (repr on stdout), kept as the session's last result."""
        if value is None:
            return
        builtins._ = None  # as the default hook: a repr that reads `_` sees no stale value
        # An open pyplot figure is shown with the others when the statement ends (so that
        # `plt.figure(); plt.plot(...)` is one picture, drawn whole): here only its repr.
        bundle = None if _open_figure(value) else _result_bundle(value, ())
        if bundle is None:
            sys.stdout.write(repr(value) + "\n")
        else:  # a rich value (a DataFrame, an image): a display, whose text a terminal shows
            _send_display(*bundle)
        self._remember_result(value)

    def _remember_result(self, value):
        """Out[n], _n, _, __, ___ as IPython keeps them (and builtins._, as the Python REPL
        does). At most HISTORY_LIMIT results are kept alive: older ones are dropped."""
        number, ns = self._cell_count, self._namespace
        ns["___"], ns["__"], ns["_"] = ns.get("__", ""), ns.get("_", ""), value
        ns["_%d" % number] = self._outputs[number] = value
        builtins._ = value
        while len(self._outputs) > HISTORY_LIMIT:
            oldest = min(self._outputs)
            del self._outputs[oldest]
            ns.pop("_%d" % oldest, None)

    def _compile(self, source, filename, interactive=False):
        """The cell's body, and its last expression on its own (its value is the result).
        Interactive (the REPL): the whole cell in "single" mode, where every expression
        statement's value goes to sys.displayhook as it is computed, and no last expression."""
        import __future__, ast, linecache
        # Registered first, so tracebacks show source lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        flags = self._compile_flags
        try:
            tree = compile(source, filename, "exec", flags | ast.PyCF_ONLY_AST, dont_inherit=True)
        except SyntaxError:  # maybe !cmd / %pip lines (magics.py): never valid Python altered
            source = _magics_transform(source)
            if source is None:
                raise
            tree = compile(source, filename, "exec", flags | ast.PyCF_ONLY_AST, dont_inherit=True)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not interactive:
            last = ast.Expression(tree.body.pop().value)
        body = None
        if tree.body and interactive:
            body = compile(ast.Interactive(tree.body), filename, "single", flags,
                           dont_inherit=True)
        elif tree.body:
            body = compile(tree, filename, "exec", flags, dont_inherit=True)
        if body is not None:
            for name in __future__.all_feature_names:  # they last for the session, as in a REPL
                flags |= body.co_flags & getattr(__future__, name).compiler_flag
            self._compile_flags = flags
        if last is not None:
            last = compile(last, filename, "eval", flags, dont_inherit=True)
        return body, last

    def _asyncio_for(self, source):
        """A cell that mentions asyncio finds it imported and in the namespace, as in
        `python -m asyncio` (imported only then: it costs ~25 ms, most sessions never use it),
        and so runs in the event loop, as every later cell does."""
        import asyncio
        self._namespace.setdefault("asyncio", asyncio)

    def _event_loop(self):
        if self._loop is None:
            global _current_task, _all_tasks
            import asyncio
            _current_task, _all_tasks = asyncio.current_task, asyncio.all_tasks
            import contextvars
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            _run_beside_the_session_loop(asyncio, self._loop)
            # One context for every cell, as the values a plain cell sets (contextvars,
            # decimal's context) last: a task would otherwise run each cell in a copy.
            self._context = contextvars.copy_context()
        return self._loop

    def _run_in_loop(self, body, last):
        """Runs a whole cell as a task of the session's loop: awaiting or not, its code sees a
        running loop, and the tasks it starts outlive it. Returns the last expression's value.
        A cancel ends the cell's task only (see _on_sigint), never the tasks it started."""
        loop, namespace = self._event_loop(), self._namespace

        async def cell():
            if body is not None:
                done = eval(body, namespace)
                if body.co_flags & CO_COROUTINE:
                    await done
            if last is None:
                return None
            value = eval(last, namespace)
            return (await value) if last.co_flags & CO_COROUTINE else value

        self._cell_stop = None
        self._background = _all_tasks(loop)
        if sys.version_info >= (3, 11):
            task = loop.create_task(cell(), context=self._context)
        else:
            task = loop.create_task(cell())
        self._cell_task = task
        try:
            return loop.run_until_complete(task)
        except BaseException as exc:
            if not task.done():
                # Interrupted while a step of the cell ran: cancel its task so its finally
                # blocks run now, inside this execution, rather than in a later one.
                task.cancel()
                try:
                    loop.run_until_complete(task)
                except BaseException:
                    pass
            stop = self._cell_stop
            if stop is not None and type(exc).__name__ == "CancelledError":
                raise (KeyboardInterrupt(stop) if stop else KeyboardInterrupt()) from None
            raise
        finally:
            self._cell_task = None
            self._cell_stop = None
            self._background = ()

    def _run_script(self, path, encoded, argv):
        """Runs a file as `python FILE ARGS` does: sys.argv, __file__, the script's directory
        first on sys.path (in place of the '' of `-c`), compiled from its bytes (so a coding
        declaration counts) without top-level await, and no event loop for plain code."""
        import base64, linecache, tokenize
        self._script = True
        source = base64.b64decode(encoded)
        path = os.path.normpath(path)
        sys.argv[:] = [str(arg) for arg in argv]
        directory = os.path.dirname(os.path.realpath(path))
        if sys.path and sys.path[0] == "":
            sys.path[0] = directory
        else:
            sys.path.insert(0, directory)
        self._namespace["__file__"] = path
        self._namespace["__cached__"] = None
        try:  # tracebacks show the lines as run, even where the file is not visible (sandbox)
            encoding = tokenize.detect_encoding(io.BytesIO(source).readline)[0]
            lines = source.decode(encoding, "replace").splitlines(True)
            linecache.cache[path] = (len(source), None, lines, path)
        except (SyntaxError, LookupError):
            pass  # compile() reports it
        code = compile(source, path, "exec", dont_inherit=True)
        source = None
        try:
            eval(code, self._namespace)
        finally:
            _end_of_script()
        return None

    def _flush_output(self):
        _flusher.dirty = False
        for stream in [sys.stdout, sys.stderr] + self._streams:
            try:
                stream.flush()
            except BaseException:
                pass  # a broken or closed user stream must not stop the marker

    # ---- errors --------------------------------------------------------------------------
    def _error_frame(self, execution_id, exc, compiling, source):
        import traceback
        try:
            if compiling:
                if isinstance(exc, SyntaxError) and exc.text is None and exc.lineno:
                    lines = source.splitlines()  # errors from code generation lack the text
                    if 0 < exc.lineno <= len(lines):
                        exc.text = lines[exc.lineno - 1] + "\n"
                text = "".join(traceback.format_exception_only(type(exc), exc))
            else:
                _trim_traceback_chain(exc)
                depth = _depth(exc.__traceback__)
                limit = -MAX_TRACEBACK_FRAMES if depth > MAX_TRACEBACK_FRAMES else None
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                                          limit=limit))
                if limit is not None:
                    text = ("[only the innermost %d of %d frames are shown]\n"
                            % (MAX_TRACEBACK_FRAMES, depth)) + text
                sys.last_type, sys.last_value, sys.last_exc = type(exc), exc, exc  # pdb.pm()
                sys.last_traceback = exc.__traceback__
        except BaseException:
            text = "%s: %s\n" % (type(exc).__name__, _safe_str(exc))
        frame = {"type": "error", "execution_id": execution_id,
                 "exception_type": type(exc).__name__,
                 "exception_message": _clip(_safe_str(exc)), "traceback": _clip(text)}
        if isinstance(exc, SystemExit):
            # As the interpreter would exit: None is 0, an int is itself (its low byte as a
            # process status), anything else is printed and the status is 1.
            code = exc.code
            if code is None or isinstance(code, int):  # True is 1, as python exits
                frame["exit_code"] = 0 if code is None else code & 0xFF
            else:
                frame["exit_code"] = 1
                frame["exception_message"] = _clip(_safe_str(code))
        return frame


_current_task = _all_tasks = None  # asyncio's, once the session has an event loop


def _forked_child_ends(outcome):
    """A child that user code forked returned (or raised) out of the cell into the agent: it
    ends as a forked python process would, never speaking for the worker on its channels."""
    status = 0
    if outcome[0] == "error":
        exc = outcome[1]
        if isinstance(exc, SystemExit):
            code = exc.code
            status = 0 if code is None else code & 0xFF if isinstance(code, int) else 1
            if not isinstance(code, (int, type(None))):
                sys.stderr.write("%s\n" % _safe_str(code))
        else:
            import traceback
            _trim_traceback_chain(exc)
            _guarded(lambda: traceback.print_exception(type(exc), exc, exc.__traceback__), None)
            status = 1
    _guarded(_end_of_script, None)
    for stream in (sys.stdout, sys.stderr):
        _guarded(stream.flush, None)
    os._exit(status)


def _end_of_script():
    """What the interpreter does when a script's main code ends (even by an exception):
    wait for the threads that are not daemons, then run the atexit handlers."""
    threading = sys.modules.get("threading")
    if threading is not None:
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()  # not polling: an untimed join; a cancel interrupts it
    import atexit
    atexit._run_exitfuncs()


def _run_beside_the_session_loop(asyncio, session_loop):
    """Cells run in the session's loop (Agent._run_in_loop), where `asyncio.run()` and a new
    loop's `run_until_complete()` would refuse to start ("cannot be called from a running event
    loop"). Code written as a script calls them, so they run as in a script: beside the
    session's loop, which waits meanwhile. Everything else is asyncio's own."""
    events = asyncio.events

    def beside(function, loop_of=None):
        def wrapper(*args, **kwargs):
            if (events._get_running_loop() is not session_loop
                    or (loop_of is not None and loop_of(args) is session_loop)):
                return function(*args, **kwargs)
            events._set_running_loop(None)
            try:
                return function(*args, **kwargs)
            finally:
                events._set_running_loop(session_loop)
                events.set_event_loop(session_loop)  # asyncio.run() unset it when done
        wrapper.__wrapped__ = function
        for name in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(wrapper, name, getattr(function, name, None))
        return wrapper

    asyncio.run = asyncio.runners.run = beside(asyncio.runners.run)
    if hasattr(asyncio.runners, "Runner"):  # 3.11+
        asyncio.runners.Runner.run = beside(asyncio.runners.Runner.run)
    base = asyncio.base_events.BaseEventLoop
    first = lambda args: args[0] if args else None  # noqa: E731  (the loop: `self`)
    base.run_until_complete = beside(base.run_until_complete, first)
    base.run_forever = beside(base.run_forever, first)


def _depth(tb):
    """The number of frames in traceback `tb` (a walk of its links: cheap even for a million)."""
    depth = 0
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


def _trim_traceback_chain(exc):
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop()
        if current is not None and id(current) not in seen:
            seen.add(id(current))
            current.__traceback__ = _trim_traceback(current.__traceback__)
            todo += [current.__cause__, current.__context__]


def _trim_traceback(tb):
    """Drop the agent's frames: the leading ones (with the event-loop plumbing under them),
    and everything from the first agent frame below user code (input(), the SIGINT handler)."""
    def plumbing(frame):
        name = frame.f_globals.get("__name__")
        return frame.f_globals is _AGENT_GLOBALS or (
            isinstance(name, str) and (name.startswith("asyncio") or name == "selectors"))

    while tb is not None and plumbing(tb.tb_frame):
        tb = tb.tb_next
    kept = []
    while tb is not None and tb.tb_frame.f_globals is not _AGENT_GLOBALS:
        kept.append(tb)
        tb = tb.tb_next
    trimmed = None
    for entry in reversed(kept):
        trimmed = types.TracebackType(trimmed, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return trimmed
