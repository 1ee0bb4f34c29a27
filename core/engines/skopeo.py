"""skopeo, and the only module that runs it: what a registry's tag holds now (`skopeo inspect --raw`: one
manifest request, with no engine and no service), and an image file copied to a registry (`skopeo copy --all`).

skopeo reads the same registries.conf, policy and auth files as podman, so it asks the registry what podman would.
"""

from __future__ import annotations

import hashlib
import json

from cdisk.core import processes
from cdisk.core.errors import ToolError

# A manifest is a few KiB; an answer that takes longer than this is no answer.
INSPECT_SECONDS = 120.0
INSPECT_LIMIT = 4 << 20
_LISTS = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


def installed() -> bool:
    """Whether skopeo is on the PATH cdisk runs its tools from."""
    from plumbum import local
    from plumbum.commands.processes import CommandNotFound

    try:
        local.which("skopeo")
    except CommandNotFound:
        return False
    return True


def tag_digests(reference: str, tls_verify: bool | None, platform: str) -> tuple[frozenset[str], str]:
    """The digests that say what `reference`'s tag holds now: its manifest's own and, for an image index, those
    of its entries for `platform` (OS/ARCH[/VARIANT]); or none and why the registry did not say.

    Raises:
        ToolError: skopeo is not installed.
    """
    from cdisk.core.oci.platform import fits, platform_text

    argv = ["inspect", "--raw", "--retry-times", "0"]
    if tls_verify is not None:
        argv.append(f"--tls-verify={'true' if tls_verify else 'false'}")
    argv += ["--", f"docker://{reference}"]
    skopeo = processes.command("skopeo", "skopeo")
    try:
        code, out, err = processes.run(skopeo, argv, timeout=INSPECT_SECONDS, stdout_limit=INSPECT_LIMIT)
    except ToolError as error:  # it ran too long, or answered more than a manifest
        return frozenset(), error.message
    if code != 0:
        return frozenset(), _said(err, code)
    raw = out.encode()
    digests = {"sha256:" + hashlib.sha256(raw).hexdigest()}
    try:
        document = json.loads(raw)
    except ValueError:
        return frozenset(), "the registry's answer is not JSON"
    if isinstance(document, dict) and document.get("mediaType") in _LISTS:
        for entry in document.get("manifests") or []:
            plat = entry.get("platform") if isinstance(entry, dict) else None
            if isinstance(plat, dict) and fits(platform_text(str(plat.get("os", "?")), str(plat.get(
                    "architecture", "?")), str(plat.get("variant", ""))), platform):
                digests.add(str(entry.get("digest", "")))
    return frozenset(digests), ""


def _said(stderr: str, code: int) -> str:
    # skopeo logs its fatal error as `time=… level=fatal msg="…"`: the message alone.
    line = processes.last_line(stderr, code)
    if 'msg="' in line:
        line = line.split('msg="', 1)[1].rstrip('"').replace('\\"', '"')
    return line


def copy_to_registry(source: str, ref: str, tls_verify: bool | None) -> None:
    """`skopeo copy --all` of the image file `source` (every platform of an index) to `ref`."""
    argv = ["copy", "--quiet", "--all"]
    if tls_verify is not None:
        argv.append(f"--dest-tls-verify={'true' if tls_verify else 'false'}")
    argv += ["--", source, f"docker://{ref}"]  # never read as switches, whatever they hold
    code, _, err = processes.run(processes.command("skopeo", "skopeo"), argv)
    if code != 0:
        raise ToolError(f"skopeo copy to {ref} failed: {processes.last_line(err, code)}; check the registry "
                        "and your login (skopeo login)", ["skopeo", *argv], code, err)
