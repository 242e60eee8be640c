"""Whether the Hugging Face hub can be reached: checked before a download would retry for ~25 s."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


def offline_requested() -> bool:
    # Read at call time: huggingface_hub reads these once at import, so a later setting would be missed.
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the hub endpoint (`HF_ENDPOINT`) open within `timeout` seconds?

    Run in a thread because name resolution has no timeout of its own. Behind a proxy the direct
    connection says nothing, so the answer is then "yes" and the hub client decides.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
