"""
Who this node is to the cluster: a peer id chosen once and kept in
db-path, and a generation counted up at every start, so peers can tell a
restarted node (whose epoch counts from zero again) from a replayed packet.
"""

import os
import secrets
from dataclasses import dataclass

NODE_ID_FILE = "node.id"
GENERATION_FILE = "node.generation"


@dataclass(frozen=True)
class Identity:
    """
    @ivar node_id: 16 lower-case hex digits, the same for the node's life.
    @ivar generation: 1 at the first start, one more at each start after.
    """

    node_id: str
    generation: int


def load_identity(db_path):
    """
    Read the node's id (creating it at the first start) and count this
    start in its generation, durably.

    @raise ValueError: a file holds something else than it should, naming it.
    """
    os.makedirs(db_path, exist_ok=True)
    id_path = os.path.join(db_path, NODE_ID_FILE)
    if os.path.exists(id_path):
        node_id = _read(id_path)
        if len(node_id) != 16 or not all(c in "0123456789abcdef" for c in node_id):
            raise ValueError(f"{id_path!r} does not hold a node id (16 hex digits)")
    else:
        node_id = secrets.token_hex(8)
        _write(id_path, node_id)
    generation_path = os.path.join(db_path, GENERATION_FILE)
    generation = 0
    if os.path.exists(generation_path):
        text = _read(generation_path)
        if not text.isdigit():
            raise ValueError(f"{generation_path!r} does not hold a generation number")
        generation = int(text)
    generation += 1
    _write(generation_path, str(generation))
    return Identity(node_id, generation)


def _read(path):
    with open(path, encoding="ascii", errors="replace") as source:
        return source.read().strip()


def _write(path, text):
    # Whole or not at all: a crash leaves the old content or the new.
    temporary = path + ".new"
    with open(temporary, "w", encoding="ascii") as target:
        target.write(text + "\n")
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
