"""pyrepl3 worker agent, part 4 of 8 (see agent.py): the session's state as data. Source tracking of
the functions and classes cells define, namespace inspection, checkpoints (save) and restore,
and the JSON form of a result's value. Uses the names agent.py defines."""

def _track_cell_classes():
    """Makes `inspect.getsource` work on classes defined in cells, as it does on their
    functions. `inspect` finds a class's file through its module's `__file__`, which the
    session's `__main__` has not (its cells are `<cell-N>`, registered in `linecache`): the
    class statement is seen as it runs (`__build_class__`, whose body function knows its
    cell), and `inspect.getfile` answers with that cell for such a class."""
    global _cell_classes
    import weakref
    _cell_classes = weakref.WeakKeyDictionary()
    build_class = builtins.__build_class__

    def __build_class__(func, name, *bases, **kwargs):
        cls = build_class(func, name, *bases, **kwargs)
        filename = getattr(getattr(func, "__code__", None), "co_filename", "")
        if filename.startswith("<cell-") and isinstance(cls, type):
            if not _patch_inspect.done:
                _patch_inspect()
            try:
                _cell_classes[cls] = filename
            except TypeError:  # not weakly referenceable (a metaclass's choice)
                pass
        return cls

    builtins.__build_class__ = __build_class__


def _patch_inspect():
    import inspect
    getfile = inspect.getfile

    def cell_aware_getfile(obj):
        found = _cell_classes.get(obj) if isinstance(obj, type) else None
        return found if found is not None else getfile(obj)

    cell_aware_getfile.__doc__ = getfile.__doc__
    inspect.getfile = cell_aware_getfile
    _patch_inspect.done = True


_patch_inspect.done = False


def _guarded(compute, failed):
    """`compute()`, or `failed` if it raised: user code (a repr, a property) must not end
    the reader thread."""
    try:
        return compute()
    except BaseException:  # incl. SystemExit raised by user code
        return failed


def _guarded_text(compute):
    """`compute()`, or what it raised, as text."""
    try:
        return compute()
    except BaseException as exc:
        return "<repr failed: %s: %s>" % (type(exc).__name__, _clip(_safe_str(exc), 200))


def _type_name(value):
    kind = type(value)  # not value.__class__, which user code may make raise
    module = _guarded(lambda: str(kind.__module__), "?")
    name = _guarded(lambda: str(kind.__qualname__), "?")
    return name if module == "builtins" else "%s.%s" % (module, name)


def _is_module(value):
    """Whether `value` is a module, by its type (`isinstance` asks `value.__class__`, which
    user code may make raise)."""
    return issubclass(type(value), types.ModuleType)


def _session_source(value):
    """The source of a function or class defined in a cell, else None."""
    try:
        if issubclass(type(value), type):
            defined_here = _cell_classes is not None and value in _cell_classes
        elif type(value) is types.FunctionType:
            code = value.__code__
            defined_here = code.co_filename.startswith("<cell-")
        else:
            defined_here = False
        if not defined_here:
            return None
        import inspect
        if not _patch_inspect.done:
            _patch_inspect()
        return _clip(inspect.getsource(value), SOURCE_LIMIT)
    except Exception:
        return None


def _checkpoint(namespace):
    """The namespace saved: each user global on its own, pickled; functions and classes
    defined in cells by their source; modules by name. What cannot be saved is listed with
    the reason. Returns {"checkpoint": base64 of the compressed JSON, "saved", "skipped",
    "size"}."""
    import base64, pickle, zlib
    entries, saved, skipped = [], [], []
    items = [(k, v) for k, v in list(namespace.items()) if isinstance(k, str) and _user_global(k)]
    items.sort(key=lambda item: item[0])
    for name, value in items:
        try:
            entry = _checkpoint_entry(name, value, pickle, base64)
        except Exception as exc:  # whatever user code (a __reduce__, a property) raised
            skipped.append({"name": name, "reason": "%s: %s" % (
                type(exc).__name__, _clip(_safe_str(exc), 300))})
            continue
        entries.append(entry)
        saved.append(name)
    packages = _session_distributions()  # what the session installed (magics.py): listed
    document = _encode({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                        "python": "%d.%d" % sys.version_info[:2], "entries": entries,
                        "packages": packages})
    blob = zlib.compress(document.encode("utf-8"), 1)
    if len(blob) > CHECKPOINT_LIMIT:
        raise MemoryError("the checkpoint is %d bytes compressed, over the limit of %d"
                          % (len(blob), CHECKPOINT_LIMIT))
    report = {"checkpoint": base64.b64encode(blob).decode("ascii"), "saved": saved,
              "skipped": skipped, "size": len(blob), "packages": packages}
    if len(_encode(report)) > MAX_FRAME - 4096:  # the lists too must fit the frame
        raise MemoryError("the checkpoint and its report are over the %d-byte frame limit"
                          % MAX_FRAME)
    return report


def _checkpoint_entry(name, value, pickle, base64):
    """How one global is saved; raises what makes it impossible."""
    if not name.isidentifier():
        raise ValueError("not an identifier")
    if _is_module(value):
        return {"name": name, "kind": "module", "module": str(value.__name__)}
    if type(value) is types.FunctionType and (value.__closure__ or "<locals>" in value.__qualname__):
        raise TypeError("a nested function or closure: what it captured cannot be saved")
    source = _definition_source(value)
    if source is not None:
        code = getattr(value, "__code__", None)
        cell = _cell_classes.get(value) if _cell_classes is not None and code is None else None
        filename = code.co_filename if code is not None else (cell or "")
        line = code.co_firstlineno if code is not None else 0
        return {"name": name, "kind": "source", "source": source,
                "defines": str(value.__name__), "order": _cell_order(filename, line)}
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return {"name": name, "kind": "pickle", "data": base64.b64encode(data).decode("ascii")}


def _cell_order(filename, line):
    """Where a definition was made, to run definitions again in that order: its cell's
    number (`<cell-N>`; restored cells last) and line."""
    digits = filename[len("<cell-"):-1] if filename.startswith("<cell-") else ""
    return [int(digits) if digits.isdigit() else 1 << 30, line]


def _definition_source(value):
    """The source of a function or class defined in a cell when it is a `def` or `class`
    statement of its own (a lambda's line may do more than define it), else None."""
    source = _session_source(value)
    if source is None or not isinstance(getattr(value, "__name__", None), str):
        return None
    first = source.lstrip()
    if first.startswith(("def ", "async def ", "class ", "@")):
        return source
    return None


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored at all (corrupt, foreign, another Python)."""


def _restore(namespace, encoded, clear_existing):
    """Restores a checkpoint from `_checkpoint` into `namespace`: merged (its names replace
    those with the same name), or, with `clear_existing`, replacing every user global.
    Modules are imported, then definitions run, then values unpickled (an instance needs its
    class first). Returns {"restored", "failed"} (each failure with its reason)."""
    import base64, binascii, pickle, zlib
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.b64decode(encoded, validate=True), RESTORE_LIMIT)
        if inflate.unconsumed_tail or not inflate.eof:
            raise CheckpointError("not a pyrepl3 checkpoint (incomplete, or it inflates "
                                  "past %d bytes)" % RESTORE_LIMIT)
        document = _decode(raw.decode("utf-8"))
        del raw
    except (binascii.Error, zlib.error, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError("not a pyrepl3 checkpoint (%s)" % type(exc).__name__) from None
    if (not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT
            or not isinstance(document.get("entries"), list)):
        raise CheckpointError("not a pyrepl3 checkpoint")
    if document.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError("a checkpoint of format version %r; this worker reads %d"
                              % (document.get("version"), CHECKPOINT_VERSION))
    python = "%d.%d" % sys.version_info[:2]
    if document.get("python") != python:
        raise CheckpointError("a checkpoint of Python %s; this worker runs Python %s"
                              % (document.get("python"), python))
    entries = [e for e in document["entries"]
               if isinstance(e, dict) and isinstance(e.get("name"), str)
               and e["name"].isidentifier() and _user_global(e["name"])]
    if clear_existing:
        for name in [k for k in list(namespace) if isinstance(k, str) and _user_global(k)]:
            del namespace[name]
    restored, failed = [], []
    # Modules first; then definitions in the order they were made and values, again and
    # again while some fail and others succeed: a class may need its base, a function's
    # default a value, a value its class.
    def sort_key(e):
        order = e.get("order")
        if not (isinstance(order, list) and len(order) == 2 and all(type(n) is int for n in order)):
            order = [1 << 30, 0]
        return ({"module": 0, "source": 1, "pickle": 2}.get(e.get("kind"), 3), order)

    pending = sorted(entries, key=sort_key)
    while pending:
        failed = []
        progress = False
        for entry in pending:
            reason = _restore_entry(namespace, entry, pickle, base64)
            if reason is None:
                restored.append(entry["name"])
                progress = True
            else:
                failed.append((entry, reason))
        pending = [entry for entry, _ in failed]
        if not progress:
            break
    packages = [p for p in document.get("packages") or () if isinstance(p, str)]
    return {"restored": restored,
            "failed": [{"name": e["name"], "reason": reason} for e, reason in failed],
            "packages": packages, "packages_missing": _missing_distributions(packages)}


def _restore_entry(namespace, entry, pickle, base64):
    """Restores one entry; None, or why it failed."""
    name, kind = entry["name"], entry.get("kind")
    try:
        if kind == "module" and isinstance(entry.get("module"), str):
            import importlib
            namespace[name] = importlib.import_module(entry["module"])
        elif kind == "source" and isinstance(entry.get("source"), str):
            import linecache
            defines, source = entry.get("defines"), entry["source"]
            # A cell of its own, so that its definitions have a source again (and are
            # saved by their source by the next checkpoint).
            filename = "<cell-restored-%s>" % name
            linecache.cache[filename] = (len(source), None, source.splitlines(True),
                                         filename)
            exec(compile(source, filename, "exec"), namespace)
            if isinstance(defines, str) and defines != name and defines in namespace:
                namespace[name] = namespace[defines]
        elif kind == "pickle" and isinstance(entry.get("data"), str):
            namespace[name] = pickle.loads(base64.b64decode(entry["data"], validate=True))
        else:
            raise CheckpointError("an entry of unknown kind %.50r" % (kind,))
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, _clip(_safe_str(exc), 300))
    return None


def _user_global(name):
    """Whether `name` is one of the user's globals (not a dunder, not the history)."""
    if name.startswith("__") and name.endswith("__"):
        return False
    return name not in _HISTORY_NAMES and not (name[:1] == "_" and name[1:].isdigit())


def _plain_json(value):
    """`value` as `json.dumps` would give it (tuples as lists, dict keys of the types JSON
    allows as strings), when it is JSON data no bigger than VALUE_LIMIT; else None.
    Non-finite floats, other types and deeper nesting than 64 give None.

    The walk charges a lower bound of each node's JSON size, so a huge list is rejected
    after VALUE_LIMIT / 2 nodes instead of being serialised first."""
    budget = [VALUE_LIMIT]
    invalid = object()

    def key_of(k):
        kind = type(k)
        if kind is str:
            return k
        if k is True or k is False:
            return "true" if k else "false"
        if k is None:
            return "null"
        if kind is float:
            return float.__repr__(k) if math.isfinite(k) else invalid
        if kind is int:
            return int.__repr__(k)
        return invalid

    def plain(v, depth):
        kind = type(v)
        budget[0] -= len(v) + 2 if kind is str else 2
        if budget[0] < 0:
            return invalid
        if v is None or kind is bool or kind is str:
            return v
        if kind is int:
            return v if INT_RANGE[0] <= v <= INT_RANGE[1] else invalid
        if kind is float:
            return v if math.isfinite(v) else invalid
        if depth >= 64:
            return invalid
        if kind is list or kind is tuple:  # exact types: a subclass's methods are user code
            items = []
            for item in v:
                item = plain(item, depth + 1)
                if item is invalid:
                    return invalid
                items.append(item)
            return items
        if kind is dict:
            out = {}
            for k, item in v.items():
                k = key_of(k)
                if k is invalid:
                    return invalid
                budget[0] -= len(k) + 3
                item = plain(item, depth + 1)
                if item is invalid:
                    return invalid
                out[k] = item
            return out
        return invalid

    try:
        converted = plain(value, 0)
        if converted is not invalid and budget[0] >= 0 and len(_encode(converted)) <= VALUE_LIMIT:
            return converted
    except (ValueError, TypeError, RecursionError):
        pass
    return None


COMPLETION_LIMIT = 200   # matches in one answer at most
COMPLETION_SCAN = 100_000  # keys of a mapping looked at, at most (the reader thread holds the GIL)


def _completions(namespace, text):
    """How the end of `text` (what is before the REPL's cursor) could go on: a string key of
    a mapping after `name[` + quote, else names and attributes as `rlcompleter` finds them
    (which evaluates the dotted name before the last dot, as Python's own REPL does). Returns
    (the token the matches replace, sorted matches). Runs on the reader thread: anything user
    code does here (a property, __getattr__, keys()) is guarded."""
    import re
    key = re.search(r"([A-Za-z_][\w.]*)\[\s*(['\"])([^'\"\\]*)$", text)
    if key is not None:
        target = _dotted_value(namespace, key.group(1))
        quote, prefix = key.group(2), key.group(3)
        if not isinstance(target, (dict, type(os.environ), types.MappingProxyType)):
            return quote + prefix, []  # keys() of anything else may do anything (a database)
        import heapq, itertools
        keys = _guarded(lambda: list(itertools.islice(target.keys(), COMPLETION_SCAN)), [])
        found = {quote + k + quote + "]" for k in keys
                 if isinstance(k, str) and k.startswith(prefix)}
        return quote + prefix, heapq.nsmallest(COMPLETION_LIMIT, found)
    token = re.search(r"[A-Za-z_][\w.]*$", text)
    if token is None:
        return "", []
    token = token.group(0)
    completer = _rl_completer(namespace)
    if completer is None:
        return token, []
    matches = set()
    for state in range(COMPLETION_LIMIT * 5):  # rlcompleter repeats nothing: this is a bound
        found = _guarded(lambda: completer.complete(token, state), None)
        if not isinstance(found, str):
            break
        matches.add(found)
    return token, sorted(matches)[:COMPLETION_LIMIT]  # at most 5 * COMPLETION_LIMIT sorted


def _dotted_value(namespace, dotted):
    """The value of `a.b.c` in the namespace (or builtins), by lookups only; None if any
    step fails."""
    first, *rest = dotted.split(".")
    value = namespace.get(first, getattr(builtins, first, None))
    for name in rest:
        value = _guarded(lambda: getattr(value, name), None)
    return value


def _rl_completer(namespace):
    """An rlcompleter over the namespace, imported without readline: importing it would set
    up a terminal library in a process that has none (and may write escape codes to stdout)."""
    saved = sys.modules.get("readline", _rl_completer)
    try:
        if saved is _rl_completer:
            sys.modules["readline"] = None  # makes `import readline` fail inside rlcompleter
        import rlcompleter
        return rlcompleter.Completer(namespace)
    except Exception:
        return None
    finally:
        if saved is _rl_completer and sys.modules.get("readline", 0) is None:
            del sys.modules["readline"]
