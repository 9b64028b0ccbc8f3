"""A small client for the operator endpoints (used by ``xplane nodes``)."""

from __future__ import annotations

from typing import Any

import httpx


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


class AdminClient:
    # Actions wait for the workflow's answer (a drain: its transition is written).
    def __init__(self, server: str, admin_token: str | None, timeout: float = 75.0) -> None:
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiClientError(response.status_code, body)
        return body

    def list_nodes(self, **filters: str | None) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v}
        result: list[dict[str, Any]] = self._call("GET", "/nodes", params=params)
        return result

    def get_node(self, node_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/nodes/{node_id}")
        return result

    def drain(self, node_id: str, reason: str) -> dict[str, Any]:
        return self.action(f"/nodes/{node_id}/drain", {"reason": reason})

    def action(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """An operator action (xplane.api.routes_actions): the workflow's answer, or
        :class:`ApiClientError` (409: refused, with the workflow's reason)."""
        result: dict[str, Any] = self._call("POST", path, json=body)
        return result

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
