"""JSON API of the accounts domain: who the token or session belongs to."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from mailbeacon.web.deps import SignedInViewer

router = APIRouter(prefix="/api")


class ComposeDefaultsOut(BaseModel):
    open_tracking_offered: bool
    link_tracking_offered: bool
    open_tracking: bool
    link_tracking: bool


class MeOut(BaseModel):
    id: int
    email: str
    name: str
    organisation_id: int
    compose_defaults: ComposeDefaultsOut


@router.get("/me")
def me(viewer: SignedInViewer) -> MeOut:
    """The signed-in user and where compose's tracking switches start."""
    user = viewer.user
    return MeOut(
        id=user.id,
        email=user.email,
        name=user.display_name,
        organisation_id=user.organisation_id,
        compose_defaults=ComposeDefaultsOut(
            open_tracking_offered=user.open_tracking_enabled,
            link_tracking_offered=user.link_tracking_enabled,
            open_tracking=user.compose_open_tracking,
            link_tracking=user.compose_link_tracking,
        ),
    )
