"""pyrepl3 worker agent, part 2 of 8 (see agent.py): running cells. `Agent` is the protocol
side (`_Protocol`, agent.py) with the main thread's loop: it takes each `execute`, compiles and
runs the cell (a trailing expression's result, top-level await in the session's one event
loop, a script as `python FILE` runs it), and sends its end: the result, or the error with its
traceback (the agent's own frames trimmed, at most `MAX_TRACEBACK_FRAMES` formatted)."""


class Agent(_Protocol):
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
                depth = _chain_depth(exc)
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


def _chain_depth(exc):
    """The most frames in a traceback of `exc` or of an exception it was raised from or
    during (`__cause__`, `__context__`): each is formatted. A walk of the links, cheap even
    for a million frames."""
    deepest, seen, todo = 0, set(), [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        depth, tb = 0, current.__traceback__
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        deepest = max(deepest, depth)
        todo += [current.__cause__, current.__context__]
    return deepest


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
