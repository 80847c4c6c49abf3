"""What ``ERSClient`` and ``AsyncERSClient`` share besides the operations: the server's address, the
API key header and the httpx client they are made with."""

from __future__ import annotations

from typing import Any

from service.client.call import DEFAULT_URL
from service.client.data import DataOperations
from service.client.jobs import JobOperations


class ClientBase(DataOperations, JobOperations):
    """``http`` options go to the httpx client as they are (``transport``, ``verify``, ``proxy``...)."""

    http_class: type[Any]  # httpx.Client or httpx.AsyncClient

    def __init__(
        self, url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 30.0, **http: Any
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self.http_class(base_url=self.url, headers=headers, timeout=timeout, **http)
