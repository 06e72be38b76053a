"""The progress bar: Lightning's RichProgressBar, whose display stops at once.

Lightning (2.6) refreshes the bar from a thread that sleeps 1/refresh_rate s between refreshes
(`time.sleep`) and joins that thread whenever a display stops, at the end of the fit and of the test: 0.1 s
of waiting on average at refresh_rate=5, twice per run and twice per job of a sweep (docs/benchmarks.md).
Here the thread waits on its stop event instead, as rich's own refresh thread does, so stopping wakes it.
Everything else, the bar included, is Lightning's."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from lightning.pytorch.callbacks.progress import rich_progress


class PromptRefreshThread(rich_progress._RefreshThread):
    """Lightning's refresh thread (a refresh only when the bar changed), sleeping on `done`: `stop()` ends
    it at once instead of after the current sleep."""

    def run(self) -> None:
        while not self.done.wait(1 / self.refresh_per_second):
            if self.refresh_cond:
                with self.live._lock:
                    self.live.refresh()
                self.refresh_cond = False


class RichProgressBar(LightningRichProgressBar):
    """`lightning.pytorch.callbacks.RichProgressBar`, same arguments, with a `PromptRefreshThread`."""

    def _init_progress(self, trainer: L.Trainer) -> None:
        super()._init_progress(trainer)
        live = getattr(self.progress, "live", None)
        started = getattr(live, "_refresh_thread", None)
        if type(started) is rich_progress._RefreshThread:  # Lightning's, just started: replace it
            started.stop()  # it ends by itself after its current sleep (a daemon thread)
            live._refresh_thread = PromptRefreshThread(live, live.refresh_per_second)
            live._refresh_thread.start()
