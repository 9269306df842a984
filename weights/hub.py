"""What went wrong loading from the Hugging Face Hub, said for people; shared by the families that download."""

from __future__ import annotations

from weights.registry import ModelSource

NETWORK_WORDS = ("offline", "connect", "local_files_only", "local cache", "timed out", "name resolution")


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def hub_error_message(source: ModelSource, error: Exception) -> str:
    """What went wrong loading a Hub model, and what to do: "offline" only when the cause is the network or an
    empty cache; a repo or file that does not exist, and anything else, say so instead."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    chain = _causes(error)
    where = f"{source.location} (revision {source.revision or 'main'})"
    network_types = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, ConnectionError,
                     TimeoutError)
    missing = (hub_errors.RepositoryNotFoundError, hub_errors.RevisionNotFoundError, hub_errors.EntryNotFoundError)
    local_only = (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)  # the Hub was not asked
    if any(isinstance(e, missing) and not isinstance(e, local_only) for e in chain):  # it answered: no such thing
        return (f"{where} or one of its files does not exist on the Hugging Face Hub; check the repo id and "
                f"revision.")
    offline_mode = bool(constants.HF_HUB_OFFLINE) and any(isinstance(e, OSError) for e in chain)
    if offline_mode:
        return (f"{where} is not in this machine's Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE "
                f"is set, so nothing is downloaded. Unset HF_HUB_OFFLINE on a machine that is online to download it "
                f"once, or pick a builtin pair.")
    if any(isinstance(e, network_types) for e in chain) or any(
            word in str(e).lower() for e in chain for word in NETWORK_WORDS):
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
