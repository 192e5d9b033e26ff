"""The webui's error reporting: logs, and (here) remembers what was reported for the tests."""

import logging

log = logging.getLogger("fake_webui.errors")
reported: list[str] = []


def report(message, *, exc_info=False):
    reported.append(message)
    log.error(message, exc_info=exc_info)


def display(e, task, *, full_traceback=False):
    reported.append(f"{task}: {e}")
    log.error("%s: %s", task, e)


def record_exception():
    pass
