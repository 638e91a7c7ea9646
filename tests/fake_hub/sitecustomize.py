"""A stand-in for the Hugging Face Hub's network boundary, for subprocesses of tests/test_hub.py.

Python imports ``sitecustomize`` at start-up from anywhere on ``sys.path``: with this folder on PYTHONPATH and
FAKE_HUB_DIR set, huggingface_hub's ``create_repo`` and ``upload_folder`` (the module functions and the HfApi
methods) record what they would send instead of sending it. Everything else is the real library, including the
pattern filter that decides which files an upload takes (``filter_repo_objects``, as ``upload_folder`` uses).

    FAKE_HUB_DIR/<repo_id>/<path in repo>   the files an upload would have sent (spaces/<repo_id>/ for a Space)
    FAKE_HUB_DIR/calls.jsonl                one JSON line per call: arguments (a token argument only as
                                            true/false), thread, start and end times
    FAKE_HUB_FAIL=create_repo|upload_folder|snapshots   fail those calls as a broken network would
    FAKE_HUB_DELAY=seconds                  delay every background (run_as_future) upload
    FAKE_HUB_USER=name                      the account that a repo id without namespace goes to (fake-user)
"""

import os

if os.environ.get("FAKE_HUB_DIR"):
    import concurrent.futures
    import json
    import shutil
    import threading
    import time

    import huggingface_hub
    from huggingface_hub import hf_api
    from huggingface_hub.utils import filter_repo_objects

    _RECORD = os.environ["FAKE_HUB_DIR"]
    _FAIL = os.environ.get("FAKE_HUB_FAIL", "")
    _LOCK = threading.Lock()
    _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-hub")  # as HfApi's

    def _log(entry):
        with _LOCK:
            os.makedirs(_RECORD, exist_ok=True)
            with open(os.path.join(_RECORD, "calls.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _full_id(repo_id):
        return repo_id if "/" in repo_id else f"{os.environ.get('FAKE_HUB_USER', 'fake-user')}/{repo_id}"

    def create_repo(repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, space_sdk=None, **kwargs):
        entry = dict(call="create_repo", repo_id=repo_id, private=private, exist_ok=exist_ok, repo_type=repo_type,
                     space_sdk=space_sdk,
                     token_argument=token is not None, thread=threading.current_thread().name, start=time.time())
        _log(entry)
        if _FAIL == "create_repo":
            raise ConnectionError("fake hub: network unreachable")
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{'spaces/' * (repo_type == 'space')}{_full_id(repo_id)}")

    def _upload(entry, folder_path, allow_patterns, ignore_patterns):
        entry.update(thread=threading.current_thread().name, start=time.time())
        if entry["run_as_future"]:
            time.sleep(float(os.environ.get("FAKE_HUB_DELAY", "0")))
        if _FAIL == "upload_folder" or (_FAIL == "snapshots" and (entry["path_in_repo"] or "").startswith("epoch_")):
            entry.update(end=time.time(), failed=True)
            _log(entry)
            raise ConnectionError("fake hub: connection reset")
        paths = sorted(os.path.relpath(os.path.join(root, name), folder_path).replace(os.sep, "/")
                       for root, _, names in os.walk(folder_path) for name in names)
        ignore = list(ignore_patterns or []) + list(hf_api.DEFAULT_IGNORE_PATTERNS)
        files = list(filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore))
        # A Space's files go to FAKE_HUB_DIR/spaces/<repo_id>/, as its URL reads.
        space = "spaces" if entry["repo_type"] == "space" else ""
        target = os.path.join(_RECORD, space, _full_id(entry["repo_id"]) if space else entry["repo_id"],
                              entry["path_in_repo"] or "")
        for path in files:
            os.makedirs(os.path.dirname(os.path.join(target, path)), exist_ok=True)
            shutil.copyfile(os.path.join(folder_path, path), os.path.join(target, path))
        entry.update(files=files, end=time.time())
        _log(entry)
        return f"https://huggingface.co/{entry['repo_id']}/commit/fake"

    def upload_folder(*, repo_id, folder_path, path_in_repo=None, allow_patterns=None, ignore_patterns=None,
                      delete_patterns=None, commit_message=None, token=None, run_as_future=False, repo_type=None,
                      **kwargs):
        entry = dict(call="upload_folder", repo_id=repo_id, repo_type=repo_type,
                     folder=os.path.basename(os.path.normpath(folder_path)),
                     path_in_repo=path_in_repo, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                     delete_patterns=delete_patterns, commit_message=commit_message, run_as_future=run_as_future,
                     token_argument=token is not None, other_arguments=sorted(kwargs))
        args = (entry, str(folder_path), allow_patterns, ignore_patterns)
        if run_as_future:
            return _EXECUTOR.submit(_upload, *args)
        return _upload(*args)

    for module in (huggingface_hub, hf_api):
        module.create_repo, module.upload_folder = create_repo, upload_folder
    hf_api.HfApi.create_repo = lambda self, *args, **kwargs: create_repo(*args, **kwargs)
    hf_api.HfApi.upload_folder = lambda self, *args, **kwargs: upload_folder(*args, **kwargs)
