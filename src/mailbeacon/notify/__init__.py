"""Notifications raised by tracking activity, and the live stream that carries them."""
