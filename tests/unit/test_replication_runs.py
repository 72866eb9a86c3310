"""How runs speak: job descriptions and state error sentences."""
from __future__ import annotations

from middlewared_plugin.errors import CallError
from middlewared_plugin.replication.executor import Progress
from middlewared_plugin.services.replication_runs import as_sentence, progress_description


def progress(**kw) -> Progress:
    base = dict(dataset="tank/a", snapshot="auto-1", snapshots_sent=1, snapshots_total=5, bytes_sent=1258291,
                bytes_total=3145728, bytes_total_exact=True, rate=None, eta=None, percent=40.0)
    return Progress(**{**base, **kw})


def test_description_counts_from_one_and_shows_bytes():
    assert progress_description(progress()) == "Sending 2 of 5: tank/a@auto-1 (1.2 MiB / 3.0 MiB)"


def test_description_without_a_known_total_shows_bytes_sent_only():
    assert progress_description(progress(bytes_total=None)) == "Sending 2 of 5: tank/a@auto-1 (1.2 MiB)"


def test_state_errors_are_sentences_without_the_errname():
    assert as_sentence(CallError("cannot receive: dataset is busy")) == "Cannot receive: dataset is busy."
    assert as_sentence(RuntimeError("done.")) == "Done."
