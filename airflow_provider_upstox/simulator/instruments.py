"""Static reference data of the simulated market: a handful of real NSE equities.

Real ISINs and symbols make the simulator's output look like Upstox's (and exercise the same key
shapes: ``NSE_EQ|<isin>`` instrument tokens, ``<SYMBOL>-EQ`` trading symbols); prices are only
starting points for the model's random walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Instrument:
    """One tradable equity: ``exchange`` is the order spelling, ``segment`` the position/GTT one."""

    isin: str
    symbol: str
    company_name: str
    base_price: float
    exchange: str = "NSE"
    segment: str = "NSE_EQ"
    haircut: float = 0.2

    @property
    def instrument_token(self) -> str:
        return f"{self.segment}|{self.isin}"

    @property
    def trading_symbol(self) -> str:
        return f"{self.symbol}-EQ"


INSTRUMENTS: Final[tuple[Instrument, ...]] = (
    Instrument("INE848E01016", "NHPC", "NHPC LTD", 92.9, haircut=0.21),
    Instrument("INE062A01020", "SBIN", "STATE BANK OF INDIA", 780.35, haircut=0.13),
    Instrument("INE009A01021", "INFY", "INFOSYS LIMITED", 1850.6, haircut=0.13),
    Instrument("INE002A01018", "RELIANCE", "RELIANCE INDUSTRIES LTD", 2901.15, haircut=0.13),
    Instrument("INE155A01022", "TATAMOTORS", "TATA MOTORS LIMITED", 975.4, haircut=0.17),
    Instrument("INE154A01025", "ITC", "ITC LTD", 428.75, haircut=0.13),
    Instrument("INE040A01034", "HDFCBANK", "HDFC BANK LTD", 1642.0, haircut=0.13),
    Instrument("INE669E01016", "IDEA", "VODAFONE IDEA LIMITED", 7.7, haircut=0.5),
)

#: Order statuses the model emits, as Upstox spells them (``docs/PROTOCOL.md`` §2).
PUT_RECEIVED: Final = "put order req received"
VALIDATION_PENDING: Final = "validation pending"
OPEN_PENDING: Final = "open pending"
OPEN: Final = "open"
TRIGGER_PENDING: Final = "trigger pending"
COMPLETE: Final = "complete"
CANCEL_PENDING: Final = "cancel pending"
CANCELLED: Final = "cancelled"
NOT_CANCELLED: Final = "not cancelled"
REJECTED: Final = "rejected"
MODIFY_VALIDATION_PENDING: Final = "modify validation pending"
MODIFY_PENDING: Final = "modify pending"
MODIFIED: Final = "modified"
AMO_RECEIVED: Final = "after market order req received"
AMO_MODIFY_RECEIVED: Final = "modify after market order req received"
AMO_CANCELLED: Final = "cancelled after market order"

TERMINAL: Final[frozenset[str]] = frozenset({COMPLETE, CANCELLED, REJECTED, AMO_CANCELLED})

REJECTION_MESSAGES: Final[tuple[str, ...]] = (
    "Insufficient funds. Required margin is 4521.65 but available margin is 120.40",
    "RMS:Rule: Check circuit limit including square off order exceeds",
    "Order price is out of the day's range",
)
