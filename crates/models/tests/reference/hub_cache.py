"""Reads a Hub cache written by loraplus with Python's huggingface_hub (crates/models/tests/hub.rs).

usage: python hub_cache.py CACHE_DIR REPO_ID REVISION FILE...

Prints one JSON object: "files" maps each FILE to what huggingface_hub.try_to_load_from_cache
returns (the cached path, "NO_EXIST" for a file recorded as absent, null when unknown), and
"snapshot" is snapshot_download(local_files_only=True)'s folder. No network: HF_HUB_OFFLINE=1.
"""
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from huggingface_hub import snapshot_download, try_to_load_from_cache  # noqa: E402
from huggingface_hub.file_download import _CACHED_NO_EXIST  # noqa: E402

cache_dir, repo_id, revision, *files = sys.argv[1:]
out = {"files": {}}
for f in files:
    r = try_to_load_from_cache(repo_id, f, cache_dir=cache_dir, revision=revision)
    out["files"][f] = "NO_EXIST" if r is _CACHED_NO_EXIST else r
out["snapshot"] = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
print(json.dumps(out))
