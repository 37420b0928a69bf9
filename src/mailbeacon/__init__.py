"""mailbeacon: self-hostable email open and click tracking."""

__version__ = "0.1.0"
