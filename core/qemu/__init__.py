"""The qemu tools, confined: qemu-img, its sandbox, and the NBD endpoints qemu serves."""
