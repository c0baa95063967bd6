"""The ``exchanges:`` config section: validation and conversion to adapter options."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from daemon.exchanges_config import ExchangesConfig, ProxyConfig
from exchange_adapters.options import BudgetOptions, CredentialEnv
from reconcile.errors import ConfigError


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
    assert options.credentials_env == CredentialEnv(
        "BITGET_KEY", "BITGET_SECRET", "BITGET_PASSPHRASE"
    )
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


# --- hosts, budgets and the proxy ---------------------------------------------------------------


def test_hosts_and_budgets() -> None:
    config = _load("""
exchanges:
  binance:
    budget_share: 0.25
    budget: {limit: 1200, window: 30s}
    base_url: http://127.0.0.1:9/bn
  okx:
    account_budget: {limit: 5, window: 1s, share: 0.5}
    use_account_base_url: true
  gate: {}
""")
    options = config.adapter_options()
    binance, okx, gate = options["binance"], options["okx"], options["gate"]
    assert binance.base_url == "http://127.0.0.1:9/bn" and not binance.account_base_url
    assert binance.budget == BudgetOptions(limit=1200, window=30.0, share=0.25)
    assert okx.account_budget == BudgetOptions(limit=5, window=1.0, share=0.5)
    assert okx.account_base_url and okx.base_url is None and okx.budget_share == 0.4
    # the defaults: ccxt's hosts (the engine's), the platform's own budgets at 40 %
    assert gate.base_url is None and not gate.account_base_url
    assert gate.budget is None and gate.account_budget is None and gate.budget_share == 0.4


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("binance: {budget_share: 0}", "budget_share"),
        ("binance: {budget_share: 1.5}", "budget_share"),
        ("binance: {budget: {limit: 0, window: 60s}}", "limit"),
        ("binance: {budget: {limit: 10, window: 0s}}", "window"),
        ("binance: {budget: {limit: 10}}", "window"),
        ("okx: {base_url: 'fapi.binance.com'}", "base_url"),
        ("okx: {use_account_base_url: maybe}", "use_account_base_url"),
    ],
)
def test_bad_hosts_and_budgets_name_the_field(section: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _load(f"exchanges:\n  {section}\n")


def _proxy(text: str) -> ProxyConfig:
    return ProxyConfig.model_validate(yaml.safe_load(text) or {})


def test_the_proxy_defaults_to_the_engines_and_config_overrides_it() -> None:
    assert _proxy("").source == "database"
    assert _proxy("source: none").configured() is None
    section = _proxy("""
source: config
type: socks5
address: 10.0.0.5:1080
username: reconcile
password_env: PROXY_PW
""")
    proxy = section.configured({"PROXY_PW": "s3cret-pw"})
    assert proxy is not None
    assert (proxy.kind, proxy.host, proxy.port, proxy.username) == (
        "socks5",
        "10.0.0.5",
        1080,
        "reconcile",
    )
    assert proxy.url() == "socks5h://reconcile:s3cret-pw@10.0.0.5:1080"
    assert "s3cret" not in proxy.label + repr(proxy) + str(proxy)
    with pytest.raises(ConfigError, match="PROXY_PW is not set"):
        section.configured({})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source: config", "needs type and address"),
        ("{source: config, type: socks5, address: 'nohost'}", "not host:port"),
        ("{source: config, type: socks4, address: 'h:1'}", "type"),
        ("{source: config, type: http, address: 'h:1', password_env: P}", "needs username"),
        ("{source: database, address: 'h:1'}", "only with source: config"),
        ("source: file", "source"),
    ],
)
def test_bad_proxy_settings_name_the_field(text: str, message: str) -> None:
    with pytest.raises((ValidationError, ConfigError), match=message):
        _proxy(text)
