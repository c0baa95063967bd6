"""The ``exchanges:`` config section: validation and conversion to adapter options."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from daemon.exchanges_config import ExchangesConfig
from exchange_adapters.options import CredentialEnv


class _Main(BaseModel):
    """Stands in for daemon.config.Config, which gets the field ``exchanges``."""

    exchanges: ExchangesConfig = ExchangesConfig()


def _load(text: str) -> ExchangesConfig:
    return _Main.model_validate(yaml.safe_load(text) or {}).exchanges


def test_listed_platforms_are_enabled_with_defaults() -> None:
    config = _load("""
exchanges:
  binance:
  okx: {}
  replay: {path: demo/closed.jsonl}
""")
    assert config.enabled() == ("binance", "okx", "replay")
    assert "binance" in config and "gate" not in config
    options = config.adapter_options()
    binance = options["binance"]
    assert binance.timeout == 10.0 and binance.profit_basis == "net"
    assert binance.retry.attempts == 4 and binance.retry.initial == 0.5
    assert binance.retry.maximum == 10.0 and binance.retry.retry_after_max == 60.0
    assert binance.max_concurrent_requests == 4 and binance.cooldown == 900.0
    assert binance.credentials_env is None and binance.rate_limit_ms is None
    assert options["replay"].path == Path("demo/closed.jsonl")


def test_no_section_means_nothing_enabled() -> None:
    assert _load("").enabled() == ()
    assert _load("exchanges:").enabled() == ()


def test_every_option() -> None:
    config = _load("""
exchanges:
  bitget:
    options: {uta: true, recvWindow: 5000}
    timeout: 2500ms
    retry: {attempts: 6, initial: 100ms, max: 5s, retry_after_max: 2m}
    max_concurrent_requests: 2
    profit_basis: gross
    cooldown: 1h
    rate_limit: 100ms
    api_key_env: BITGET_KEY
    secret_env: BITGET_SECRET
    passphrase_env: BITGET_PASSPHRASE
""")
    options = config.adapter_options()["bitget"]
    assert options.ccxt_options == {"uta": True, "recvWindow": 5000}
    assert options.timeout == 2.5 and options.profit_basis == "gross"
    assert (options.retry.attempts, options.retry.initial, options.retry.maximum) == (6, 0.1, 5.0)
    assert options.retry.retry_after_max == 120.0
    assert options.max_concurrent_requests == 2 and options.cooldown == 3600.0
    assert options.rate_limit_ms == 100
    assert options.credentials_env == CredentialEnv("BITGET_KEY", "BITGET_SECRET",
                                                    "BITGET_PASSPHRASE")  # fmt: skip
    with pytest.raises(ValidationError):
        config["bitget"].timeout = timedelta(seconds=1)  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"binanse": {}}, "Input should be 'binance'"),
        ({"binance": {"timout": "1s"}}, "Extra inputs are not permitted"),
        ({"binance": {"retry": {"attempt": 3}}}, "Extra inputs are not permitted"),
        ({"binance": {"profit_basis": "realized"}}, "Input should be 'net' or 'gross'"),
        ({"binance": {"timeout": "soon"}}, "is not a duration"),
        ({"binance": {"max_concurrent_requests": 0}}, "greater than or equal to 1"),
        ({"binance": {"retry": {"initial": "5s", "max": "1s"}}}, "initial must not exceed max"),
        ({"binance": {"api_key_env": "sk-abc=123"}}, "not an environment variable name"),
        ({"binance": {"path": "x.jsonl"}}, "path applies to replay only"),
        ({"replay": {}}, "replay: path is required"),
        ({"replay": {"path": "x", "api_key_env": "K"}}, "do not apply"),
        ({"binance": "yes"}, "valid dictionary"),
    ],
)
def test_mistakes_are_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _Main.model_validate({"exchanges": section})
