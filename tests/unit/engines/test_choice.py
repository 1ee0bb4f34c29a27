"""Which engine serves IMAGE: its transport mapped to an engine, `--engine auto` asking each engine in turn
(fake engines that implement the seam, so that no podman or docker runs), an image for another platform
pulled again for the one asked, and the one line for an image no store holds, a failed pull, a path given as IMAGE.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import pytest

from cdisk.core.engines import choice
from cdisk.core.engines.choice import _find, _transport, find, settled
from cdisk.core.engines.seam import Engine, Image
from cdisk.core.errors import ImageError, PullFailed, ToolError, UsageError
from cdisk.core.oci.blob import LayerBlob
from cdisk.core.request import ImageRequest, Pull
from tests.helpers import Stages
from tests.images import tar_header, tar_member

IMAGE_ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def image(engine: str, reference: str = "quay.io/vm:1", architecture: str = "amd64", id: str = IMAGE_ID,
          os: str = "", variant: str = "") -> Image:
    return Image(reference, id, "sha256:feed", architecture, 1 << 20, ("sha256:aa",), engine=engine, os=os,
                 variant=variant)


def refused_pull(engine: str, reason: str = "dial tcp 127.0.0.1:443: connect: connection refused") -> PullFailed:
    return PullFailed("quay.io/vm:1", engine, reason, f"check the name, the registry and your login (`{engine} login`)")


@dataclass
class FakeEngine:
    """An engine of the seam that runs nothing: it answers as told and logs what it was asked, in `log`."""

    name: str
    log: list[str]
    answers: bool = True
    remote: ImageError | None = None  # what available() raises: pointed at a store cdisk refuses to read
    holds: Image | None = None
    fails: ToolError | None = None
    pulls: list[Image] = field(default_factory=list)
    pull_fails: PullFailed | None = None  # what find_image raises when it would pull
    asked: list[ImageRequest] = field(default_factory=list)
    mounts: bool = True
    copies: bool = True
    stores: bool = True
    cannot_mount: str = ""

    def available(self) -> bool:
        self.log.append(f"{self.name} available")
        if self.remote is not None:
            raise self.remote
        return self.answers

    def lookup(self, reference: str, progress: Any) -> Image | None:
        self.log.append(f"{self.name} lookup {reference}")
        if self.fails is not None:
            raise self.fails
        return self.holds

    def find_image(self, request: ImageRequest, progress: Any) -> Image:
        self.log.append(f"{self.name} find_image {request.reference}")
        self.asked.append(request)
        if self.pull_fails is not None and (request.pull is Pull.ALWAYS or self.holds is None):
            raise self.pull_fails
        if self.pulls:
            return self.pulls.pop(0)
        return self.holds or image(self.name, request.reference)

    def mount(self, image: Image) -> AbstractContextManager[str]:
        raise AssertionError("not asked here")

    def save(self, image: Image, workdir: Path | None) -> list[LayerBlob]:
        raise AssertionError("not asked here")

    def in_user_namespace(self, argv: Sequence[str], stdout: int, stderr: IO[Any] | int,
                          ) -> AbstractContextManager[Any]:
        raise AssertionError("not asked here")

    def load(self, archive: Path) -> None:
        raise AssertionError("not asked here")

    def push(self, source: str, ref: str, tls_verify: bool | None) -> None:
        raise AssertionError("not asked here")


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def engines(log: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeEngine]:
    """podman, docker and the image files, each a fake: what `choice.named` hands out."""
    made = {name: FakeEngine(name, log) for name in ("podman", "docker", "file")}
    made["file"].mounts = made["file"].copies = made["file"].stores = False

    def named(name: str) -> Engine:
        return made[name]

    monkeypatch.setattr(choice, "named", named)
    return made


# --- IMAGE's transport ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("reference", "engine", "resolved"),
    [
        ("containers-storage:localhost/vm:1", "auto", ("localhost/vm:1", "podman")),
        ("containers-storage:localhost/vm:1", "podman", ("localhost/vm:1", "podman")),
        ("docker-daemon:vm:1", "auto", ("vm:1", "docker")),
        ("docker-daemon:vm:1", "docker", ("vm:1", "docker")),
        ("docker://quay.io/vm:1", "auto", ("quay.io/vm:1", "auto")),
        ("docker://quay.io/vm:1", "podman", ("quay.io/vm:1", "podman")),
        ("docker://quay.io/vm:1", "docker", ("quay.io/vm:1", "docker")),
        ("oci:/srv/layout:vm", "auto", ("oci:/srv/layout:vm", "file")),
        ("oci:/srv/layout:vm", "docker", ("oci:/srv/layout:vm", "file")),
        ("oci-archive:/srv/vm.tar", "podman", ("oci-archive:/srv/vm.tar", "file")),
        ("docker-archive:/srv/vm.tar", "auto", ("docker-archive:/srv/vm.tar", "file")),
        ("quay.io/vm:1", "auto", ("quay.io/vm:1", "auto")),
        ("quay.io/vm:1", "docker", ("quay.io/vm:1", "docker")),
        (IMAGE_ID[:12], "podman", (IMAGE_ID[:12], "podman")),
    ],
)
def test_transport_resolves_into_the_engine_that_serves_it(reference: str, engine: str,
                                                           resolved: tuple[str, str]) -> None:
    request = ImageRequest(reference, Pull.NEWER, False, engine, "linux/arm64", "applehv")
    assert _transport(request) == ImageRequest(resolved[0], Pull.NEWER, False, resolved[1], "linux/arm64", "applehv")


@pytest.mark.parametrize(
    ("reference", "engine", "store"),
    [
        ("containers-storage:localhost/vm:1", "docker", "podman"),
        ("docker-daemon:vm:1", "podman", "docker"),
    ],
)
def test_a_transport_that_contradicts_engine_is_refused(reference: str, engine: str, store: str) -> None:
    with pytest.raises(UsageError) as refused:
        _transport(ImageRequest(reference, engine=engine))
    assert refused.value.message == (f"{reference} names {store}'s store but --engine says {engine}; "
                                     "drop one of them")
    assert refused.value.exit_code == 2


def test_find_refuses_a_contradiction_before_any_engine_is_asked(engines: dict[str, FakeEngine],
                                                                 log: list[str]) -> None:
    with pytest.raises(UsageError):
        find(ImageRequest("docker-daemon:vm:1", engine="podman"), Stages())
    assert log == []


def test_a_transport_names_the_engine_find_asks(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["docker"].holds = local = image("docker", "vm:1")
    engine, found = find(ImageRequest("docker-daemon:vm:1"), Stages())
    assert (engine, found) == (engines["docker"], local)
    assert log == ["docker available", "docker lookup vm:1"]  # looked up, never find_image: that may pull


@pytest.mark.parametrize(("reference", "store"), [("containers-storage:localhost/vm:1", "podman"),
                                                  ("docker-daemon:localhost/vm:1", "docker")])
@pytest.mark.parametrize("pull", [Pull.MISSING, Pull.NEWER, Pull.NEVER])
def test_a_local_stores_transport_never_pulls(engines: dict[str, FakeEngine], log: list[str], reference: str,
                                              store: str, pull: Pull) -> None:
    with pytest.raises(ImageError) as refused:
        find(ImageRequest(reference, pull), Stages())
    transport = reference.split(":", 1)[0]
    assert refused.value.message == (
        f"localhost/vm:1 is not in {store}'s store, and {transport}: names a local image, which cdisk does not pull; "
        f"check the name (`{store} images`), or pull it (`{store} pull localhost/vm:1`)")
    assert refused.value.exit_code == 3
    assert log == [f"{store} available", f"{store} lookup localhost/vm:1"]


def test_a_local_stores_transport_with_pull_always_is_a_usage_error(engines: dict[str, FakeEngine],
                                                                     log: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        find(ImageRequest("containers-storage:localhost/vm:1", Pull.ALWAYS), Stages())
    assert refused.value.message == ("containers-storage:localhost/vm:1 names an image in podman's store, which cdisk "
                                     "never pulls; drop --pull always, or write docker://localhost/vm:1 to pull it")
    assert log == []


def test_a_local_stores_engine_not_answering_says_so_in_its_own_words(engines: dict[str, FakeEngine],
                                                                      log: list[str]) -> None:
    engines["docker"].answers = False
    find(ImageRequest("docker-daemon:vm:1"), Stages())
    assert log == ["docker available", "docker find_image vm:1"]
    assert engines["docker"].asked == [ImageRequest("vm:1", Pull.NEVER, engine="docker")]


# --- settled ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("asked", "recorded", "engine"),
    [
        ("auto", "docker", "docker"),
        ("auto", "podman", "podman"),
        ("auto", "", "auto"),
        ("podman", "docker", "podman"),
        ("docker", "podman", "docker"),
    ],
)
def test_settled_keeps_an_engine_asked_by_name(asked: str, recorded: str, engine: str) -> None:
    request = ImageRequest("quay.io/vm:1", Pull.ALWAYS, True, asked, "linux/arm64")
    assert settled(request, recorded) == replace(request, engine=engine)


# --- --engine auto ------------------------------------------------------------------------------------------------

def test_auto_takes_podmans_image_without_asking_docker(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["podman"].holds = local = image("podman")
    engines["docker"].holds = image("docker")
    assert _find(ImageRequest("quay.io/vm:1"), Stages()) == (engines["podman"], local)
    assert log == ["podman available", "podman lookup quay.io/vm:1"]


def test_auto_takes_the_store_that_holds_the_image(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["docker"].holds = local = image("docker")
    assert _find(ImageRequest("quay.io/vm:1"), Stages()) == (engines["docker"], local)
    assert log == ["podman available", "podman lookup quay.io/vm:1", "docker available", "docker lookup quay.io/vm:1"]


def test_auto_pulls_with_the_first_engine_answering_when_no_store_holds_it(engines: dict[str, FakeEngine],
                                                                          log: list[str]) -> None:
    engine, found = _find(ImageRequest("quay.io/vm:1", Pull.MISSING, True), Stages())
    assert engine is engines["podman"] and found == image("podman")
    assert log[-1] == "podman find_image quay.io/vm:1"
    assert engines["podman"].asked == [ImageRequest("quay.io/vm:1", Pull.MISSING, True, "podman")]
    assert engines["docker"].asked == []


def test_auto_passes_over_an_engine_not_installed(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["podman"].answers = False
    engine, _ = _find(ImageRequest("quay.io/vm:1"), Stages())
    assert engine is engines["docker"]
    assert log == ["podman available", "docker available", "docker lookup quay.io/vm:1",
                   "docker find_image quay.io/vm:1"]


def test_auto_passes_over_an_engine_that_fails_to_answer(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["podman"].fails = ToolError("podman stopped answering", ["podman", "images"], 125, "boom")
    engines["docker"].holds = local = image("docker")
    progress = Stages()
    assert _find(ImageRequest("quay.io/vm:1"), progress) == (engines["docker"], local)
    assert progress.stages == ["podman could not look quay.io/vm:1 up: podman stopped answering"]


def test_auto_passes_over_an_engine_pointed_at_a_remote_store(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].remote = ImageError("CONTAINER_HOST=tcp://10.0.0.1:1 is not a local unix socket")
    engines["docker"].holds = local = image("docker")
    assert _find(ImageRequest("quay.io/vm:1"), Stages()) == (engines["docker"], local)


def test_a_remote_store_is_the_answer_when_no_engine_can_take_the_image(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].remote = refused = ImageError("CONTAINER_HOST=tcp://10.0.0.1:1 is not a local unix socket")
    engines["docker"].answers = False
    with pytest.raises(ImageError) as raised:
        _find(ImageRequest("quay.io/vm:1"), Stages())
    assert raised.value is refused


def test_a_failing_engine_is_not_the_one_that_pulls(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["podman"].fails = ToolError("podman stopped answering")
    engine, _ = _find(ImageRequest("quay.io/vm:1"), Stages())
    assert engine is engines["docker"] and engines["podman"].asked == []


def test_the_failure_is_the_answer_when_no_engine_could_take_the_image(engines: dict[str, FakeEngine]) -> None:
    failure = ToolError("podman stopped answering", ["podman", "images"], 125, "boom")
    engines["podman"].fails = failure
    engines["docker"].answers = False
    with pytest.raises(ToolError) as raised:
        _find(ImageRequest("quay.io/vm:1"), Stages())
    assert raised.value is failure


def test_the_first_failure_is_the_answer_when_every_engine_fails(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].fails = first = ToolError("podman stopped answering")
    engines["docker"].fails = ToolError("docker stopped answering")
    with pytest.raises(ToolError) as raised:
        _find(ImageRequest("quay.io/vm:1"), Stages())
    assert raised.value is first


def test_no_engine_answering_is_a_tool_error(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["podman"].answers = engines["docker"].answers = False
    with pytest.raises(ToolError) as raised:
        _find(ImageRequest("quay.io/vm:1"), Stages())
    assert raised.value.message == (
        "neither podman nor docker is installed and answering here; install one (Debian/Ubuntu: apt-get install "
        "podman), or start the docker daemon and check that DOCKER_HOST (if set) names its local unix socket and "
        "that you may use it")
    assert raised.value.exit_code == 7
    assert log == ["podman available", "docker available"]


@pytest.mark.parametrize("pull", [Pull.ALWAYS, Pull.NEWER])
def test_auto_pulls_again_in_the_store_that_holds_it_when_asked(engines: dict[str, FakeEngine], pull: Pull) -> None:
    engines["docker"].holds = image("docker", architecture="old")
    engines["docker"].pulls = [pulled := image("docker", architecture="new")]
    assert _find(ImageRequest("quay.io/vm:1", pull), Stages()) == (engines["docker"], pulled)
    assert engines["docker"].asked == [ImageRequest("quay.io/vm:1", pull, engine="docker")]
    assert engines["podman"].asked == []


@pytest.mark.parametrize("pull", [Pull.MISSING, Pull.NEVER])
def test_auto_takes_the_local_image_when_no_pull_is_due(engines: dict[str, FakeEngine], pull: Pull) -> None:
    engines["podman"].holds = local = image("podman")
    assert _find(ImageRequest("quay.io/vm:1", pull), Stages()) == (engines["podman"], local)
    assert engines["podman"].asked == []


@pytest.mark.parametrize("reference", [IMAGE_ID, IMAGE_ID[:12], f"sha256:{IMAGE_ID}"],
                         ids=["full-id", "short-id", "digest-id"])
def test_an_image_id_is_never_pulled(engines: dict[str, FakeEngine], reference: str) -> None:
    engines["podman"].holds = local = image("podman", reference)
    assert _find(ImageRequest(reference, Pull.ALWAYS), Stages()) == (engines["podman"], local)
    assert engines["podman"].asked == []


def test_an_image_in_no_store_and_a_failed_pull_says_where_it_is_not_first(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].pull_fails = refused_pull("podman")
    with pytest.raises(ImageError) as refused:
        _find(ImageRequest("quay.io/vm:1"), Stages())
    assert refused.value.message == (
        "quay.io/vm:1 is in neither podman's nor docker's store, and pulling it failed: dial tcp 127.0.0.1:443: "
        "connect: connection refused; check the name (`podman images`, `docker images`), or pull it (`podman pull "
        "quay.io/vm:1`)")
    assert refused.value.exit_code == 3
    assert engines["docker"].asked == []  # one pull: podman's


def test_a_failed_pull_names_only_the_stores_looked_in(engines: dict[str, FakeEngine]) -> None:
    engines["docker"].answers = False
    engines["podman"].pull_fails = refused_pull("podman")
    with pytest.raises(ImageError, match=r"^quay.io/vm:1 is not in podman's store, and pulling it failed: dial tcp "
                                         r"127.0.0.1:443: connect: connection refused; check the name \(`podman "
                                         r"images`\), or pull it \(`podman pull quay.io/vm:1`\)$"):
        _find(ImageRequest("quay.io/vm:1"), Stages())


@pytest.mark.parametrize(
    ("reason", "todo"),
    [("unauthorized: access to the requested resource is not authorized", "check the name, or log in (`podman "
                                                                           "login`) and try again"),
     ("http: server gave HTTP response to HTTPS client", "if the registry speaks plain HTTP, pass --tls-verify=false")],
)
def test_a_failed_pull_says_what_to_do_about_its_cause(engines: dict[str, FakeEngine], reason: str, todo: str) -> None:
    engines["docker"].answers = False
    engines["podman"].pull_fails = refused_pull("podman", reason)
    with pytest.raises(ImageError) as refused:
        _find(ImageRequest("quay.io/vm:1"), Stages())
    assert refused.value.message == (f"quay.io/vm:1 is not in podman's store, and pulling it failed: {reason}; {todo}")


def test_a_failed_pull_of_an_engine_named_names_its_store(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["docker"].pull_fails = refused_pull("docker")
    with pytest.raises(ImageError, match=r"^quay.io/vm:1 is not in docker's store, and pulling it failed: "):
        _find(ImageRequest("quay.io/vm:1", engine="docker"), Stages())
    assert log == ["docker find_image quay.io/vm:1"]


@pytest.mark.parametrize("engine", ["auto", "podman"])
def test_a_failed_pull_of_an_image_in_the_store_says_it_is_there(engines: dict[str, FakeEngine], engine: str) -> None:
    engines["podman"].holds = image("podman")
    engines["podman"].pull_fails = refused_pull("podman")
    with pytest.raises(ImageError) as refused:
        _find(ImageRequest("quay.io/vm:1", Pull.ALWAYS, engine=engine), Stages())
    assert refused.value.message == (
        "quay.io/vm:1 is in podman's store, but pulling it again failed: dial tcp 127.0.0.1:443: connect: connection "
        "refused; check the registry, or use the local image (--pull missing)")


def test_pull_never_names_every_store_looked_in_and_asks_none_to_pull(engines: dict[str, FakeEngine],
                                                                      log: list[str]) -> None:
    with pytest.raises(ImageError) as refused:
        _find(ImageRequest("quay.io/vm:1", Pull.NEVER), Stages())
    assert refused.value.message == (
        "image quay.io/vm:1 is not in the local store (neither podman's nor docker's) and --pull never forbids "
        "pulling; check the name (`podman images`, `docker images`), or pull it (`podman pull quay.io/vm:1`) or drop "
        "--pull never")
    assert engines["podman"].asked == engines["docker"].asked == []


def test_an_image_id_in_no_store_is_not_pulled(engines: dict[str, FakeEngine]) -> None:
    engines["docker"].answers = False
    with pytest.raises(ImageError) as refused:
        _find(ImageRequest(IMAGE_ID[:12]), Stages())
    assert refused.value.message == (f"no image with ID {IMAGE_ID[:12]} in the local store (podman's), and an ID "
                                     "cannot be pulled; check the ID (`podman images`)")
    assert engines["podman"].asked == []


def test_an_engine_named_is_asked_alone(engines: dict[str, FakeEngine], log: list[str]) -> None:
    engines["docker"].answers = False  # not asked: the operator named it
    engine, _ = _find(ImageRequest("quay.io/vm:1", Pull.NEVER, engine="docker"), Stages())
    assert engine is engines["docker"]
    assert log == ["docker find_image quay.io/vm:1"]
    assert engines["docker"].asked == [ImageRequest("quay.io/vm:1", Pull.NEVER, engine="docker")]


# --- --platform ---------------------------------------------------------------------------------------------------

def test_an_image_of_the_platform_asked_is_taken_with_the_platform_recorded(engines: dict[str, FakeEngine],
                                                                             log: list[str]) -> None:
    engines["podman"].holds = image("podman", architecture="arm64")
    engine, found = find(ImageRequest("quay.io/vm:1", platform="Linux/AArch64"), Stages())
    assert engine is engines["podman"] and found == replace(image("podman", architecture="arm64"),
                                                            platform="linux/arm64")
    assert log == ["podman available", "podman lookup quay.io/vm:1"]


def test_an_architecture_named_as_uname_names_it_fits(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="x86_64")
    _, found = find(ImageRequest("quay.io/vm:1", platform="linux/amd64"), Stages())
    assert found.platform == "linux/amd64"


def test_an_image_that_says_no_architecture_is_taken(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="")
    _, found = find(ImageRequest("quay.io/vm:1", platform="linux/arm64"), Stages())
    assert found == replace(image("podman", architecture=""), platform="linux/arm64")


def test_the_engine_named_is_asked_for_the_normal_platform(engines: dict[str, FakeEngine]) -> None:
    engines["docker"].holds = image("docker", architecture="arm64")
    find(ImageRequest("quay.io/vm:1", engine="docker", platform="linux/aarch64"), Stages())
    assert engines["docker"].asked == [ImageRequest("quay.io/vm:1", engine="docker", platform="linux/arm64")]


def test_an_image_for_another_platform_is_pulled_again_for_the_one_asked(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="amd64")
    engines["podman"].pulls = [image("podman", architecture="arm64", id="arm")]
    progress = Stages()
    engine, found = find(ImageRequest("quay.io/vm:1", platform="linux/arm64"), progress)
    assert engine is engines["podman"]
    assert found == replace(image("podman", architecture="arm64", id="arm"), platform="linux/arm64")
    assert engines["podman"].asked == [ImageRequest("quay.io/vm:1", Pull.ALWAYS, engine="podman",
                                                    platform="linux/arm64")]
    assert progress.stages == ["quay.io/vm:1 in podman's store is for amd64: pulling it for linux/arm64"]


def test_an_image_pulled_for_the_platform_that_says_no_architecture_is_taken(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="amd64")
    engines["podman"].pulls = [image("podman", architecture="", id="pulled")]
    _, found = find(ImageRequest("quay.io/vm:1", platform="linux/arm64"), Stages())
    assert found == replace(image("podman", architecture="", id="pulled"), platform="linux/arm64")


def test_a_registry_without_the_platform_is_an_image_error(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="amd64")
    engines["podman"].pulls = [image("podman", architecture="amd64")]
    with pytest.raises(ImageError) as refused:
        find(ImageRequest("quay.io/vm:1", platform="linux/arm64"), Stages())
    assert refused.value.message == ("quay.io/vm:1 in the registry is amd64, not linux/arm64 as --platform asks; "
                                     "check the name and --platform")
    assert refused.value.exit_code == 3


def test_pull_never_refuses_an_image_for_another_platform(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="amd64")
    with pytest.raises(ImageError) as refused:
        find(ImageRequest("quay.io/vm:1", Pull.NEVER, platform="linux/arm64"), Stages())
    assert refused.value.message == ("quay.io/vm:1 is amd64, --platform asks linux/arm64; pull that platform "
                                     "(`podman pull --platform linux/arm64 quay.io/vm:1`) or drop --platform")
    assert engines["podman"].asked == []


def test_a_local_image_for_another_platform_tells_both_platforms(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="amd64", os="linux")
    with pytest.raises(ImageError, match=r"^quay.io/vm:1 is linux/amd64, --platform asks linux/arm64; pull that "):
        find(ImageRequest("quay.io/vm:1", Pull.NEVER, platform="linux/arm64"), Stages())


def test_a_local_store_transport_for_another_platform_is_refused_unpulled(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", "vm:1", architecture="amd64", os="linux")
    with pytest.raises(ImageError) as refused:
        find(ImageRequest("containers-storage:vm:1", Pull.MISSING, platform="linux/arm64"), Stages())
    assert refused.value.message == ("vm:1 is linux/amd64, --platform asks linux/arm64; pull that platform (`podman "
                                     "pull --platform linux/arm64 vm:1`) or drop --platform")
    assert engines["podman"].asked == []


def test_a_failed_pull_for_the_platform_says_what_the_store_holds(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", architecture="amd64", os="linux")
    engines["podman"].pull_fails = refused_pull("podman")
    with pytest.raises(ImageError) as refused:
        find(ImageRequest("quay.io/vm:1", platform="linux/arm64"), Stages())
    assert refused.value.message == (
        "quay.io/vm:1 in podman's store is linux/amd64, --platform asks linux/arm64, and pulling that platform failed: "
        "dial tcp 127.0.0.1:443: connect: connection refused; check the name and --platform, or drop --platform to use "
        "the local image")


@pytest.mark.parametrize(("have", "wanted", "serves"), [
    (("linux", "arm64", "v8"), "linux/arm64", True),
    (("linux", "arm64", ""), "linux/arm64/v8", True),
    (("linux", "arm", "v6"), "linux/arm/v7", False),
    (("", "arm", ""), "linux/arm/v6", True),  # podman 4.3 tells no variant: the architecture decides
    (("windows", "amd64", ""), "linux/amd64", False),
])
def test_os_and_variant_count_where_the_image_tells_them(engines: dict[str, FakeEngine], have: tuple[str, str, str],
                                                         wanted: str, serves: bool) -> None:
    os_name, arch, variant = have
    engines["podman"].holds = image("podman", architecture=arch, os=os_name, variant=variant)
    if serves:
        assert find(ImageRequest("quay.io/vm:1", Pull.NEVER, platform=wanted), Stages())[1].platform == wanted
    else:
        with pytest.raises(ImageError, match=f"--platform asks {wanted}; pull that platform"):
            find(ImageRequest("quay.io/vm:1", Pull.NEVER, platform=wanted), Stages())


def test_an_image_id_for_another_platform_is_refused_unpulled(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = image("podman", IMAGE_ID[:12], architecture="amd64")
    with pytest.raises(ImageError) as refused:
        find(ImageRequest(IMAGE_ID[:12], Pull.ALWAYS, platform="linux/arm64"), Stages())
    assert refused.value.message == (f"{IMAGE_ID[:12]} is amd64, --platform asks linux/arm64; name the image for "
                                     "that platform, or drop --platform")
    assert engines["podman"].asked == []


@pytest.mark.parametrize("pull", [Pull.MISSING, Pull.NEVER])
def test_an_image_file_for_another_platform_is_refused_unpulled(engines: dict[str, FakeEngine], pull: Pull) -> None:
    engines["file"].holds = image("file", "oci:/srv/layout", architecture="amd64")
    with pytest.raises(ImageError) as refused:
        find(ImageRequest("oci:/srv/layout", pull, platform="linux/arm64"), Stages())
    assert refused.value.message == ("oci:/srv/layout is amd64, --platform asks linux/arm64; name the image for that "
                                     "platform, or drop --platform")
    assert len(engines["file"].asked) == 1


def test_a_malformed_platform_is_refused_before_any_engine_is_asked(engines: dict[str, FakeEngine],
                                                                   log: list[str]) -> None:
    with pytest.raises(UsageError, match=r"^--platform 'arm64' is not OS/ARCH\[/VARIANT\]"):
        find(ImageRequest("quay.io/vm:1", platform="arm64"), Stages())
    assert log == []


def test_a_variant_the_architecture_lacks_is_refused_before_any_engine_is_asked(engines: dict[str, FakeEngine],
                                                                                  log: list[str]) -> None:
    with pytest.raises(UsageError, match=r"^--platform 'linux/amd64/v9': amd64 has no variant v9 \(it has v1, v2, "):
        find(ImageRequest("quay.io/vm:1", platform="linux/amd64/v9"), Stages())
    assert log == []


def test_no_platform_asked_takes_the_image_as_it_is(engines: dict[str, FakeEngine]) -> None:
    engines["podman"].holds = local = image("podman", architecture="s390x")
    assert find(ImageRequest("quay.io/vm:1"), Stages()) == (engines["podman"], local)


# --- the real engines, by name ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "engine"), [("podman", "podman"), ("docker", "docker"), ("file", "file"),
                                              ("unknown", "podman")])
def test_named_hands_out_the_one_instance_of_each_engine(name: str, engine: str) -> None:
    assert choice.named(name).name == engine
    assert choice.named(name) is choice.named(engine)
    assert choice.of(image(name)) is choice.named(engine)


# --- a path given as IMAGE ----------------------------------------------------------------------------------------

def _layout(directory: Path) -> Path:
    directory.mkdir()
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    return directory


@pytest.mark.parametrize(
    ("members", "meant"),
    [
        ([("oci-layout", b"{}"), ("index.json", b"{}")], "oci-archive:{p} (it is an OCI archive)"),
        ([("layer.tar", b""), ("manifest.json", b"[]")], "docker-archive:{p} (it is a docker archive)"),
        ([("blobs/sha256/aa", b""), ("index.json", b"{}"), ("manifest.json", b"[]"), ("oci-layout", b"{}")],
         "oci-archive:{p} or docker-archive:{p} (it is an OCI archive and a docker archive)"),
    ],
)
def test_an_archive_given_as_image_names_its_transport(engines: dict[str, FakeEngine], log: list[str], tmp_path: Path,
                                                        members: list[tuple[str, bytes]], meant: str) -> None:
    from tests.images import tar_file

    path = str(tar_file(tmp_path / "vm.tar", members))
    with pytest.raises(UsageError) as refused:
        find(ImageRequest(path), Stages())
    assert refused.value.message == f"{path} looks like a path, not an image name; did you mean {meant.format(p=path)}?"
    assert refused.value.exit_code == 2
    assert log == []  # no engine asked: a name cannot begin with /


def test_a_layout_directory_given_as_image_is_oci(engines: dict[str, FakeEngine], log: list[str],
                                                  tmp_path: Path) -> None:
    path = str(_layout(tmp_path / "layout"))
    with pytest.raises(UsageError) as refused:
        find(ImageRequest(path, platform="linux/arm64"), Stages())
    assert refused.value.message == (f"{path} looks like a path, not an image name; did you mean oci:{path} (an OCI "
                                     "layout)?")
    assert log == []


def test_a_disk_given_as_image_is_told_to_build(engines: dict[str, FakeEngine], tmp_path: Path) -> None:
    path = tmp_path / "vm.qcow2"
    path.write_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(504))
    with pytest.raises(UsageError) as refused:
        find(ImageRequest(str(path)), Stages())
    assert refused.value.message == (f"{path} is a disk image file, not a container image; convert it with qemu-img, "
                                     f"or make a containerDisk of it (`cdisk build {path} NAME`)")


@pytest.mark.parametrize("relative", ["./nowhere", "/nowhere/at/all", "../up"])
def test_a_path_that_is_not_there_is_no_image_name(engines: dict[str, FakeEngine], log: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, relative: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"is no image name \(name\[:tag\], name@digest or an ID\) and no such path "):
        find(ImageRequest(relative), Stages())
    assert log == []


def test_a_name_that_is_also_a_path_is_an_image_where_a_store_holds_it(engines: dict[str, FakeEngine], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _layout(tmp_path / "vm")
    engines["docker"].holds = local = image("docker", "vm")
    assert find(ImageRequest("vm"), Stages()) == (engines["docker"], local)


@pytest.mark.parametrize("engine", ["auto", "podman"])
def test_a_name_that_is_also_a_layout_is_refused_before_a_pull(engines: dict[str, FakeEngine], log: list[str],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               engine: str) -> None:
    monkeypatch.chdir(tmp_path)
    _layout(tmp_path / "vm")
    with pytest.raises(UsageError, match=r"^vm looks like a path, not an image name; did you mean oci:vm "):
        find(ImageRequest("vm", engine=engine), Stages())
    assert engines["podman"].asked == engines["docker"].asked == []


def test_a_plain_directory_named_like_an_image_is_left_to_the_stores(engines: dict[str, FakeEngine], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vm").mkdir()
    engine, _ = find(ImageRequest("vm"), Stages())
    assert engine is engines["podman"] and engines["podman"].asked == [ImageRequest("vm", engine="podman")]


@pytest.mark.parametrize("request_", [ImageRequest("/nowhere/vm.tar"), ImageRequest("quay.io/vm:1", platform="x/y"),
                                      ImageRequest("containers-storage:vm:1", Pull.ALWAYS),
                                      ImageRequest("docker-daemon:vm:1", engine="podman")],
                         ids=["path", "platform", "local-always", "contradiction"])
def test_check_refuses_before_anything_runs(engines: dict[str, FakeEngine], log: list[str],
                                            request_: ImageRequest) -> None:
    with pytest.raises(UsageError):
        choice.check(request_)
    assert log == []


def test_check_lets_a_sound_request_through(engines: dict[str, FakeEngine], log: list[str]) -> None:
    choice.check(ImageRequest("containers-storage:vm:1", Pull.NEWER, platform="linux/arm64/v8"))
    assert log == []


# --- what can name no image, before any engine is asked ---------------------------------------------------------

def test_an_empty_image_is_said_to_be_empty(engines: dict[str, FakeEngine], log: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        choice.check(ImageRequest(""))
    assert refused.value.message == ("IMAGE is empty; name an image (name[:tag], name@digest or an ID), or an image "
                                     "file with its transport (oci:DIR, oci-archive:FILE, docker-archive:FILE)")
    assert log == []


@pytest.mark.parametrize("transport", ["docker://", "containers-storage:", "docker-daemon:"])
@pytest.mark.parametrize("name", ["--version", "-q", "--help=x", "Quay.io/VM:1", "vm:1 --all", "[overlay@/s]vm"])
def test_a_name_behind_a_stores_transport_must_be_an_image_name(engines: dict[str, FakeEngine], log: list[str],
                                                                transport: str, name: str) -> None:
    # podman and docker would read `--version` as their own switch: such a name never reaches them.
    with pytest.raises(UsageError) as refused:
        find(ImageRequest(transport + name), Stages())
    assert refused.value.message == (f"{name} (after {transport}) is no image name (name[:tag], name@digest or an "
                                     "ID); check it")
    assert refused.value.exit_code == 2
    assert log == []


@pytest.mark.parametrize("transport", ["docker://", "containers-storage:", "docker-daemon:"])
def test_a_stores_transport_naming_nothing_says_what_to_write(engines: dict[str, FakeEngine], log: list[str],
                                                              transport: str) -> None:
    with pytest.raises(UsageError) as refused:
        choice.check(ImageRequest(transport))
    assert refused.value.message == f"{transport} names no image; write {transport}NAME[:TAG]"
    assert log == []


@pytest.mark.parametrize("reference", ["docker://quay.io/vm:1", "containers-storage:localhost/vm:1",
                                       f"docker-daemon:sha256:{IMAGE_ID}", f"containers-storage:{IMAGE_ID[:12]}",
                                       "docker://vm@sha256:" + "a" * 64])
def test_a_name_behind_a_stores_transport_goes_through(engines: dict[str, FakeEngine], log: list[str],
                                                       reference: str) -> None:
    choice.check(ImageRequest(reference))
    assert log == []


def _block_device() -> str:
    """A block device this machine has (a real one: cdisk only stats it), or skip."""
    for entry in sorted(Path("/dev").iterdir()):
        try:
            if stat.S_ISBLK(entry.stat().st_mode):
                return str(entry)
        except OSError:
            continue
    pytest.skip("no block device in /dev")


def test_a_block_device_as_image_is_no_archive(engines: dict[str, FakeEngine], log: list[str]) -> None:
    device = _block_device()
    with pytest.raises(UsageError) as refused:
        choice.check(ImageRequest(device))
    assert refused.value.message == (f"{device} is a block device, not an image; cdisk reads container images: to "
                                     "make one of the disk on it, copy it to a file (qemu-img convert) and run "
                                     "`cdisk build FILE NAME`")
    assert log == []


def test_a_character_device_fifo_or_socket_as_image_is_no_archive(engines: dict[str, FakeEngine], log: list[str],
                                                                  tmp_path: Path) -> None:
    fifo, sock = tmp_path / "fifo", tmp_path / "sock"
    os.mkfifo(fifo)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(sock))
        for path, kind in (("/dev/null", "character device"), (str(fifo), "FIFO"), (str(sock), "socket")):
            with pytest.raises(UsageError) as refused:
                choice.check(ImageRequest(path))  # a FIFO is never opened: this would hang
            assert refused.value.message == (f"{path} is a {kind}, not an image; cdisk reads container images: name "
                                             "one (name[:tag]), or an image file with its transport (oci:DIR, "
                                             "oci-archive:FILE, docker-archive:FILE)")
    assert log == []


def _sparse_tar(path: Path, special: bytes, claimed: int, before: bytes = b"") -> Path:
    """A tar of the members `before`, then a PAX or GNU long-name header claiming `claimed` bytes (a hole on disk)."""
    with path.open("wb") as file:
        file.write(before)
        file.write(tar_header(b"././@LongLink" if special in (b"L", b"K") else b"PaxHeaders/x", special, claimed))
        file.truncate(file.tell() + claimed + 1024)
    return path


@pytest.mark.parametrize("special", [b"x", b"L", b"K", b"g"])
def test_an_archive_claiming_a_huge_header_is_not_read(engines: dict[str, FakeEngine], log: list[str],
                                                       tmp_path: Path, special: bytes) -> None:
    # Python's tarfile read such a header's body whole, whatever it claimed (a MemoryError with `ulimit -v`):
    # that much is never read, and what came before the header still says what the file is.
    path = _sparse_tar(tmp_path / "vm.tar", special, 1 << 31, tar_member("manifest.json", b"[]"))
    with pytest.raises(UsageError) as refused:
        choice.check(ImageRequest(str(path)))
    assert refused.value.message == (f"{path} looks like a path, not an image name; did you mean "
                                     f"docker-archive:{path} (it is a docker archive)?")
    assert log == []


def test_an_archive_read_under_a_memory_limit_is_told_as_an_archive(tmp_path: Path) -> None:
    # The fault itself, in a child process with 512 MiB of address space: a 1 GiB PAX header is never read.
    path = _sparse_tar(tmp_path / "evil.tar", b"x", 1 << 30)
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
            "from cdisk.core.engines import choice\nfrom cdisk.core.errors import UsageError\n"
            "from cdisk.core.request import ImageRequest\n"
            "try:\n    choice.check(ImageRequest(sys.argv[1]))\nexcept UsageError as e:\n    print(e.message)\n")
    result = subprocess.run([sys.executable, "-c", "import sys\n" + code, str(path)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"{path} looks like a path, not an image name; did you mean oci-archive:{path} or "
                             f"docker-archive:{path}?\n")


def test_an_archive_is_told_by_names_up_to_the_first_refused_header(engines: dict[str, FakeEngine],
                                                                    tmp_path: Path) -> None:
    broken = bytearray(tar_header("index.json", size=2))
    broken[148:156] = b"0000000\x00"  # a checksum Go refuses: this header and all after it are not read
    path = tmp_path / "vm.tar"
    path.write_bytes(tar_member("blobs/sha256/aa") + tar_member("manifest.json", b"[]") + bytes(broken) +
                     tar_member("oci-layout", b"{}") + bytes(1024))
    with pytest.raises(UsageError, match=r"did you mean docker-archive:\S+ \(it is a docker archive\)\?$"):
        choice.check(ImageRequest(str(path)))


def test_a_failed_pull_of_a_short_name_asks_for_the_full_name(engines: dict[str, FakeEngine]) -> None:
    # `podman pull vm:1` would resolve the short name as the failed pull did, and fail alike.
    engines["docker"].answers = False
    reason = ('short-name "vm:1" did not resolve to an alias and no unqualified-search registries are defined in '
              '"/etc/containers/registries.conf"')
    engines["podman"].pull_fails = PullFailed("vm:1", "podman", reason, "")
    with pytest.raises(ImageError) as refused:
        _find(ImageRequest("vm:1"), Stages())
    assert refused.value.message == (f"vm:1 is not in podman's store, and pulling it failed: {reason}; check the name "
                                     "(`podman images`), or name it in full with its registry "
                                     "(registry/repository:tag)")
