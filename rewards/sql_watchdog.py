"""The SQL sandbox's watchdog: the calling process's handle on one worker process, killed when late.

    worker = Worker()                        starts `python -I -S rewards/sql_worker.py`
    answers, why = worker.call(request)      why: None, or why the worker was killed (or died)
    worker.kill()

`rewards.sql_sandbox` holds one Worker per process, sends it every request and starts a new one after
a kill; the worker's side of the pipe (the request format, `send`) is rewards/sql_worker.py.

[D1] Time (issue #13 item 4): a statement (executing it and fetching its rows) gets `time_limit_s`
     (default 1 s) of wall-clock time, and the caller has its answer within time_limit_s + 0.1 s
     (plus ~40 ms to start a worker when the query before killed one), whatever SQLite does. Two
     layers: in the worker a progress handler stops the statement at the limit (sql_worker [D4]).
     But SQLite checks that handler, and `interrupt()`, only between VM steps, and one step can take
     seconds: printf('%.*c', 2147483647, 'x') loops 2^31 times inside one step (6.7 s here), 100
     trim()s of 20 kB strings run as one stretch without a check (4.9 s), and an interrupt() from a
     watchdog thread at 1 s returned after 16.8 s and 4.1 s on those. So when no answer has come
     _KILL_GRACE_S = 0.1 s after the limit, the caller kills the worker (SIGKILL) and starts a new one
     (~30 ms, paid by the next query): the statement is refused with "time limit exceeded", and every
     database that worker held is lost (its handle answers refused "database lost"; `run_sql` never
     reuses one). Measured on the hostile suite with a 1 s limit, 2 cores: at most 1.22 s idle,
     1.26 s with one core and 1.33 s with both kept busy by others. The limit is wall-clock: a query
     near it may be refused on a loaded machine and not on an idle one, and a machine too loaded to
     start a Python process in 0.4 s can break the bound. Building a context gets one limit for the
     whole context (default 5 s; before, 5 s for each statement).
     Tested in tests/test_rewards_sql_sandbox.py and, against over 100 hostile queries,
     tests/test_rewards_sql_hostile.py.
"""
from __future__ import annotations

import marshal
import os
import select
import subprocess
import sys
import time

from rewards import sql_worker
from rewards.sql_worker import HEADER, send

_KILL_GRACE_S = 0.1  # [D1] answer time the worker gets after the limit before it is killed
_START_TIMEOUT_S = 30.0  # a worker that has not said "ready" by then is broken: raise
_TIMED_OUT, _DIED = object(), object()


class Worker:
    """One worker process seen from the caller: send a request, await each answer under its deadline."""

    def __init__(self):
        if not hasattr(select, "poll"):
            raise RuntimeError("the SQL sandbox needs select.poll (POSIX)")
        self.process = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(sql_worker.__file__)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.requests, self.answers = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.answers, select.POLLIN)
        self.buffer, self.ready = bytearray(), False

    def _receive(self, deadline: float):
        """The next answer; _TIMED_OUT when none is complete by `deadline`; _DIED at end of pipe."""
        while True:
            if len(self.buffer) >= HEADER.size:
                end = HEADER.size + HEADER.unpack_from(self.buffer)[0]
                if len(self.buffer) >= end:
                    answer = marshal.loads(self.buffer[HEADER.size:end])
                    del self.buffer[:end]
                    return answer
            # a late caller still takes an answer already in the pipe (poll with timeout 0)
            if not self.poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return _TIMED_OUT
            part = os.read(self.answers, 1 << 20)
            if not part:
                return _DIED
            self.buffer += part

    def call(self, request: list[tuple]) -> tuple[list, str | None]:
        """Run `request`; (answers, None), or (the answers so far, why) after killing the worker [D1]."""
        if not self.ready:
            if self._receive(time.monotonic() + _START_TIMEOUT_S) != "ready":
                raise RuntimeError(f"the SQL sandbox's worker process did not start: {self.process.args}")
            self.ready = True
        start = time.monotonic()
        try:
            send(self.requests, marshal.dumps(tuple(request)))
        except OSError:  # it died since the last request
            self.kill()
            return [], f"sandbox worker died (exit status {self.process.returncode})"
        answers = []
        for kind, _, *args in request:
            if kind == "close":
                continue
            answer = self._receive(start + args[1] + _KILL_GRACE_S)  # args[1]: this operation's time limit
            if answer is _TIMED_OUT or answer is _DIED:
                self.kill()
                return answers, (f"time limit exceeded: no answer {args[1]:g} s + {_KILL_GRACE_S:g} s after "
                                 f"the start, the worker process was killed" if answer is _TIMED_OUT else
                                 f"sandbox worker died (exit status {self.process.returncode})")
            answers.append(answer)
            start = time.monotonic()
        return answers, None

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()
