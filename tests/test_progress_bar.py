"""The progress bar's display stops at once (callbacks/progress_bar.py): its refresh thread wakes on stop
instead of finishing a sleep of 1/refresh_rate s."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from medtransfer.callbacks.progress_bar import PromptRefreshThread, RichProgressBar


class Live:  # what the thread uses of rich's Live
    def __init__(self):
        import threading

        self._lock = threading.RLock()
        self.refreshes = 0

    def refresh(self):
        self.refreshes += 1


def test_the_refresh_thread_ends_when_stopped_not_after_its_sleep():
    thread = PromptRefreshThread(Live(), 0.001)  # a refresh every 1,000 s: Lightning's would sleep that long
    thread.start()
    thread.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_the_refresh_thread_refreshes_only_a_changed_bar():
    import time

    live = Live()
    thread = PromptRefreshThread(live, 200)
    thread.start()
    time.sleep(0.1)
    assert live.refreshes == 0
    thread.refresh_cond = True  # what the bar's soft_refresh sets
    for _ in range(300):
        if live.refreshes:
            break
        time.sleep(0.01)
    thread.stop()
    thread.join(timeout=30)
    assert live.refreshes == 1


def test_a_fit_and_test_run_their_bars_on_the_prompt_thread(tmp_path, monkeypatch):
    started = []
    original = PromptRefreshThread.start
    monkeypatch.setattr(PromptRefreshThread, "start", lambda self: (started.append(self), original(self)))
    bar = RichProgressBar(refresh_rate=1)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    model = BoringModel()
    trainer.fit(model)
    trainer.test(model)
    assert len(started) >= 2  # the fit's display and the test's
    assert not any(t.is_alive() for t in started)  # each joined when its display stopped
