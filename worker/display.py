"""pyrepl3 worker agent, part 6 of 8: rich outputs (see agent.py). Owns the MIME bundles of
values as IPython makes them (the `_repr_*_` protocol), `display()` / `update_display()` in
builtins, the `display` frames they send, and matplotlib's figures as PNG: a backend of the
agent's own, chosen when matplotlib is imported unless the user chose one, whose `show()`
displays every open figure, as does the end of every execution. No IPython needed, nothing imported
until a value asks for it.
"""

# A display whose JSON is larger is replaced by a text saying so: it must fit one frame with
# room to spare (the host has its own, lower, configurable limit: `max_display_bytes`).
DISPLAY_LIMIT = MAX_FRAME - (64 << 10)
# (MIME type, method) in IPython's order; the value of the first four is base64 when bytes.
_REPR_METHODS = (
    ("image/png", "_repr_png_"), ("image/jpeg", "_repr_jpeg_"),
    ("application/pdf", "_repr_pdf_"), ("image/svg+xml", "_repr_svg_"),
    ("text/html", "_repr_html_"), ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"), ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)
_BINARY_TYPES = frozenset(("image/png", "image/jpeg", "application/pdf", "image/gif"))
# Values whose result needs no bundle beyond their repr: not even a method lookup.
_PLAIN_TYPES = frozenset((int, float, complex, bool, str, bytes, bytearray, list, tuple, dict,
                          set, frozenset, range, type, types.FunctionType,
                          types.BuiltinFunctionType, types.ModuleType))
_INLINE_BACKEND = "_pyrepl3_inline"  # module://_pyrepl3_inline, matplotlib's name for it
_inline_backend_loaded = False       # figures are shown (and closed) only once it is in use


def _repr_method(obj, name):
    """`obj`'s `_repr_*_` method, looked up as IPython does: not on a class (its methods are
    unbound), nor on an object that claims every attribute (a mock, a proxy)."""
    if isinstance(obj, type):
        return None
    try:
        method = getattr(obj, name, None)
        if method is None or not callable(method):
            return None
        if getattr(obj, "_ipython_canary_method_should_not_exist_", None) is not None:
            return None
    except Exception:
        return None
    return method


def _format_failed(obj, what, exc):
    """As IPython's FormatterWarning: the format is left out, the rest is shown."""
    try:
        sys.stderr.write("pyrepl3: %s of %s object failed: %s: %s\n"
                         % (what, type(obj).__name__, type(exc).__name__, _safe_str(exc)))
    except Exception:
        pass


def _mime_value(mime, value):
    """A bundle entry as JSON can carry it: bytes of a binary type as base64 text (as
    Jupyter's messages carry them), other bytes as UTF-8 text; JSON types as they are."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if mime in _BINARY_TYPES or not mime.startswith("text/"):
            import base64
            return base64.b64encode(bytes(value)).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    if mime == "application/json" or mime.endswith("+json"):
        return value  # a dict or list, checked when the frame is encoded
    return value if isinstance(value, str) else _safe_str(value)


def _is_figure(obj):
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(obj, getattr(figure, "Figure", ()))


def _figure_png(fig):
    """The figure as IPython's inline backend renders it (PNG, tight bounding box)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _mime_bundle(obj, include=None, exclude=None, text=None):
    """(data, metadata) of `obj`: `text/plain` (its repr, or `text` when the caller has it)
    always, plus every format its `_repr_mimebundle_` and `_repr_*_` methods give (a method
    that fails or returns None, or a value JSON cannot carry, is left out); a matplotlib
    figure as `image/png`."""
    data, metadata = {}, {}
    method = _repr_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            got = method(include=include, exclude=exclude)
        except Exception as exc:
            _format_failed(obj, "_repr_mimebundle_", exc)
            got = None
        if isinstance(got, tuple) and len(got) == 2:
            got, more = got
            if isinstance(more, dict):
                metadata.update(more)
        if got is not None and not isinstance(got, dict):
            _format_failed(obj, "_repr_mimebundle_", TypeError(
                "returned %s, not a dict" % type(got).__name__))
        elif got is not None:
            for mime, value in got.items():
                if isinstance(mime, str) and value is not None:
                    data[mime] = _mime_value(mime, value)
    for mime, name in _REPR_METHODS:
        if mime in data:
            continue
        method = _repr_method(obj, name)
        if method is None:
            continue
        try:
            got = method()
        except NotImplementedError:
            continue
        except Exception as exc:
            _format_failed(obj, name, exc)
            continue
        if isinstance(got, tuple) and len(got) == 2:
            got, more = got
            if more is not None:
                metadata[mime] = more
        if got is None:
            continue
        if mime.startswith("text/") and not isinstance(got, str):
            _format_failed(obj, name, TypeError("returned %s, not str" % type(got).__name__))
            continue
        data[mime] = _mime_value(mime, got)
    if "image/png" not in data and _is_figure(obj):
        try:
            data["image/png"] = _mime_value("image/png", _figure_png(obj))
        except Exception as exc:
            _format_failed(obj, "rendering", exc)
    if "text/plain" not in data and text is None:
        try:
            text = _clip(repr(obj))
        except Exception as exc:  # shown anyway, as IPython goes on after a formatter error
            _format_failed(obj, "__repr__", exc)
            text = "<%s object>" % type(obj).__name__
    if "text/plain" not in data:
        data["text/plain"] = text
    if include is not None:
        data = {mime: value for mime, value in data.items() if mime in include}
    if exclude is not None:
        data = {mime: value for mime, value in data.items() if mime not in exclude}
    return _json_safe(obj, data, metadata)


def _json_safe(obj, data, metadata):
    """The bundle without what the channel's JSON cannot carry (NaN, a set, an object in a
    `_repr_json_`): that format is left out and said, as IPython does with a failing one."""
    for mime in list(data):
        try:
            _encode(data[mime])
        except (TypeError, ValueError) as exc:
            _format_failed(obj, "the %s format" % mime, exc)
            del data[mime]
    try:
        _encode(metadata)
    except (TypeError, ValueError) as exc:
        _format_failed(obj, "the metadata", exc)
        metadata = {}
    return data, metadata


def _bundle_bytes(data, metadata):
    """Bytes of the bundle in a frame (UTF-8: text may hold any character)."""
    return (len(_encode(data).encode("utf-8", "replace"))
            + len(_encode(metadata).encode("utf-8", "replace")))


def _result_bundle(value, shown, text=None):
    """The bundle a result carries: None when the value has nothing beyond its repr (most
    values: no lookup at all for builtin types), when it is a figure already displayed, or
    when it is too large for a frame (the result keeps its repr; said on stderr)."""
    if type(value) in _PLAIN_TYPES or id(value) in shown:
        return None
    data, metadata = _mime_bundle(value, text=text)
    if len(data) == 1 and "text/plain" in data and not metadata:
        return None
    size = _bundle_bytes(data, metadata)
    if size > DISPLAY_LIMIT:
        sys.stderr.write("pyrepl3: the rich formats of the result (%d bytes) were left out: the "
                         "limit is %d bytes\n" % (size, DISPLAY_LIMIT))
        return None
    return data, metadata


def _send_display(data, metadata, display_id=None, update=False):
    """One `display` frame, ordered after the output printed before it. With no execution
    running (a thread between executions) or in a forked child, the text is printed instead:
    there is no execution to attach it to, or no channel of its own."""
    agent = _agent
    execution_id = agent._running_id if agent is not None else None
    text = "%s\n" % data.get("text/plain", "")
    if execution_id is None or os.getpid() != agent._pid:
        sys.stdout.write(text)
        return
    msg = {"type": "display", "execution_id": execution_id, "data": data,
           "metadata": metadata, "display_id": display_id, "update": update}
    size = _bundle_bytes(data, metadata)
    if size > DISPLAY_LIMIT:
        msg["data"] = {"text/plain": "[pyrepl3: a display of %d bytes was left out: one "
                                     "message carries at most %d bytes]" % (size, DISPLAY_LIMIT)}
        msg["metadata"] = {}
    if not agent.send(msg, ordered=True):
        sys.stdout.write(text)  # its execution ended meanwhile: shown with the next one


class DisplayHandle:
    """What `display(..., display_id=...)` returns, as IPython's: `update()` replaces the
    display in place (a client that shows it updates it), `display()` shows it again."""

    def __init__(self, display_id=None):
        if display_id is None:
            import uuid
            display_id = uuid.uuid4().hex
        self.display_id = display_id

    def __repr__(self):
        return "<DisplayHandle display_id=%s>" % self.display_id

    def display(self, obj, **kwargs):
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        update_display(obj, display_id=self.display_id, **kwargs)


def display(*objs, include=None, exclude=None, metadata=None, transient=None,
            display_id=None, raw=False, clear=False, update=False, **kwargs):
    """Shows each object as a rich output (IPython's `display`): a `display` event with its
    MIME bundle. `raw=True`: the objects are bundles already. `display_id=True` makes an id;
    with an id, a handle is returned. `clear` and `transient` are accepted and ignored."""
    if display_id is True:
        display_id = DisplayHandle().display_id
    elif display_id is not None:
        display_id = str(display_id)
    for obj in objs:
        if raw:
            data = {str(k): _mime_value(str(k), v) for k, v in dict(obj).items()}
            data.setdefault("text/plain", "")
            data, more = _json_safe(obj, data, {})
        else:
            data, more = _mime_bundle(obj, include, exclude)
        if metadata:
            more = _json_safe(obj, {}, dict(more, **metadata))[1]
        _send_display(data, more, display_id, update)
    if display_id is not None and not update:
        return DisplayHandle(display_id)
    return None


def update_display(obj, *, display_id, **kwargs):
    """Replaces the display shown with `display_id` (IPython's `update_display`)."""
    kwargs.pop("update", None)
    display(obj, display_id=display_id, update=True, **kwargs)


# ---- matplotlib ------------------------------------------------------------------------
def _show_figures(*args, **kwargs):
    """The inline backend's `show()`: every open figure as an `image/png` display, then
    closed, as IPython's inline backend does. Returns the ids of the figures shown."""
    shown = set()
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is None:
        return shown
    for manager in helpers.Gcf.get_all_fig_managers():
        figure = manager.canvas.figure
        try:
            png = _figure_png(figure)
        except Exception as exc:
            _format_failed(figure, "rendering", exc)
        else:
            _send_display({"image/png": _mime_value("image/png", png),
                           "text/plain": _clip(repr(figure))}, {})
            shown.add(id(figure))
        helpers.Gcf.destroy(manager)
    return shown


def _inline_backend_in_use():
    """Whether pyplot draws with the inline backend now (the user may have switched away)."""
    if not _inline_backend_loaded:
        return False
    matplotlib = sys.modules.get("matplotlib")
    try:
        return matplotlib.rcParams._get_backend_or_none() == "module://" + _INLINE_BACKEND
    except Exception:
        return False


def _figures_at_the_end(render=True):
    """At the end of an execution: the figures left open, shown and closed (when the inline
    backend is in use: a backend the user chose keeps its figures). `render=False` (after a
    cancel or timeout): only closed, as rendering could take longer than the grace."""
    if not _inline_backend_in_use():
        return ()
    if render:
        return _show_figures()
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is not None:
        helpers.Gcf.destroy_all()
    return ()


def _open_figure(value):
    """Whether `value` is a figure pyplot holds open under the inline backend (it will be
    shown when the execution ends)."""
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is None or not _is_figure(value) or not _inline_backend_in_use():
        return False
    try:
        return any(m.canvas.figure is value for m in helpers.Gcf.get_all_fig_managers())
    except Exception:
        return False


class _AfterImport:
    """An entry of sys.meta_path that costs one dict lookup per new import: after matplotlib
    is imported it makes the agent's backend matplotlib's default (unless the user chose one
    with MPLBACKEND, a matplotlibrc or `matplotlib.use`), and provides that backend's
    module; after IPython's display functions are, it puts the agent's `display` in their
    place (without an IPython shell they would print the object's repr)."""

    def find_spec(self, name, path=None, target=None):
        if name == _INLINE_BACKEND:
            import importlib.util
            return importlib.util.spec_from_loader(name, self)
        hook = _HOOKS.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:  # the finder that would have found it, and its spec
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        run = getattr(loader, "exec_module", None)
        if run is None:
            return spec

        def exec_module(module):
            run(module)
            hook(module)
        try:
            loader.exec_module = exec_module  # this spec's loader only
        except AttributeError:
            pass
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        """The inline backend: Agg's canvas, and a `show()` that displays."""
        global _inline_backend_loaded
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.backend_bases import FigureManagerBase
        module.FigureCanvas = FigureCanvasAgg
        module.FigureManager = FigureManagerBase

        def show(*args, **kwargs):
            _show_figures()
        module.show = show
        _inline_backend_loaded = True


def _matplotlib_imported(matplotlib):
    if os.environ.get("MPLBACKEND"):
        return  # the user's choice
    try:
        chosen = matplotlib.rcParams._get_backend_or_none()  # None: "auto", nobody chose
    except AttributeError:  # matplotlib before 3.6
        try:
            from matplotlib import rcsetup
            auto = dict.__getitem__(matplotlib.rcParams, "backend")
            chosen = None if auto is rcsetup._auto_backend_sentinel else auto
        except Exception:
            return  # leave it as it is
    except Exception:
        return
    if chosen is None:
        try:
            matplotlib.rcParams["backend"] = "module://" + _INLINE_BACKEND
        except Exception as exc:
            _format_failed(matplotlib, "choosing the inline backend", exc)


def _publish_display_data(data, metadata=None, source=None, *, transient=None, **kwargs):
    """IPython's `publish_display_data`: a bundle as it is, as a display."""
    display(data, raw=True, metadata=metadata)


def _ipython_display_imported(module):
    # Only names the module defines: IPython.core.display answers the old ones through a
    # module __getattr__ that warns of their deprecation.
    for name, ours in (("display", display), ("update_display", update_display),
                       ("publish_display_data", _publish_display_data)):
        if name in vars(module):
            setattr(module, name, ours)


_HOOKS = {"matplotlib": _matplotlib_imported,
          "IPython.core.display_functions": _ipython_display_imported,  # IPython >= 7.23
          "IPython.core.display": _ipython_display_imported}


def _install_display():
    """`display` and `update_display` in builtins (as IPython makes them available without an
    import), and the hooks on matplotlib's and IPython's imports."""
    builtins.display = display
    builtins.update_display = update_display
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
