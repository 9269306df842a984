"""What went wrong loading from the Hugging Face Hub, said for people; shared by the families that download."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from weights.registry import ModelSource

NETWORK_WORDS = ("offline", "connect", "local_files_only", "local cache", "timed out", "name resolution",
                 "name or service not known", "nodename nor servname", "network is unreachable")
PROBE_SECONDS = 3.0  # how long the Hub's host has to accept a connection
PROBE_TTL = {True: 60.0, False: 10.0}  # seconds an answer of :func:`hub_reachable` is kept (a network back: soon)
_probe = {"at": -math.inf, "reachable": True}
_probe_lock = threading.Lock()  # guards _probe
_probing = threading.Lock()  # one probe at a time: callers meanwhile wait for its answer


def _through_proxy(scheme: str, host: str) -> bool:
    """Whether requests to ``scheme://host`` go through a proxy, as huggingface_hub's HTTP client finds them (the
    environment in any case, the Windows registry, macOS' settings: ``urllib.request.getproxies``; ``NO_PROXY``
    bypasses)."""
    import urllib.request

    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub's host (``HF_ENDPOINT``'s, default huggingface.co) can be reached: False only when
    a TCP connection to it fails outright within :data:`PROBE_SECONDS` (its name does not resolve, the network is
    unreachable, the connection is refused); True when it connects, when no answer comes in time (a slow resolver or
    link: huggingface_hub's own timeouts decide), behind a proxy (the host is not asked: huggingface_hub goes through
    the proxy and says what fails) and for an endpoint with no host. Answers are kept for :data:`PROBE_TTL` seconds;
    one probe runs at a time.

    Without it an offline machine waits out huggingface_hub's retries (~23 s a file, measured: 46 s for an RT-DETR
    pair) before a loader gives up, and transformers' processors then report a generic "Can't load image processor"
    that hides the network error."""
    from huggingface_hub import constants

    def remembered() -> bool | None:
        with _probe_lock:
            fresh = time.monotonic() - _probe["at"] < PROBE_TTL[_probe["reachable"]]
            return _probe["reachable"] if fresh else None

    if (known := remembered()) is not None:
        return known
    with _probing:
        if (known := remembered()) is not None:  # another caller probed meanwhile
            return known
        try:
            url = urlparse(constants.ENDPOINT)
            address = (url.hostname, url.port or (80 if url.scheme == "http" else 443))
        except ValueError:  # not a URL: huggingface_hub will say so
            return True
        if not url.hostname or _through_proxy(url.scheme or "https", url.hostname):
            return True
        answer: list[bool] = []

        def connect() -> None:
            try:
                with socket.create_connection(address, timeout=PROBE_SECONDS):
                    answer.append(True)
            except TimeoutError:  # no answer in time: unknown
                pass
            except (OSError, ValueError):  # no name resolution, network unreachable, refused
                answer.append(False)

        # in a thread of its own, waited on for PROBE_SECONDS: resolving the name is not bound by the socket's timeout
        # (a resolver that does not answer can hold it for tens of seconds); left behind, it ends with the resolver
        probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
        probe.start()
        probe.join(PROBE_SECONDS)
        reachable = answer[0] if answer else True
        with _probe_lock:
            _probe.update(at=time.monotonic(), reachable=reachable)
        return reachable


def local_only(source: ModelSource) -> bool:
    """Whether loading ``source`` must read the local Hugging Face cache only: ``HF_HUB_OFFLINE`` is set, or the Hub is
    out of reach (:func:`hub_reachable`; not asked for a builtin model or a local folder, which need no network)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    return source.kind != "builtin" and not Path(source.location).is_dir() and not hub_reachable()


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _answered_missing(chain: list[BaseException]) -> bool:
    """Whether the Hub answered that the repo, revision or file does not exist (not a local-only lookup's miss)."""
    from huggingface_hub import errors as hub_errors

    missing = (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError, hub_errors.EntryNotFoundError)
    not_asked = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)  # the Hub was not asked
    return any(isinstance(e, missing) and not isinstance(e, not_asked) for e in chain)


def network_failure(source: ModelSource, error: BaseException) -> bool:
    """Whether loading ``source`` failed for the network or an empty cache: a network error or its words in the
    error's chain, or a file not read behind a loader's message that hides why (an OSError with no ValueError in
    the chain: a ValueError names its cause, e.g. a corrupt cached file or an invalid repo id) while the Hub is out of
    reach now; never when the Hub answered that the thing does not exist."""
    from huggingface_hub import errors as hub_errors

    chain = _causes(error)
    if _answered_missing(chain):
        return False
    network_types = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, ConnectionError,
                     TimeoutError, socket.gaierror)
    return any(isinstance(e, network_types) for e in chain) or any(
        word in str(e).lower() for e in chain for word in NETWORK_WORDS) or (
        any(isinstance(e, OSError) for e in chain) and not any(isinstance(e, ValueError) for e in chain)
        and not Path(source.location).is_dir() and not hub_reachable())


def hub_error_message(source: ModelSource, error: Exception) -> str:
    """What went wrong loading a Hub model, and what to do: "offline" only when the cause is the network or an
    empty cache (:func:`network_failure`); a repo or file that does not exist, and anything else, say so instead."""
    from huggingface_hub import constants

    chain = _causes(error)
    where = f"{source.location} (revision {source.revision or 'main'})"
    if _answered_missing(chain):  # it answered: no such thing
        return (f"{where} or one of its files does not exist on the Hugging Face Hub; check the repo id and "
                f"revision.")
    offline_mode = bool(constants.HF_HUB_OFFLINE) and any(isinstance(e, OSError) for e in chain)
    if offline_mode:
        return (f"{where} is not in this machine's Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE "
                f"is set, so nothing is downloaded. Unset HF_HUB_OFFLINE on a machine that is online to download it "
                f"once, or pick a builtin pair.")
    if network_failure(source, error):
        return (f"Could not download {where} from the Hugging Face Hub: this machine seems to be offline. Download "
                f"the model once while online (it is then kept in {constants.HF_HUB_CACHE}; HF_HUB_OFFLINE=1 then "
                f"reads only that cache), or pick a builtin pair.")
    detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else "no reason given"
    return f"Could not load {where}: {detail}"


def cached_file(source: ModelSource, name: str) -> str | None:
    """A file of a Hub repo when it is already in the local cache (nothing is downloaded), else None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.location, name, revision=source.revision)
    except Exception:  # not a valid repo id, no cache
        return None
    return cached if isinstance(cached, str) else None


def local_or_cached(source: ModelSource, names: list[str], prefix: str = "") -> str | None:
    """The first of ``names`` (under ``prefix``) in a local folder ``source.location`` or in the Hub cache."""
    from pathlib import Path

    for name in names:
        local = Path(source.location) / f"{prefix}{name}"
        if local.is_file():
            return str(local)
        cached = cached_file(source, f"{prefix}{name}")
        if cached is not None:
            return cached
    return None
