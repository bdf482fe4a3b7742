"""A real MCP client (the official `mcp` package) driving `pyrepl3 mcp` over stdio, as an
agent would. Run by tests/mcp_stdio.rs: argv[1] is the pyrepl3 binary, argv[2] the Python
its sessions run with. Prints the transcript; exits non-zero on the first wrong answer."""

import asyncio
import base64
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def check(condition, what):
    if not condition:
        print("FAILED:", what)
        sys.exit(1)


def text_of(result):
    return "".join(c.text for c in result.content if c.type == "text")


async def main(binary, python):
    params = StdioServerParameters(command=binary, args=["mcp", "--python", python])
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()

            async def call(tool, **arguments):
                result = await session.call_tool(tool, arguments)
                print(">", tool, json.dumps(arguments)[:120])
                print("<", "error" if result.is_error else "ok",
                      [c.type for c in result.content], repr(text_of(result)[:200]))
                return result

            tools = {t.name: t for t in (await session.list_tools()).tools}
            check(set(tools) >= {"run_python", "list_sessions", "reset_session",
                                 "close_session", "write_file", "read_file"}, tools)
            check("code" in tools["run_python"].input_schema["properties"], "schema")
            check(len(tools["run_python"].description) > 50, "a description an LLM can use")

            r = await call("run_python", code="x = 21\nprint('hi')\nx * 2")
            check(not r.is_error and text_of(r) == "hi\nOut: 42\n", text_of(r))
            r = await call("run_python", code="x + 1")
            check(text_of(r) == "Out: 22\n", "variables persist")
            r = await call("run_python", code="1 / 0")
            check(r.is_error and "ZeroDivisionError" in text_of(r), "an error is an error")
            r = await call("run_python", code="import matplotlib.pyplot as plt\n"
                                               "plt.plot([1, 3, 2])\nplt.show()\nprint('plotted')")
            images = [c for c in r.content if c.type == "image"]
            check(len(images) == 1 and images[0].mime_type == "image/png", r.content)
            check(base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n"), "a PNG")
            r = await call("write_file", path="data/in.csv", content="a,b\n1,2\n")
            check(not r.is_error, text_of(r))
            r = await call("run_python", code="open('data/in.csv').read().split()[1]")
            check(text_of(r) == "Out: '1,2'\n", text_of(r))
            r = await call("run_python", code="open('out.txt', 'w').write('made here')")
            r = await call("read_file", path="out.txt")
            check(text_of(r) == "made here", text_of(r))
            r = await call("read_file", path="../etc/passwd")
            check(r.is_error, "a path out of the session is refused")
            r = await call("run_python", code="y = 1", session="other")
            r = await call("list_sessions")
            check(json.loads(text_of(r)) == ["default", "other"], text_of(r))
            r = await call("reset_session", session="default")
            r = await call("run_python", code="'x' in globals()")
            check(text_of(r) == "Out: False\n", "reset empties the namespace")
            r = await call("close_session", session="other")
            r = await call("list_sessions")
            check(json.loads(text_of(r)) == ["default"], text_of(r))
            # Long output: bounded, and the error after it is never cut off.
            r = await call("run_python",
                           code="print('a' * 300000)\nraise ValueError('the real error')")
            check(r.is_error and "the real error" in text_of(r)
                  and "more bytes of output left out" in text_of(r), text_of(r)[-300:])
            check(len(text_of(r)) < 110000, len(text_of(r)))
            # A call the client gives up on (notifications/cancelled) stops the code.
            try:
                await session.call_tool(
                    "run_python", {"code": "import time\ntime.sleep(60)\nopen('ran', 'w')"},
                    read_timeout_seconds=2.0)
                check(False, "the call should have timed out on the client's side")
            except Exception as exc:
                print("< the client gave up:", type(exc).__name__)
            r = await call("run_python", code="import os\nos.path.exists('ran')")
            check(text_of(r) == "Out: False\n", "a cancelled run stopped: " + text_of(r))
            r = await call("run_python", code="input()")
            check(r.is_error and "EOFError" in text_of(r), "input() gets end of file")
    print("MCP OK")


asyncio.run(main(sys.argv[1], sys.argv[2]))
