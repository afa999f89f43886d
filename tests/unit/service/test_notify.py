"""service/notify.py: a notification never waits on systemd."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

from eslcdr.service.notify import Notifier


def test_a_send_to_a_socket_nobody_reads_fails_at_once_instead_of_blocking():
    # A Unix datagram socket holds max_dgram_qlen unread datagrams (10 by
    # default); a blocking send past them waits until the reader reads.
    folder = Path(tempfile.mkdtemp(prefix="eslcdr-notify-"))  # short: AF_UNIX paths <= 107 bytes
    path = str(folder / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    notifier = Notifier(path)
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(notifier.watchdog() for _ in range(200)), daemon=True)
    try:
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "a send blocked on the full socket"
        assert results[0] is True
        assert results[-1] is False  # the queue is full: refused, logged once
        assert len(results) == 200
    finally:
        receiver.setblocking(False)
        while True:  # let a blocked sender (the old code) finish
            try:
                receiver.recv(64)
            except BlockingIOError:
                if not sender.is_alive():
                    break
                sender.join(timeout=0.05)
        receiver.close()
        notifier.close()
        Path(path).unlink()
        folder.rmdir()
