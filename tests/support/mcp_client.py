"""A real MCP client (the official `mcp` package) driving `pyrepl3 mcp` over stdio, as an
agent would. Run by tests/mcp_stdio.rs: argv[1] is the pyrepl3 binary, argv[2] the Python
its sessions run with. Prints the transcript; exits non-zero on the first wrong answer."""

import asyncio
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_checks import (Agent, both_transports_checks, check,
                        input_without_elicitation_is_end_of_file, server_is_described,
                        text_of)


async def main(binary, python):
    params = StdioServerParameters(command=binary, args=["mcp", "--python", python])
    agent = Agent()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, elicitation_callback=agent.elicit) as session:
            server_is_described(await session.initialize())
            agent.session = session
            await both_transports_checks(agent)
            # Long output: bounded, and the error after it is never cut off.
            r = await agent.call("run_python",
                                 code="print('a' * 300000)\nraise ValueError('the real error')")
            check(r.is_error and "the real error" in text_of(r)
                  and "more bytes of output left out" in text_of(r), text_of(r)[-300:])
            check(len(text_of(r)) < 110000, len(text_of(r)))
            # A huge result is cut too, saying so.
            r = await agent.call("run_python", code="'b' * 500000")
            check(not r.is_error and text_of(r).startswith("Out: 'bbb")
                  and "more bytes left out" in text_of(r) and len(text_of(r)) < 110000,
                  text_of(r)[-200:])
            # A call the client gives up on (notifications/cancelled) stops the code.
            try:
                await session.call_tool(
                    "run_python", {"code": "import time\ntime.sleep(60)\nopen('ran', 'w')"},
                    read_timeout_seconds=2.0)
                check(False, "the call should have timed out on the client's side")
            except Exception as exc:
                print("< the client gave up:", type(exc).__name__)
            r = await agent.call("run_python", code="import os\nos.path.exists('ran')")
            check(text_of(r) == "Out: False\n", "a cancelled run stopped: " + text_of(r))
    # A client without elicitation: input() gets end of file, and the answer says why.
    plain = Agent()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            plain.session = session
            await input_without_elicitation_is_end_of_file(plain)
    print("MCP OK")


asyncio.run(main(sys.argv[1], sys.argv[2]))
