"""Realtime: actor events streamed to browsers over websockets.

`RealtimeGateway` holds one event stream per actor host and fans it out to sockets (its parts:
`foundry.realtime.pumps` reads the host streams, `foundry.realtime.snapshots` brings subscribers to a
topic's state, `foundry.realtime.state` holds what they share);
`TopicRegistry` says which actor owns a topic; `make_websocket_route` is the ``WS /v1/realtime``
endpoint. `foundry.realtime.frames` defines every frame of the protocol, and
`foundry.realtime.asyncapi` builds the AsyncAPI document from those models.
"""

from foundry.realtime.endpoint import CLOSE_UNAUTHENTICATED, Authenticate, make_websocket_route
from foundry.realtime.gateway import CLOSE_SLOW_CONSUMER, SNAPSHOT_ACTION, Authorize, RealtimeGateway
from foundry.realtime.topics import InvalidTopic, TopicRegistry, TopicRoute, TopicSpec, standard_registry

__all__ = [
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_UNAUTHENTICATED",
    "SNAPSHOT_ACTION",
    "Authenticate",
    "Authorize",
    "InvalidTopic",
    "RealtimeGateway",
    "TopicRegistry",
    "TopicRoute",
    "TopicSpec",
    "make_websocket_route",
    "standard_registry",
]
