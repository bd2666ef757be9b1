"""The Ray engine's job registry (serve/job_book.py) as plain Python: admission, the job's life, lost replicas.

The same object runs inside a Ray actor in tests/test_serve_ray.py; here its rules are checked one by one.
"""

from __future__ import annotations

import time

import pytest

from instantid_edge.serve.errors import JobNotFound, NotFinished
from instantid_edge.serve.job_book import JobBook
from instantid_edge.serve.jobs import JobError, JobState


def _accepted(book: JobBook, job_id: str, replica: str = "r1", position: int = 1) -> None:
    assert book.admit(capacity=2) is None
    book.add(job_id, {"seed": 1}, total=4, replica=replica, node="n1", position=position)


def test_admission_counts_unfinished_jobs_and_submissions_in_flight():
    book = JobBook()
    _accepted(book, "a")
    assert book.admit(capacity=2) is None  # a second submission, still being checked by its replica
    retry = book.admit(capacity=2)
    assert retry is not None and retry >= 1  # one queued + one in flight: full
    book.release()  # that submission was refused (no face): its slot is free again
    assert book.admit(capacity=2) is None
    assert book.metrics().refused == {"queue_full": 1}


def test_a_finished_job_frees_its_slot_and_keeps_its_image_until_deleted():
    book = JobBook()
    _accepted(book, "a")
    _accepted(book, "b", position=2)
    assert book.admit(capacity=2) is not None
    assert book.start("a")
    assert not book.step("a", 1, 4) and book.status("a").step == 1
    with pytest.raises(NotFinished):
        book.image("a")
    book.finish("a", JobState.DONE, None, b"png", {"denoise": 0.5}, 1.0)
    assert book.admit(capacity=2) is None
    assert book.image("a") == b"png" and book.status("a").replica == "r1"
    assert [event.kind for event in book.events_after("a", 0)[0]] == ["queued", "started", "step", "done"]
    assert book.cancel("a") is None  # finished: forgotten
    with pytest.raises(JobNotFound):
        book.status("a")


def test_cancelling_a_queued_job_ends_it_and_its_replica_then_skips_it():
    book = JobBook()
    _accepted(book, "a")
    status = book.cancel("a")
    assert status.state is JobState.CANCELLED
    assert not book.start("a")


def test_a_running_job_stops_at_the_step_after_cancel_without_recording_it():
    book = JobBook()
    _accepted(book, "a")
    book.start("a")
    book.step("a", 1, 4)
    assert book.cancel("a").cancel_requested
    assert book.step("a", 2, 4) is True
    assert book.status("a").step == 1


def test_a_lost_replica_turns_its_unfinished_jobs_into_errors_and_leaves_finished_ones():
    book = JobBook()
    book.register_replica("r1", "n1", 10)
    _accepted(book, "running")
    _accepted(book, "done", position=2)
    book.start("running")
    book.finish("done", JobState.DONE, None, b"png", {}, 1.0)
    for job_id in ("running", "done"):
        book.fail_unfinished(job_id, "replica_lost", "gone")
    book.replica_lost("r1")
    assert book.status("running").error == JobError("replica_lost", "gone")
    assert book.status("done").state is JobState.DONE
    assert book.replicas() == []
    assert book.events_after("running", 0)[1] is True  # final: event streams end


def test_finished_jobs_are_forgotten_after_the_ttl():
    book = JobBook(job_ttl=0.2)
    _accepted(book, "a")
    book.cancel("a")
    time.sleep(0.3)
    with pytest.raises(JobNotFound):
        book.status("a")
