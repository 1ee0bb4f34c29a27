"""Where images come from: podman's and docker's stores, and image files (OCI layouts, archives, artifacts).

`seam` is what cdisk needs of an engine; `podman`, `docker` and `files` are the engines, each the only module
that runs its tool or talks to its API; `common` holds what podman and docker share; `choice` resolves
`--engine` (auto included) and IMAGE's transport into an engine and the image in its store.
"""
