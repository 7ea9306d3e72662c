"""Saving and loading masks: the repo record, the base's location, and `MaskedModel`'s Hub-style methods.

`MaskRepoMixin` gives `MaskedModel` ``save_pretrained``, ``push_to_hub`` and ``from_pretrained``,
as transformers composes ``PushToHubMixin`` into its models; the file format itself is `repo`'s,
the transfer `hub`'s.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from torch import nn

from . import atomic_save, codec, hub, model_card, sharding
from . import repo as repo_format
from .binarizer import binarizer_for, scores_for_mask
from .errors import BaseModelMismatchError, MaskRepoError
from .fingerprint import make_fingerprint, tensor_record
from .repo import StoredMask
from .targets import backbone_prefix
from .tasks import TRAINABLE_MASK, check_compatible, head_class_for, label_fields
from .version import __version__


class MaskRepoMixin:
    """``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` for `MaskedModel` (which provides the state)."""

    def _base_location(self, fingerprint: dict[str, Any]) -> tuple[str | None, str | None]:
        """(id or path, commit) of the base, resolved once: the base is frozen, and finding its commit in
        the HF cache reads files (state_dict() asks again at every Trainer checkpoint)."""
        if self._location is None:
            name_or_path = getattr(self.model, "name_or_path", None) or None
            cached = hub.hub_id_from_cache_path(name_or_path) if name_or_path and os.path.isdir(name_or_path) else None
            if cached is not None:  # a snapshot folder of the HF cache: record the portable id and commit
                self._location = cached
                return self._location
            revision = None
            first = next(
                (f"{name}.weight" for name in self.targets.modules if f"{name}.weight" in fingerprint["tensors"]), None
            )
            if first is not None:
                prefix = backbone_prefix(self.model)
                names = [first]
                if prefix and first.startswith(prefix + "."):
                    names.append(first[len(prefix) + 1 :])  # a checkpoint of the bare backbone
                digests = tensor_record(fingerprint["tensors"][first])["sha256"].values()
                revision = hub.find_cached_revision(name_or_path, names, digests)
            self._location = (name_or_path, revision)
        return self._location

    def _record(self) -> dict[str, Any]:
        config = self.model.config
        fingerprint = make_fingerprint(self._base_tensors())
        name_or_path, revision = self._base_location(fingerprint)
        labels: dict[str, Any] = {"num_labels": int(config.num_labels)}
        if getattr(config, "id2label", None):
            labels["id2label"] = {str(k): str(v) for k, v in config.id2label.items()}
        if getattr(config, "label2id", None):
            labels["label2id"] = {str(k): int(v) for k, v in config.label2id.items()}
        if getattr(config, "problem_type", None):
            labels["problem_type"] = config.problem_type
        return {
            "format_version": repo_format.FORMAT_VERSION,
            "hf_masking_version": __version__,
            "masking_config": self.masking_config.to_dict(),
            "base_model_name_or_path": name_or_path,
            "base_model_revision": revision,
            "model_type": getattr(config, "model_type", None),
            "head_class": type(self.model).__name__,
            "label_config": labels,
            "masked_modules": list(self.targets.modules),
            "base_fingerprint": fingerprint,
        }

    def to_stored_mask(self, mask_name: str | None = None) -> StoredMask:
        """The repo contents of a mask: the active one unless `mask_name` says otherwise."""
        name = mask_name or self._active
        if name is None:
            raise ValueError(
                "This MaskedModel was built with trainable=False and has no loaded mask: there is nothing to save. "
                "Build it with trainable=True to train a mask, or load_mask(repo, name) and save that."
            )
        if name in self._stored:
            return self._stored[name]
        if not self._is_trainable_mask(name):
            raise KeyError(f"No mask named {name!r}; this model has {self.mask_names}.")
        if self._active != TRAINABLE_MASK:
            raise ValueError("Activate the trainable mask before saving it: set_active_mask('default').")
        config = self.masking_config
        masks = {
            module: codec.encode(mask, repo_format.init_context(config, module))
            for module, mask in self.masks().items()
        }
        head = {n: t.detach().cpu().clone() for n, t in self._head_tensors().items()}
        return StoredMask(record=self._record(), masks=masks, head=head)

    def _repo_files(
        self,
        stored: StoredMask,
        mask_name: str | None,
        card_info: dict[str, Any] | None,
        repo_id: str | None = None,
        existing_card: str | bool | None = None,
    ) -> dict[str, bytes]:
        """The repo's files by name. `existing_card`: the folder's README text, None if it has none, or
        False if it is not text we can edit (then it is left out, so the user's file stays as it is)."""
        config_bytes, weights_bytes = repo_format.encode_repo(stored)
        files = {repo_format.CONFIG_NAME: config_bytes, repo_format.WEIGHTS_NAME: weights_bytes}
        if existing_card is not False:
            generated = model_card.generated_card(
                stored.record, self.sparsity(mask_name), stored.nbytes, repo_id, card_info
            )
            files[repo_format.CARD_NAME] = model_card.updated_card(existing_card, generated, stored.record).encode()
        return files

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        mask_name: str | None = None,
        *,
        safe_serialization: bool = True,
        is_main_process: bool = True,
        push_to_hub: bool = False,
        card_info: dict[str, Any] | None = None,
        **push_kwargs: Any,
    ) -> None:
        """Write the tiny mask repo (config, compressed mask + head, model card) as one atomic change.

        `card_info` adds what the model card can say beyond the mask itself: ``task``, ``dataset``,
        ``pipeline_tag``, ``metrics`` and ``hyperparameters`` (the example scripts pass them after
        evaluating).

        Interrupted at any instant, the folder holds the complete old repo or the complete new one.
        A README.md the user wrote is kept, with only the Hub metadata added. ``push_to_hub=True``
        then uploads it (``repo_id`` and the other `push_to_hub` arguments go in `push_kwargs`).
        """
        self._check_usable()
        if safe_serialization is not True:
            raise ValueError("hf-masking saves safetensors only (safe_serialization=False is not supported).")
        if push_kwargs and not push_to_hub:
            raise TypeError(f"save_pretrained() got unexpected keyword arguments {sorted(push_kwargs)}.")
        directory = atomic_save.check_target(os.fspath(save_directory))
        text: str | bool | None = None
        if is_main_process:
            existing = atomic_save.read_current(directory, repo_format.CARD_NAME) if os.path.isdir(directory) else None
            try:
                text = existing.decode("utf-8") if existing is not None else None
            except UnicodeDecodeError:
                text = False  # not text we can edit: the user's file stays as it is
        with self._gathered():  # FSDP: a collective, so every rank gets here; only the main one writes
            stored = self.to_stored_mask(mask_name)
            files = self._repo_files(stored, mask_name, card_info, existing_card=text) if is_main_process else {}
        if is_main_process:
            atomic_save.save_files(directory, files)
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", None) or os.path.basename(directory)
            self.push_to_hub(repo_id, mask_name=mask_name, card_info=card_info, **push_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        mask_name: str | None = None,
        card_info: dict[str, Any] | None = None,
    ) -> str:
        """Upload the tiny mask repo to the Hub; returns the commit URL."""
        self._check_usable()
        if sharding.is_sharded(self):
            raise RuntimeError(
                "This model is sharded with FSDP: call save_pretrained(folder, is_main_process=...) on every rank, "
                "then push the folder from the main one (huggingface_hub.upload_folder)."
            )
        files = self._repo_files(self.to_stored_mask(mask_name), mask_name, card_info, repo_id=repo_id)
        with tempfile.TemporaryDirectory() as folder:
            for file_name, data in files.items():
                with open(os.path.join(folder, file_name), "wb") as handle:
                    handle.write(data)
            return hub.upload_folder(folder, repo_id, private, token, revision, commit_message, files)

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
        base_model: str | nn.Module | None = None,
        is_trainable: bool = False,
        **base_kwargs: Any,
    ) -> Any:  # the MaskedModel subclass it is called on
        """Rebuild a masked model from a mask repo (Hub id or folder), ready for inference.

        With ``is_trainable=True`` (as in PEFT) the mask trains on from exactly where it was saved:
        a repo keeps the mask, not the scores, so scores are re-derived from it (see
        `scores_for_mask`), and the first step starts from the saved mask. A Trainer checkpoint
        keeps the fp32 scores themselves: ``resume_from_checkpoint`` continues from those.

        The base comes from the repo's recorded base id at its pinned revision, unless
        `base_model` names another copy (a local folder, another id) or passes a loaded model;
        either way every tensor must match the fingerprint of the base the mask was trained on.
        `base_kwargs` go to the base's ``from_pretrained``: only loading options (``dtype``,
        ``device_map``, ``cache_dir``, ``trust_remote_code``…); nothing in the repo reaches it
        but the label fields its head needs.
        """
        unknown = sorted(set(base_kwargs) - BASE_LOADING_KWARGS)
        if unknown:
            raise TypeError(
                f"from_pretrained() got unexpected keyword argument {unknown[0]!r}; the base's loading options it "
                f"passes on are {sorted(BASE_LOADING_KWARGS)}."
            )
        stored = read_mask_repo(repo_id_or_path, revision, token)
        if isinstance(base_model, nn.Module):
            base = base_model
            if type(base).__name__ != stored.record["head_class"]:
                raise BaseModelMismatchError(
                    f"The mask was trained on a {stored.record['head_class']}; base_model is a {type(base).__name__}."
                )
        else:
            base = _load_base(stored.record, base_model, token, base_kwargs)
        try:
            masked = cls(base, stored.config, trainable=is_trainable, masked_modules=stored.record["masked_modules"])
        except BaseModelMismatchError:
            raise
        except ValueError as err:  # a selection in the repo's config that this base does not have
            raise MaskRepoError(
                f"{repo_format.CONFIG_NAME}: field 'masking_config' does not fit this base: {err}"
            ) from err
        if is_trainable:
            masked._continue_from(stored)
            return masked
        masked.load_mask(stored, TRAINABLE_MASK)
        masked.set_active_mask(TRAINABLE_MASK)
        return masked.eval()

    def _continue_from(self, stored: StoredMask) -> None:
        """Make the trainable mask and head those of `stored` (checked like any loaded mask)."""
        check_compatible(stored, self._tasks[self._primary], self._base_tensors())
        binarize = binarizer_for(self.masking_config)
        for name, module in self.masked_modules().items():
            saved = codec.decode(stored.masks[name]).to(module.weight.device)
            if stored.scores is not None:  # a Trainer checkpoint: its exact fp32 scores
                scores = stored.scores[name].to(module.weight.device)
            else:
                scores = scores_for_mask(module.mask_scores.detach(), saved, self.masking_config)
            if not torch.equal(binarize(scores), saved):
                raise MaskRepoError(
                    f"The saved mask of {name} cannot be continued with binarizer {self.masking_config.binarizer!r} "
                    "(a top-k mask must keep its fixed fraction of weights)."
                )
            with torch.no_grad():
                module.mask_scores.copy_(scores)
        own = self._head_tensors()
        with torch.no_grad():
            for tensor_name, value in stored.head.items():
                own[tensor_name].copy_(value)


# PEFT methods a MaskedModel has no equivalent of by that name, and what to use instead.


# Options of a base's `from_pretrained` that say how to load it, never what to load.
BASE_LOADING_KWARGS = frozenset(
    {
        "dtype",
        "torch_dtype",
        "device_map",
        "max_memory",
        "offload_folder",
        "low_cpu_mem_usage",
        "attn_implementation",
        "cache_dir",
        "local_files_only",
        "force_download",
        "trust_remote_code",
    }
)


def read_mask_repo(repo_id_or_path: str | os.PathLike, revision: str | None, token: str | bool | None) -> StoredMask:
    """A mask repo from a folder (an interrupted save's journal included) or the Hub, fully checked."""
    folder, is_local = hub.resolve_repo(os.fspath(repo_id_or_path), revision, token)
    return repo_format.read_folder(folder, follow_links=not is_local)


def _load_base(record: dict[str, Any], base_model: str | None, token: Any, base_kwargs: dict[str, Any]) -> nn.Module:
    import transformers

    head_class = head_class_for(record["head_class"])
    if base_model is not None and not isinstance(base_model, (str, os.PathLike)):
        raise TypeError(
            f"base_model must be a folder, a Hub id or a loaded model (nn.Module), not {type(base_model).__name__} "
            f"{base_model!r}."
        )
    source = os.fspath(base_model) if base_model is not None else record["base_model_name_or_path"]
    if source is None:
        raise ValueError("The mask repo names no base model; pass base_model=... to from_pretrained.")
    hub.check_base_source(source)
    _check_base_type(source, record, "base_model" if base_model is not None else "the recorded base")
    kwargs = dict(base_kwargs)
    if base_model is None and record.get("base_model_revision") and not os.path.isdir(source):
        kwargs["revision"] = record["base_model_revision"]
    labels = label_fields(record)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head is "newly initialised": expected, it is replaced
    try:
        return head_class.from_pretrained(source, token=token, **labels, **kwargs)
    except OSError as err:
        if base_model is None and not os.path.isdir(source):
            raise OSError(
                f"The mask records its base as {source!r}, which is no folder here ({os.getcwd()}) and could not be "
                f"loaded from the Hub ({err}). If it was a folder (a path relative to where the mask was trained), "
                "pass base_model=<that folder>."
            ) from err
        raise
    finally:
        transformers.logging.set_verbosity(verbosity)


def _check_base_type(source: str, record: dict[str, Any], what: str) -> None:
    """A local base folder of another architecture is named as such (transformers' own error is obscure)."""
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        return
    try:
        with open(config_path, encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    wanted = record.get("model_type")
    if wanted and model_type and model_type != wanted:
        raise BaseModelMismatchError(
            f"{what} {source} is a {model_type} model; the mask was trained on a {wanted} "
            f"({record.get('base_model_name_or_path')}). Pass the base it was trained on."
        )
