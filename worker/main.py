"""pyrepl3 worker agent, part 8 of 8: start-up (see agent.py). Runs last, once every part is
defined."""

def main():
    global _agent
    # Started as `python /proc/self/fd/6` (bytecode) or `python -c source`: either way user
    # code sees what the interactive interpreter gives it.
    sys.argv[:] = [""]
    script = globals().get("__file__")
    if script and sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(
            os.path.abspath(script)):
        sys.path[0] = ""  # as with -c: the working directory, not the agent's cache
    agent_fd = int(os.environ.get("PYREPL3_AGENT_FD", "-1"))
    if agent_fd >= 0:
        if sys.path:
            sys.path[0] = ""  # as with -c (Python put the memfd's directory, "/", there)
        try:
            os.close(agent_fd)  # the sealed file this code was read from: not user code's
        except OSError:
            pass
    exec_fd = int(os.environ.get("PYREPL3_FD", "3"))
    control_fd = int(os.environ.get("PYREPL3_CONTROL_FD", "4"))
    signal_fd = int(os.environ.get("PYREPL3_SIGNAL_FD", "-1"))
    session_id = os.environ.get("PYREPL3_SESSION_ID", "")
    reaper = os.environ.get("PYREPL3_SUPERVISE") == "1"  # the host made this process a reaper
    marker = ""
    if signal_fd >= 0:  # the token is passed in the signal file, never in the environment
        try:
            marker = os.pread(signal_fd, 64, 8).rstrip(b"\0").decode("ascii")
            os.pwrite(signal_fd, b"\0" * 64, 8)  # user code, running next, must not read it
        except (OSError, UnicodeDecodeError) as exc:
            sys.stderr.write("pyrepl3 agent: cannot read the marker token: %s\n" % exc)
            os._exit(1)  # the host could never pair this worker's output with its messages
    packages = os.environ.get("PYREPL3_PACKAGES")  # the session's package prefix (magics.py)
    cwd = os.environ.get("PYREPL3_CWD")  # the session's own cwd, inside its directory
    # The session's own variables, as JSON: never in the start environment itself, where the
    # dynamic linker of what starts the worker (bwrap, as root) would act on them.
    session_env = os.environ.get("PYREPL3_SESSION_ENV")
    for key in [k for k in os.environ if k.startswith("PYREPL3_")]:
        del os.environ[key]  # user code and its children must not see them
    if session_env:
        try:
            _apply_environ({"set": _decode(session_env)})
        except ValueError as exc:
            sys.stderr.write("pyrepl3 agent: the session's variables are unusable: %s\n" % exc)
    if cwd:
        _start_in(cwd)
    if packages:
        _setup_packages(packages)
    transactions = _start_supervision(signal_fd, (exec_fd, control_fd), reaper)  # now: the worker
    _agent = Agent(exec_fd, control_fd, signal_fd, session_id, marker)
    _agent._transactions = transactions
    _thread.start_new_thread(_agent.read_loop, ())
    _agent.serve_forever()


main()
