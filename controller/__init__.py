"""Controller for a bidirectional (V2G/V2H) EV charger."""

__version__ = "0.1.0"
