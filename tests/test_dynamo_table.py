"""The DynamoDB table definition: what is created is exactly what is accepted (no I/O)."""

from __future__ import annotations

from crypto_live import dynamo_table


def _described(keys, types, status="ACTIVE"):
    return {
        "TableStatus": status,
        "KeySchema": [{"AttributeName": n, "KeyType": r} for n, r in keys],
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, t in types.items()],
    }


def test_table_problems_name_what_differs_from_the_contract():
    assert dynamo_table.table_problems(None) == ["does not exist"]
    good = _described([("symbol", "HASH"), ("event_time", "RANGE")], {"symbol": "S", "event_time": "N"})
    assert dynamo_table.table_problems(good) == []
    assert dynamo_table.table_problems(_described([("id", "HASH")], {"id": "S"})) == [
        "partition key is 'id' (S), expected 'symbol' (S)",
        "has no sort key, expected 'event_time' (N)",
    ]
    assert dynamo_table.table_problems(
        _described([("symbol", "HASH"), ("event_time", "RANGE")], {"symbol": "S", "event_time": "S"})
    ) == ["sort key is 'event_time' (S), expected 'event_time' (N)"]
    assert dynamo_table.table_problems(
        _described([("event_time", "HASH"), ("symbol", "RANGE")], {"symbol": "S", "event_time": "N"})
    ) == [
        "partition key is 'event_time' (N), expected 'symbol' (S)",
        "sort key is 'symbol' (S), expected 'event_time' (N)",
    ]
    assert dynamo_table.table_problems({**good, "TableStatus": "DELETING"}) == ["is DELETING"]


def test_create_request_matches_the_contract_it_is_checked_against():
    request = dynamo_table.create_table_request("t1")
    assert request["BillingMode"] == "PAY_PER_REQUEST"
    assert dynamo_table.table_problems({**request, "TableStatus": "ACTIVE"}) == []


def test_ttl_problem_only_when_rows_would_not_expire():
    assert dynamo_table.ttl_problem({"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}) is None
    assert "disabled" in dynamo_table.ttl_problem({"TimeToLiveStatus": "DISABLED"})
    assert "'expires_at'" in dynamo_table.ttl_problem({"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"})
