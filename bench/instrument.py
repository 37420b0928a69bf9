#!/usr/bin/env python3
"""Instrumentation speed over the HTML corpus beside pytracking's adapt_html, same run.

    .venv/bin/pip install -e '.[bench]'      # pytracking with lxml
    .venv/bin/python bench/instrument.py [--rounds 7] [--corpus ../shared/corpus/html]

Prints emails/s for pytracking.adapt_html and for mailbeacon's instrument(), both
for a body seen for the first time (caches cleared: what the first copy of a new
email costs) and per personalised copy of the same body (what each further
recipient of a send costs). Best of N rounds, to damp noise from the machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cryptography.fernet import Fernet

from mailbeacon.tracking import instrument as inst
from mailbeacon.tracking.charset import decode_html_bytes
from mailbeacon.tracking.tokens import TokenCodec

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://t.example.com"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "html")
    args = parser.parse_args()
    import pytracking
    from pytracking.html import adapt_html

    files = sorted(p for p in args.corpus.iterdir() if p.is_file())
    docs = [decode_html_bytes(p.read_bytes())[0] for p in files]
    codec = TokenCodec([(1, os.urandom(64))])
    config = pytracking.Configuration(
        base_open_tracking_url=f"{BASE}/o/",
        base_click_tracking_url=f"{BASE}/c/",
        encryption_bytestring_key=Fernet.generate_key(),
    )
    failures = 0

    def reference() -> float:
        nonlocal failures
        failures = 0
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            try:
                adapt_html(doc, {"copy": i}, configuration=config)
            except Exception:
                failures += 1  # lxml finds no <body> in a few fragments
        return len(docs) / (time.perf_counter() - start)

    def first_copy() -> float:
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            inst.clear_caches()
            inst.instrument(html=doc, text=None, copy_id=i, codec=codec, base_url=BASE)
        return len(docs) / (time.perf_counter() - start)

    def further_copies() -> float:
        start = time.perf_counter()
        for i, doc in enumerate(docs):
            for c in range(args.copies):
                inst.instrument(
                    html=doc, text=None, copy_id=i * 1000 + c, codec=codec, base_url=BASE
                )
        return len(docs) * args.copies / (time.perf_counter() - start)

    best = {"reference": 0.0, "first": 0.0, "further": 0.0}
    for _ in range(args.rounds):
        best["reference"] = max(best["reference"], reference())
        best["first"] = max(best["first"], first_copy())
        best["further"] = max(best["further"], further_copies())
    ref = best["reference"]
    print(f"{len(docs)} emails from {args.corpus}, best of {args.rounds} rounds")
    print(
        f"pytracking.adapt_html                    {ref:9.0f} emails/s   1.0x  ({failures} raised)"
    )
    print(
        f"mailbeacon, first copy of a new body     {best['first']:9.0f} emails/s  {best['first'] / ref:5.1f}x"
    )
    print(
        f"mailbeacon, each further copy ({args.copies}/body)  {best['further']:9.0f} emails/s  {best['further'] / ref:5.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
