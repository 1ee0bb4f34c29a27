"""What a saved image's files say: blobs, OCI layouts, docker-archives, platforms."""
