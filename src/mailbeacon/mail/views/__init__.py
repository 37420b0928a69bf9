"""The mail domain's pages: compose, the Mail tab with each email's detail, the Demo inbox,
and the CSV downloads."""

from __future__ import annotations

from fastapi import APIRouter

from mailbeacon.mail.views import compose, demo, export, sent

router = APIRouter(include_in_schema=False)
router.include_router(compose.router)
router.include_router(export.router)
router.include_router(sent.router)
router.include_router(demo.router)
