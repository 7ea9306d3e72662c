"""Hub transfer for mask repos: resolving a repo id or folder, downloading, uploading, and the cache.

Every failure says what it is: a local folder that does not exist, a name that is no repo id, a
repo that is missing or private, a repo not in the cache while offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import MaskRepoError
from .repo import CONFIG_NAME, WEIGHTS_NAME


def looks_like_local_path(name: str) -> bool:
    """A name that can only mean a folder: absolute, relative with ./ or ../, ~, or more than owner/name."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.endswith(("/", os.sep))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or os.path.exists(name)
    )


def source_problem(value: str, flag: str) -> str | None:
    """Why `value`, given as `flag`, names neither an existing folder nor a Hub repo id; None if it can.

    Said before transformers is asked, whose own message for a missing folder is about repo ids.
    """
    if os.path.isdir(value):
        return None
    if looks_like_local_path(value):
        return f"{flag} {value}: no such folder."
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return f"{flag} {value!r} is neither a folder nor a Hub repo id ('owner/name')."
    return None


def _check_repo_id(name: str, what: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise FileNotFoundError(
            f"The {what} {name!r} is neither an existing local folder nor a Hub repo id ('owner/name')."
        ) from err


def resolve_repo(repo_id_or_path: str, revision: str | None, token: str | bool | None) -> tuple[str, bool]:
    """(folder, is_local) of a mask repo: a local folder as is, a Hub repo downloaded into the cache."""
    if os.path.isdir(repo_id_or_path):
        return repo_id_or_path, True
    if os.path.isfile(repo_id_or_path):
        raise NotADirectoryError(f"{repo_id_or_path} is a file; a mask repo is a folder (or a Hub repo id).")
    if looks_like_local_path(repo_id_or_path):
        raise FileNotFoundError(f"No mask repo folder at {repo_id_or_path}: that folder does not exist.")
    _check_repo_id(repo_id_or_path, "mask repo")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        config_path = hf_hub_download(repo_id_or_path, CONFIG_NAME, revision=revision, token=token)
        commit = os.path.basename(os.path.dirname(config_path))  # snapshots/<commit>/masking_config.json
        hf_hub_download(repo_id_or_path, WEIGHTS_NAME, revision=commit, token=token)
    except LocalEntryNotFoundError as err:  # before EntryNotFoundError: it is a subclass
        raise OSError(
            f"The mask repo {repo_id_or_path!r} is not in the local Hugging Face cache, and the Hub cannot be reached "
            "(offline: HF_HUB_OFFLINE=1 or no network); there is no local folder of that name either. Connect once "
            "to download it, or pass the path of a folder that holds it."
        ) from err
    except RepositoryNotFoundError as err:
        raise OSError(
            f"Cannot access the mask repo {repo_id_or_path!r}: it does not exist, or it is private and no token with "
            "access to it was given (pass token=... or log in with `hf auth login`); there is no local folder of "
            "that name either."
        ) from err
    except RevisionNotFoundError as err:
        raise OSError(f"The mask repo {repo_id_or_path!r} has no revision {revision!r}.") from err
    except EntryNotFoundError as err:
        raise MaskRepoError(
            f"{repo_id_or_path!r} at revision {revision or 'main'!r} is not a mask repo: it has no {CONFIG_NAME} or "
            f"{WEIGHTS_NAME}."
        ) from err
    return os.path.dirname(config_path), False


def check_base_source(source: str) -> None:
    """Fail clearly when a base named by path does not exist (transformers would call it a bad repo id)."""
    if os.path.isdir(source):
        return
    if looks_like_local_path(source):
        raise FileNotFoundError(
            f"The base model folder {source} does not exist; pass base_model=<folder or Hub id> to load the mask "
            "on a copy of its base."
        )
    _check_repo_id(source, "base model")


def hub_id_from_cache_path(path: str) -> tuple[str, str] | None:
    """(repo id, commit) of a folder inside the Hugging Face cache (``models--org--name/snapshots/<commit>``)."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    commit = parts[-1]
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        return None
    return parts[-3][len("models--") :].replace("--", "/"), commit


def find_cached_revision(repo_id: str | None, tensor_names: list[str], digests: Iterable[str]) -> str | None:
    """The commit of the Hub snapshot in the local cache that holds this exact base tensor.

    transformers resolves a base's revision to a commit but does not keep it on the model, so
    the cached snapshots of `repo_id` are searched for the one holding this exact tensor.
    """
    if not repo_id or os.path.isdir(repo_id) or looks_like_local_path(repo_id):
        return None
    from huggingface_hub import constants
    from safetensors import SafetensorError, safe_open

    from .fingerprint import tensor_digest

    wanted = set(digests)  # full digests, or a fingerprint's short ones: compared on their length
    snapshots = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "snapshots")
    if not os.path.isdir(snapshots):
        return None
    candidates = sorted(os.scandir(snapshots), key=lambda entry: entry.stat().st_mtime, reverse=True)
    for snapshot in candidates:
        for file_name in sorted(os.listdir(snapshot.path)):
            if not file_name.endswith(".safetensors"):
                continue
            try:
                with safe_open(os.path.join(snapshot.path, file_name), framework="pt") as handle:
                    keys = set(handle.keys())
                    key = next((k for k in tensor_names if k in keys), None)
                    found = tensor_digest(handle.get_tensor(key)) if key is not None else None
                    if found is not None and any(found[: len(w)] == w for w in wanted):
                        return snapshot.name
            except (SafetensorError, OSError):
                continue
    return None


def upload_folder(
    folder: str,
    repo_id: str,
    private: bool,
    token: str | None,
    revision: str | None,
    commit_message: str | None,
    paths: Iterable[str],
) -> str:
    """Create the repo (and branch) if needed, upload `paths` from `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        allow_patterns=list(paths),
        revision=revision,
        commit_message=commit_message or "Upload mask with hf-masking",
    )
    return info.commit_url
