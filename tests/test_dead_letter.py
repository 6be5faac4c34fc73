from crypto_live.dead_letter import dead_letter, encode, original_bytes


def test_record_names_reason_stage_and_source_and_keeps_the_bytes():
    record = dead_letter("not JSON", b"}{", stage="s3-sink", topic="t", partition=2, offset=41)
    assert record["reason"] == "not JSON" and record["stage"] == "s3-sink"
    assert record["source"] == {"topic": "t", "partition": 2, "offset": 41}
    assert original_bytes(record) == b"}{"


def test_non_utf8_bytes_survive_as_base64():
    raw = b"\xff\xfe\x00junk"
    record = dead_letter("not JSON", raw, stage="producer")
    assert record["raw_encoding"] == "base64" and record["source"] is None
    assert original_bytes(record) == raw
    assert b"\xff" not in encode(record)
