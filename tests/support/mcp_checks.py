"""Checks of the pyrepl3 MCP tools that both transports share (stdio: mcp_client.py, streamable
HTTP: mcp_http_client.py), each driving a connected `mcp.ClientSession` of the official `mcp`
package as an agent would. Every call and its answer is printed (the transcript); the first
wrong answer exits non-zero."""

import asyncio
import base64
import json
import sys

from mcp import types

TOOLS = {"run_python", "create_session", "list_sessions", "reset_session", "close_session",
         "cancel", "write_file", "read_file", "create_checkpoint", "list_checkpoints",
         "restore_checkpoint"}


def check(condition, what):
    if not condition:
        print("FAILED:", what, flush=True)
        sys.exit(1)


def server_is_described(init):
    """The initialize answer names pyrepl3 and tells the agent how to use it."""
    print("< serverInfo:", init.server_info.name, init.server_info.version, flush=True)
    check(init.server_info.name == "pyrepl3", init.server_info)
    check("run_python" in (init.instructions or "") and "reset_session" in init.instructions,
          init.instructions)


def text_of(result):
    return "".join(c.text for c in result.content if c.type == "text")


class Agent:
    """A connected session with a transcript, and what its callbacks saw: progress messages
    and the elicitations it was asked (answered with `reply`: a line, None to decline, or
    HOLD to never answer, as a user who walked away; `withdrawn` counts those the server
    withdrew, which cancels the callback)."""

    HOLD = object()

    def __init__(self):
        self.session = None
        self.progress = []
        self.asked = []
        self.reply = None
        self.withdrawn = 0

    async def on_progress(self, progress, total, message):
        print("  ~ progress", progress, repr(message), flush=True)
        self.progress.append(message or "")

    async def elicit(self, context, params):
        # What the agent had been told of the run by the time it is asked.
        self.asked.append((params.message, list(self.progress)))
        if self.reply is Agent.HOLD:
            print("  ? elicitation", repr(params.message), "-> (no answer)", flush=True)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                print("  ! elicitation withdrawn by the server", flush=True)
                self.withdrawn += 1
                raise
        print("  ? elicitation", repr(params.message), "->", repr(self.reply), flush=True)
        if self.reply is None:
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content={"line": self.reply})

    async def call(self, tool, progress=False, **arguments):
        print(">", tool, json.dumps(arguments)[:160], flush=True)
        result = await self.session.call_tool(
            tool, arguments, progress_callback=self.on_progress if progress else None)
        print("<", "error" if result.is_error else "ok", [c.type for c in result.content],
              repr(text_of(result)[:240]), flush=True)
        return result


async def tools_are_listed(agent):
    tools = {t.name: t for t in (await agent.session.list_tools()).tools}
    print("> tools/list\n<", sorted(tools), flush=True)
    check(set(tools) >= TOOLS, sorted(tools))
    check("code" in tools["run_python"].input_schema["properties"], "schema")
    check(tools["run_python"].input_schema.get("required") == ["code"], "code is required")
    check(all(len(t.description) > 40 for t in tools.values()), "descriptions an LLM can use")


async def code_runs_and_plots(agent):
    r = await agent.call("run_python", code="x = 21\nprint('hi')\nx * 2")
    check(not r.is_error and text_of(r) == "hi\nOut: 42\n", text_of(r))
    r = await agent.call("run_python", code="x + 1")
    check(text_of(r) == "Out: 22\n", "variables persist")
    r = await agent.call("run_python", code="1 / 0")
    check(r.is_error and "ZeroDivisionError" in text_of(r), "an error is an error")
    r = await agent.call("run_python", code="import matplotlib.pyplot as plt\n"
                                            "plt.plot([1, 3, 2])\nplt.show()\nprint('plotted')")
    images = [c for c in r.content if c.type == "image"]
    check(len(images) == 1 and images[0].mime_type == "image/png", r.content)
    check(base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n"), "a PNG")


async def input_is_asked_with_progress_first(agent):
    """The run prints, then waits in input(): the agent is told the output (a progress
    notification) and then asked (an elicitation); its line reaches the code."""
    agent.progress.clear()
    agent.asked.clear()
    agent.reply = "Ada"
    r = await agent.call("run_python", progress=True,
                         code="print('step 1', flush=True)\nname = input('your name? ')\n"
                              "print('hello', name)\nname")
    check(not r.is_error and text_of(r) == "step 1\nhello Ada\nOut: 'Ada'\n", text_of(r))
    check(len(agent.asked) == 1 and "your name?" in agent.asked[0][0], agent.asked)
    check("step 1" in agent.asked[0][1], "the progress came before the question: %r"
          % (agent.asked,))
    # Declined: end of file.
    agent.reply = None
    r = await agent.call("run_python", code="input('again? ')")
    check(r.is_error and "EOFError" in text_of(r), "a declined input() gets end of file")


async def progress_is_coalesced(agent):
    """Output printed fast: at most one notification per 250 ms of the run (and the first at
    once), the latest line as the message, counts that grow."""
    agent.progress.clear()
    counts = []

    async def on_progress(progress, total, message):
        counts.append(progress)
        agent.progress.append(message or "")

    print("> run_python {\"code\": \"for i in range(3000): print('line', i, flush=True)\"}",
          flush=True)
    started = asyncio.get_running_loop().time()
    r = await agent.session.call_tool(
        "run_python", {"code": "for i in range(3000): print('line', i, flush=True)"},
        progress_callback=on_progress)
    elapsed = asyncio.get_running_loop().time() - started
    print("<", "error" if r.is_error else "ok", "%d lines;" % text_of(r).count("\n"),
          len(counts), "progress notifications in %.2f s:" % elapsed, agent.progress[:3],
          flush=True)
    check(not r.is_error and text_of(r).count("\n") == 3000, "all the output is answered")
    check(1 <= len(counts) <= 2 + elapsed / 0.25, "coalesced: %d in %.2f s" % (len(counts), elapsed))
    check(agent.progress[0].startswith("line "), agent.progress)
    check(counts == sorted(set(counts)), "progress grows: %r" % counts)


async def input_without_elicitation_is_end_of_file(agent):
    r = await agent.call("run_python", code="print('before')\ninput('x? ')")
    check(r.is_error and "EOFError" in text_of(r), text_of(r))
    check("input() is not available" in text_of(r) and "elicitation" in text_of(r),
          "the answer says why: " + text_of(r))


async def cancel_stops_a_run(agent):
    started = asyncio.Event()

    async def on_progress(progress, total, message):
        print("  ~ progress", progress, repr(message), flush=True)
        if message and "started" in message:
            started.set()

    print("> run_python (in a task) {\"session\": \"slow\"}", flush=True)
    run = asyncio.create_task(agent.session.call_tool(
        "run_python", {"session": "slow", "code": "print('started', flush=True)\n"
                       "import time\ntime.sleep(300)\nprint('not reached')"},
        progress_callback=on_progress))
    await asyncio.wait_for(started.wait(), 60)
    r = await agent.call("cancel", session="slow")
    check(not r.is_error and "cancelled" in text_of(r), text_of(r))
    result = await asyncio.wait_for(run, 60)
    print("< run_python", "error" if result.is_error else "ok", repr(text_of(result)[-120:]))
    check(result.is_error and "KeyboardInterrupt" in text_of(result)
          and "not reached" not in text_of(result), text_of(result))
    r = await agent.call("cancel", session="slow")
    check(r.is_error and "nothing is running" in text_of(r), text_of(r))


async def checkpoints_round_trip(agent):
    r = await agent.call("run_python", session="ck", code="data = [1, 2, 3]")
    r = await agent.call("create_checkpoint", session="ck")
    check(not r.is_error, text_of(r))
    made = json.loads(text_of(r))
    check("data" in made["saved"], made)
    r = await agent.call("run_python", session="ck", code="data.append(4)")
    r = await agent.call("list_checkpoints", session="ck")
    check([c["checkpoint_id"] for c in json.loads(text_of(r))] == [made["checkpoint_id"]],
          text_of(r))
    r = await agent.call("restore_checkpoint", session="ck",
                         checkpoint_id=made["checkpoint_id"], clear_existing=True)
    check(not r.is_error and "data" in json.loads(text_of(r))["restored"], text_of(r))
    r = await agent.call("run_python", session="ck", code="data")
    check(text_of(r) == "Out: [1, 2, 3]\n", "restored: " + text_of(r))
    r = await agent.call("create_session", session="ck2", from_checkpoint=made["checkpoint_id"])
    check(not r.is_error and json.loads(text_of(r))["session"] == "ck2", text_of(r))
    r = await agent.call("run_python", session="ck2", code="sum(data)")
    check(text_of(r) == "Out: 6\n", "a session started from the checkpoint: " + text_of(r))
    r = await agent.call("restore_checkpoint", session="ck", checkpoint_id="ckpt-nope")
    check(r.is_error, "an unknown checkpoint is refused")


async def files_move(agent):
    r = await agent.call("write_file", path="data/in.csv", content="a,b\n1,2\n")
    check(not r.is_error, text_of(r))
    r = await agent.call("run_python", code="open('data/in.csv').read().split()[1]")
    check(text_of(r) == "Out: '1,2'\n", text_of(r))
    r = await agent.call("run_python", code="open('out.txt', 'w').write('made here')")
    r = await agent.call("read_file", path="out.txt")
    check(text_of(r) == "made here", text_of(r))
    r = await agent.call("read_file", path="../etc/passwd")
    check(r.is_error, "a path out of the session is refused")


async def sessions_are_managed(agent):
    """list/create/reset/close; ends with only the session "default" named."""
    r = await agent.call("run_python", code="y = 1", session="other")
    r = await agent.call("list_sessions")
    named = sorted(s["session"] for s in json.loads(text_of(r)) if s["session"])
    check({"default", "other"} <= set(named), text_of(r))
    r = await agent.call("create_session", session="other")
    check(r.is_error and "open already" in text_of(r), "a name is one session")
    r = await agent.call("reset_session", session="default")
    r = await agent.call("run_python", code="'x' in globals()")
    check(text_of(r) == "Out: False\n", "reset empties the namespace")
    r = await agent.call("close_session", session="other")
    r = await agent.call("list_sessions")
    check("other" not in [s["session"] for s in json.loads(text_of(r))], text_of(r))
    r = await agent.call("reset_session", session="nope")
    check(r.is_error and "no open session" in text_of(r), text_of(r))


async def an_unanswered_question_is_withdrawn_when_the_code_stops(agent):
    """The code times out while its input() question is open: the call answers with the
    timeout at once (not when the user answers, who never does here), and the question is
    withdrawn from the client."""
    agent.reply, agent.withdrawn = Agent.HOLD, 0
    r = await asyncio.wait_for(
        agent.call("run_python", code="input('still there? ')", timeout_secs=2), 60)
    check(r.is_error and "ExecutionTimeout" in text_of(r), text_of(r))
    check(agent.withdrawn == 1, "the open question was withdrawn: %d" % agent.withdrawn)
    agent.reply = None


async def both_transports_checks(agent):
    """What stdio and HTTP both must do, in this order."""
    await tools_are_listed(agent)
    await code_runs_and_plots(agent)
    await files_move(agent)
    await sessions_are_managed(agent)
    await input_is_asked_with_progress_first(agent)
    await an_unanswered_question_is_withdrawn_when_the_code_stops(agent)
    await progress_is_coalesced(agent)
    await cancel_stops_a_run(agent)
    await checkpoints_round_trip(agent)
