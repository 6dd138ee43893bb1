"""Helpers shared by the end-to-end scripts: free loopback ports and bounded waits."""
import socket
import time


def free_port():
    """A port on 127.0.0.1 that nothing listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def poll(pred, timeout, interval=0.1):
    """Calls pred until it returns true (True) or `timeout` seconds pass (False). Errors of a
    service that is not up yet (connection refused, half-written JSON, a missing key) count as
    not yet."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except (OSError, RuntimeError, ValueError, KeyError):
            pass
        time.sleep(interval)
    return False
