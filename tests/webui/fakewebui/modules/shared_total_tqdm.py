"""shared.total_tqdm: the console's second bar, "Total progress", over a whole generation.

As in the webui: the bar is made when its first step is counted (or its total is first set), sized
``state.job_count`` x ``state.sampling_steps`` of that moment; ``updateTotal`` sets its total; ``clear``
ends it (txt2img / img2img / the API call it after each generation). With ``opts.multiple_tqdm`` off or
``--disable-console-progressbars`` nothing is counted. Fake only: the bar writes to a string, and
``cleared`` keeps ``(n, total)`` of every bar ended.
"""

import io

import tqdm

from modules import shared


class TotalTQDM:
    def __init__(self):
        self._tqdm = None
        self.cleared = []

    def _counting(self):
        return shared.opts.multiple_tqdm and not shared.cmd_opts.disable_console_progressbars

    def reset(self):
        total = shared.state.job_count * shared.state.sampling_steps
        self._tqdm = tqdm.tqdm(desc="Total progress", total=total, position=1, file=io.StringIO())

    def update(self):
        if not self._counting():
            return
        if self._tqdm is None:
            self.reset()
        self._tqdm.update()

    def updateTotal(self, new_total):  # noqa: N802 - the webui's name
        if not self._counting():
            return
        if self._tqdm is None:
            self.reset()
        self._tqdm.total = new_total

    def clear(self):
        if self._tqdm is None:
            return
        self.cleared.append((self._tqdm.n, self._tqdm.total))
        self._tqdm.close()
        self._tqdm = None
