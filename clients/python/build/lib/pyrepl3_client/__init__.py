"""Client for a pyrepl3 server (`pyrepl3 serve`): sessions, code runs with live output,
`input()` answered by a handler, rich outputs, files and checkpoints. Standard library only.

    from pyrepl3_client import Client
    with Client("http://127.0.0.1:8765", token) as client:
        session = client.create_session()
        run = session.run("print('hi')\\n6 * 7")
        print(run.stdout, run.result.repr)      # hi  42

`AsyncClient` has the same surface for asyncio code (each call runs in a worker thread).
"""

from ._client import (
    ApiError,
    AsyncClient,
    AsyncSession,
    Client,
    Display,
    ExecutionError,
    Result,
    Run,
    Session,
)

__all__ = ["ApiError", "AsyncClient", "AsyncSession", "Client", "Display", "ExecutionError",
           "Result", "Run", "Session"]
