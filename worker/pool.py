"""Celery's solo pool, with a cold shutdown that hands the running job back instead of failing it."""

from __future__ import annotations

import threading

from celery.concurrency import solo

# Set once a cold shutdown asked to stop the running task: the job's training (or scene) stops
# after its current batch and the runner hands it back (queued again, resumed from its last
# checkpoint by the next worker).
shutting_down = threading.Event()


class TaskPool(solo.TaskPool):
    """The task runs in the worker's main thread, as with `--pool solo`.

    A cold shutdown (SIGQUIT, or Ctrl-C) cancels the running task from its signal handler, which
    runs in the main thread, in the middle of the task. Celery's solo pool cannot terminate a job
    and raised NotImplementedError there, which surfaced from inside Keras as the job's own error
    and failed the job for good. Raising anything from there is no better: inside TensorFlow's
    C++ it comes out as a SystemError. This pool only sets `shutting_down`, which the task polls.
    """

    def terminate_job(self, pid, signal=None):
        shutting_down.set()
