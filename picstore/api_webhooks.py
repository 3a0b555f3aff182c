"""HTTP handlers for a project's webhooks and their recent deliveries."""

from __future__ import annotations

import uuid

from litestar import Router, delete, get, post, put
from litestar.params import FromPath, JSONBody

from picstore import ids, schemas, webhooks
from picstore.api_admin import EMPTY, Conf, Db, Who, path_id

WEBHOOKS = "/projects/{project_id:str}/webhooks"


def _project(text: str) -> uuid.UUID:
    return path_id(ids.PROJECT, text, "project")


def _webhook(text: str) -> uuid.UUID:
    return path_id(ids.WEBHOOK, text, "webhook")


@get(WEBHOOKS)
async def list_webhooks(db: Db, caller: Who, project_id: FromPath[str]) -> list[schemas.WebhookOut]:
    async with db.begin():
        return [webhooks.out(h) for h in await webhooks.list_webhooks(db, caller, _project(project_id))]


@post(WEBHOOKS)
async def create_webhook(
    db: Db, caller: Who, settings: Conf, project_id: FromPath[str], data: JSONBody[schemas.WebhookIn]
) -> schemas.WebhookCreated:
    async with db.begin():
        pid = _project(project_id)
        secret, hook = await webhooks.create_webhook(db, caller, pid, data, settings.secret_key)
        return schemas.WebhookCreated(secret=secret, webhook=webhooks.out(hook))


@get(WEBHOOKS + "/{webhook_id:str}")
async def get_webhook(
    db: Db, caller: Who, project_id: FromPath[str], webhook_id: FromPath[str]
) -> schemas.WebhookOut:
    async with db.begin():
        hook = await webhooks.get_webhook(db, caller, _project(project_id), _webhook(webhook_id))
        return webhooks.out(hook)


@put(WEBHOOKS + "/{webhook_id:str}")
async def update_webhook(
    db: Db,
    caller: Who,
    settings: Conf,
    project_id: FromPath[str],
    webhook_id: FromPath[str],
    data: JSONBody[schemas.WebhookIn],
) -> schemas.WebhookOut:
    async with db.begin():
        hook = await webhooks.update_webhook(
            db, caller, _project(project_id), _webhook(webhook_id), data, settings.secret_key
        )
        return webhooks.out(hook)


@delete(WEBHOOKS + "/{webhook_id:str}", status_code=200)
async def delete_webhook(
    db: Db, caller: Who, project_id: FromPath[str], webhook_id: FromPath[str]
) -> schemas.Empty:
    async with db.begin():
        await webhooks.delete_webhook(db, caller, _project(project_id), _webhook(webhook_id))
    return EMPTY


@get(WEBHOOKS + "/{webhook_id:str}/deliveries")
async def list_deliveries(
    db: Db, caller: Who, project_id: FromPath[str], webhook_id: FromPath[str]
) -> list[schemas.WebhookDeliveryOut]:
    async with db.begin():
        found = await webhooks.list_deliveries(db, caller, _project(project_id), _webhook(webhook_id))
        return [webhooks.delivery_out(d) for d in found]


router = Router(
    path="/",
    route_handlers=[
        list_webhooks,
        create_webhook,
        get_webhook,
        update_webhook,
        delete_webhook,
        list_deliveries,
    ],
)
