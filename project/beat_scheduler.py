"""celery beat that stops cleanly on SIGINT/SIGTERM, wherever in its loop the signal lands."""

import logging
from datetime import timedelta

from celery import platforms
from celery.apps.beat import Beat as CeleryBeat
from celery.beat import PersistentScheduler

beat_logger = logging.getLogger("celery.beat")
# Entries due more often than this are housekeeping that runs all the time (ring, reap, dispatch
# schedules): Celery logs every send at INFO, which made `make run` print two lines a second.
ROUTINE_INTERVAL = timedelta(seconds=60)


def is_routine(entry) -> bool:
    every = getattr(entry.schedule, "run_every", None)
    return isinstance(every, timedelta) and every < ROUTINE_INTERVAL


class Scheduler(PersistentScheduler):
    """PersistentScheduler that ends between ticks when asked to stop, and is closed once.

    Celery's own stop handler closes the schedule file and raises SystemExit wherever the main
    loop is. Landing mid-tick, the exception can be swallowed on the publishing path and the
    tick reads the closed file ("invalid operation on closed shelf", beat exits 1), or, with the
    file made readable, beat keeps ticking until supervisord kills it. Here a stop requested
    mid-tick takes effect when the tick returns; otherwise at once (beat is asleep).
    """

    _closed = False
    _entries_at_close: dict | None = None
    _ticking = False
    _stop_requested = False

    def tick(self, *args, **kwargs):
        self._ticking = True
        try:
            return super().tick(*args, **kwargs)
        finally:
            self._ticking = False
            if self._stop_requested:
                raise SystemExit()  # the main loop's `finally` syncs and closes the file once

    def apply_entry(self, entry, producer=None):
        """Send a due entry as Celery does, logging the sends of routine entries at DEBUG only."""
        if not is_routine(entry):
            return super().apply_entry(entry, producer=producer)
        beat_logger.debug("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except Exception as error:  # as Celery's own apply_entry: a failed send must not stop beat
            beat_logger.error("Message Error: %s", error, exc_info=True)

    def request_stop(self) -> bool:
        """Ask the loop to end; True when it may end right now (not in the middle of a tick)."""
        self._stop_requested = True
        return not self._ticking

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


class Beat(CeleryBeat):
    """`celery beat` whose SIGINT/SIGTERM handler asks the scheduler to stop between ticks."""

    def install_sync_handler(self, service) -> None:
        def stop(signum, frame) -> None:
            scheduler = service.__dict__.get("scheduler")  # None: not started, nothing to save
            if isinstance(scheduler, Scheduler):
                if scheduler.request_stop():
                    raise SystemExit()
                return
            if scheduler is not None:
                service.sync()
            raise SystemExit()

        platforms.signals.update(SIGTERM=stop, SIGINT=stop)
