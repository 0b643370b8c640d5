# What the package indexes pip is configured with know about one project, asked through pip's
# own option parsing and HTTP session, so the same indexes, find-links, certificates, proxies,
# credentials and timeouts apply as to `pip download`. Run by ferry after a failed download:
#   python3 -c <this> NAME
# Prints one JSON object: the indexes (credentials redacted), whether any has the project, the
# file names it lists (with yanked flags), every project name the indexes list when none has
# it (for a "did you mean"), and the errors met on the way (`list_errors`: only the listing
# failed, so the verdict stands without a suggestion).
import json
import os
import re
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit

ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
)


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []
        self._href = None
        self._yanked = False
        self._requires = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            a = dict(attrs)
            self._href = a.get("href") or ""
            self._yanked = "data-yanked" in a
            self._requires = a.get("data-requires-python")
            self._text = []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            text = "".join(self._text).strip()
            self.links.append((self._href, text, self._yanked, self._requires))
            self._href = None


def anchors(text):
    p = Anchors()
    p.feed(text)
    return p.links


def link_file(href, text):
    # PEP 503: the anchor text is the file name; the URL's last segment is the fallback.
    path = urlsplit(href).path
    base = unquote(path.rsplit("/", 1)[-1])
    return text if text and "/" not in text else base


def dist_file(filename, yanked, requires_python):
    return {
        "filename": filename,
        "yanked": bool(yanked),
        "requires_python": requires_python or None,
    }


def is_json(resp):
    return resp.headers.get("Content-Type", "").split(";")[0].strip().endswith("+json")


def project_files(session, index, name):
    """(found, [file]) for NAME on one index; raises on anything but 200/404."""
    url = index.rstrip("/") + "/" + normalize(name) + "/"
    resp = session.get(url, headers={"Accept": ACCEPT, "Cache-Control": "max-age=0"})
    if resp.status_code == 404:
        return False, []
    resp.raise_for_status()
    if is_json(resp):
        files = [
            dist_file(f.get("filename", ""), f.get("yanked"), f.get("requires-python"))
            for f in resp.json().get("files", [])
        ]
    else:
        files = [dist_file(link_file(h, t), y, r) for h, t, y, r in anchors(resp.text)]
    return True, files


def project_names(session, index):
    resp = session.get(index.rstrip("/") + "/", headers={"Accept": ACCEPT})
    resp.raise_for_status()
    if is_json(resp):
        return [p.get("name", "") for p in resp.json().get("projects", [])]
    return [link[1] for link in anchors(resp.text) if link[1]]


def find_links_files(session, location):
    """File names a --find-links location offers: a directory's entries or a page's links."""
    if location.startswith("file:"):
        location = unquote(urlsplit(location).path)
    if os.path.isdir(location):
        return sorted(os.listdir(location))
    if "://" not in location:
        return []
    resp = session.get(location)
    resp.raise_for_status()
    return [link_file(urljoin(location, link[0]), link[1]) for link in anchors(resp.text)]


def dist_project(filename):
    """The normalised project name a distribution file name starts with, or None."""
    for ext in (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz"):
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            if ext == ".whl":
                return normalize(stem.split("-")[0])
            return normalize(stem.rsplit("-", 1)[0]) if "-" in stem else None
    return None


def main():
    name = sys.argv[1]
    from pip._internal.commands import create_command

    try:
        from pip._internal.utils.misc import redact_auth_from_url
    except ImportError:
        def redact_auth_from_url(url):
            return url

    cmd = create_command("download")
    opts, _ = cmd.parse_args([])
    session = cmd._build_session(opts)
    indexes = [] if opts.no_index else [opts.index_url] + list(opts.extra_index_urls or [])
    out = {
        "indexes": [redact_auth_from_url(i) for i in indexes],
        "found": False,
        "files": [],
        "projects": [],
        "errors": [],
        "list_errors": [],
    }
    want = normalize(name)
    linked = []
    for location in opts.find_links or []:
        try:
            linked.append(find_links_files(session, location))
        except Exception as e:
            out["errors"].append("%s: %s" % (redact_auth_from_url(location), e))
    for files in linked:
        for f in files:
            if dist_project(f) == want:
                out["found"] = True
                out["files"].append(dist_file(f, False, None))
    for index in indexes:
        try:
            found, files = project_files(session, index, name)
        except Exception as e:
            out["errors"].append("%s: %s" % (redact_auth_from_url(index), e))
            continue
        out["found"] = out["found"] or found
        out["files"].extend(files)
    if not out["found"] and not out["errors"]:
        names = set()
        for files in linked:
            names.update(p for p in map(dist_project, files) if p)
        for index in indexes:
            try:
                names.update(project_names(session, index))
            except Exception as e:
                # Without the list there is no suggestion, but the verdict stands.
                out["list_errors"].append("%s: %s" % (redact_auth_from_url(index), e))
        out["projects"] = sorted(names)
    json.dump(out, sys.stdout)


main()
