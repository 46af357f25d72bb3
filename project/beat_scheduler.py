"""celery beat's schedule file, safe to use after beat's signal handler has closed it."""

from celery.beat import PersistentScheduler


class Scheduler(PersistentScheduler):
    """PersistentScheduler that a SIGINT/SIGTERM cannot turn into exit status 1.

    Beat's signal handler closes the schedule file wherever the main loop is, and the loop's
    `finally` closes it again; whatever the interrupted tick still does with the schedule then
    meets a closed shelf ("invalid operation on closed shelf") and beat exits 1, which
    supervisord reports as a crash on every Ctrl-C that lands mid-tick. Closed once, the
    entries stay readable from memory and later syncs are no-ops: the file was synced on close.
    """

    _closed = False
    _entries_at_close: dict | None = None

    def get_schedule(self):
        if self._closed:
            return self._entries_at_close
        return super().get_schedule()

    def set_schedule(self, schedule):
        if self._closed:
            self._entries_at_close = schedule
        else:
            super().set_schedule(schedule)

    schedule = property(get_schedule, set_schedule)

    def sync(self):
        if not self._closed:
            super().sync()

    def close(self):
        if self._closed:
            return
        self._entries_at_close = dict(super().get_schedule()) if self._store is not None else {}
        try:
            super().close()
        finally:
            self._closed = True
