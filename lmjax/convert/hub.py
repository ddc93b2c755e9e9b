"""Models by name: a Hugging Face hub id (or a local directory) -> an lmjax workdir, converted once.

    workdir = model_dir("bert-base-uncased")          # or "gpt2@main", "sentence-transformers/all-MiniLM-L6-v2"
    lmjax fill-mask --model bert-base-uncased --text "..."   # what --model and lmjax.load do with a name

A NAME_OR_DIR is, in this order:
- an lmjax workdir (a directory whose config.json has a "model" section): used as it is;
- a save_pretrained directory (config.json with a "model_type"): converted into the lmjax cache;
- a hub id, optionally `@revision` (branch, tag or commit): resolved by `huggingface_hub` in its
  own cache (HF_HOME / HF_HUB_CACHE) first, downloaded only where the network allows and never
  with HF_HUB_OFFLINE=1, then converted once into LMJAX_CACHE/hub/ORG--NAME@COMMIT (LMJAX_CACHE
  defaults to ~/.cache/lmjax) and reused after.

The environment is read at each call, not at import, so a test (or a notebook) may point HF_HOME
at another cache. A conversion is written to a temporary directory and renamed into place, so
two processes converting the same name at once both end with one complete workdir.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile

from lmjax import paths
from lmjax.convert import hf
from lmjax.errors import UserError

# What a conversion reads from a hub repository; pickles and other frameworks' weights are never fetched.
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
             *hf.TOKENIZER_FILES]
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "*.bin", "*.pt", "*.pth", "*.ckpt")
TRUE = ("1", "ON", "YES", "TRUE")


def lmjax_cache() -> pathlib.Path:
  return pathlib.Path(os.path.expanduser(os.environ.get("LMJAX_CACHE") or "~/.cache/lmjax"))


def hf_cache() -> str:
  """huggingface_hub's cache directory, by its own rules, from the environment as it is now."""
  home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
  hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
  return os.path.expandvars(os.path.expanduser(hub))


def offline() -> bool:
  return any((os.environ.get(v) or "").upper() in TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def split_name(name: str) -> tuple[str, str]:
  """'ORG/NAME@REV' -> ('ORG/NAME', 'REV'); the revision defaults to 'main'."""
  repo_id, _, revision = name.partition("@")
  return repo_id, revision or "main"


def kind(directory: pathlib.Path) -> str:
  """'lmjax' (a workdir), 'hf' (a save_pretrained directory) or '' (neither)."""
  try:
    config = json.loads((directory / "config.json").read_text())
  except (OSError, ValueError):
    return ""
  if isinstance(config, dict) and "model" in config:
    return "lmjax"
  return "hf" if isinstance(config, dict) and "model_type" in config else ""


def model_dir(name_or_dir) -> pathlib.Path:
  """An lmjax workdir for NAME_OR_DIR (see the module docstring); converts at most once."""
  text = str(name_or_dir)
  if "://" in text:   # a gs:// workdir stays a URL (lmjax/paths.py)
    return paths.path(text)
  path = pathlib.Path(os.path.expanduser(text))
  if path.is_dir():
    # Anything but a save_pretrained directory is read as a workdir, whose reader says what is wrong.
    return convert_local(path) if kind(path) == "hf" else path
  if text.startswith((".", "/", "~")) or path.exists() or text.count("/") > 1:
    raise UserError(f"{text}: no such directory; give an lmjax workdir, a save_pretrained directory "
                    "or a Hugging Face hub id such as bert-base-uncased")
  return convert_hub(text)


def cached(target: pathlib.Path) -> bool:
  return kind(target) == "lmjax" and (target / "checkpoints").is_dir()


def convert_into(target: pathlib.Path, hf_dir: pathlib.Path, source: dict) -> pathlib.Path:
  """import_hf into a fresh temporary directory beside `target`, then rename it into place."""
  if cached(target):
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
  try:
    hf.import_hf(hf_dir, tmp, source=source)
    try:
      tmp.rename(target)
    except OSError:   # another process finished first; theirs is as good as ours
      if not cached(target):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


def convert_local(hf_dir: pathlib.Path) -> pathlib.Path:
  """A save_pretrained directory, keyed by its path and its files' sizes and times (an edit converts anew)."""
  hf_dir = hf_dir.resolve()
  stamp = hashlib.sha256(str(hf_dir).encode())
  for f in sorted(hf_dir.iterdir()):
    if f.is_file():
      st = f.stat()
      stamp.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
  target = lmjax_cache() / "local" / f"{hf_dir.name}-{stamp.hexdigest()[:16]}"
  return convert_into(target, hf_dir, {"hf_dir": str(hf_dir)})


def convert_hub(name: str) -> pathlib.Path:
  repo_id, revision = split_name(name)
  snapshot = pathlib.Path(resolve(repo_id, revision))
  commit = snapshot.name
  target = lmjax_cache() / "hub" / f"{repo_id.replace('/', '--')}@{commit}"
  return convert_into(target, snapshot, {"hub_id": repo_id, "revision": revision, "commit": commit})


def has_weights(snapshot: pathlib.Path) -> bool:
  return (snapshot / "config.json").is_file() and any(snapshot.glob("*.safetensors"))


def resolve(repo_id: str, revision: str = "main") -> str:
  """The snapshot directory of repo_id@revision in huggingface_hub's cache: from the cache when it
  holds config.json and safetensors weights, else downloaded (those files only) where allowed."""
  from huggingface_hub import snapshot_download
  from huggingface_hub import errors as hub_errors
  from huggingface_hub.utils import validate_repo_id
  name = f"{repo_id}@{revision}" if revision != "main" else repo_id
  try:
    validate_repo_id(repo_id)
  except hub_errors.HFValidationError:
    raise UserError(f"{name!r} is neither a directory nor a valid Hugging Face hub id (ORG/NAME[@REVISION])") from None
  cache = hf_cache()
  snapshot = None
  try:
    snapshot = pathlib.Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
  except (hub_errors.LocalEntryNotFoundError, hub_errors.IncompleteSnapshotError, FileNotFoundError):
    pass
  if snapshot is not None and (has_weights(snapshot) or offline()):
    return str(snapshot)   # pickle-only or incomplete snapshots are refused by the import, by name
  fetch = f"fetch it where the network allows (`hf download {repo_id}" + (
      f" --revision {revision}" if revision != "main" else "") + "`) or copy that cache here"
  if offline():
    raise UserError(f"{name} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                    f"downloading; {fetch}")
  try:
    snapshot = pathlib.Path(snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                              allow_patterns=HUB_FILES))
  except hub_errors.RevisionNotFoundError:
    raise UserError(f"{repo_id} has no revision {revision!r} on the Hugging Face hub") from None
  except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as e:
    raise UserError(f"{repo_id} is not a public model on the Hugging Face hub ({type(e).__name__}); "
                    "check the name, or log in (hf auth login) for a gated or private one") from None
  except (hub_errors.LocalEntryNotFoundError, OSError, hub_errors.HfHubHTTPError) as e:
    raise UserError(f"{name} is not in the Hugging Face cache ({cache}) and the hub cannot be reached "
                    f"({type(e).__name__}); {fetch}") from None
  if not any(snapshot.glob("*.safetensors")):
    pickles = pickle_files(repo_id, snapshot.name)
    raise UserError(f"{name} has " + (f"only pickle weights ({', '.join(pickles)})" if pickles else
                                      "no model.safetensors") + "; " + hf.SAFETENSORS_ONLY)
  return str(snapshot)


def pickle_files(repo_id: str, commit: str) -> list[str]:
  """The repository's pickle weight files at `commit` (listed, never downloaded)."""
  import fnmatch
  from huggingface_hub import HfApi
  try:
    files = HfApi().list_repo_files(repo_id, revision=commit)
  except Exception:  # noqa: BLE001 -- only a better error message is at stake
    return []
  return [f for f in files if any(fnmatch.fnmatch(f, p) for p in PICKLES)]


def import_named(name_or_dir, workdir) -> str:
  """`lmjax convert --from-hf NAME_OR_DIR --workdir OUT`: a save_pretrained directory or a hub id
  (resolved as model_dir does) imported into OUT. Returns import_hf's summary."""
  text = str(name_or_dir)
  path = pathlib.Path(os.path.expanduser(text))
  if path.is_dir() or text.startswith((".", "/", "~")) or path.exists() or text.count("/") > 1:
    return hf.import_hf(path, workdir)
  repo_id, revision = split_name(text)
  snapshot = pathlib.Path(resolve(repo_id, revision))
  return hf.import_hf(snapshot, workdir, source={"hub_id": repo_id, "revision": revision, "commit": snapshot.name})
