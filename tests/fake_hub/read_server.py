"""A read-only stand-in for the Hugging Face Hub on 127.0.0.1: serves folders as dataset repos over the Hub's HTTP
API, so ``datasets.load_dataset("user/name")`` runs its real online code path against what a test pushed.

Only the endpoints ``datasets``/``huggingface_hub`` use to read a dataset repo are answered: file downloads
(``/datasets/<repo>/resolve/<rev>/<path>``, HEAD and GET, with the commit and an ETag), the repo's info
(``/api/datasets/<repo>/revision/<rev>``) and its file tree (``/api/datasets/<repo>/tree/<rev>/<dir>``). Anything
else is a 404, as the Hub answers for a file that does not exist.

    with HubReadServer({"someone/tiny-synthetic": folder}) as endpoint:   # "http://127.0.0.1:PORT"
        subprocess.run([...], env={..., "HF_ENDPOINT": endpoint})
"""

import hashlib
import http.server
import json
import os
import re
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                  for d, _, names in os.walk(folder) for f in names)


def _tree(folder, prefix, recursive):
    """The Hub's tree listing of ``prefix`` (a folder path in the repo, "" for the root)."""
    entries, folders = [], set()
    for path in _files(folder):
        if prefix and not path.startswith(prefix + "/"):
            continue
        parts = path.split("/")
        first = len(prefix.split("/")) if prefix else 0
        for depth in range(first + 1, len(parts) if recursive else min(len(parts), first + 2)):
            name = "/".join(parts[:depth])
            if name not in folders:
                folders.add(name)
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": name})
        if recursive or len(parts) == first + 1:
            data = open(os.path.join(folder, path), "rb").read()
            entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path})
    return entries


class HubReadServer:
    def __init__(self, repos):
        self.repos = dict(repos)  # repo id -> folder
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def reply(self, code, body=b"", headers=(), head=False):
                self.send_response(code)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def answer(self, head):
                url = urllib.parse.urlparse(self.path)
                path, query = urllib.parse.unquote(url.path), urllib.parse.parse_qs(url.query)
                for repo, folder in server.repos.items():
                    match = re.fullmatch(rf"/datasets/{repo}/resolve/[^/]+/(.+)", path)
                    if match:
                        file = os.path.join(folder, match.group(1))
                        if not os.path.isfile(file):
                            return self.reply(404, headers=[("X-Error-Code", "EntryNotFound")], head=head)
                        data = open(file, "rb").read()
                        return self.reply(200, data, [("X-Repo-Commit", COMMIT),
                                                      ("ETag", f'"{hashlib.sha256(data).hexdigest()}"')], head)
                    if re.fullmatch(rf"/api/datasets/{repo}/revision/[^/]+", path):
                        info = {"id": repo, "_id": repo, "sha": COMMIT, "private": False, "disabled": False,
                                "gated": False, "downloads": 0, "likes": 0, "tags": [],
                                "lastModified": "2026-01-01T00:00:00.000Z",
                                "siblings": [{"rfilename": name} for name in _files(folder)]}
                        return self.reply(200, json.dumps(info).encode(), [("Content-Type", "application/json")],
                                          head)
                    match = re.fullmatch(rf"/api/datasets/{repo}/tree/[^/]+/?(.*)", path)
                    if match:
                        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
                        entries = _tree(folder, match.group(1).strip("/"), recursive)
                        return self.reply(200, json.dumps(entries).encode(), [("Content-Type", "application/json")],
                                          head)
                return self.reply(404, head=head)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self.endpoint

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
