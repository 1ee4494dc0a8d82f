"""Who is on which connection of the scheduler's ROUTER: the shell's table of peers.

A peer is `(kind, peer id)`, kind "executor" or "client". A routing id (a connection) is
bound to one peer; a peer has one route, the connection that said hello, where commands
and answers go, and may have more connections (an executor's report connections, which
`attach`). The table holds ids peers make up, so it forgets a peer whole once its last
connection goes, its attach token too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Peer", "PeerTable"]

Peer = tuple[str, str]  # (kind, peer id)


class PeerTable:
    """Connections, peers and routes (see the module docstring)."""

    def __init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}  # routing id -> peer
        self.routes: dict[Peer, bytes] = {}  # peer -> the routing id that said hello
        self.connections: dict[Peer, set[bytes]] = {}  # peer -> all its routing ids
        self.tokens: dict[str, str] = {}  # executor id -> the token its `attach` must carry

    def bind(self, routing_id: bytes, peer: Peer) -> None:
        """`routing_id` is one of `peer`'s connections."""
        self.peers[routing_id] = peer
        self.connections.setdefault(peer, set()).add(routing_id)

    def forget(self, routing_id: bytes) -> None:
        """`routing_id` is no one's any more (its peer's route, if it was that)."""
        peer = self.peers.pop(routing_id, None)
        if peer is None:
            return
        if self.routes.get(peer) == routing_id:
            del self.routes[peer]
        connections = self.connections.get(peer, set())
        connections.discard(routing_id)
        if not connections:
            self.connections.pop(peer, None)
            if peer[0] == "executor":  # ids a peer makes up must not grow this table
                self.tokens.pop(peer[1], None)

    def who(self, routing_id: bytes) -> str:
        peer = self.peers.get(routing_id)
        return f"{peer[0]} {peer[1]}" if peer else f"unknown peer {routing_id.hex()[:12]}"

    def executor_routes(self, executors: Mapping[str, Any]) -> dict[bytes, str]:
        """The routes of the executors `executors` (the core's records) count alive:
        routing id -> executor id."""
        routes = {}
        for (kind, peer_id), routing_id in self.routes.items():
            executor = executors.get(peer_id) if kind == "executor" else None
            if executor is not None and executor.alive:
                routes[routing_id] = peer_id
        return routes

    def client_routes(self) -> dict[bytes, str]:
        """Routing id -> client id, of every client with a route."""
        return {rid: peer[1] for peer, rid in self.routes.items() if peer[0] == "client"}
