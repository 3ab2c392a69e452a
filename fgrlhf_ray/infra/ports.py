"""`free_port`: a TCP port that was free on this host a moment ago.

For rendezvous ports (torch.distributed's MASTER_PORT, the Ray Train DDP group) and the loopback
servers of the tests. Another process may take it before it is bound again; callers that can
retry do.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that `host` (an address of this machine; "" = every interface) had free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
