"""Where each engine would ask: registries.conf read as containers/image reads it (files, drop-ins, longest
prefix, mirrors and their rules, blocked, insecure, malformed files), docker's daemon settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from plumbum import local

from cdisk.core.engines.registry import config
from cdisk.core.engines.registry.config import Endpoint, docker_plan, matching_prefix, podman_plan
from cdisk.core.engines.registry.reference import parse_reference


def hosts(plan: config.Plan) -> list[tuple[str, str, bool, bool]]:
    return [(e.host, e.repository, e.insecure, e.mirror) for e in plan.endpoints]


def test_no_configuration_is_the_registry_itself(home: Path) -> None:
    plan = podman_plan(parse_reference("quay.io/x/y:1"), None)
    assert hosts(plan) == [("quay.io", "x/y", False, False)]
    assert plan.why == "" and plan.helpers == ("containers-auth.json",)


def test_docker_hub_is_asked_at_its_api_host(home: Path) -> None:
    assert hosts(podman_plan(parse_reference("docker.io/alpine"), None)) == [
        ("registry-1.docker.io", "library/alpine", False, False)]


def test_mirrors_in_order_then_the_primary_rewritten(registries_conf: Path) -> None:
    registries_conf.write_text("""
[[registry]]
prefix = "quay.io/ns"
location = "upstream.example/mirrored/ns"
insecure = true
[[registry.mirror]]
location = "m1.example:5000/cache"
[[registry.mirror]]
location = "m2.example"
insecure = true
[[registry.mirror]]
location = "digests.example"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "tags.example"
pull-from-mirror = "tag-only"
""")
    plan = podman_plan(parse_reference("quay.io/ns/sub/img:7"), None)
    assert hosts(plan) == [("m1.example:5000", "cache/sub/img", False, True),
                           ("m2.example", "sub/img", True, True),
                           ("tags.example", "sub/img", False, True),
                           ("upstream.example", "mirrored/ns/sub/img", True, False)]
    # tls_verify decides over the file, for every endpoint.
    assert {e.insecure for e in podman_plan(parse_reference("quay.io/ns/img"), True).endpoints} == {False}
    assert {e.insecure for e in podman_plan(parse_reference("quay.io/ns/img"), False).endpoints} == {True}
    # Not under the prefix: the registry itself.
    assert hosts(podman_plan(parse_reference("quay.io/nsx/img"), None)) == [("quay.io", "nsx/img", False, False)]


def test_mirror_by_digest_only_leaves_a_tag_to_the_primary(registries_conf: Path) -> None:
    registries_conf.write_text("""
[[registry]]
location = "quay.io"
mirror-by-digest-only = true
mirror = [{location = "m.example"}]
""")
    assert hosts(podman_plan(parse_reference("quay.io/a/b:t"), None)) == [("quay.io", "a/b", False, False)]


def test_the_longest_prefix_wins(registries_conf: Path) -> None:
    registries_conf.write_text("""
[[registry]]
location = "quay.io"
mirror = [{location = "short.example"}]
[[registry]]
prefix = "quay.io/team"
location = "quay.io/team"
mirror = [{location = "long.example/team"}]
[[registry]]
prefix = "*.corp.example"
location = ""
insecure = true
""")
    assert hosts(podman_plan(parse_reference("quay.io/team/app:1"), None))[0] == ("long.example", "team/app", False,
                                                                                True)
    assert hosts(podman_plan(parse_reference("quay.io/other/app:1"), None))[0] == ("short.example", "other/app",
                                                                                 False, True)
    assert hosts(podman_plan(parse_reference("reg.corp.example/app:1"), None)) == [
        ("reg.corp.example", "app", True, False)]


@pytest.mark.parametrize(("ref", "prefix", "expected"), [
    ("quay.io/a/b", "quay.io", 7), ("quay.io/a/b", "quay.io/a", 9), ("quay.io/ab", "quay.io/a", -1),
    ("quay.io/a/b", "quay.io/a/b", 11), ("quay.io:5000/a", "quay.io", 7), ("x.quay.io/a", "*.quay.io", 9),
    ("quay.io/a", "*.quay.io", -1), ("a.b.quay.io:1/a", "*.quay.io", 11), ("h/x.quay.io", "*.quay.io", -1),
])
def test_prefix_matching_as_containers_image(ref: str, prefix: str, expected: int) -> None:
    assert matching_prefix(ref, prefix) == expected


def test_blocked_registry_is_not_asked(registries_conf: Path) -> None:
    registries_conf.write_text('[[registry]]\nlocation = "quay.io"\nblocked = true\n')
    plan = podman_plan(parse_reference("quay.io/a/b"), None)
    assert plan.endpoints == () and plan.why == "registry quay.io is blocked in registries.conf"


def test_a_rewrite_to_no_reference_is_said_so_and_a_password_never_shown(registries_conf: Path) -> None:
    """A location with a user and password before its host is no reference (c/image fails the pull): the plan
    says so, not that the registry is blocked; a refused file's line shows no password."""
    registries_conf.write_text('[[registry]]\nprefix = "quay.io"\nlocation = "user:s3cret@mirror.example"\n')
    plan = podman_plan(parse_reference("quay.io/a/b:1"), None)
    assert plan.endpoints == () and plan.why == "registries.conf rewrites quay.io to no valid reference"
    registries_conf.write_text('[[registry]]\nprefix = "quay.io"\nlocation = "https://user:s3cret@mirror.example/x"\n')
    why = podman_plan(parse_reference("quay.io/a/b:1"), None).why
    assert "s3cret" not in why and "'https://***@mirror.example/x'" in why


@pytest.mark.parametrize(("location", "shown"), [
    ("https://user:s3cret@mirror.example/x", "'https://***@mirror.example/x'"),
    ("https://u:s3/cret@mirror.example/x", "'https://***@mirror.example/x'"),  # a / in the password
    ("u:s3cret://w@mirror.example/x", "'***@mirror.example/x'"),  # a :// in it: no scheme
    ("https://u:s3?cret/y@mirror.example", "'https://***@mirror.example'"),
    ("u:s3@cret@mirror.example", "'***@mirror.example'"),
    ("mirror.example/x@sha256:" + "a" * 64, "'mirror.example/x@sha256:" + "a" * 64 + "'"),
    ("u:s3cret@mirror.example/x@sha256:" + "a" * 64, "'***@mirror.example/x@sha256:" + "a" * 64 + "'"),
    ("mirror.example:5000/x", "'mirror.example:5000/x'"),
])
def test_a_location_in_a_warning_shows_no_password(location: str, shown: str) -> None:
    assert config._shown(location) == shown


def test_a_blocked_mirror_is_skipped(registries_conf: Path) -> None:
    registries_conf.write_text("""
[[registry]]
location = "quay.io"
mirror = [{location = "bad.example"}, {location = "good.example"}]
[[registry]]
location = "bad.example"
blocked = true
""")
    assert [e.host for e in podman_plan(parse_reference("quay.io/a/b"), None).endpoints] == ["good.example",
                                                                                          "quay.io"]


def test_drop_ins_replace_a_prefix_whole_in_name_order(registries_conf: Path, tmp_path: Path) -> None:
    registries_conf.write_text('[[registry]]\nlocation = "quay.io"\ninsecure = true\n'
                               'mirror = [{location = "from-main.example"}]\n')
    drop_ins = tmp_path / "etc/registries.conf.d"
    drop_ins.mkdir(parents=True)
    (drop_ins / "20-b.conf").write_text('[[registry]]\nlocation = "quay.io"\n'
                                        'mirror = [{location = "from-b.example"}]\n')
    (drop_ins / "10-a.conf").write_text('[[registry]]\nlocation = "quay.io"\n'
                                        'mirror = [{location = "from-a.example"}]\n')
    (drop_ins / "30-c.conf.off").write_text('[[registry]]\nlocation = "quay.io"\nblocked = true\n')
    (drop_ins / "40-dir.conf").mkdir()
    plan = podman_plan(parse_reference("quay.io/a/b"), None)
    assert hosts(plan) == [("from-b.example", "a/b", False, True), ("quay.io", "a/b", False, False)]


def test_the_users_file_hides_the_system_drop_ins(home: Path, tmp_path: Path) -> None:
    user = home / ".config/containers"
    (user / "registries.conf.d").mkdir(parents=True)
    (user / "registries.conf").write_text("")
    (user / "registries.conf.d/a.conf").write_text('[[registry]]\nlocation = "quay.io"\n'
                                                   'mirror = [{location = "user.example"}]\n')
    system = tmp_path / "etc/registries.conf.d"
    system.mkdir(parents=True)
    (system / "z.conf").write_text('[[registry]]\nlocation = "quay.io"\nblocked = true\n')
    assert [e.host for e in podman_plan(parse_reference("quay.io/a/b"), None).endpoints] == ["user.example",
                                                                                          "quay.io"]


def test_the_system_file_without_a_users(home: Path, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/registries.conf").write_text('[[registry]]\nlocation = "quay.io"\ninsecure = true\n')
    assert hosts(podman_plan(parse_reference("quay.io/a/b"), None)) == [("quay.io", "a/b", True, False)]


def test_v1_files_are_converted(registries_conf: Path) -> None:
    registries_conf.write_text('[registries.insecure]\nregistries = ["quay.io"]\n'
                               '[registries.block]\nregistries = ["evil.example"]\n')
    assert hosts(podman_plan(parse_reference("quay.io/a/b"), None)) == [("quay.io", "a/b", True, False)]
    assert podman_plan(parse_reference("evil.example/a"), None).endpoints == ()


def test_credential_helpers_are_taken_from_the_file(registries_conf: Path) -> None:
    registries_conf.write_text('credential-helpers = ["secretservice", "containers-auth.json"]\n')
    assert podman_plan(parse_reference("quay.io/a"), None).helpers == ("secretservice", "containers-auth.json")


@pytest.mark.parametrize(("text", "said"), [
    ("[[registry]\n", "not valid TOML"),
    ('[[registry]]\nlocation = "https://quay.io"\n', "URI schemes are not supported"),
    ('[[registry]]\nprefix = "quay.io/x"\n', "location is unset"),
    ('[[registry]]\ninsecure = true\n', "both location and prefix are unset"),
    ('[[registry]]\nlocation = "q.io"\nmirror = [{location = "m", pull-from-mirror = "sometimes"}]\n',
     "unsupported pull-from-mirror"),
    ('[[registry]]\nlocation = "q.io"\nmirror-by-digest-only = true\n'
     'mirror = [{location = "m", pull-from-mirror = "all"}]\n', "at the same time"),
    ('[[registry]]\nlocation = "q.io"\ninsecure = "yes"\n', "insecure is not a boolean"),
    ('[[registry]]\nprefix = "*.q.io/x"\nlocation = "q.io"\n', "wildcarded prefix"),
])
def test_a_malformed_file_is_one_line_naming_it(registries_conf: Path, text: str, said: str) -> None:
    registries_conf.write_text(text)
    plan = podman_plan(parse_reference("quay.io/a/b"), None)
    assert plan.endpoints == ()
    assert plan.why.startswith(f"registries.conf {registries_conf}: ") and said in plan.why
    assert "\n" not in plan.why


def test_a_v1_drop_in_is_refused(registries_conf: Path, tmp_path: Path) -> None:
    drop_ins = tmp_path / "etc/registries.conf.d"
    drop_ins.mkdir(parents=True)
    (drop_ins / "a.conf").write_text('[registries.insecure]\nregistries = ["quay.io"]\n')
    assert "must be in v2 format" in podman_plan(parse_reference("quay.io/a/b"), None).why


def test_missing_unreadable_or_huge_files_are_the_defaults(registries_conf: Path, tmp_path: Path) -> None:
    registries_conf.unlink()
    assert hosts(podman_plan(parse_reference("quay.io/a"), None)) == [("quay.io", "a", False, False)]
    os.mkfifo(registries_conf)
    assert hosts(podman_plan(parse_reference("quay.io/a"), None)) == [("quay.io", "a", False, False)]  # no wait
    registries_conf.unlink()
    registries_conf.write_text("# " + "x" * (config.CONF_LIMIT + 1) + '\n[[registry]]\nlocation="quay.io"\n'
                               "blocked=true\n")
    assert hosts(podman_plan(parse_reference("quay.io/a"), None)) == [("quay.io", "a", False, False)]


def test_certs_d_of_the_registry_is_found(registries_conf: Path, home: Path) -> None:
    certs = home / ".config/containers/certs.d/quay.io"
    certs.mkdir(parents=True)
    assert podman_plan(parse_reference("quay.io/a"), None).endpoints[0].cert_dirs == (certs,)


# --- docker -------------------------------------------------------------------------------------------------

DAEMON = {
    "InsecureRegistryCIDRs": ["127.0.0.0/8", "10.0.0.0/8"],
    "IndexConfigs": {"docker.io": {"Name": "docker.io", "Mirrors": ["https://mirror.example/"], "Secure": True},
                     "named.example:5000": {"Name": "named.example:5000", "Secure": False},
                     "127.0.0.1:6000": {"Name": "127.0.0.1:6000", "Secure": True}},
    # The first as docker itself refuses it (a user and password in a mirror's URI): never asked.
    "Mirrors": ["https://u:s3cret@secret.example/", "https://mirror.example/", "http://plain.example:5000"],
}


def test_docker_mirrors_serve_docker_hub_only(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "docker_registry_config", lambda socket: DAEMON)
    plan = docker_plan(parse_reference("docker.io/alpine:3"), None)
    assert [(e.host, e.repository, e.insecure, e.mirror, e.plain_http) for e in plan.endpoints] == [
        ("mirror.example", "library/alpine", False, True, False),
        ("plain.example:5000", "library/alpine", False, True, True),
        ("registry-1.docker.io", "library/alpine", False, False, False)]
    assert hosts(docker_plan(parse_reference("quay.io/a:1"), None)) == [("quay.io", "a", False, False)]


@pytest.mark.parametrize(("registry", "insecure"), [
    ("named.example:5000", True), ("127.0.0.1:6000", False), ("127.0.0.1:5000", True), ("localhost:5000", True),
    ("10.1.2.3", True), ("192.168.1.1:5000", False), ("quay.io", False), ("[::1]:5000", False),
])
def test_docker_insecure_registries(home: Path, monkeypatch: pytest.MonkeyPatch, registry: str,
                                    insecure: bool) -> None:
    monkeypatch.setattr(config, "docker_registry_config", lambda socket: DAEMON)
    assert hosts(docker_plan(parse_reference(f"{registry}/a:1"), None)) == [(registry, "a", insecure, False)]
    assert docker_plan(parse_reference(f"{registry}/a:1"), True).endpoints[0].insecure is False
    assert docker_plan(parse_reference(f"{registry}/a:1"), False).endpoints[0].insecure is True


def test_a_silent_daemon_is_docker_defaults(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv = tmp_path / "argv"
    (bin_dir / "docker").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv}\necho "cannot connect" >&2\nexit 1\n')
    (bin_dir / "docker").chmod(0o755)
    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"):
        assert hosts(docker_plan(parse_reference("127.0.0.1:5000/a"), None)) == [("127.0.0.1:5000", "a", True,
                                                                                  False)]
        assert hosts(docker_plan(parse_reference("docker.io/a"), None)) == [("registry-1.docker.io", "library/a",
                                                                             False, False)]
    assert argv.read_text().splitlines() == ["--host", f"unix://{tmp_path}/no.sock", "info", "--format",
                                        "{{json .RegistryConfig}}"]


def test_the_daemons_config_is_asked_once_per_run(home: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count = tmp_path / "count"
    (bin_dir / "docker").write_text(f"#!/bin/sh\necho x >> {count}\n"
                                    "echo '{\"Mirrors\": [\"https://m.example\"], \"IndexConfigs\": {}}'\n")
    (bin_dir / "docker").chmod(0o755)
    with local.env(PATH=f"{bin_dir}:{local.env['PATH']}"):
        for _ in range(3):
            assert [e.host for e in docker_plan(parse_reference("docker.io/a"), None).endpoints] == [
                "m.example", "registry-1.docker.io"]
    assert count.read_text() == "x\n"


def test_endpoint_names() -> None:
    assert Endpoint("docker.io", "registry-1.docker.io", "library/a", False).name == "docker.io/library/a"
