"""The media types and annotation names of the OCI image spec (and Docker's) that cdisk reads and writes."""

from __future__ import annotations

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (INDEX_TYPE, DOCKER_LIST_TYPE)
# A layer's media type by its compression.
LAYER_TYPES = {"none": "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}

REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
