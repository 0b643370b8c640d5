# pip's configuration and HTTP session, for the wheelhouse uv resolves. Run by ferry as
#   python3 -c <this> indexes      prints pip's indexes, find-links and certificate as JSON
#   python3 -c <this> fetch DIR    reads {target, packages: [{name, wheels: [{file, url | path,
#                                  sha256, size}]}]} as JSON on stdin, picks each package's wheel
#                                  as pip would for the target (pip's own tag priorities: the
#                                  interpreter's ABI before abi3 before pure Python, the newest
#                                  platform first), and puts it into DIR, several at a time,
#                                  through pip's own session (its certificates, proxies,
#                                  credentials, timeouts)
# Each fetched file is checked against its sha256 (and size) before it is renamed into place;
# a line `fetched FILE BYTES` is printed for each, and `error: ...` (exit 1) on the first failure.
import concurrent.futures
import hashlib
import json
import os
import sys

WORKERS = 8
CHUNK = 1 << 20


def pip_options():
    from pip._internal.commands import create_command

    cmd = create_command("download")
    opts, _ = cmd.parse_args([])
    return cmd, opts


def indexes():
    _, opts = pip_options()
    json.dump(
        {
            "index_url": opts.index_url,
            "extra_index_urls": list(opts.extra_index_urls or []),
            "find_links": list(opts.find_links or []),
            "no_index": bool(opts.no_index),
            "cert": opts.cert or None,
        },
        sys.stdout,
    )


def fetch_one(session, item, dest):
    final = os.path.join(dest, item["file"])
    part = final + ".part"
    try:
        size = copy_checked(session, item, part)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    os.replace(part, final)
    return item["file"], size


def copy_checked(session, item, part):
    digest = hashlib.sha256()
    size = 0
    with open(part, "wb") as out:
        if item.get("path"):
            with open(item["path"], "rb") as src:
                for block in iter(lambda: src.read(CHUNK), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        else:
            with session.get(item["url"], stream=True) as resp:
                resp.raise_for_status()
                for block in resp.iter_content(CHUNK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
    if item.get("size") is not None and size != item["size"]:
        raise ValueError("%s: %d bytes where the index says %d" % (item["file"], size, item["size"]))
    if digest.hexdigest() != item["sha256"]:
        raise ValueError(
            "%s: sha256 %s where the lock says %s" % (item["file"], digest.hexdigest(), item["sha256"])
        )
    return size


def priorities(target):
    from pip._vendor.packaging import tags

    version = tuple(int(p) for p in target["version"].split("."))
    platforms = target["platforms"]
    ordered = list(tags.cpython_tags(version, [target["abi"]], platforms))
    ordered += list(tags.compatible_tags(version, target["abi"], platforms))
    return {t: i for i, t in enumerate(ordered)}


def pick(package, rank):
    from pip._vendor.packaging.tags import parse_tag

    best = None
    for wheel in package["wheels"]:
        parts = wheel["file"][: -len(".whl")].split("-")
        scores = [rank[t] for t in parse_tag("-".join(parts[-3:])) if t in rank]
        if scores and (best is None or min(scores) < best[0]):
            best = (min(scores), wheel)
    if best is None:
        raise ValueError(
            "none of the wheels of %s fits the image: %s"
            % (package["name"], ", ".join(w["file"] for w in package["wheels"]))
        )
    return best[1]


def fetch(dest):
    wanted = json.load(sys.stdin)
    try:
        rank = priorities(wanted["target"])
        items = [pick(p, rank) for p in wanted["packages"]]
    except Exception as e:
        print("error: %s" % e, flush=True)
        sys.exit(1)
    cmd, opts = pip_options()
    session = cmd._build_session(opts)
    # One connection per worker to the same host, not requests' default of ten shared.
    try:
        import requests.adapters

        for prefix in ("https://", "http://"):
            adapter = session.get_adapter(prefix + "x")
            if isinstance(adapter, requests.adapters.HTTPAdapter):
                adapter.init_poolmanager(WORKERS, WORKERS, block=False)
    except Exception:
        pass
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(fetch_one, session, item, dest) for item in items]
        try:
            for done in concurrent.futures.as_completed(futures):
                name, size = done.result()
                print("fetched %s %d" % (name, size), flush=True)
        except Exception as e:
            for f in futures:
                f.cancel()
            print("error: %s" % e, flush=True)
            sys.exit(1)


def main():
    if sys.argv[1] == "indexes":
        indexes()
    elif sys.argv[1] == "fetch":
        fetch(sys.argv[2])
    else:
        sys.exit("unknown mode %r" % sys.argv[1])


main()
