"""Only the CLI turns an error into a message and an exit status: one line, no traceback."""

from __future__ import annotations

import argparse

import pytest

from crypto_live import cli, errors

ERRORS = [
    (
        errors.SettingsError("MAX_BATCH_SIZE", "ten", "a whole number from 1 to 1000000"),
        2,
        "configuration error: MAX_BATCH_SIZE='ten' is invalid: expected a whole number from 1 to 1000000",
    ),
    (errors.BucketSetupError("S3 bucket 'nope' does not exist"), 1, "S3 bucket 'nope' does not exist"),
    (errors.DestinationError("DynamoDB table 't' was deleted"), 1, "DynamoDB table 't' was deleted"),
    (errors.DeliveryError("3 messages were not delivered"), 1, "3 messages were not delivered"),
]


@pytest.mark.parametrize(("error", "status", "line"), ERRORS, ids=[type(e).__name__ for e, _, _ in ERRORS])
def test_main_prints_one_line_and_returns_the_errors_exit_status(monkeypatch, capsys, error, status, line):
    def failing(args: argparse.Namespace, environ: object) -> int:
        raise error

    monkeypatch.setattr(cli, "config_command", failing)
    assert cli.main(["config"], environ={}) == status
    assert capsys.readouterr().err == f"crypto-live config: {line}\n"


def test_every_error_in_the_tree_carries_an_exit_status():
    classes = [errors.CryptoLiveError, *errors.CryptoLiveError.__subclasses__()]
    assert len(classes) > 5
    for cls in classes:
        assert isinstance(cls.exit_status, int) and cls.exit_status >= 1
