"""A directory node for the CLI tests: ``python -m tests.cli.directory_node TICKET_FILE``.

Binds 127.0.0.1 (any port), serves a :class:`~asgi_p2p.discovery.DirectoryServer`
and writes its ticket to TICKET_FILE; runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from asgi_p2p import Node
from asgi_p2p.discovery import DirectoryServer
from asgi_p2p.ticket import Ticket


async def main(ticket_file: Path) -> None:
    endpoint = await Node.bind(host="127.0.0.1", port=0)
    DirectoryServer(clock_offset=time.time() - asyncio.get_running_loop().time()).attach(endpoint)
    tmp = ticket_file.with_name(f".{ticket_file.name}.tmp")
    tmp.write_text(Ticket.from_node_addr(endpoint.node_addr()).encode() + "\n")
    os.replace(tmp, ticket_file)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
