"""Which file of the image is the disk, and the disk judged: its candidates, format and header."""
