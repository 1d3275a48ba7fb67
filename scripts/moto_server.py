"""Starts moto's server (an SQS API server for the tests) with its FIFO group lock made whole.

moto 5 takes a snapshot of the message groups in flight when a receive starts and keeps it
for the whole long poll. A poll that began before another receive took a group's message may
then take that group's next one, so two consumers hold one message group at once, which AWS
never allows (and the bus's order rests on). Each attempt of a receive here runs without
waiting, under one lock, so it sees the groups in flight at that moment; between attempts
the poll sleeps 50 ms (moto's own wait wakes at once while only held groups have visible
messages, and spins).

moto also hands a group out of order once several of its messages time out in flight (a
holder that died without giving them back): a receive frees the first one it meets, finds the
group still held by the next one, skips the first, then frees the next and hands it out, and the
group's oldest message comes after younger ones. AWS hands the group back from its oldest. So
before each attempt, every message whose visibility timed out is freed at once (the test
`a_holder_that_vanishes_gives_its_group_back_from_the_oldest_message` in cqrs-sqs). Everything
else is moto's. Arguments are moto_server's.
"""

import sys
import threading
import time

from moto.server import main
from moto.sqs import models

_LOCK = threading.Lock()
_RECEIVE = models.SQSBackend.receive_message


def _free_timed_out(backend, queue_name):
    """Frees every message of the queue whose visibility timed out while it was in flight."""
    try:
        queue = backend.get_queue(queue_name)
    except Exception:  # the receive itself reports a missing queue
        return
    for message in [m for m in queue.pending_messages if m.visible]:
        queue.pending_messages.discard(message)


def _receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                     message_attribute_names=None):
    deadline = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        with _LOCK:
            _free_timed_out(self, queue_name)
            got = _RECEIVE(self, queue_name, count, 0, visibility_timeout,
                           message_attribute_names)
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(0.05)


models.SQSBackend.receive_message = _receive_message

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
