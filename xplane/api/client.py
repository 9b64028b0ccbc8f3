"""A small client for the operator endpoints (used by ``xplane nodes``)."""

from __future__ import annotations

import time
from typing import Any

import httpx

# How long a CLI action waits for a pending (202) answer, polling its result.
ACTION_WAIT_S = 60.0


class ApiClientError(Exception):
    """The API answered an error; the message carries its ``error`` and field details."""

    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        if isinstance(body, dict) and "error" in body:
            details = "; ".join(
                f"{d.get('field')}: {d.get('message')}"
                for d in body.get("detail") or []
                if d.get("message") != body["error"]  # a refusal says it once
            )
            text = f"{body['error']}" + (f" ({details})" if details else "")
        else:
            text = str(body)[:200]
        super().__init__(f"HTTP {status}: {text}")


class ActionPendingError(Exception):
    """The workflow accepted (or was sent) the action but has not answered yet: the body
    names the workflow, the update and where its result will be (``poll``)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        workflow, update = body.get("workflow_id"), body.get("update_id")
        super().__init__(
            f"still running: {body.get('message') or 'no answer yet'}; see its result with "
            f"`xplane actions result {workflow} {update}`"
        )


class AdminClient:
    # The API answers within a few seconds (its Temporal budget is 5 s): a pending
    # action is a 202, polled by :meth:`action`.
    def __init__(self, server: str, admin_token: str | None, timeout: float = 15.0) -> None:
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._answer(method, path, **kwargs)[1]

    def _answer(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        response = self._http.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiClientError(response.status_code, body)
        return response.status_code, body

    def list_nodes(self, **filters: str | None) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v}
        result: list[dict[str, Any]] = self._call("GET", "/nodes", params=params)
        return result

    def get_node(self, node_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/nodes/{node_id}")
        return result

    def drain(self, node_id: str, reason: str) -> dict[str, Any]:
        return self.action(f"/nodes/{node_id}/drain", {"reason": reason})

    def action(
        self, path: str, body: dict[str, Any], wait: float = ACTION_WAIT_S
    ) -> dict[str, Any]:
        """An operator action (xplane.api.routes_actions): the workflow's answer, or
        :class:`ApiClientError` (409: refused, with the workflow's reason). A pending
        answer (202) is polled for up to ``wait`` s, then :class:`ActionPendingError`."""
        status, answer = self._answer("POST", path, json=body)
        if status == 202 and isinstance(answer, dict) and answer.get("status") == "pending":
            return self.action_result(answer["workflow_id"], answer["update_id"], wait)
        result: dict[str, Any] = answer
        return result

    def action_result(
        self, workflow_id: str, update_id: str, wait: float = ACTION_WAIT_S
    ) -> dict[str, Any]:
        """The result of an action answered 202; each GET waits up to 5 s on the server.
        :class:`ActionPendingError` when it has not come within ``wait`` s."""
        until = time.monotonic() + wait
        while True:
            status, answer = self._answer("GET", f"/actions/{workflow_id}/{update_id}")
            if status != 202:
                result: dict[str, Any] = answer
                return result
            if time.monotonic() >= until:
                raise ActionPendingError(answer)
            time.sleep(0.5)

    def regions(self, service: str | None = None) -> list[dict[str, Any]]:
        params = {"service": service} if service else {}
        result: list[dict[str, Any]] = self._call("GET", "/regions", params=params)
        return result

    # ------------------------------------------------------------------ API tokens
    def list_tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/tokens")
        return result

    def create_token(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/tokens", json=body)
        return result

    def revoke_token(self, name: str, reason: str | None = None) -> dict[str, Any]:
        headers = {"X-XPlane-Reason": reason} if reason else {}
        result: dict[str, Any] = self._call("DELETE", f"/tokens/{name}", headers=headers)
        return result
