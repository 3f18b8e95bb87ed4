"""Money, pure: amounts in micro-dollars, prices, budget periods and bounds, the ledger's codec, usage events,
forecasts and advice."""
