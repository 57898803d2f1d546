"""The resume flow stepped by hand, without sockets: every retry branch, what is re-sent,
and when it gives up."""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

import pytest

from tether.client.errors import UploadFailed, UploadGone
from tether.client.flow import Settings, UploadFlow, concatenate, discover
from tether.client.wire import (
    Capabilities,
    Dialect,
    NetworkFailure,
    Outcome,
    Reply,
    Request,
    Sleep,
    Slice,
)

END = "http://h/files/"
URL = "http://h/files/abc"
TUS = Dialect("tus")
IETF = Dialect("ietf")
CAPS = Capabilities(
    extensions=frozenset({"creation", "creation-with-upload", "checksum", "concatenation"}),
    checksums=frozenset({"sha1", "crc32c"}),
)
KiB = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Driver:
    """Steps a flow: each ``expect`` checks the next step and answers it."""

    def __init__(self, flow: Generator[Any, Outcome, Any], clock: Clock | None = None) -> None:
        self.flow = flow
        self.clock = clock
        self.step: Any = next(flow)
        self.result: Any = None
        self.done = False

    def expect(self, method: str, answer: Outcome, **checks: Any) -> Request:
        step = self.step
        assert isinstance(step, Request), f"expected {method}, got {step}"
        assert step.method == method, f"expected {method}, got {step.method} {step.url}"
        headers = dict(step.headers)
        for name, value in checks.items():
            if name == "body":
                assert step.body == value, (step.body, value)
            else:
                assert headers.get(name.replace("_", "-")) == value, (name, headers)
        self._send(answer)
        return step

    def expect_sleep(self, at_least: float = 0.0, at_most: float = float("inf")) -> float:
        step = self.step
        assert isinstance(step, Sleep), f"expected a sleep, got {step}"
        assert at_least <= step.seconds <= at_most, step.seconds
        if self.clock is not None:
            self.clock.now += step.seconds
        self._send(None)
        return step.seconds

    def _send(self, answer: Outcome) -> None:
        try:
            self.step = self.flow.send(answer)
        except StopIteration as stop:
            self.done = True
            self.result = stop.value
            self.step = None


def ok(**headers: str) -> Reply:
    return Reply(204, {k.replace("_", "-").lower(): v for k, v in headers.items()})


def status(code: int, text: str = "", **headers: str) -> Reply:
    return Reply(code, {k.replace("_", "-").lower(): v for k, v in headers.items()}, text)


def created(location: str = URL, **headers: str) -> Reply:
    return Reply(
        201, {"location": location, **{k.replace("_", "-").lower(): v for k, v in headers.items()}}
    )


CUT = NetworkFailure("ConnectError: connection reset")


def flow(
    length: int,
    *,
    settings: Settings | None = None,
    caps: Capabilities = CAPS,
    dialect: Dialect = TUS,
    clock: Clock | None = None,
    **kwargs: Any,
) -> UploadFlow:
    return UploadFlow(
        dialect,
        END,
        length,
        caps,
        settings or Settings(chunk_size=10 * KiB, checksum="none"),
        clock or Clock(),
        random.Random(7),
        **kwargs,
    )


# -- the plain path --------------------------------------------------------------------------


def test_creation_with_the_first_chunk_then_appends_from_the_servers_offset() -> None:
    f = flow(25 * KiB, metadata={"filename": "a.bin"})
    d = Driver(f.run())
    d.expect(
        "POST",
        created(upload_offset=str(10 * KiB)),
        Upload_Length=str(25 * KiB),
        Content_Type="application/offset+octet-stream",
        body=Slice(0, 10 * KiB),
    )
    d.expect("PATCH", ok(upload_offset=str(20 * KiB)), Upload_Offset=str(10 * KiB))
    d.expect("PATCH", ok(upload_offset=str(25 * KiB)), body=Slice(20 * KiB, 5 * KiB))
    assert d.done and d.result == URL
    assert f.progress.offset == 25 * KiB and f.progress.retries == 0


def test_without_creation_with_upload_the_post_is_empty() -> None:
    d = Driver(flow(5, caps=Capabilities()).run())
    d.expect("POST", created(), Content_Length="0", body=None)
    d.expect("PATCH", ok(upload_offset="5"), body=Slice(0, 5))
    assert d.done


def test_an_empty_file_is_one_post() -> None:
    d = Driver(flow(0).run())
    d.expect("POST", created(), Upload_Length="0", body=None)
    assert d.done


def test_the_servers_offset_wins_over_the_flows_own_count() -> None:
    """A 204 that acknowledges less than was sent: the next chunk starts where the
    server says, re-sending the rest."""
    d = Driver(flow(30 * KiB, caps=Capabilities()).run())
    d.expect("POST", created())
    d.expect("PATCH", ok(upload_offset=str(4 * KiB)), body=Slice(0, 10 * KiB))
    d.expect("PATCH", ok(upload_offset=str(14 * KiB)), body=Slice(4 * KiB, 10 * KiB))


def test_per_chunk_checksum_uses_what_the_server_offers() -> None:
    f = flow(5, settings=Settings(checksum="auto"))
    d = Driver(f.run())
    d.expect("POST", created(upload_offset="5"), body=Slice(0, 5, "crc32c"))
    assert flow(5, settings=Settings(checksum="sha256")).checksum is None  # not offered
    assert flow(5, settings=Settings(checksum="sha1")).checksum == "sha1"
    assert flow(5, settings=Settings(checksum="sha1"), caps=Capabilities()).checksum is None


# -- failures while appending ------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [CUT, status(500, "boom"), status(502), status(503), status(423), status(408)],
    ids=["network", "500", "502", "503", "423", "408"],
)
def test_a_failed_append_backs_off_asks_and_continues(failure: Outcome) -> None:
    f = flow(30 * KiB, caps=Capabilities())
    d = Driver(f.run())
    d.expect("POST", created())
    d.expect("PATCH", failure, body=Slice(0, 10 * KiB))
    d.expect_sleep(0, 0.5)  # first backoff: full jitter in [0, base]
    # The server kept 6 KiB of the cut chunk: the flow goes on from there.
    d.expect("HEAD", status(200, upload_offset=str(6 * KiB), upload_length=str(30 * KiB)))
    d.expect("PATCH", ok(upload_offset=str(16 * KiB)), body=Slice(6 * KiB, 10 * KiB))
    assert f.progress.retries == 1 and f.progress.resyncs == 1


def test_retry_after_is_honoured() -> None:
    d = Driver(flow(10, caps=Capabilities()).run())
    d.expect("POST", created())
    d.expect("PATCH", status(429, "slow down", retry_after="7"))
    assert d.expect_sleep(7, 7) == 7
    d.expect("HEAD", status(200, upload_offset="0"))
    d.expect("PATCH", ok(upload_offset="10"))
    assert d.done


def test_a_409_asks_again_at_once() -> None:
    d = Driver(flow(20, caps=Capabilities(), settings=Settings(chunk_size=10)).run())
    d.expect("POST", created())
    d.expect("PATCH", status(409, "offset mismatch"), Upload_Offset="0")
    d.expect("HEAD", status(200, upload_offset="10"))  # an earlier PATCH got through
    d.expect("PATCH", ok(upload_offset="20"), Upload_Offset="10", body=Slice(10, 10))
    assert d.done


def test_a_checksum_mismatch_is_resent_once_then_fails() -> None:
    f = flow(
        10,
        settings=Settings(checksum="crc32c"),
        caps=Capabilities(
            extensions=frozenset({"creation", "checksum"}), checksums=frozenset({"crc32c"})
        ),
    )
    d = Driver(f.run())
    d.expect("POST", created())
    d.expect("PATCH", status(460, "checksum mismatch"), body=Slice(0, 10, "crc32c"))
    d.expect("HEAD", status(200, upload_offset="0"))
    with pytest.raises(UploadFailed, match="checksum mismatch twice") as info:
        d.expect("PATCH", status(460, "checksum mismatch"), body=Slice(0, 10, "crc32c"))
    assert info.value.url == URL and info.value.status == 460


@pytest.mark.parametrize("code", [404, 410])
def test_an_upload_that_is_gone_ends_with_its_url_and_reason(code: int) -> None:
    d = Driver(flow(10, caps=Capabilities()).run())
    d.expect("POST", created())
    with pytest.raises(UploadGone) as info:
        d.expect("PATCH", status(code, "upload expired"))
    assert info.value.url == URL and "upload expired" in str(info.value)


@pytest.mark.parametrize(
    ("code", "words"), [(413, "too large"), (400, "refused"), (403, "refused")]
)
def test_a_request_that_cannot_succeed_ends_at_once(code: int, words: str) -> None:
    d = Driver(flow(10, caps=Capabilities()).run())
    d.expect("POST", created())
    with pytest.raises(UploadFailed, match=words) as info:
        d.expect("PATCH", status(code, "the reason"))
    assert info.value.status == code and "the reason" in str(info.value)


def test_attempts_without_progress_are_bounded() -> None:
    d = Driver(flow(10, caps=Capabilities(), settings=Settings(retries=3)).run())
    d.expect("POST", created())
    d.expect("PATCH", CUT)
    for _ in range(2):
        d.expect_sleep()
        d.expect("HEAD", CUT)
    d.expect_sleep()
    with pytest.raises(UploadFailed, match="gave up after 4 attempts"):
        d.expect("HEAD", CUT)


def test_progress_resets_the_attempt_count() -> None:
    """A connection cut after every few bytes still finishes: each attempt progresses."""
    d = Driver(flow(50, caps=Capabilities(), settings=Settings(retries=1, chunk_size=50)).run())
    d.expect("POST", created())
    for offset in range(0, 50, 10):
        d.expect("PATCH", CUT, Upload_Offset=str(offset))
        d.expect_sleep()
        d.expect("HEAD", status(200, upload_offset=str(offset + 10)))
    assert d.done


def test_backoff_grows_with_jitter_and_stops_at_the_cap() -> None:
    settings = Settings(retries=50, backoff_base=1.0, backoff_cap=8.0)
    d = Driver(flow(10, caps=Capabilities(), settings=settings).run())
    d.expect("POST", created())
    d.expect("PATCH", CUT)
    sleeps = []
    for _ in range(30):
        sleeps.append(d.expect_sleep(0, 8.0))
        d.expect("HEAD", CUT)
    assert max(sleeps[:3]) <= 4.0 and max(sleeps[5:]) > 4.0  # it grows, within the cap
    assert len(set(sleeps)) == len(sleeps)  # jittered


def test_the_total_time_is_bounded() -> None:
    clock = Clock()
    settings = Settings(retries=1000, total_timeout=60.0, backoff_cap=30.0)
    d = Driver(flow(10, caps=Capabilities(), settings=settings, clock=clock).run(), clock)
    d.expect("POST", created())
    d.expect("PATCH", CUT)
    with pytest.raises(UploadFailed, match=r"gave up after 60\.0s"):
        for _ in range(1000):
            d.expect_sleep(0, 30.0)
            assert clock.now <= 60.0
            d.expect("HEAD", CUT)


def test_head_failures_are_retried_too() -> None:
    d = Driver(flow(10, caps=Capabilities()).run())
    d.expect("POST", created())
    d.expect("PATCH", CUT)
    d.expect_sleep()
    d.expect("HEAD", status(503))
    d.expect_sleep()
    d.expect("HEAD", status(200, upload_offset="10"))
    assert d.done  # the cut PATCH had got through whole


def test_a_regression_is_counted_and_the_server_believed() -> None:
    f = flow(20, caps=Capabilities(), settings=Settings(chunk_size=10))
    d = Driver(f.run())
    d.expect("POST", created())
    d.expect("PATCH", ok(upload_offset="10"))
    d.expect("PATCH", CUT)
    d.expect_sleep()
    d.expect("HEAD", status(200, upload_offset="5"))
    d.expect("PATCH", ok(upload_offset="15"), Upload_Offset="5", body=Slice(5, 10))
    assert f.progress.regressions == 1


# -- creation and resumption ------------------------------------------------------------------


def test_a_failed_creation_creates_again() -> None:
    d = Driver(flow(10).run())
    d.expect("POST", CUT, body=Slice(0, 10))
    d.expect_sleep()
    d.expect("POST", created(upload_offset="10"), body=Slice(0, 10))
    assert d.done


def test_creation_refused_ends_with_the_endpoint_and_reason() -> None:
    d = Driver(flow(10).run())
    with pytest.raises(UploadFailed, match="bad metadata") as info:
        d.expect("POST", status(400, "bad metadata"))
    assert info.value.url == END


def test_creation_with_a_body_but_no_offset_asks() -> None:
    d = Driver(flow(10).run())
    d.expect("POST", created(), body=Slice(0, 10))
    d.expect("HEAD", status(200, upload_offset="10"))
    assert d.done


def test_a_remembered_upload_resumes_from_the_servers_offset() -> None:
    f = flow(30, url=URL, caps=Capabilities(), settings=Settings(chunk_size=100))
    d = Driver(f.run())
    d.expect("HEAD", status(200, upload_offset="12", upload_length="30"))
    d.expect("PATCH", ok(upload_offset="30"), body=Slice(12, 18))
    assert d.done and f.progress.resumed


@pytest.mark.parametrize("code", [404, 410, 403])
def test_a_remembered_upload_that_is_gone_starts_afresh(code: int) -> None:
    created_urls: list[str] = []
    f = flow(5, url=URL, caps=Capabilities(), on_created=created_urls.append)
    d = Driver(f.run())
    d.expect("HEAD", status(code))
    d.expect("POST", created("/files/new"))
    d.expect("PATCH", ok(upload_offset="5"))
    assert d.result == "http://h/files/new" and created_urls == ["http://h/files/new"]
    assert f.progress.forgotten and not f.progress.resumed


def test_a_complete_remembered_upload_sends_nothing() -> None:
    d = Driver(flow(5, url=URL).run())
    d.expect("HEAD", status(200, upload_offset="5"))
    assert d.done


def test_parts_of_a_parallel_upload_read_their_own_range() -> None:
    f = flow(10, concat="partial", source_start=100, caps=Capabilities())
    d = Driver(f.run())
    d.expect("POST", created(), Upload_Concat="partial", Upload_Length="10")
    d.expect("PATCH", ok(upload_offset="10"), Upload_Offset="0", body=Slice(100, 10))
    assert d.done


def test_concatenation_retries_then_returns_the_final_url() -> None:
    settings = Settings()
    d = Driver(
        concatenate(TUS, END, [URL, URL + "2"], {"a": "b"}, settings, Clock(), random.Random(1))
    )
    d.expect("POST", status(503))
    d.expect_sleep()
    step = d.expect("POST", created("/files/final"), Upload_Concat=f"final;{URL} {URL}2")
    assert "Upload-Length" not in dict(step.headers)
    assert d.result == "http://h/files/final"


# -- discovery and the IETF dialect -------------------------------------------------------------


def test_discovery_reads_options_and_falls_back_to_the_core() -> None:
    d = Driver(discover(TUS, END, Settings(), Clock(), random.Random(1)))
    d.expect(
        "OPTIONS",
        status(
            204,
            tus_extension="creation,checksum,concatenation",
            tus_checksum_algorithm="md5,sha1",
            tus_max_size="1000",
        ),
    )
    caps = d.result
    assert caps.offers("concatenation") and caps.checksum("auto") == "sha1"
    assert caps.max_size == 1000
    d = Driver(discover(TUS, END, Settings(), Clock(), random.Random(1)))
    d.expect("OPTIONS", CUT)
    d.expect_sleep()
    d.expect("OPTIONS", status(405))
    assert d.result == Capabilities()
    assert d.result.checksum("auto") is None and not d.result.offers("creation-with-upload")


def test_ietf_upload_marks_the_last_chunk_complete() -> None:
    caps = Capabilities(max_append=8)
    f = flow(12, dialect=IETF, caps=caps, settings=Settings(chunk_size=100, checksum="auto"))
    d = Driver(f.run())
    d.expect(
        "POST",
        created(upload_offset="0", upload_complete="?0"),
        Upload_Draft_Interop_Version="6",
        Upload_Complete="?0",
        Upload_Length="12",
        body=None,
    )
    # Upload-Limit's max-append-size caps the chunk.
    d.expect(
        "PATCH",
        ok(upload_offset="8", upload_complete="?0"),
        Upload_Complete="?0",
        Content_Type="application/partial-upload",
        body=Slice(0, 8),
    )
    d.expect("PATCH", CUT, Upload_Complete="?1", body=Slice(8, 4))
    d.expect_sleep()
    d.expect("HEAD", ok(upload_offset="12", upload_complete="?1"))
    assert d.done


def test_ietf_empty_upload_completes_at_creation() -> None:
    d = Driver(flow(0, dialect=IETF).run())
    d.expect("POST", created(upload_offset="0", upload_complete="?1"), Upload_Complete="?1")
    assert d.done
