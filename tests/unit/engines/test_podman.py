"""The private podman service cdisk starts dies with the process that started it, even one killed outright; and
`--pull newer` keeps the local image without one when the registry (asked by a fake skopeo) says the tag did not
move, or does not answer (told as a warning)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from plumbum import local

from cdisk.core.engines.podman import (
    PODMAN,
    _give_back_dead_runs_mount,
    _inspect_cli,
    _is_mount_point,
    _kept,
    _unmount,
    mount_image,
)
from cdisk.core.engines.seam import Image
from cdisk.core.errors import ImageError, ToolError
from cdisk.core.request import Pull
from tests.helpers import Stages, private_services, wait_for
from tests.images import sh
from tests.unit.engines.test_skopeo import fake_skopeo


def _gone(pid: int) -> bool:
    """No process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.needs("podman")
def test_private_service_dies_with_a_killed_cdisk() -> None:
    # SIGKILL runs no `finally`: the kernel's parent-death signal must stop the service.
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import cdisk.core.engines.podman as p, time\nwith p.private_service():\n time.sleep(120)"]
    )
    try:
        wait_for(lambda: private_services(proc.pid) != [] or proc.poll() is not None, 60)
        [service] = private_services(proc.pid)  # its own: another run's service is neither watched nor touched
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: _gone(service))
    # Only the dir (in this test's own TMPDIR) is left to a SIGKILL; not a process.
    for leftover in Path(os.environ["TMPDIR"]).glob("cdisk-podman-*"):
        sh("rm", "-rf", leftover)


# --- --pull newer: the registry asked by skopeo, no service ----------------------------------------------------

LOCAL_DIGEST = "sha256:" + "1" * 64


def _local(reference: str = "quay.io/vm:1") -> Image:
    return Image(reference, "0" * 64, LOCAL_DIGEST, "amd64", 1, (), digests=(LOCAL_DIGEST, "sha256:" + "2" * 64))


@pytest.fixture
def skopeo_answers(tmp_path: Path) -> Iterator[Callable[[bytes | None, str], Path]]:
    """Put a fake skopeo first on PATH, answering as told."""
    bin_dir = tmp_path / "bin"

    def answer(raw: bytes | None, said: str = "") -> Path:
        return fake_skopeo(bin_dir, raw, said)

    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"):
        yield answer


def test_newer_keeps_the_local_image_when_the_tag_is_where_it_was(skopeo_answers: Callable[..., Path]) -> None:
    raw = b'{"schemaVersion": 2}'
    local_image = replace(_local(), digests=("sha256:" + hashlib.sha256(raw).hexdigest(),))
    argv = skopeo_answers(raw)
    progress = Stages()
    assert _kept(local_image, Pull.NEWER, False, None, None, progress) is local_image
    assert progress.stages == ["asking the registry whether quay.io/vm:1 moved"]
    assert argv.read_text().splitlines()[-1] == "docker://quay.io/vm:1"


def test_newer_leaves_a_moved_tag_to_the_pull(skopeo_answers: Callable[..., Path]) -> None:
    skopeo_answers(b'{"schemaVersion": 2, "moved": true}')
    assert _kept(_local(), Pull.NEWER, False, None, None, Stages()) is None


def test_newer_warns_when_the_registry_does_not_answer(skopeo_answers: Callable[..., Path]) -> None:
    skopeo_answers(None, 'pinging container registry quay.io: Get \\"https://quay.io/v2/\\": dial tcp: connection '
                         'refused')
    progress = Stages()
    assert _kept(_local(), Pull.NEWER, False, None, None, progress) == _local()
    assert progress.warnings == ["the registry did not answer for quay.io/vm:1 (dial tcp: connection refused): using "
                                 "the local image"]


def test_newer_of_a_short_name_is_podmans_to_resolve(skopeo_answers: Callable[..., Path]) -> None:
    argv = skopeo_answers(b"{}")
    assert _kept(_local("fedora"), Pull.NEWER, False, None, None, Stages()) is None
    assert not argv.exists()


def test_newer_without_skopeo_is_podmans_own(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with local.env(PATH=str(tmp_path / "empty")):
        assert _kept(_local(), Pull.NEWER, False, None, None, Stages()) is None


@pytest.mark.parametrize(("pull", "reference", "by_id"), [(Pull.MISSING, "quay.io/vm:1", False),
                                                          (Pull.NEVER, "quay.io/vm:1", False),
                                                          (Pull.NEWER, f"quay.io/vm@{LOCAL_DIGEST}", False),
                                                          (Pull.ALWAYS, "0" * 12, True)])
def test_what_needs_no_registry_keeps_the_local_image(tmp_path: Path, pull: Pull, reference: str, by_id: bool) -> None:
    (tmp_path / "empty").mkdir()
    with local.env(PATH=str(tmp_path / "empty")):  # no skopeo, no podman: nothing is run
        assert _kept(_local(reference), pull, by_id, None, None, Stages()) == _local(reference)


def test_always_keeps_nothing() -> None:
    assert _kept(_local(), Pull.ALWAYS, False, None, None, Stages()) is None


def test_a_podman_that_fails_is_not_an_image_absent(tmp_path: Path) -> None:
    # podman with a TMPDIR gone says "open $TMPDIR/NNN: no such file or directory": a failure to tell, not a pull.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "podman"
    fake.write_text("#!/bin/sh\necho 'Error: open /gone/3827061186: no such file or directory' >&2\nexit 125\n")
    fake.chmod(0o755)
    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"):
        with pytest.raises(ToolError, match=r"podman image inspect failed: .*no such file or directory"):
            _inspect_cli("localhost/vm:1")
        fake.write_text("#!/bin/sh\necho 'Error: localhost/vm:1: image not known' >&2\nexit 125\n")
        assert _inspect_cli("localhost/vm:1") is None


# --- an image removed by another job while cdisk reads it: one line, exit 3 ------------------------------------


def _fake_podman(tmp_path: Path, script: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "podman"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    return f"{bin_dir}:{local.env['PATH']}"


def _saving_is_told_removed(tmp_path: Path, path: str) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with local.env(PATH=path), pytest.raises(ImageError, match=_REMOVED):
        PODMAN.save(_local("localhost/vm:1"), workdir)


_REMOVED = r"^localhost/vm:1 was removed or replaced in podman's store while cdisk read it \(an rmi or prune by " \
           r"another job\?\); run cdisk again$"


def test_an_image_whose_layers_are_going_is_told_removed(tmp_path: Path) -> None:
    path = _fake_podman(tmp_path, "echo 'Error: layer not known' >&2\nexit 125\n")
    with local.env(PATH=path), pytest.raises(ImageError, match=_REMOVED) as raised:
        _inspect_cli("localhost/vm:1")
    assert raised.value.exit_code == 3


def test_an_image_removed_before_its_mount_is_told_removed(tmp_path: Path) -> None:
    path = _fake_podman(tmp_path, "echo 'Error: 1234: image not known' >&2\nexit 125\n")
    with local.env(PATH=path), pytest.raises(ImageError, match=_REMOVED), mount_image("1" * 64, "localhost/vm:1"):
        pytest.fail("mounted")


def test_a_save_that_lost_its_image_is_told_removed(tmp_path: Path) -> None:
    path = _fake_podman(tmp_path, 'echo "Error: $1: image not known" >&2\nexit 125\n')
    _saving_is_told_removed(tmp_path, path)


def test_a_save_that_fails_otherwise_says_so(tmp_path: Path) -> None:
    path = _fake_podman(tmp_path, 'case "$1" in save) echo "Error: writing blob: no space left on device" >&2; '
                                  'exit 125;; *) echo "[{\\"Id\\": \\"\\"}]";; esac\n')
    workdir = tmp_path / "work"
    workdir.mkdir()
    with local.env(PATH=path), pytest.raises(ToolError, match=r"podman save failed: .*no space left on device"):
        PODMAN.save(_local("localhost/vm:1"), workdir)


def test_a_saved_layout_without_the_image_is_told_removed(tmp_path: Path) -> None:
    # What a save racing an rmi (and a load of the same image) wrote: a layout whose index names no manifest of it.
    path = _fake_podman(tmp_path, 'for a; do dest="$prev"; prev="$a"; case "$a" in -o) out=next;; esac; '
                                  '[ "$out" = next ] && [ "$a" != -o ] && out="$a"; done\n'
                                  'mkdir -p "$out" && echo \'{"imageLayoutVersion": "1.0.0"}\' > "$out/oci-layout" '
                                  '&& echo \'{"schemaVersion": 2, "manifests": []}\' > "$out/index.json"\n')
    _saving_is_told_removed(tmp_path, path)


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at `…/overlay/<layer>/merged`, as podman mounts an image's top layer (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    merged = tmp_path / "overlay" / ("c" * 64) / "merged"
    merged.mkdir(parents=True)
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "cdisk-test", merged)
    yield merged
    sh("umount", merged, check=False)


def test_a_mount_of_a_removed_image_is_detached_only_when_no_image_holds_its_layer(
        tmp_path: Path, mount_point: Path) -> None:
    path = _fake_podman(tmp_path, 'case "$1 $2" in "image unmount") echo "Error: $4: image not known" >&2; '
                                  'exit 125;; "images --all") exit 0;; esac\nexit 1\n')
    with local.env(PATH=path):
        _unmount("1" * 64, str(mount_point))
    assert not _is_mount_point(str(mount_point))


def test_a_mount_is_left_and_named_when_podman_cannot_list_the_images(tmp_path: Path, mount_point: Path) -> None:
    path = _fake_podman(tmp_path, 'case "$1 $2" in "image unmount") echo "Error: $4: image not known" >&2; '
                                  'exit 125;; esac\necho "Error: database is locked" >&2\nexit 125\n')
    with local.env(PATH=path), pytest.raises(ToolError, match=rf"still mounted at {mount_point}; run `umount "):
        _unmount("1" * 64, str(mount_point))
    assert _is_mount_point(str(mount_point)), "detached on a guess"


def test_a_full_id_no_image_has_is_absent(tmp_path: Path) -> None:
    # podman 4.3 reads an ID it does not know as a name, and refuses that name: the image is absent, not a failure.
    path = _fake_podman(tmp_path, 'echo "Error: inspecting object: parsing named reference \\"$5\\": invalid '
                                  'repository name ($5), cannot specify 64-byte hexadecimal strings" >&2\nexit 125\n')
    with local.env(PATH=path):
        assert _inspect_cli("1" * 64) is None


# --- a dead run's mount record (`_MountRecord`) -----------------------------------------------------------------


def _record(tmp_path: Path, **fields: object) -> int:
    record = {"image": "1" * 64, "root": "/proc", "storage_conf": os.environ.get("CONTAINERS_STORAGE_CONF"),
              "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(), **fields}
    path = tmp_path / ".cdisk-mount-abcdefgh"
    path.write_text(json.dumps(record))
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize(("fields", "may_go"), [
    ({"storage_conf": "/elsewhere/storage.conf"}, False),  # another store's: kept for a run of that store
    ({"boot": "another boot"}, True),  # counted no more since the reboot: nothing given back
    ({"image": "../../etc"}, True),
    ({"root": "/nonexistent/merged"}, True),  # not mounted (any more): nothing to give back
], ids=["another-store", "another-boot", "not-an-id", "not-mounted"])
def test_a_dead_runs_record_is_acted_on_only_when_its_mount_is_this_stores_now(
        tmp_path: Path, fields: dict[str, object], may_go: bool) -> None:
    called = tmp_path / "called"
    path = _fake_podman(tmp_path, f'echo "$@" >> {called}\nexit 125\n')
    fd = _record(tmp_path, **fields)
    try:
        with local.env(PATH=path):
            assert _give_back_dead_runs_mount(fd) is may_go
    finally:
        os.close(fd)
        (tmp_path / ".cdisk-mount-abcdefgh").unlink()
    assert not called.exists(), "podman was asked to unmount what the record does not vouch for"


def test_a_save_that_lost_its_image_is_told_removed_though_it_is_back(tmp_path: Path) -> None:
    # podman save met the image gone ("locating image with ID …: image not known"), loaded again by now.
    path = _fake_podman(tmp_path, 'case "$1" in save) echo "Error: creating an updated image manifest: locating '
                                  'image with ID \\"1111\\": image not known" >&2; exit 125;; '
                                  '*) echo "[{\\"Id\\": \\"1111\\"}]";; esac\n')
    _saving_is_told_removed(tmp_path, path)


def test_the_images_on_a_layer_are_listed_though_one_went_meanwhile(tmp_path: Path) -> None:
    from cdisk.core.engines.podman import _images_on_layer

    a, b = "a" * 64, "b" * 64
    path = _fake_podman(tmp_path, f'''case "$1 $#" in
images*) echo sha256:{a}; echo sha256:{b};;
"image 6") [ "$6" = {a} ] && echo "{a} /s/overlay/{"c" * 64}/diff" && exit 0
  echo "Error: $6: image not known" >&2; exit 125;;
*) echo "Error: {b}: image not known" >&2; exit 125;;
esac
''')
    with local.env(PATH=path):
        assert _images_on_layer("c" * 64) == [a]


def test_a_mount_is_given_back_though_the_image_holding_its_layer_went_before_its_unmount(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stress's case (a prune under way): the listing names an image on the layer, which is gone before its
    unmount; the next listings find none: the layer's mount is detached, not left (and not an error)."""
    from cdisk.core.engines import podman

    other, layer = "a" * 64, "c" * 64
    root = f"/s/overlay/{layer}/merged"
    listings = iter([[other], [], []])
    detached: list[str] = []
    monkeypatch.setattr(podman, "_images_on_layer", lambda _: next(listings))
    monkeypatch.setattr(podman, "_unmount_image", lambda _: (125, f"Error: {other}: image not known"))
    monkeypatch.setattr(podman, "_is_mount_point", lambda path: not detached)
    monkeypatch.setattr(podman, "_detach", lambda path: bool(detached.append(path)) or True)
    assert podman._give_back(root) is True
    assert detached == [root]


@pytest.mark.parametrize(("explanation", "said"), [
    ('{"message":"connection refused"}', "connection refused"),  # podman 5's compat pull, refused before it began
    ('{"cause":"x","message":"short-name \\"a\\" did not resolve","response":500}', 'short-name "a" did not resolve'),
    ("pinging container registry 127.0.0.1:1: connection refused", "pinging container registry 127.0.0.1:1: "
                                                                    "connection refused"),  # podman 4.x: text
    ('{"message":""}', '{"message":""}'),
    ("[1, 2]", "[1, 2]"),
])
def test_what_podman_said_of_a_failed_request_is_its_message(explanation: str, said: str) -> None:
    from podman.errors import APIError

    from cdisk.core.engines.podman import _said

    assert _said(APIError("http://d/v5.0.0/libpod/images/pull", explanation=explanation)) == said


def test_a_request_without_an_answer_is_podman_stopping_and_an_error_answer_is_podmans_failure() -> None:
    """podman-py wraps a broken connection in an APIError (podman 5: a service that died before the pull's
    answer began); requests' own errors are no answer either; an error answer says podman's message."""
    import requests
    from podman.errors import APIError

    from cdisk.core.engines.podman import api_failed

    try:
        try:
            raise requests.ConnectionError("reset")
        except OSError as broken:
            raise APIError("http://d/pull", explanation="POST operation failed") from broken
    except APIError as wrapped:
        assert "the podman API stopped answering (ConnectionError)" in str(api_failed(wrapped))
    assert "the podman API stopped answering (ReadTimeout)" in str(api_failed(requests.ReadTimeout("slow")))
    answered = api_failed(APIError("http://d/images/x/json", explanation='{"message":"layer not known"}'))
    assert "podman's API failed: layer not known;" in str(answered)
