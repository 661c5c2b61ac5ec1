"""The sweep's probes: built for the pending cells, grouped by shared context, and built in a
thread ahead of the backend, so a fast server never waits on the client between requests."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

from ctxprobe.sweep.cells import build_probes, group_by_context, work_order

_END = object()


def probe_groups(todo: list, grid, tokenizer) -> Iterator[list[tuple]]:
    """Lists of (cell, probe) whose probes share one context, batch by batch in work order."""
    for batch in work_order(todo):
        built = list(build_probes(batch, seed=grid.seed, tokenizer=tokenizer, haystack=grid.haystack,
                                  family_params=grid.params, verify=grid.verify))
        cell_of = {id(p): c for c, p in built}
        for group in group_by_context([p for _, p in built]):
            yield [(cell_of[id(p)], p) for p in group]


def built_ahead(items: Iterable, ahead: int) -> Iterator:
    """`items` in order, produced by a thread that runs up to `ahead` items ahead of the
    consumer. An exception of the producer is raised here, in its place in the order; closing
    this iterator (or leaving the loop over it) stops the producer at its next item."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((_END, e))

    producer = threading.Thread(target=produce, name="ctxprobe-probe-builder", daemon=True)
    producer.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
