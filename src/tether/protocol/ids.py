"""Upload ids and node ids: what they may contain, and how a node id travels in an upload id.

An upload id is 128 random bits in hex, optionally after the id of the node that created it
and a dot: ``n1.3f2a…`` (QUIC-LB style: a load balancer reads the node from the URL, so
every instance of it routes an upload to the same node without sharing any state). The
node part is a routing hint and nothing more: any node serves any upload id, with or
without a node part, and whether or not that node still exists.

Both are safe as a URL path segment, an S3 key component and a file name: letters, digits,
``-`` and ``_``, plus the one dot between node and random part. A node id never contains
a dot, so ``/files/n1.`` is a prefix that names node ``n1`` and no other (a load balancer
matches it with a plain prefix test: ``path_beg`` in HAProxy, ``location ^~`` in nginx).
"""

from __future__ import annotations

import re
import secrets

NODE_ID_MAX = 63  # a DNS label: host names fit, and ids stay short in URLs and logs
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
NODE_ID_RULE = "1-63 letters, digits, '-' or '_', starting with a letter or digit"

# What an upload URL may carry: ids this server made, ids older servers made (no node
# part), and ids of nodes that no longer exist. Never "." or "..", never a "/".
UPLOAD_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_-]{0,62}\.)?[A-Za-z0-9_-]{1,128}")


def check_node_id(text: str) -> str:
    """``text`` if it is a valid node id; ``ValueError`` saying what is allowed otherwise."""
    if not NODE_ID.fullmatch(text):
        raise ValueError(f"node id {text!r} is not valid: use {NODE_ID_RULE}")
    return text


def node_id_from_host(hostname: str) -> str:
    """A valid node id from a host name: its first label, other characters replaced by
    ``-`` (``"web_01.example.com"`` → ``"web_01"``, ``""`` → ``"node"``)."""
    label = hostname.split(".", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", label).lstrip("-_")[:NODE_ID_MAX]
    return cleaned or "node"


def new_upload_id(node: str | None = None) -> str:
    """128 random bits (unguessable), after ``node`` and a dot when given."""
    token = secrets.token_hex(16)
    return f"{node}.{token}" if node else token


def node_of(upload_id: str) -> str | None:
    """The node named in ``upload_id``, or None when it names none. A hint only: the node
    may be gone, and any node serves the upload."""
    node, dot, _ = upload_id.partition(".")
    return node if dot and NODE_ID.fullmatch(node) else None
