"""Open N connections to the IMDS at once, then use each: all must be served.

Usage: many_connections.py N

Every connection is established (its flow in the data path's table) before
the first request is sent, then every connection sends GET /healthz before
the first answer is read, so the server answers while the guest keeps
inserting flows: the table must hold N live flows at once. Then each answer
is read. Prints "served=<count> failed=<count>" and exits non-zero if any
failed.
"""

import resource
import socket
import sys
import time

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"


def main(n):
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("169.254.169.254", 80), timeout=10)
        sockets.append(s)
    for s in sockets:
        s.sendall(REQUEST)
    served = failed = 0
    # A stalled flow shows as a connection that never answers: give them
    # all 20 s in total, not 20 s each.
    deadline = time.monotonic() + 20
    for s in sockets:
        try:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            answer = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
            if answer.startswith(b"HTTP/1.1 200"):
                served += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        finally:
            s.close()
    print(f"served={served} failed={failed}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
