"""`edgehook wandb setup`: create or update the W&B automation that calls this device.

Uses the wandb SDK's automations API (wandb >= 0.19.11). The team webhook itself (URL,
access token, secret) has no public API: it is made once in the W&B UI (Team Settings >
Webhooks) and found here by name or by the URL the tunnel recorded. The automation is:
event "alias added" (filtered to one alias) on a project or one artifact collection, action
"send to that webhook" with edgehook's recommended payload template. Running it again
changes nothing when W&B already holds exactly that; otherwise it updates the automation
of that name in place. `--dry-run` reads W&B and prints the plan without writing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import EdgehookError
from edgehook.template import RECOMMENDED_TEMPLATE

DESCRIPTION = "Managed by `edgehook wandb setup`: calls the edge device's webhook."
# Fields of the automation's GraphQL input that setup owns (everything but id and name).
OWNED = (
    "description",
    "enabled",
    "eventFilter",
    "scopeID",
    "scopeType",
    "triggeredActionConfig",
    "triggeredActionType",
    "triggeringEventType",
)


@dataclass(frozen=True)
class Request:
    entity: str
    project: str
    alias: str = "retrain"
    name: str = "edgehook-retrain"
    webhook: str | None = None  # the W&B webhook's name; else matched by URL
    url: str | None = None  # the webhook URL to match (default: the tunnel's, if recorded)
    collection: str | None = None  # scope: one collection instead of the whole project
    artifact_type: str = "dataset"


@dataclass(frozen=True)
class Outcome:
    change: str  # "create" | "update" | "unchanged"
    automation: str
    webhook: str
    scope: str
    differs: tuple[str, ...]  # fields an update changes
    applied: bool


def recorded_webhook_url(data_dir: Path) -> str | None:
    """The webhook URL `edgehook tunnel` recorded, if any."""
    try:
        state = json.loads((data_dir / "tunnel.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = state.get("webhook_url") if isinstance(state, dict) else None
    return url if isinstance(url, str) else None


def setup(
    request: Request,
    *,
    api_key: str | None,
    dry_run: bool,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Make W&B hold the automation `request` describes. Raises EdgehookError with one line."""
    try:
        import wandb
        from wandb import automations
        from wandb.errors import CommError, UsageError
    except ImportError as exc:
        raise EdgehookError(
            "wandb setup needs the wandb package: pip install 'edgehook[pipeline]'"
        ) from exc

    # The SDK's default GraphQL retries take minutes to give up: a CLI should fail fast.
    os.environ.setdefault("WANDB__GRAPHQL_RETRY_MAX", "3")
    # ... and its waits between them grow with jitter past a minute each unless capped.
    os.environ.setdefault("WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS", "2")
    try:
        # wandb-core retries a failing server until this timeout: keep it short for a CLI.
        api = wandb.Api(api_key=api_key, timeout=10)
        plan = _plan(api, automations, request)
        _report(plan.outcome, request, dry_run, say)
        if dry_run or plan.outcome.change == "unchanged":
            return plan.outcome
        _apply(api, plan, request.name)
        say(f"{'created' if plan.existing is None else 'updated'} automation {request.name!r}")
        return replace(plan.outcome, applied=True)
    except UsageError as exc:
        raise EdgehookError(
            f"W&B refused the credentials ({_line(exc)}): set WANDB_API_KEY, run `wandb login`, "
            "or configure secrets.wandb_api_key_file"
        ) from exc
    except CommError as exc:
        raise EdgehookError(f"W&B request failed: {_line(exc)}") from exc
    except ValueError as exc:
        raise EdgehookError(_line(exc)) from exc


@dataclass(frozen=True)
class _Plan:
    outcome: Outcome  # what would change, not yet applied
    event: Any  # the SDK's event, action and scope for the automation wanted
    action: Any
    scope: Any
    existing: Any | None  # the automation of that name W&B holds now


def _plan(api: Any, automations: Any, request: Request) -> _Plan:
    """What W&B holds against what `request` wants: create, update (which fields) or none."""
    hook = _find_webhook(api, request)
    scope, scope_text = _scope(api, request)
    event = automations.OnAddArtifactAlias(
        scope=scope, filter=automations.ArtifactEvent.alias.eq(request.alias)
    )
    action = automations.SendWebhook.from_integration(hook, payload=dict(RECOMMENDED_TEMPLATE))
    found = list(api.automations(entity=request.entity, name=request.name))
    existing = found[0] if found else None
    want = _create_input(event >> action, request.name)
    differs: tuple[str, ...] = ()
    if existing is None:
        change = "create"
    else:
        have = _update_input(existing)
        differs = tuple(key for key in OWNED if _norm(key, have) != _norm(key, want))
        change = "update" if differs else "unchanged"
    outcome = Outcome(
        change, request.name, f"{hook.name} ({hook.url_endpoint})", scope_text, differs, False
    )
    return _Plan(outcome, event, action, scope, existing)


def _apply(api: Any, plan: _Plan, name: str) -> None:
    if plan.existing is None:
        api.create_automation(
            plan.event >> plan.action, name=name, description=DESCRIPTION, enabled=True
        )
    else:
        api.update_automation(
            plan.existing,
            event=plan.event,
            action=plan.action,
            scope=plan.scope,
            description=DESCRIPTION,
            enabled=True,
        )


def _find_webhook(api: Any, request: Request) -> Any:
    hooks = list(api.webhook_integrations(entity=request.entity))
    where = f"team {request.entity!r}"
    create = "create it in W&B: Team Settings > Webhooks > New webhook (URL, Access token, Secret)"
    if request.webhook:
        named = [h for h in hooks if h.name == request.webhook]
        if not named:
            known = ", ".join(sorted(h.name for h in hooks)) or "none"
            raise EdgehookError(
                f"no webhook named {request.webhook!r} in {where} (it has: {known}); {create}"
            )
        return named[0]
    if not request.url:
        raise EdgehookError(
            "which W&B webhook? pass --webhook NAME, or --url URL, or start the tunnel "
            "(`edgehook tunnel`) so its URL is recorded"
        )
    matching = [h for h in hooks if h.url_endpoint.rstrip("/") == request.url.rstrip("/")]
    if not matching:
        raise EdgehookError(f"no webhook in {where} points at {request.url}; {create}")
    if len(matching) > 1:
        names = ", ".join(sorted(h.name for h in matching))
        raise EdgehookError(
            f"several webhooks point at {request.url} ({names}): pick one with --webhook"
        )
    return matching[0]


def _scope(api: Any, request: Request) -> tuple[Any, str]:
    path = f"{request.entity}/{request.project}"
    if request.collection:
        name = f"{path}/{request.collection}"
        try:
            return api.artifact_collection(request.artifact_type, name), f"collection {name}"
        except Exception as exc:  # the SDK raises several types for "not there"
            raise EdgehookError(
                f"no {request.artifact_type} collection {name} in W&B ({_line(exc)}); "
                "check --collection and --type"
            ) from exc
    try:
        return api.project(request.project, entity=request.entity), f"project {path}"
    except ValueError as exc:
        raise EdgehookError(f"no project {path} in W&B; check --entity and --project") from exc


def _create_input(automation: Any, name: str) -> dict[str, Any]:
    from wandb.automations._inputs import prepare_to_create

    given = prepare_to_create(automation, name=name, description=DESCRIPTION, enabled=True)
    return dict(given.model_dump())


def _update_input(automation: Any) -> dict[str, Any]:
    from wandb.automations._inputs import prepare_to_update

    return dict(prepare_to_update(automation).model_dump())


def _norm(key: str, given: Mapping[str, Any]) -> Any:
    """A field's value with its JSON-text parts parsed, so formatting never counts as a change."""
    value = given.get(key)
    if key == "eventFilter" and isinstance(value, str):
        return json.loads(value)
    if key == "triggeredActionConfig" and isinstance(value, dict):
        webhook = dict(value.get("genericWebhookActionInput") or {})
        payload = webhook.get("requestPayload")
        if isinstance(payload, str):
            webhook["requestPayload"] = json.loads(payload)
        return webhook
    return value


def _report(outcome: Outcome, request: Request, dry_run: bool, say: Callable[[str], None]) -> None:
    prefix = "would " if dry_run else ""
    verb = {"create": "create", "update": "update", "unchanged": "leave unchanged"}[outcome.change]
    if outcome.change == "unchanged":
        say(f"automation {request.name!r} is up to date")
    else:
        say(f"{prefix}{verb} automation {request.name!r}")
    say(f"  event    alias {request.alias!r} added, in {outcome.scope}")
    say(f"  action   send to W&B webhook {outcome.webhook}")
    if outcome.differs:
        say(f"  changes  {', '.join(outcome.differs)}")
    if dry_run:
        say("  payload:")
        for line in json.dumps(RECOMMENDED_TEMPLATE, indent=2).splitlines():
            say(f"    {line}")


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
