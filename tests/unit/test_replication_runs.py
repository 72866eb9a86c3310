"""How runs speak: job descriptions, state error sentences, options not applied."""
from __future__ import annotations

from middlewared_plugin.errors import CallError
from middlewared_plugin.replication.executor import Progress
from middlewared_plugin.services.replication_runs import as_sentence, progress_description, unapplied_options


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


def test_options_not_applied_yet_are_named_in_the_run_warnings():
    assert unapplied_options({"compression": None, "speed_limit": None}) == []
    warnings = unapplied_options({"compression": "LZ4", "speed_limit": 1048576})
    assert any("LZ4" in w and "uncompressed" in w for w in warnings)
    assert any("1.0 MiB/s" in w for w in warnings)
