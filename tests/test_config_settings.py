"""The configuration reaches the core as typed settings, built once: the sweep's, the power
rules' override, and the pool's drain wait following ``shutdown_timeout``."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from daemon.config import Config
from daemon.runtime import sync_settings
from reconcile.charging.corrections import CorrectionMode
from reconcile.charging.pricing import PowerOverride
from reconcile.charging.sweep import SweepSettings


def test_typed_settings_follow_the_configuration() -> None:
    config = Config.model_validate(
        {
            "shutdown_timeout": "7s",
            "sweep": {"lookback": "2d", "page_size": 40, "workers": 3},
            "power": {"consume_rate": "0.2", "vip_discount": False, "corrections": "adjust"},
        }
    )
    assert config.database_settings().drain_timeout == 7.0
    assert Config().database_settings().drain_timeout == 30.0
    assert config.sweep.settings() == SweepSettings(
        lookback=timedelta(days=2), page_size=40, workers=3
    )
    assert config.power.override() == PowerOverride(
        consume_rate=Decimal("0.2"), min_consume=None, vip_discount=False
    )
    assert sync_settings(config).corrections is CorrectionMode.ADJUST
    assert sync_settings(Config()).corrections is CorrectionMode.LOG  # today's behaviour
