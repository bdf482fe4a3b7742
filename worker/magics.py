"""pyrepl3 worker agent, part 7 of 8: IPython's shell lines and `%pip` in cells, and the
session's own environment and package directory (docs/api.md, "Per-session environment" and
"Packages per session"). This part owns:

- the transformation of `!command`, `%magic ...` and `%%cell-magic` lines, as Jupyter users
  and code generators write them, into calls of `__pyrepl3_magic__` (put in builtins). Only
  a cell that does not compile as Python is transformed (the agent's `_compile` calls
  `_magics_transform` on a SyntaxError), so valid Python is never altered and costs nothing;
- running them: `!cmd` with `/bin/sh -c` in the session's cwd, its own process group, its
  output streamed through `sys.stdout`/`sys.stderr` (so the agent's output ordering holds),
  a cancel kills the group; `%pip ...` is `sys.executable -m pip ...` run so;
- the session's package prefix (`PYREPL3_PACKAGES`, read by main.py): its site-packages on
  `sys.path`, `PIP_PREFIX`, `PYTHONPATH` and `PATH` for child processes, and the list of
  what is installed there (for checkpoints);
- the `environ` internal call: the session's variables and cwd applied to the live worker.
Standard library only; nothing here waits on a timer or polls.
"""


class UsageError(Exception):
    """A %magic this agent does not have, or a magic used wrongly (as IPython's)."""


_MAGIC_CALL = "__pyrepl3_magic__"
_OUTPUT_CHUNK = 64 << 10            # bytes read from a shell command's pipe at once
_DISTRIBUTIONS_LIMIT = 10000        # distributions listed in a checkpoint, at most
_packages_dirs = []                 # the session's site-packages directories, if it has any


# ---- the transformation -------------------------------------------------------------------
def _magics_transform(source):
    """`source` with each `!cmd` / `%magic` line at a statement start (any indentation) made
    a call, line for line (so line numbers stay), or None when it has no such line. A first
    line `%%name` makes the whole cell one call. Lines inside brackets, strings and after a
    backslash continuation are left alone."""
    lines = source.splitlines(True)
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):  # blank lines before
        head = lines[first].strip()[2:]
        body = "".join(lines[first + 1:])
        call = "%s(%r, %r, %r)" % (_MAGIC_CALL, "%%", head, body)
        _install_magic_call()
        return "\n" * first + call + "\n" * (len(lines) - first - 1)
    out, changed = [], False
    depth, quote, continued = 0, None, False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if depth == 0 and quote is None and not continued and stripped[:1] in ("!", "%"):
            indent = line[:len(line) - len(stripped)]
            text, extra = stripped.rstrip("\r\n"), 0
            while text.endswith("\\") and i + extra + 1 < len(lines):  # a continued command
                extra += 1
                text = text[:-1] + " " + lines[i + extra].strip()
            if text.startswith("!"):
                kind, text = "!", text[2:] if text.startswith("!!") else text[1:]
            else:
                kind, text = "%", text[1:]
            out.append("%s%s(%r, %r)" % (indent, _MAGIC_CALL, kind, text))
            out.extend("\n" for _ in range(extra))  # line numbers stay
            last = lines[i + extra]
            out.append(last[len(last.rstrip("\r\n")):])  # as it ended: codeop cares
            i += extra + 1
            changed = True
            continue
        depth, quote, continued = _scan_line(line, depth, quote)
        out.append(line)
        i += 1
    if not changed:
        return None
    _install_magic_call()
    return "".join(out)


def _scan_line(line, depth, quote):
    """The lexical state after `line`: bracket depth, the open string's quote (None when
    outside one), and whether the line continues on the next (a trailing backslash)."""
    i, n = 0, len(line)
    commented = False
    while i < n:
        c = line[i]
        if quote is not None:
            if c == "\\":
                i += 2
                continue
            if line.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
            i += 1
            continue
        if c == "#":
            commented = True  # a backslash ending a comment continues nothing
            break
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c in "\"'":
            quote = line[i:i + 3] if line[i:i + 3] in ('"""', "'''") else c
            i += len(quote)
            continue
        i += 1
    body = line.rstrip("\r\n")
    continued = not commented and body.endswith("\\") and (quote is None or len(quote) == 1)
    if quote is not None and len(quote) == 1 and not continued:
        quote = None  # an unterminated string: Python says so; the next line starts afresh
    return depth, quote, continued


def _magics_completeness(compiler, source):
    """`Agent._completeness` for a source that does not compile: with its magic lines made
    calls, is it complete, incomplete (a block still open) or invalid?"""
    transformed = _magics_transform(source)
    if transformed is None:
        return "invalid"
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compiler(transformed, "<input>", "single")
    except Exception:  # SyntaxError and friends, RecursionError: as the plain check
        return "invalid"
    return "incomplete" if code is None else "complete"


def _install_magic_call():
    if getattr(builtins, _MAGIC_CALL, None) is not _run_magic:
        setattr(builtins, _MAGIC_CALL, _run_magic)


# ---- running them -------------------------------------------------------------------------
def _run_magic(kind, text, body=None):
    """What a transformed line calls. Returns None (so a magic as a cell's last line is no
    result)."""
    if kind == "!":
        _shell(["/bin/sh", "-c", text])
        return None
    name, _, args = text.strip().partition(" ")
    name = name.strip()
    if kind == "%%":
        if name in ("sh", "bash") and not args.strip():
            shell = "/bin/bash" if name == "bash" and os.path.exists("/bin/bash") else "/bin/sh"
            _shell([shell, "-c", body or ""])
            return None
        raise UsageError("Cell magic `%%%%%s` not found (this session has %%%%sh and %%%%bash)"
                         % name)
    if name == "pip":
        import shlex
        _shell(["/bin/sh", "-c", "%s -m pip %s" % (shlex.quote(sys.executable), args)])
        return None
    if name == "cd":
        target = os.path.expanduser(args.strip() or "~")
        os.chdir(target)
        print(os.getcwd())
        return None
    if name == "pwd":
        return os.getcwd()
    if name == "matplotlib":
        # Notebook code starts with `%matplotlib inline`: figures are shown inline here
        # already (docs/api.md, "Rich outputs"); another backend cannot be shown.
        if args.strip() in ("", "inline"):
            return None
        raise UsageError("%%matplotlib %s: this session shows figures inline only (plt.show() "
                         "sends them as images)" % args.strip())
    raise UsageError("Line magic function `%%%s` not found (this session has %%pip, %%cd, "
                     "%%pwd, %%matplotlib inline; `!command` runs a shell command)" % name)


def _shell(argv):
    """Runs `argv` in the cwd in a process group of its own, its output written to
    sys.stdout / sys.stderr as it comes; `_exit_code` is its status (IPython's name). A
    KeyboardInterrupt (a cancel) kills the group and goes on up."""
    import subprocess, selectors, codecs, signal
    kwargs = ({"process_group": 0} if sys.version_info >= (3, 11)
              else {"start_new_session": True})
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)
    try:
        with selectors.DefaultSelector() as selector:
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                selector.register(pipe, selectors.EVENT_READ, (name, decoder))
            while selector.get_map():
                for key, _ in selector.select():  # untimed: woken by output or end of file
                    name, decoder = key.data
                    data = os.read(key.fd, _OUTPUT_CHUNK)
                    if not data:
                        selector.unregister(key.fileobj)
                    text = decoder.decode(data, final=not data)
                    if text:
                        getattr(sys, name).write(text)
        status = proc.wait()  # untimed: both pipes ended, the command is ending
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass  # already gone
        proc.wait()  # untimed: SIGKILL cannot be ignored
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    _agent._namespace["_exit_code"] = status
    _packages_changed()
    return status


def _packages_changed():
    """After a shell command (it may have been pip): the import system sees new files at once
    and the package directory's new .pth files are read."""
    import importlib
    importlib.invalidate_caches()
    if _packages_dirs:
        import site
        for directory in _packages_dirs:
            site.addsitedir(directory)  # already on sys.path: only its .pth files are read


# ---- the session's packages and environment ------------------------------------------------
def _setup_packages(prefix):
    """The session's package prefix: its site-packages made (so the import system caches a
    real directory) and put on sys.path before the interpreter's, `PIP_PREFIX` (pip in a
    child process installs there), `PYTHONPATH` (child pythons find it) and its scripts on
    `PATH`. The directories are where `pip install --prefix` puts them for this interpreter
    (sysconfig's preferred prefix scheme: Debian's python uses `local/.../dist-packages`)."""
    global _packages_dirs
    try:
        import site, sysconfig
        get_scheme = getattr(sysconfig, "get_preferred_scheme", None)
        scheme = get_scheme("prefix") if get_scheme else "posix_prefix"
        paths = sysconfig.get_paths(scheme, vars={"base": prefix, "platbase": prefix})
        dirs = []
        for key in ("purelib", "platlib"):
            if paths[key] not in dirs:
                dirs.append(paths[key])
        for directory in dirs:
            os.makedirs(directory, exist_ok=True)
    except Exception as exc:  # a read-only or full disk: the session works without it
        sys.stderr.write("pyrepl3 agent: no package directory (%s)\n" % exc)
        return
    base = set(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    where = next((i for i, p in enumerate(sys.path) if p in base), len(sys.path))
    sys.path[where:where] = dirs
    for directory in dirs:
        site.addsitedir(directory)
    _packages_dirs = dirs
    os.environ["PIP_PREFIX"] = prefix
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(dirs + ([old] if old else []))
    scripts = paths.get("scripts")
    if scripts:
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", os.defpath)


def _session_distributions():
    """`name==version` of each distribution installed in the session's package directory,
    sorted (at most _DISTRIBUTIONS_LIMIT)."""
    if not _packages_dirs:
        return []
    from importlib import metadata
    found = set()
    for dist in metadata.distributions(path=_packages_dirs):
        try:
            name, version = dist.metadata["Name"], dist.version
        except Exception:  # a broken dist-info: not worth failing a checkpoint for
            continue
        if name:
            found.add("%s==%s" % (name, version))
        if len(found) >= _DISTRIBUTIONS_LIMIT:
            break
    return sorted(found)


def _missing_distributions(wanted):
    """Of `wanted` (`name==version`), those not installed at that version here."""
    from importlib import metadata
    missing = []
    for spec in wanted[:_DISTRIBUTIONS_LIMIT]:
        name, _, version = str(spec).partition("==")
        try:
            if metadata.version(name) == version:
                continue
        except Exception:  # not installed, or unreadable
            pass
        missing.append(spec)
    return missing


def _apply_environ(call):
    """The `environ` internal call: the session's variables set in os.environ (children
    inherit them) and its cwd made the working directory. Returns {"cwd": ...}."""
    values = call.get("set") or {}
    if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        raise ValueError("environ: `set` must map names to strings")
    for name, value in values.items():
        os.environ[name] = value
    cwd = call.get("cwd")
    if isinstance(cwd, str):
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
        os.environ["PWD"] = os.getcwd()  # as a shell's cd keeps it, for tools that read it
    return {"cwd": os.getcwd()}


def _start_in(cwd):
    """At start: the session's cwd (`PYREPL3_CWD`), made if it went missing meanwhile."""
    try:
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
        os.environ["PWD"] = os.getcwd()  # as a shell's cd keeps it, for tools that read it
    except OSError as exc:
        sys.stderr.write("pyrepl3 agent: cannot work in %s (%s); working in %s\n"
                         % (cwd, exc, os.getcwd()))
