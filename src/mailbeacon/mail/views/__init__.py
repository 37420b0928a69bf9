"""The mail domain's pages: compose, the Mail tab with each email's detail, the Demo inbox,
and the CSV downloads."""

from __future__ import annotations

from fastapi import APIRouter

from mailbeacon.kit.display import unicode_address
from mailbeacon.mail.attachments import size_text
from mailbeacon.mail.views import compose, demo, export, sent
from mailbeacon.web.deps import templates

# Attachment sizes as the pages show them ("2.4 MB"), the same words as compose's limit.
templates.env.filters["filesize"] = size_text
# Addresses with their international domains in Unicode, for display only.
templates.env.filters["unicode_address"] = unicode_address

router = APIRouter(include_in_schema=False)
router.include_router(compose.router)
router.include_router(export.router)
router.include_router(sent.router)
router.include_router(demo.router)
