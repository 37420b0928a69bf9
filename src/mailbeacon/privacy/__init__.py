"""Consent and privacy by design: the organisation's policy, consent with its proof, the
gates at send time and at hit time, the opt-out page, export, erasure, retention, audit."""
