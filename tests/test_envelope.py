"""The event envelope (events/envelope.py): stream fields in and out, unknown types and fields kept, bad entries
refused, which types end a stream. Pure: no Redis."""

from __future__ import annotations

import pytest

from events.envelope import EnvelopeError, Event


def test_event_survives_a_round_trip_through_stream_fields_with_unknown_fields_kept() -> None:
    event = Event("tool_end", "j1", 7, 1700000000.123456, 2, {"ok": True, "text": "héllo"}, extra={"trace": "t-9"})
    fields = event.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert fields["trace"] == "t-9"
    raw = {k.encode(): v.encode() for k, v in fields.items()}  # what a bytes client returns
    assert Event.from_fields(raw) == event
    assert Event.from_fields(fields) == event


def test_unknown_event_types_pass_through_unchanged() -> None:
    event = Event.from_fields({"type": "telemetry_v9", "seq": "3", "data": '{"x":1}'})
    assert (event.type, event.seq, event.data) == ("telemetry_v9", 3, {"x": 1})
    assert Event.from_fields(event.to_fields()) == event


def test_data_that_is_not_an_object_is_wrapped_as_value() -> None:
    assert Event.from_fields({"type": "token", "data": "[1,2]"}).data == {"value": [1, 2]}


@pytest.mark.parametrize(
    "fields",
    [
        {"job_id": "j", "seq": "1"},
        {"type": "token", "seq": "one"},
        {"type": "token", "ts": "yesterday"},
        {"type": "token", "attempt": "1.5"},
        {"type": "token", "v": "x"},
        {"type": "token", "data": "{not json"},
    ],
)
def test_entries_without_type_or_with_bad_numbers_raise_envelope_error(fields: dict[str, str]) -> None:
    with pytest.raises(EnvelopeError):
        Event.from_fields(fields)


@pytest.mark.parametrize(
    ("etype", "terminal"),
    [
        ("done", True),
        ("error", True),
        ("cancelled", True),
        ("token", False),
        ("start", False),
        ("lifecycle", False),
        ("mystery", False),
    ],
)
def test_only_done_error_and_cancelled_are_terminal(etype: str, terminal: bool) -> None:
    assert Event(etype).terminal is terminal


def test_the_relays_json_of_an_entry_is_the_decoded_events_json() -> None:
    events = [
        Event("token", "j1", 3, 1700000000.5, 1, {"text": "héllo"}),
        Event("tool_end", "j1", 7, 1700000000.123456, 2, {"ok": True}, extra={"trace": "t-9"}),
        Event("telemetry_v9"),
    ]
    for event in events:
        fields = event.to_fields()
        for raw in (fields, {k.encode(): v.encode() for k, v in fields.items()}):
            assert Event.json_of_fields(raw) == Event.from_fields(raw).to_json()
    assert Event.json_of_fields({b"type": b"token", b"data": b'"x"'})["data"] == {"value": "x"}
    for bad in ({b"data": b"{}"}, {b"type": b"token", b"seq": b"third"}, {b"type": b"token", b"data": b"{"}):
        with pytest.raises(EnvelopeError):
            Event.json_of_fields(bad)
