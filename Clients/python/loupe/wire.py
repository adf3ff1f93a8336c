"""The Loupe wire protocol (Protocol/PROTOCOL.md): a DEALER socket, MessagePack bodies,
tensors as {dtype, shape, data}, job replies streamed until the final one."""
import itertools
import os
import threading
import time

import msgpack
import numpy as np
import zmq

PROTOCOL = 4
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
_DTYPES = {"f32": "<f4", "i32": "<i4", "i64": "<i8"}
# How long a reply may be silent before the client checks that the daemon is still there.
HEARTBEAT_SECONDS = 10.0


def default_endpoint():
    return os.environ.get("LOUPE_ENDPOINT") or DEFAULT_ENDPOINT


class LoupeError(Exception):
    """An error reply from the daemon: `code` is one of PROTOCOL.md's error codes."""

    def __init__(self, code, message, field=None, node=None):
        self.code, self.message, self.field, self.node = code, message, field, node
        detail = f" (field {field})" if field else ""
        super().__init__(f"[{code}] {message}{detail}")


class DaemonUnavailable(LoupeError, ConnectionError):
    """No daemon answers on the endpoint, or it stopped or restarted while a request waited."""

    def __init__(self, message):
        super().__init__("unavailable", message)


def encode_tensor(array):
    """A float32 tensor literal for a request (every trace literal is read as float32)."""
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    return {"dtype": "f32", "shape": list(array.shape), "data": array.tobytes()}


def decode_tensor(value):
    return np.frombuffer(value["data"], dtype=_DTYPES[value["dtype"]]).reshape(value["shape"]).copy()


def is_tensor(value):
    return isinstance(value, dict) and set(value) >= {"dtype", "shape", "data"}


def _short(instance):
    return f"pid {instance[0]}" if isinstance(instance, tuple) else str(instance)[:12]


def _attach(value, frames):
    """Replaces every {frame: N} with the bytes of attachment N."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("frame"), int):
            return frames[value["frame"] - 1]
        return {k: _attach(v, frames) for k, v in value.items()}
    if isinstance(value, list):
        return [_attach(v, frames) for v in value]
    return value


class Connection:
    """One DEALER socket to one daemon, shared by every model of this process on that endpoint."""

    _shared = {}
    _shared_lock = threading.Lock()

    @classmethod
    def to(cls, endpoint=None, connect_timeout=5.0):
        endpoint = endpoint or default_endpoint()
        with cls._shared_lock:
            connection = cls._shared.get((endpoint, os.getpid()))
            if connection is None:
                connection = cls._shared[(endpoint, os.getpid())] = cls(endpoint, connect_timeout)
            return connection

    def __init__(self, endpoint, connect_timeout=5.0):
        self.endpoint = endpoint
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.ids = itertools.count(1)
        self.lock = threading.RLock()
        try:
            self.server = self.request("hello", {"client": "loupe-python"}, timeout=connect_timeout)
            self.instance = self._instance()
        except BaseException:
            self.socket.close(0)
            raise

    def _instance(self):
        """Which daemon process answers: `hello`'s `instance` where the daemon reports one,
        else (pid, start time) from server.stats. A change means the daemon restarted."""
        if self.server.get("instance") is not None:
            return self.server["instance"]
        stats = self.request("server.stats", {}, timeout=HEARTBEAT_SECONDS)
        return stats.get("pid"), round(time.time() - stats.get("uptime_seconds", 0.0))

    def _restarted(self, now, op):
        known, self.instance = self.instance, now
        return DaemonUnavailable(f"the Loupe daemon on {self.endpoint} restarted (instance {_short(known)} -> "
                                 f"{_short(now)}) while {op} waited; its job was lost, and models must be loaded again")

    def _send(self, op, fields, job):
        rid = next(self.ids)
        body = {"id": rid, "op": op, "protocol": PROTOCOL, **fields}
        if job:
            body.update(mode="stream", frames=True)
        self.socket.send(msgpack.packb(body, use_bin_type=True))
        return rid

    def _receive(self, seconds):
        if not self.socket.poll(int(seconds * 1000)):
            return None
        frames = self.socket.recv_multipart()
        body = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
        return _attach(body, frames[1:]) if len(frames) > 1 else body

    def request(self, op, fields, job=False, on_reply=None, timeout=None):
        """Sends one request and returns its `ok` reply, raising LoupeError for an `error`.
        For a job (`job=True`) the interim replies (accepted, queued, running, progress)
        go to `on_reply` and the wait is unbounded as long as the daemon answers pings."""
        with self.lock:
            rid = self._send(op, fields, job)
            timeout = timeout if timeout is not None else (None if job else 60.0)
            started = last_heard = time.monotonic()
            ping = None
            while True:
                reply = self._receive(0.1)
                now = time.monotonic()
                if reply is None:
                    if on_reply is not None:
                        on_reply({"status": "waiting"})
                    if timeout is not None and now - started > timeout:
                        raise DaemonUnavailable(
                            f"no reply from a Loupe daemon on {self.endpoint} within {timeout:g} s "
                            f"(is one running? start it with: loupe serve --endpoint {self.endpoint})")
                    if job and now - last_heard > HEARTBEAT_SECONDS:
                        if ping is not None:
                            raise DaemonUnavailable(f"the Loupe daemon on {self.endpoint} stopped answering "
                                                    f"while {op} waited for its reply")
                        ping = self._send("server.stats", {}, False)
                        last_heard = now
                    continue
                last_heard = now
                if ping is not None and reply.get("id") == ping:
                    ping = None
                    self._check_same_instance(reply, op)
                    continue
                if reply.get("id") != rid:
                    continue  # a late reply to an earlier request that gave up
                status = reply.get("status")
                if status == "accepted" and reply.get("instance") not in (None, self.instance):
                    raise self._restarted(reply["instance"], op)
                if status == "ok":
                    return reply
                if status == "error":
                    error = reply.get("error") or {}
                    raise LoupeError(error.get("code", "internal"), error.get("message", "unknown error"),
                                     error.get("field"), error.get("node"))
                if on_reply is not None:
                    on_reply(reply)

    def _check_same_instance(self, reply, op):
        """Raises DaemonUnavailable if a hello or server.stats reply comes from another daemon process."""
        if isinstance(self.instance, tuple):
            now = (reply.get("pid"), round(time.time() - reply.get("uptime_seconds", 0.0)))
            if now[0] is not None and (now[0] != self.instance[0] or abs(now[1] - self.instance[1]) > 2):
                raise self._restarted(now, op)
        elif reply.get("instance") not in (None, self.instance):
            raise self._restarted(reply["instance"], op)

    def check_restart(self):
        """Raises DaemonUnavailable if the daemon is a different process than when we connected."""
        with self.lock:
            op = "server.stats" if isinstance(self.instance, tuple) else "hello"
            self._check_same_instance(self.request(op, {}, timeout=HEARTBEAT_SECONDS), "this request")

    def close(self):
        with Connection._shared_lock:
            Connection._shared.pop((self.endpoint, os.getpid()), None)
        self.socket.close(0)
