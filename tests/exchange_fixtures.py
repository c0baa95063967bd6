"""The exchanges' docs examples and ccxt's samples under tests/fixtures/exchanges, served byte for
byte by the fakes: each ``<platform>/<name>.json`` body, and the markets they trade."""

from __future__ import annotations

from pathlib import Path

from kits.fake_exchanges.server import DEFAULT_MARKETS, MarketSpec

FIXTURES = Path(__file__).parent / "fixtures" / "exchanges"

#: the fixtures' markets with the exchanges' real contract sizes (okx ctVal, gate multiplier)
MARKETS = (
    *DEFAULT_MARKETS,
    MarketSpec("SUSHI", okx_ct_val="1", gate_multiplier="1", price="1.2"),
    MarketSpec("XRP", okx_ct_val="100", gate_multiplier="10", price="0.6"),
    MarketSpec("SLERF", okx_ct_val="1", gate_multiplier="1", price="0.5"),
)


def body_of(platform: str, name: str) -> bytes:
    """A fixture's body; its ``<name>.md`` beside it names one source."""
    path = FIXTURES / platform / f"{name}.json"
    assert (FIXTURES / platform / f"{name}.md").read_text().count("## Source") == 1
    return path.read_bytes()
