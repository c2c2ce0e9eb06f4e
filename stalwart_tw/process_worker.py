"""
The child side of L{stalwart_tw.processes.ProcessPool}:
C{python -m stalwart_tw.process_worker}.

Frames on stdin and stdout, each an 8-byte big-endian length and a pickle.
The first frame names the parent's C{sys.path} and the initializers to call;
every later one is C{(function, args)}, answered by C{(True, result)} or
C{(False, exception)}, in order. End of input ends the process.
"""

import ctypes
import os
import pickle
import struct
import sys

HEADER = struct.Struct(">Q")


def read_frame(stream):
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    return body


def write_frame(stream, payload):
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def _answer(frame):
    try:
        function, args = pickle.loads(frame)
        outcome = (True, function(*args))
    except Exception as error:
        outcome = (False, error)
    try:
        return pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        # The parent needs an exception it can unpickle.
        return pickle.dumps((False, RuntimeError(f"unpicklable outcome: {error!r}")))


def _release_free_heap():
    # What the initializers freed (a model's loading buffers) goes back to
    # the system rather than staying in this process's heap (glibc only).
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main():
    frames_in = sys.stdin.buffer
    # Frames own stdout; anything printed goes to stderr, which the parent logs.
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    hello = read_frame(frames_in)
    if hello is None:
        return
    path, initializers = pickle.loads(hello)
    sys.path[:] = path
    for initializer in pickle.loads(initializers):
        initializer()
    _release_free_heap()
    while True:
        frame = read_frame(frames_in)
        if frame is None:
            return
        write_frame(frames_out, _answer(frame))


if __name__ == "__main__":
    main()
